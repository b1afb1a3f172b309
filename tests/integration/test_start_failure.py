"""A start that fails is explained where a technician looks: ``journalctl -u markd -p err``.

The real ``markd`` runs as systemd runs it, its stderr being "the journal stream"
(``$JOURNAL_STREAM`` names it), in a private mount namespace whose ``/run`` is a tmpfs with our
own socket at ``/run/systemd/journal/socket``: what libsystemd sends there is what journald
would store. A bad configuration leaves one ``start-failed`` record at priority ``err`` naming
the file and the key, and exits 2 (permanent: the unit does not restart); a port already taken
is transient and exits 1; neither record carries a secret.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from markd.cli import markd as markd_cli
from markd.systemd import MESSAGE_IDS
from process_helpers import markd_command

needs_namespace = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a private mount namespace",
)

#: Runs in the namespace: binds the journal socket, runs markd with its stderr as the journal
#: stream, then prints markd's exit status and every journal record it sent, decoded.
CHILD = textwrap.dedent(
    r"""
    import json, os, socket, struct, subprocess, sys

    os.makedirs("/run/systemd/journal", exist_ok=True)
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind("/run/systemd/journal/socket")
    journal.settimeout(0.5)

    command, stderr_path = json.loads(sys.argv[1]), sys.argv[2]
    with open(stderr_path, "w") as err:
        info = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        status = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env=env, timeout=60,
        ).returncode

    def decode(data):
        fields, pos = {}, 0
        while pos < len(data):
            end = data.index(b"\n", pos)
            line = data[pos:end]
            if b"=" in line:
                key, _, value = line.partition(b"=")
                pos = end + 1
            else:  # the binary-safe form, for values with newlines
                key = line
                (size,) = struct.unpack_from("<Q", data, end + 1)
                value = data[end + 9 : end + 9 + size]
                pos = end + 9 + size + 1
            fields[key.decode()] = value.decode()
        return fields

    records = []
    while True:
        try:
            records.append(decode(journal.recv(1 << 20)))
        except socket.timeout:
            break
    json.dump({"status": status, "records": records}, sys.stdout)
    """
)

#: The value of the API token in the tests' secret file: it must appear in no record.
TOKEN = "tok-3f9a1c77-never-logged"


def write_config(tmp_path: Path, api: str) -> Path:
    token = tmp_path / "api-token"
    token.write_text(TOKEN + "\n", encoding="utf-8")
    token.chmod(0o600)
    config = tmp_path / "markd.toml"
    config.write_text(
        f"""
[store]
path = "{tmp_path / "store"}"
map_size_mb = 8

[scanners.front]
url = "virtual://front"

