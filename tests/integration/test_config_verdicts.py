"""``markctl config check`` refuses exactly what the daemon refuses to start with.

Every configuration key of the schema (:func:`markd.config.schema_keys`, the list the
reference in docs/configuration.md is made from) gets a bad value in :data:`BAD`; a key added
to the schema without one fails :func:`test_every_key_has_a_bad_value`. Each bad value goes
into a drop-in over a configuration that starts, and through both ``markctl config check`` and
a real ``markd --config FILE`` process: both must refuse, the daemon with status 2 and no
traceback, and both must print the same problems — the drop-in's name and the key in each.

Before one validation was shared by both, the check passed a port out of range in a service
URL (the daemon then died in a traceback, or ran on until its first request failed), a
non-loopback ``[api] listen``, a missing secret, and ``[check] mode = "tspiot"`` without its
section; the rows marked "start-only before" are those.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from markd.cli import markctl
from markd.config import schema_keys
from process_helpers import markd_command

#: Missing files the bad values name (the test never creates them).
MISSING = "{tmp}/no-such-secret"
#: A one-line secret file without a colon (not a proxy's user:password).
SECRET = "{tmp}/secret"

#: "[table] key" → the drop-in that gives the key a bad value (and what makes the key used).
BAD: dict[str, str] = {
    "[log] target": '[log]\ntarget = "syslog"',
    "[log] level": '[log]\nlevel = "verbose"',
    "[store] path": '[store]\npath = ""',
    "[store] map_size_mb": "[store]\nmap_size_mb = 0",
    "[store] max_age_hours": "[store]\nmax_age_hours = 9000",
    "[store] verdict_ttl_s": "[store]\nverdict_ttl_s = -1",
    "[store] delta_history": "[store]\ndelta_history = 100001",
    # start-only before: the port was only read when the first sync ran
    "[store] sync_url": '[store]\nsync_url = "https://fleet.example:99999/till"',
    "[store] sync_interval_s": "[store]\nsync_interval_s = 59",
    "[store] sync_proxy": '[store]\nsync_url = "https://fleet.example/"\n'
    'sync_proxy = "http://127.0.0.1:99999"',
    "[store] sync_public_keys": '[store]\nsync_public_keys = ["ed25519:not-base64"]',
    "[store] sync_allow_unsigned": '[store]\nsync_allow_unsigned = "yes"',
    "[store] sync_max_file_mb": "[store]\nsync_max_file_mb = 0",
    "[codes] recover_lost_gs": "[codes]\nrecover_lost_gs = 1",
    "[codes] serial_lengths": "[codes]\nserial_lengths = [13, 0]",
    "[codes] ki_serial_lengths": "[codes]\nki_serial_lengths = [21]",
    "[terminal] fn_serial": '[terminal]\nfn_serial = "12345"',
    "[terminal] timezone": '[terminal]\ntimezone = "Mars/Olympus_Mons"',
    "[terminal] inn": '[terminal]\ninn = "12345"',
    "[terminal] kpp": '[terminal]\nkpp = "1"',
    # start-only before: refused when the chain was built
    "[check] mode": '[check]\nmode = "tspiot"',
    "[check] online_timeout_ms": "[check]\nonline_timeout_ms = 49",
    "[check] local_module_timeout_ms": "[check]\nlocal_module_timeout_ms = 30001",
    "[check] tspiot_timeout_ms": "[check]\ntspiot_timeout_ms = 0",
    "[check] unanswered": '[check]\nunanswered = "maybe"',
    "[check] parallel": '[check]\nparallel = "true"',
    "[check] cache_verdicts": "[check]\ncache_verdicts = 0",
    "[check] slow_scan_ms": "[check]\nslow_scan_ms = 60001",
    # start-only before: the online client took the port, the first check failed on it
    "[check.online] url": '[check]\nmode = "direct"\n[check.online]\n'
    f'url = "https://cdn.crpt.ru:99999"\ntoken_file = "{SECRET}"',
    # start-only before: secrets were read when the chain was built
    "[check.online] token_file": '[check]\nmode = "direct"\n[check.online]\n'
    f'token_file = "{MISSING}"',
    "[check.online] hosts_file": "[check.online]\nhosts_file = 7",
    "[check.online] list_budget_percent": "[check.online]\nlist_budget_percent = 91",
    "[check.online] rank_by": '[check.online]\nrank_by = "fastest"',
    "[check.online] proxy": '[check.online]\nproxy = "socks5://127.0.0.1:1080"',
    "[check.online] no_proxy": '[check.online]\nno_proxy = ["http://127.0.0.1/"]',
    "[check.online] proxy_auth_file": '[check]\nmode = "direct"\n[check.online]\n'
    f'token_file = "{SECRET}"\nproxy = "http://127.0.0.1:3128"\n'
    f'proxy_auth_file = "{MISSING}"',
    # start-only before: a traceback (urllib's "Port out of range") at start
    "[check.local_module] url": '[check.local_module]\nurl = "http://127.0.0.1:99999"\n'
    f'password_file = "{SECRET}"',
    "[check.local_module] api": "[check.local_module]\napi = 3",
    "[check.local_module] user": "[check.local_module]\nuser = 7",
    "[check.local_module] password_file": f'[check.local_module]\npassword_file = "{MISSING}"',
    "[check.local_module] proxy": '[check.local_module]\nproxy = "http://127.0.0.1"',
    "[check.local_module] no_proxy": "[check.local_module]\nno_proxy = [7]",
    # the secret is there but is not user:password
    "[check.local_module] proxy_auth_file": "[check.local_module]\n"
    f'password_file = "{SECRET}"\nproxy = "http://127.0.0.1:3128"\n'
    f'proxy_auth_file = "{SECRET}"',
    "[check.tspiot] url": '[check]\nmode = "tspiot"\n[check.tspiot]\n'
    'url = "https://127.0.0.1:99999"',
    "[check.tspiot] allow_self_signed": '[check.tspiot]\nallow_self_signed = "no"',
    "[check.tspiot] token_file": '[check]\nmode = "tspiot"\n[check.tspiot]\n'
    f'token_file = "{MISSING}"',
    "[check.tspiot] proxy": '[check.tspiot]\nproxy = "https://127.0.0.1:3128"',
    "[check.tspiot] no_proxy": '[check.tspiot]\nno_proxy = "localhost"',
    "[check.tspiot] proxy_auth_file": '[check]\nmode = "tspiot"\n[check.tspiot]\n'
    f'proxy = "http://127.0.0.1:3128"\nproxy_auth_file = "{MISSING}"',
    "[fiscal] url": '[fiscal]\nurl = "atol-web://127.0.0.1:99999"',
    "[fiscal] web_user": '[fiscal]\nweb_user = "kassa:1"',
    "[fiscal] web_password_file": '[sale]\nmode = "attendant"\n[fiscal]\n'
    f'url = "atol-web://127.0.0.1:16732"\nweb_user = "kassa"\nweb_password_file = "{MISSING}"',
    "[fiscal] journal": '[fiscal]\njournal = ""',
    "[fiscal] timeout_ms": "[fiscal]\ntimeout_ms = 999",
    "[fiscal] validation_timeout_ms": "[fiscal]\nvalidation_timeout_ms = 120001",
    "[fiscal] validation_poll_ms": "[fiscal]\nvalidation_poll_ms = 19",
    "[fiscal] on_oism_no_answer": '[fiscal]\non_oism_no_answer = "ignore"',
    "[fiscal] sale_status": "[fiscal]\nsale_status = 3",
    "[fiscal] tag1262": '[fiscal]\ntag1262 = "0300"',
    "[fiscal] tag1263": '[fiscal]\ntag1263 = "2022-03-26"',
    "[fiscal] tag1264": '[fiscal]\ntag1264 = ""',
    "[fiscal] tax": '[fiscal]\ntax = "vat18"',
    "[fiscal] payment_type": '[fiscal]\npayment_type = "barter"',
    "[fiscal] taxation_type": '[fiscal]\ntaxation_type = "flat"',
    "[fiscal] cashier_name": f'[fiscal]\ncashier_name = "{"Я" * 65}"',
    "[fiscal] cashier_inn": '[fiscal]\ncashier_name = "Иванова"\ncashier_inn = "123456789012"',
    "[fiscal] auto_shift": '[fiscal]\nauto_shift = "on"',
    "[fiscal] fn_days_warning": "[fiscal]\nfn_days_warning = 0",
    "[fiscal] unsent_days_warning": "[fiscal]\nunsent_days_warning = 31",
    "[fiscal] health_interval_s": "[fiscal]\nhealth_interval_s = -5",
    "[fiscal] shift_hours_warning": "[fiscal]\nshift_hours_warning = 25",
    "[fiscal] lm_sell": '[fiscal]\nlm_sell = "yes"',
    "[sale] mode": '[sale]\nmode = "shop"',
    "[sale] catalog": '[sale]\nmode = "kiosk"\ncatalog = "{tmp}/prices.csv"',
    "[sale] use_mrp": '[sale]\nuse_mrp = "no"',
    "[scanners.NAME] url": '[scanners.front]\nurl = "serial:///dev/ttyACM0?baud=9600"',
    "[api] enabled": '[api]\nenabled = "yes"',
    # start-only before: refused when the socket was bound
    "[api] socket": f'[api]\nsocket = "/run/markd/{"s" * 120}.sock"',
    "[api] socket_group": "[api]\nsocket_group = 0",
    # start-only before: refused when the listener was planned, without file or line
    "[api] listen": '[api]\nlisten = "10.20.30.40:8391"',
    "[api] allow_remote": '[api]\nallow_remote = "false"',
    "[api] token_file": f'[api]\nlisten = "127.0.0.1:0"\ntoken_file = "{MISSING}"',
    "[api] allowed_origins": '[api]\nallowed_origins = ["http://localhost:99999"]',
    "[api] replay_events": "[api]\nreplay_events = -1",
    "[api] replay_kib": "[api]\nreplay_kib = 0",
    "[api] session_hours": "[api]\nsession_hours = 0",
    "[api] screen": '[api]\nscreen = "yes"',
    "[api] screen_demo_pay": '[api]\nscreen_demo_pay = "yes"',
    "[metrics] listen": f'[metrics]\nlisten = "192.0.2.7:9391"\ntoken_file = "{SECRET}"',
    "[metrics] allow_remote": '[metrics]\nallow_remote = "yes"',
    "[metrics] token_file": f'[metrics]\nlisten = "127.0.0.1:0"\ntoken_file = "{MISSING}"',
    "[mark_unit] enabled": '[mark_unit]\nenabled = "yes"',
    # a LAN address with the default allow-list (loopback only): no till named
    "[mark_unit] listen": '[mark_unit]\nenabled = true\nlisten = "192.0.2.7:2578"',
    "[mark_unit] allowed_clients": '[mark_unit]\nallowed_clients = ["shop-lan"]',
    "[mark_unit] encoding": '[mark_unit]\nencoding = "koi8-r"',
    "[mark_unit] price_unit": '[mark_unit]\nprice_unit = "cents"',
    "[mark_unit] trust_till_tspiot": '[mark_unit]\ntrust_till_tspiot = "yes"',
    "[mark_unit] till_tspiot_hosts": '[mark_unit]\ntill_tspiot_hosts = ["piot/../x"]',
    "[mark_unit] lm_in_req_id": "[mark_unit]\nlm_in_req_id = 1",
    "[mark_unit] refund_check": '[mark_unit]\nrefund_check = "no"',
    "[mark_unit] repeat_cache_ms": "[mark_unit]\nrepeat_cache_ms = -1",
    "[mark_unit] max_checks": "[mark_unit]\nmax_checks = 0",
    "[mark_unit] pending_minutes": "[mark_unit]\npending_minutes = 0",
}

#: A price list with two bad lines and a good one: both bad lines must be reported.
PRICES = "gtin;name;price\n4600439931256;Вода;89.90\n123;Сок;10\n4680029460908;Хлеб;дорого\n"

#: Longest a daemon may take to refuse (it takes well under a second of CPU); one still
#: running then has started with the bad value.
DAEMON_TIMEOUT_S = 20.0
#: Daemons started at the same time.
PARALLEL = 12


def base_config(tmp: Path) -> str:
    """A configuration the daemon starts with: everything under ``tmp``, no device."""
    return f"""
