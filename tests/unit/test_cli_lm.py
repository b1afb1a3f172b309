"""markctl lm init / lm status against the Local Module emulator, over real sockets."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from markd.cli import markctl
from markd.emulators.local_module import LocalModuleEmulator
from markd.emulators.testing import local_module

TOKEN = "3f2c8a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"
OTHER_TOKEN = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
FN_SERIAL = "9960440300000001"


@pytest.fixture
def lm() -> Iterator[LocalModuleEmulator]:
    with local_module({"local_module": {"state": "not_configured"}}) as server:
        yield server


def write_config(
    tmp_path: Path, lm_url: str | None, *, online: bool = True, token: str = TOKEN
) -> str:
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "lm-password").write_text("admin\n")
    body = f"[store]\npath = '{tmp_path / 'store'}'\n[terminal]\nfn_serial = '{FN_SERIAL}'\n"
    body += "[check]\nmode = 'direct'\n"
    if online:
        body += f"[check.online]\nurl = 'http://127.0.0.1:9'\ntoken_file = '{tmp_path / 'token'}'\n"
    if lm_url is not None:
        body += (
            f"[check.local_module]\nurl = '{lm_url}'\n"
            f"password_file = '{tmp_path / 'lm-password'}'\n"
        )
    path = tmp_path / "markd.toml"
    path.write_text(body)
    return str(path)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_init_sends_the_token_and_never_prints_it(
    tmp_path: Path, lm: LocalModuleEmulator, capsys
) -> None:
    cfg = write_config(tmp_path, lm.url)
    assert markctl.main(["lm", "init", "--config", cfg, "--json"]) == 0
    out, err = capsys.readouterr()
    assert TOKEN not in out and TOKEN not in err
    report = json.loads(out)
    assert report["ok"] is True and report["error"] is None
    assert report["status"]["state"] == "ready"  # read again after init
    request = lm.last("init")
    assert request is not None and request.json == {"token": TOKEN}
    assert request.client_id == FN_SERIAL and request.path == "/api/v2/init"
    assert lm.token == TOKEN


def test_init_human_output_and_token_file_option(
    tmp_path: Path, lm: LocalModuleEmulator, capsys
) -> None:
    cfg = write_config(tmp_path, lm.url)
    other = tmp_path / "other-token"
    other.write_text(OTHER_TOKEN + "\n")
    assert markctl.main(["lm", "init", "--config", cfg, "--token-file", str(other)]) == 0
    out, err = capsys.readouterr()
    assert "initialised" in out and "ready" in out
    assert OTHER_TOKEN not in out + err and TOKEN not in out + err
    assert lm.token == OTHER_TOKEN


def test_init_token_from_the_systemd_credential(
    tmp_path: Path, lm: LocalModuleEmulator, capsys, monkeypatch
) -> None:
    cfg = write_config(tmp_path, lm.url, online=False)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "crpt-token").write_text(TOKEN + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert markctl.main(["lm", "init", "--config", cfg]) == 0
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert lm.token == TOKEN


def test_init_refused_exit_1_and_the_echoed_token_is_hidden(
    tmp_path: Path, lm: LocalModuleEmulator, capsys
) -> None:
    lm.set_fault("init", status=403, description=f"token {TOKEN} is not valid")
    cfg = write_config(tmp_path, lm.url)
    assert markctl.main(["lm", "init", "--config", cfg, "--json"]) == 1
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    report = json.loads(out)
    assert report["ok"] is False and report["error"]["kind"] == "unauthorized"
    assert "<secret>" in report["error"]["detail"]
    assert report["status"]["state"] == "not_configured"


def test_status_shows_the_state(tmp_path: Path, lm: LocalModuleEmulator, capsys) -> None:
    cfg = write_config(tmp_path, lm.url)
    assert markctl.main(["lm", "status", "--config", cfg, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["reachable"] is True and status["state"] == "not_configured"
    assert status["version"] and lm.count("status") == 1
    lm.set_state("sync_error")
    assert markctl.main(["lm", "status", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "sync_error" in out and "ALERT" in out


def test_missing_section_exit_2(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, None)
    assert markctl.main(["lm", "init", "--config", cfg]) == 2
    assert "[check.local_module]" in capsys.readouterr().err
    assert markctl.main(["lm", "status", "--config", cfg]) == 2


def test_missing_token_exit_2(tmp_path: Path, lm: LocalModuleEmulator, capsys, monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = write_config(tmp_path, lm.url, online=False)
    assert markctl.main(["lm", "init", "--config", cfg]) == 2
    assert "crpt-token" in capsys.readouterr().err
    assert lm.count("init") == 0


def test_unreachable_exit_1(tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    assert markctl.main(["lm", "init", "--config", cfg, "--timeout", "2"]) == 1
    out, err = capsys.readouterr()
    assert "FAILED" in out and "unreachable" in out and TOKEN not in out + err
    assert markctl.main(["lm", "status", "--config", cfg, "--json", "--timeout", "2"]) == 1
    assert json.loads(capsys.readouterr().out)["reachable"] is False
