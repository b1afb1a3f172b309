"""The configured chain end to end: markctl check and the service, real clients, emulators.

Every verdict here comes from a real client speaking HTTP to a loopback emulator: the CDN, the
Local Module and the ТС ПИоТ, configured exactly as a kiosk's markd.toml would configure them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from markd.cli import markctl
from markd.emulators.testing import crpt_cdn, local_module, tspiot

WATER = "0104680029460908215jcmHzLmkdPML<GS>938p9E"
KI = "0104680029460908215jcmHzLmkdPML"
TOKEN = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"


@pytest.fixture
def services() -> Iterator[tuple]:
    with crpt_cdn({"cdn": {"token": TOKEN}}) as cdn, local_module() as lm:
        yield cdn, lm


def write_config(tmp_path: Path, body: str) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "lm-password").write_text("admin\n")
    path = tmp_path / "markd.toml"
    path.write_text(f"[store]\npath = '{tmp_path / 'store'}'\n" + body)
    return str(path)


def direct_config(tmp_path: Path, cdn, lm, **check: str) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in check.items())
    return write_config(
        tmp_path,
        "[terminal]\nfn_serial = '9960440300000001'\n"
        f"[check]\nmode = 'direct'\nonline_timeout_ms = 400\nlocal_module_timeout_ms = 300\n{extra}"
        f"[check.online]\nurl = '{cdn.url}'\ntoken_file = '{tmp_path / 'token'}'\n"
        f"[check.local_module]\nurl = '{lm.url}'\npassword_file = '{tmp_path / 'lm-password'}'\n",
    )


def check(capsys, cfg: str, code: str = WATER) -> tuple[int, dict]:
    status = markctl.main(["check", code, "--config", cfg, "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_online_allows_with_tag_1265(tmp_path: Path, services, capsys) -> None:
    cdn, lm = services
    status, verdict = check(capsys, direct_config(tmp_path, cdn, lm))
    assert status == 0, verdict
    assert (verdict["decision"], verdict["source"], verdict["checked"]) == ("allow", "cdn", True)
    assert verdict["tag1265"] == f"UUID={verdict['req_id']}&Time={verdict['req_timestamp']}"
    request = cdn.requests_for("codes/check")[-1]
    assert request.api_key == TOKEN and request.json["fiscalDriveNumber"] == "9960440300000001"
    assert lm.requests_for("v2/cis/outCheck") == []  # online answered: the LM is not asked


def test_online_blocked_is_denied(tmp_path: Path, services, capsys) -> None:
    cdn, lm = services
    cdn.set_code(KI, isBlocked=True, ogvs=["FNS"])
    status, verdict = check(capsys, direct_config(tmp_path, cdn, lm))
    assert status == 3 and verdict["decision"] == "deny" and verdict["source"] == "cdn"


def test_online_silent_the_local_module_decides_within_the_budget(
    tmp_path: Path, services, capsys
) -> None:
    cdn, lm = services
    cdn.set_fault("codes/check", black_hole=True)
    cdn.set_fault("cdn/info", black_hole=True)
    started = time.monotonic()
    status, verdict = check(capsys, direct_config(tmp_path, cdn, lm))
    assert (verdict["decision"], verdict["source"]) == ("allow", "lm"), verdict
    assert "&Inst=" in verdict["tag1265"] and "&Ver=" in verdict["tag1265"]
    assert verdict["latency_ms"] <= 400 + 300 + 50
    assert time.monotonic() - started < 5


def test_nothing_answers_unanswered_policy(tmp_path: Path, services, capsys) -> None:
    cdn, lm = services
    cdn.set_fault("codes/check", status=503)
    cdn.set_fault("cdn/info", status=503)
    lm.set_state("sync_error")
    _, allowed = check(capsys, direct_config(tmp_path, cdn, lm))
    assert (allowed["decision"], allowed["reason"], allowed["tag1265"]) == (
        "allow",
        "unchecked",
        "",
    )
    status, denied = check(capsys, direct_config(tmp_path / "x", cdn, lm, unanswered="'deny'"))
    assert status == 3 and denied["decision"] == "deny"
    assert denied["reason"] in ("lm-sync-error", "unchecked")


def test_tspiot_mode_over_tls(tmp_path: Path, capsys) -> None:
    with tspiot(tls=True) as service:
        cfg = write_config(
            tmp_path,
            "[check]\nmode = 'tspiot'\ntspiot_timeout_ms = 1500\n"
            f"[check.tspiot]\nurl = '{service.url}'\nallow_self_signed = true\n",
        )
        status, verdict = check(capsys, cfg)
        assert status == 0 and verdict["source"] in ("tspiot", "tspiot-offline"), verdict
        service.set_fault("codes/check", emergency=True)
        status, verdict = check(capsys, cfg)
        assert status == 3 and "emergency" in verdict["reason"]


def test_missing_secret_is_a_clear_configuration_error(tmp_path: Path, services, capsys) -> None:
    cdn, lm = services
    cfg = direct_config(tmp_path, cdn, lm)
    (tmp_path / "token").unlink()
    assert markctl.main(["check", WATER, "--config", cfg]) == 2
    assert "token" in capsys.readouterr().err


# -- the split CDN: the first check after a start (domain.md §3.2) -------------------------------


def test_the_first_markctl_check_is_online_and_refuses_a_sold_unit(
    tmp_path: Path, services, capsys
) -> None:
    """No host list yet: the check fetches one within its budget, asks a listed host, and the
    online answer refuses the sold unit — the Local Module alone would have allowed it."""
    cdn, lm = services
    cdn.set_code(KI, sold=True)
    status, verdict = check(capsys, direct_config(tmp_path, cdn, lm))
    assert status == 3, verdict
    assert (verdict["decision"], verdict["reason"], verdict["source"]) == ("deny", "sold", "cdn")
    assert cdn.list_service.count("cdn/info") == 1
    assert cdn.list_service.count("codes/check") == 0  # the list service is never asked
    assert cdn.host.count("codes/check") == 1
    assert lm.requests_for("v2/cis/outCheck") == []
    kept = json.loads((tmp_path / "cdn-hosts.json").read_text())  # beside the store
    assert kept["base_url"] == cdn.url and kept["hosts"][0]["host"] == cdn.host.url


def test_the_next_markctl_check_uses_the_kept_list_even_with_the_list_service_down(
    tmp_path: Path, services, capsys
) -> None:
    cdn, lm = services
    cfg = direct_config(tmp_path, cdn, lm)
    assert check(capsys, cfg)[0] == 0
    cdn.set_fault("cdn/info", status=503)
    cdn.set_code(KI, sold=True)
    status, verdict = check(capsys, cfg)
    assert (status, verdict["reason"], verdict["source"]) == (3, "sold", "cdn"), verdict
    assert cdn.list_service.count("cdn/info") == 1  # not fetched again
    assert cdn.host.count("codes/check") == 2


def test_a_dead_list_service_and_no_kept_list_fall_back_within_the_budget(
    tmp_path: Path, services, capsys
) -> None:
    cdn, lm = services
    cdn.set_fault("cdn/info", black_hole=True)
    started = time.monotonic()
    status, verdict = check(capsys, direct_config(tmp_path, cdn, lm))
    assert (verdict["decision"], verdict["source"]) == ("allow", "lm"), verdict
    assert verdict["latency_ms"] <= 400 + 300 + 50
    assert time.monotonic() - started < 5
    assert cdn.host.count() == 0


def test_markctl_check_through_the_configured_proxy(tmp_path: Path, services, capsys) -> None:
    from markd.emulators.http_proxy import HttpProxy

    cdn, lm = services
    cdn.set_code(KI, sold=True)
    with HttpProxy(credentials=("till7", "pr0xy:pw")) as proxy:
        (tmp_path / "proxy-auth").write_text("till7:pr0xy:pw\n")
        extra = (
            f"proxy = '{proxy.url}'\nno_proxy = []\nproxy_auth_file = '{tmp_path / 'proxy-auth'}'\n"
        )
        cfg = direct_config(tmp_path, cdn, lm)
        text = (
            Path(cfg)
            .read_text()
            .replace(
                f"[check.online]\nurl = '{cdn.url}'\n",
                f"[check.online]\nurl = '{cdn.url}'\n{extra}",
            )
        )
        Path(cfg).write_text(text)
        status, verdict = check(capsys, cfg)
        assert (status, verdict["reason"], verdict["source"]) == (3, "sold", "cdn"), verdict
        through = {r.target.split("/true-api/")[1]: r.outcome for r in proxy.requests}
        assert through["cdn/info"] == through["codes/check"] == "forwarded"
        assert lm.requests_for("v2/cis/outCheck") == []  # the Local Module is not proxied
        # Wrong credentials: a typed proxy failure, and the Local Module answers in time.
        (tmp_path / "proxy-auth").write_text("till7:wrong\n")
        (tmp_path / "cdn-hosts.json").unlink()
        # Another unit: the first one's online "sold" is in the verdict cache now.
        status, verdict = check(capsys, cfg, "0104670540176099215LpGKy<GS>93dGVz")
        assert (verdict["decision"], verdict["source"]) == ("allow", "lm"), verdict
        assert {f["kind"] for f in verdict["details"]["failures"]} == {"proxy-auth"}
        assert verdict["latency_ms"] <= 400 + 300 + 50


def test_markctl_status_names_the_host_list_its_source_and_age(
    tmp_path: Path, services, capsys
) -> None:
    cdn, lm = services
    cfg = direct_config(tmp_path, cdn, lm)
    # Exit status 1: the test has no store yet, so the blocklist is down.
    assert markctl.main(["status", "--config", cfg, "--in-process"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("online CDN"))
    assert f"ok        1 host, list fetched just now; first {cdn.host.url} (" in line, line
    assert "problems       blocklist down\n" in out
    cdn.set_fault("cdn/info", status=503)
    (tmp_path / "cdn-hosts.json").unlink()
    assert markctl.main(["status", "--config", cfg, "--in-process", "--json"]) == 1
    online = json.loads(capsys.readouterr().out)["online"]
    assert online["hosts_from"] == "none" and "HTTP 503" in online["last_error"]


def test_markctl_check_to_an_https_cdn_through_a_connect_tunnel(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a till: the CDN over HTTPS (the emulator's certificates trusted as a system CA
    would be, hostnames checked), reached through the shop's proxy with CONNECT."""
    from markd.emulators.http_proxy import HttpProxy

    with (
        crpt_cdn({"cdn": {"token": TOKEN}}, tls=True) as cdn,
        local_module() as lm,
        HttpProxy(credentials=("till7", "pw")) as proxy,
    ):
        bundle = tmp_path / "ca.pem"
        bundle.write_text("".join(s.certificate_path.read_text() for s in cdn.servers))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        (tmp_path / "proxy-auth").write_text("till7:pw\n")
        cfg = direct_config(tmp_path, cdn, lm)
        extra = (
            f"proxy = '{proxy.url}'\nno_proxy = []\nproxy_auth_file = '{tmp_path / 'proxy-auth'}'\n"
        )
        text = (
            Path(cfg)
            .read_text()
            .replace(
                f"[check.online]\nurl = '{cdn.url}'\n",
                f"[check.online]\nurl = '{cdn.url}'\n{extra}",
            )
        )
        Path(cfg).write_text(text)
        cdn.set_code(KI, sold=True)
        status, verdict = check(capsys, cfg)
        assert (status, verdict["reason"], verdict["source"]) == (3, "sold", "cdn"), verdict
        tunnels = [r for r in proxy.requests if r.method == "CONNECT"]
        assert {r.target for r in tunnels} == {
            cdn.url.removeprefix("https://"),
            cdn.host.url.removeprefix("https://"),
        }
        assert all(r.outcome == "tunnel" and r.authorization_ok for r in tunnels)