[log]
target = "stderr"

[store]
path = "{tmp}/store"
map_size_mb = 8

[fiscal]
url = "emulator://{tmp}/kkt"
journal = "{tmp}/fiscal.journal"

[scanners.front]
url = "virtual://front"

[api]
socket = "{tmp}/c.sock"
"""


@dataclass
class Case:
    key: str
    directory: Path
    main: Path
    dropin: Path


def make_case(root: Path, index: int, key: str) -> Case:
    directory = root / f"k{index:02d}"
    directory.mkdir()
    (directory / "secret").write_text("no-colon-here\n", encoding="utf-8")
    (directory / "prices.csv").write_text(PRICES, encoding="utf-8")
    main = directory / "markd.toml"
    main.write_text(base_config(directory), encoding="utf-8")
    dropins = directory / "markd.toml.d"
    dropins.mkdir()
    dropin = dropins / "50-bad.toml"
    dropin.write_text(BAD[key].replace("{tmp}", str(directory)) + "\n", encoding="utf-8")
    return Case(key, directory, main, dropin)


def shown_key(key: str) -> str:
    """The key as messages name it: ``[scanners.NAME] url`` is ``[scanners.front] url``."""
    return key.replace("NAME", "front")


def problems_of(stderr: str, program: str) -> list[str]:
    return [line.removeprefix(f"{program}: ") for line in stderr.splitlines() if line]


def daemon_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY",)}
    # Secrets are looked for here only, never in the host's /etc/credstore.
    env["MARKD_CREDSTORE"] = str(tmp)
    for name in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "RUNTIME_DIRECTORY", "WATCHDOG_USEC"):
        env.pop(name, None)
    return env


def test_every_key_has_a_bad_value() -> None:
    keys = [f"[{ref.table}] {ref.key}" for ref in schema_keys()]
    assert [key for key in keys if key not in BAD] == [], "give each new key a bad value"
    assert [key for key in BAD if key not in keys] == [], "a key left the schema"


def test_config_check_and_the_daemon_refuse_every_bad_value_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [make_case(tmp_path, index, key) for index, key in enumerate(BAD)]
    env = daemon_env(tmp_path)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("MARKD_CREDSTORE", str(tmp_path))

    def start_daemon(case: Case) -> tuple[int | None, str]:
        try:
            done = subprocess.run(
                [*markd_command(), "--config", str(case.main)],
                env=env,
                cwd=case.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=DAEMON_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:  # run() killed it
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
            return None, err + "\n(still running: the daemon started with the bad value)"
        return done.returncode, done.stderr

    # The daemons start a dozen at a time in threads; markctl runs in this thread meanwhile.
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        started = [pool.submit(start_daemon, case) for case in cases]
        checks = []
        for case in cases:
            status = markctl.main(["config", "check", str(case.main)])
            checks.append((status, capsys.readouterr().err))
        daemons = [future.result() for future in started]

    failures: list[str] = []
    for case, (daemon_status, daemon_err), (check_status, check_err) in zip(
        cases, daemons, checks, strict=True
    ):
        key = shown_key(case.key)
        where = str(case.dropin)
        check_problems = problems_of(check_err, "markctl")
        daemon_problems = problems_of(daemon_err, "markd")
        wrong = []
        if check_status != 2:
            wrong.append(f"config check exited {check_status}")
        if daemon_status is None:
            wrong.append(f"the daemon was still running after {DAEMON_TIMEOUT_S:g} s")
        elif daemon_status != 2:
            wrong.append(f"the daemon exited {daemon_status}")
        if "Traceback" in daemon_err:
            wrong.append("a traceback")
        if not any(where in p and key in p for p in check_problems):
            wrong.append("config check does not name the drop-in and the key")
        if not any(where in p and key in p for p in daemon_problems):
            wrong.append("the daemon does not name the drop-in and the key")
        if check_problems != daemon_problems:
            wrong.append("the two list different problems")
        if wrong:
            failures.append(
                f"{case.key}: {', '.join(wrong)}\n    markctl: {check_problems}"
                f"\n    markd:   {daemon_err.strip()[-600:]!r}"
            )
    assert not failures, "\n".join(failures)


def test_every_bad_line_of_the_price_list_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = make_case(tmp_path, 0, "[sale] catalog")
    assert markctl.main(["config", "check", str(case.main)]) == 2
    problems = problems_of(capsys.readouterr().err, "markctl")
    prices = case.directory / "prices.csv"
    assert [p.split(": ", 1)[0] for p in problems] == [str(case.dropin) + ":3"] * 2
    assert f"{prices}:3: gtin:" in problems[0]
    assert f"{prices}:4:" in problems[1] and "price" in problems[1]