[api]
socket = "{tmp_path / "c.sock"}"
token_file = "{token}"
{api}
""",
        encoding="utf-8",
    )
    return config


def start_under_journal(tmp_path: Path, config: Path) -> tuple[int, list[dict[str, str]], str]:
    """Start ``markd --config config`` as systemd would; its status, journal records, stderr."""
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"])
    if probe.returncode != 0:
        pytest.skip("mount namespaces are not available here")
    child = tmp_path / "child.py"
    child.write_text(CHILD, encoding="utf-8")
    stderr = tmp_path / "markd.stderr"
    command = json.dumps([*markd_command(), "--config", str(config)])
    script = 'mount -t tmpfs tmpfs /run && exec "$0" "$@"'
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["MARKD_CREDSTORE"] = str(tmp_path)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
        + [sys.executable, str(child), command, str(stderr)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    return outcome["status"], outcome["records"], stderr.read_text(encoding="utf-8")


def errors(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """What ``journalctl -p err`` shows of them (priority 3 or more urgent)."""
    return [r for r in records if int(r.get("PRIORITY", "6")) <= 3]


@needs_namespace
def test_a_bad_configuration_is_an_err_record_naming_file_and_key_and_exit_2(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, 'listen = "192.0.2.10:8391"')
    status, records, stderr = start_under_journal(tmp_path, config)

    assert status == 2, stderr
    assert "Traceback" not in stderr
    (record,) = errors(records)
    assert record["MARKD_EVENT"] == "start-failed"
    assert record["MESSAGE_ID"] == MESSAGE_IDS["start-failed"]
    assert record["SYSLOG_IDENTIFIER"] == "markd"
    assert (record["MARKD_REASON"], record["MARKD_EXIT_STATUS"]) == ("bad-config", "2")
    assert f"{config}:12: [api] listen: 192.0.2.10 is not a loopback" in record["MARKD_PROBLEMS"]
    assert f"{config}:12: [api] listen" in record["MESSAGE"]
    assert TOKEN not in json.dumps(records) and TOKEN not in stderr


@needs_namespace
def test_a_port_already_taken_is_transient_exit_1_with_its_err_record(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f'listen = "127.0.0.1:{port}"')
        status, records, stderr = start_under_journal(tmp_path, config)

    assert status == 1, stderr
    assert "Traceback" not in stderr
    (record,) = errors(records)
    assert record["MARKD_EVENT"] == "start-failed"
    assert (record["MARKD_REASON"], record["MARKD_EXIT_STATUS"]) == ("api-unavailable", "1")
    assert f"[api] listen: cannot listen on 127.0.0.1:{port}" in record["MESSAGE"]
    assert TOKEN not in json.dumps(records) and TOKEN not in stderr


@needs_namespace
def test_a_metrics_port_already_taken_names_the_metrics_key_and_exits_1(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        metrics = (
            f'\n[metrics]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tmp_path / "api-token"}"'
        )
        config = write_config(tmp_path, metrics)
        status, records, stderr = start_under_journal(tmp_path, config)

    assert status == 1, stderr
    assert "Traceback" not in stderr
    (record,) = errors(records)
    assert (record["MARKD_REASON"], record["MARKD_EXIT_STATUS"]) == ("api-unavailable", "1")
    assert f"[metrics] listen: cannot listen on 127.0.0.1:{port}" in record["MESSAGE"]
    assert TOKEN not in json.dumps(records) and TOKEN not in stderr


@needs_namespace
def test_a_password_in_a_bad_url_reaches_neither_the_journal_nor_stderr(tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    config.write_text(
        config.read_text()
        + '\n[check]\nmode = "direct"\n\n[check.online]\n'
        + f'url = "https://crpt:{TOKEN}@cdn.crpt.ru:99999"\n',
        encoding="utf-8",
    )
    status, records, stderr = start_under_journal(tmp_path, config)

    assert status == 2, stderr
    (record,) = errors(records)
    assert record["MARKD_EVENT"] == "start-failed"
    assert "[check.online] url: expected a port from 1 to 65535" in record["MARKD_PROBLEMS"]
    assert "'https://***@cdn.crpt.ru:99999'" in record["MESSAGE"]
    assert TOKEN not in json.dumps(records) and TOKEN not in stderr


#: Secrets that are themselves wrong: the refusal must name the file, never quote its content.
#: (content of the file, the key it is read for, the text that must stay out of every record)
BAD_SECRETS = {
    "several lines": (b"line-one-5e1d\nline-two-88c4\n", "[api] token_file", "88c4"),
    "not UTF-8": (b"tok-\xff\xfe-9b0e7d", "[api] token_file", "9b0e7d"),
    "a control character": (b"tok-\x1b[31m-a4f2c0\n", "[api] token_file", "a4f2c0"),
    "proxy credentials without a colon": (
        b"proxyuser-d93a61-nocolon\n",
        "[check.online] proxy_auth_file",
        "d93a61",
    ),
}


@needs_namespace
@pytest.mark.parametrize("case", list(BAD_SECRETS))
def test_a_bad_secret_is_refused_without_quoting_it(tmp_path: Path, case: str) -> None:
    content, key, secret_part = BAD_SECRETS[case]
    bad = tmp_path / "bad-secret"
    bad.write_bytes(content)
    bad.chmod(0o600)
    config = write_config(tmp_path, 'listen = "127.0.0.1:8391"')
    text = config.read_text(encoding="utf-8")
    if key == "[api] token_file":
        text = text.replace(f'token_file = "{tmp_path / "api-token"}"', f'token_file = "{bad}"')
    else:
        # The X-API-KEY is fine (the API's token file); the proxy's credentials are not.
        text += (
            '\n[check]\nmode = "direct"\n\n[check.online]\n'
            f'token_file = "{tmp_path / "api-token"}"\n'
            'proxy = "http://127.0.0.1:3128"\n'
            f'proxy_auth_file = "{bad}"\n'
        )
    config.write_text(text, encoding="utf-8")

    status, records, stderr = start_under_journal(tmp_path, config)

    assert status == 2, stderr
    assert "Traceback" not in stderr
    (record,) = errors(records)
    assert record["MARKD_EVENT"] == "start-failed"
    assert record["MARKD_REASON"] == "bad-config"
    assert key in record["MARKD_PROBLEMS"] and str(bad) in record["MARKD_PROBLEMS"]
    # What an editor or a terminal shows of the content: none of it anywhere.
    shown = content.decode("utf-8", "replace")
    fragments = {secret_part, *(part for part in shown.split() if len(part) > 6)}
    everything = json.dumps(records, ensure_ascii=False) + stderr
    for fragment in fragments:
        assert fragment not in everything, fragment


class JournalRecorder:
    """Stands in for ``systemd.journal`` in this process: keeps each record's fields."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def send(self, **fields: Any) -> None:
        self.records.append(fields)


def test_an_unexpected_error_at_start_is_recorded_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from markd import systemd
    from markd.service import lifecycle

    config = write_config(tmp_path, "")
    config.write_text(config.read_text() + '\n[log]\ntarget = "journal"\n', encoding="utf-8")
    journal = JournalRecorder()
    monkeypatch.setattr(systemd, "_sd_journal", journal)

    def broken_store(store_config: object) -> object:
        # A bug whose message quotes what it was handling: a secret, as it may happen.
        raise RuntimeError(f"a bug in opening the store with {TOKEN}")

    # A bug (not a MarkdError) in a part the start runs: the service is otherwise real.
    monkeypatch.setattr(lifecycle.Store, "from_config", staticmethod(broken_store))

    assert markd_cli.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err  # for the bug report
    assert "markd: internal-error: RuntimeError: a bug in opening the store" in err
    (record,) = [r for r in journal.records if r["PRIORITY"] == "3"]
    assert record["MARKD_EVENT"] == "start-failed"
    assert (record["MARKD_REASON"], record["MARKD_EXIT_STATUS"]) == ("internal-error", "1")
    # The journal gets the type and the place, never the unvetted message.
    line = broken_store.__code__.co_firstlineno + 2
    where = f"RuntimeError at {__name__}:broken_store:{line}"
    assert where in record["MESSAGE"] and record["MARKD_PROBLEMS"] == where
    assert TOKEN not in json.dumps(journal.records, default=str)


def test_a_missing_printer_driver_is_permanent_exit_2(tmp_path: Path) -> None:
    # The ATOL driver is not installed here (tests/unit/test_atol_lib.py stands in for it);
    # restarting markd cannot install it, so the unit must not restart in a loop.
    if importlib.util.find_spec("libfptr10") is not None:
        pytest.skip("the ATOL driver is installed here")
    config = write_config(tmp_path, "")
    config.write_text(
        config.read_text() + f'\n[sale]\nmode = "attendant"\n\n[fiscal]\nurl = "atol-lib://usb"\n'
        f'journal = "{tmp_path / "fiscal.journal"}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    result = subprocess.run(
        [*markd_command(), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "markd: driver-missing: atol-lib:// needs" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_fiscal_journal_that_cannot_be_created_is_permanent_exit_2(tmp_path: Path) -> None:
    # Its directory would be inside a regular file: no sale can be journaled, ever.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    config = write_config(tmp_path, "")
    config.write_text(
        config.read_text()
        + f'\n[sale]\nmode = "attendant"\n\n[fiscal]\nurl = "emulator://{tmp_path / "kkt"}"\n'
        f'journal = "{blocker / "session.journal"}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    result = subprocess.run(
        [*markd_command(), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    expected = (
        f"markd: journal-unavailable: [fiscal] journal: cannot create the directory of {blocker}"
    )
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
