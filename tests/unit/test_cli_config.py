"""``markctl config check``: exit status, output and error lines as a technician sees them."""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from markd import config
from markd.cli.markctl import build_parser, main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
URL = "serial:///dev/markd/scanner0?baudrate=9600&terminator=cr"


@pytest.fixture
def main_file(tmp_path: Path) -> Path:
    return tmp_path / "markd.toml"


def test_valid_file_prints_effective_configuration(
    main_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_file.write_text(f"[store]\nmap_size_mb = 128\n[scanners.front]\nurl = '{URL}'\n")

    status = main(["config", "check", str(main_file)])

    out, err = capsys.readouterr()
    assert status == 0
    assert err == ""
    assert f"#   {main_file}\n" in out
    assert '[store]\npath = "/var/lib/markd/store"\nmap_size_mb = 128\n' in out
    assert f'[scanners.front]\nurl = "{URL}"\n' in out
    # The output is itself a usable configuration file.
    assert tomllib.loads(out) == config.to_dict(config.load(main_file))


def test_valid_dropin_only_configuration_lists_its_files(
    main_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_file.write_text("")
    dropins = main_file.parent / "markd.toml.d"
    dropins.mkdir()
    (dropins / "50-till.toml").write_text("[log]\nlevel = 'debug'\n")

    assert main(["config", "check", str(main_file)]) == 0

    out = capsys.readouterr().out
    assert f"#   {main_file}\n#   {dropins / '50-till.toml'}\n" in out
    assert 'level = "debug"' in out


def test_json_output_parses(main_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main_file.write_text("[codes]\nserial_lengths = [6, 7]\n")

    assert main(["config", "check", "--json", str(main_file)]) == 0

    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is True
    assert data["sources"] == [str(main_file)]
    assert data["config"]["codes"]["serial_lengths"] == [6, 7]
    assert data["config"]["scanners"] == {"scanner0": {"url": config.DEFAULT_SCANNER_URL}}


def test_bad_file_exits_2_with_file_line_and_key_on_stderr(
    main_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_file.write_text("[log]\ncolour = 'red'\n\n[store]\nmap_size_mb = 'big'\n")

    status = main(["config", "check", str(main_file)])

    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert err.splitlines() == [
        f"markctl: {main_file}:2: unknown key [log] colour (known keys: level, target)",
        f"markctl: {main_file}:5: [store] map_size_mb: expected an integer, got a string ('big')",
    ]


def test_bad_file_with_json_lists_problems_on_stdout_too(
    main_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_file.write_text("[store]\nmap_size_mb = true\n")

    assert main(["config", "check", "--json", str(main_file)]) == 2

    out, err = capsys.readouterr()
    expected = f"{main_file}:2: [store] map_size_mb: expected an integer, got a boolean (true)"
    assert json.loads(out) == {"valid": False, "problems": [expected]}
    assert err == f"markctl: {expected}\n"


def test_missing_file(main_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(main_file)]) == 2

    assert capsys.readouterr().err == f"markctl: {main_file}: no such file\n"


def test_binary_garbage_is_a_clear_message_not_a_traceback(
    main_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main_file.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\xff\xfe" + bytes(range(256)))

    assert main(["config", "check", str(main_file)]) == 2

    assert capsys.readouterr().err == (
        f"markctl: {main_file}:1: not valid UTF-8 text (byte 0xff at byte offset 9)\n"
    )


def test_nul_bytes_are_a_syntax_error(main_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main_file.write_bytes(b"[log]\n\x00\x00\x00\n")

    assert main(["config", "check", str(main_file)]) == 2

    assert capsys.readouterr().err.startswith(f"markctl: {main_file}:2:1: TOML syntax error: ")


def test_directory_instead_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(tmp_path)]) == 2

    assert capsys.readouterr().err == (
        f"markctl: {tmp_path}: is a directory, expected a TOML file\n"
    )


def test_permission_denied(main_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main_file.write_text("[log]\n")
    main_file.chmod(0)
    if os.access(main_file, os.R_OK):
        pytest.skip("this user reads any file (root)")

    assert main(["config", "check", str(main_file)]) == 2

    assert capsys.readouterr().err == f"markctl: {main_file}: cannot read: Permission denied\n"


def test_path_defaults_to_the_system_file() -> None:
    args = build_parser().parse_args(["config", "check"])

    assert args.path is None
    assert args.json is False


def test_config_without_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["config"])

    assert caught.value.code == 2
    assert "ACTION" in capsys.readouterr().err


def test_docs_error_example_is_the_real_output(
    main_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = DOCS.read_text(encoding="utf-8")
    bad = re.search(r"<!-- example: bad markd.toml -->\n```toml\n(.*?)```", doc, re.S)
    shown = re.search(r"<!-- example output: bad markd.toml -->\n```console\n(.*?)```", doc, re.S)
    assert bad is not None and shown is not None
    main_file.write_text(bad.group(1))

    status = main(["config", "check", str(main_file)])

    documented = [
        line.replace(config.DEFAULT_PATH, str(main_file))
        for line in shown.group(1).splitlines()
        if line.startswith("markctl: ")
    ]
    assert len(documented) == 4
    assert capsys.readouterr().err.splitlines() == documented
    assert shown.group(1).endswith(f"$ echo $?\n{status}\n")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any user may enter (pytest's own are root's alone, mode 0700)."""
    with tempfile.TemporaryDirectory(prefix="markd-access-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def _service_files(where: Path) -> dict[str, Path]:
    files = {
        "api": where / "api-token",
        "metrics": where / "metrics-token",
        "crpt": where / "crpt-token",
        "proxy": where / "proxy-auth",
        "catalog": where / "prices.csv",
    }
    files["api"].write_text("api-token-value\n")
    files["metrics"].write_text("metrics-token-value\n")
    files["crpt"].write_text("crpt-token-value\n")
    files["proxy"].write_text("user:password\n")
    files["catalog"].write_text("4600000000008;Water;45.00\n")
    for path in files.values():
        path.chmod(0o600)  # root's alone, as a file written in a root shell often is
    return files


def _service_config(main_file: Path, files: dict[str, Path]) -> None:
    main_file.write_text(
        f"""
[check]
mode = "direct"

[check.online]
token_file = "{files["crpt"]}"
proxy = "http://127.0.0.1:3128"
proxy_auth_file = "{files["proxy"]}"

[sale]
catalog = "{files["catalog"]}"

[api]
listen = "127.0.0.1:8391"
token_file = "{files["api"]}"

[metrics]
listen = "127.0.0.1:9391"
token_file = "{files["metrics"]}"
"""
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="judging another user's access needs root")
def test_as_root_a_file_the_service_user_cannot_read_is_a_problem(
    open_dir: Path,
    main_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The service's user here is nobody (65534, group 65534): the test needs no markd account.
    monkeypatch.setenv("MARKD_SERVICE_USER", "nobody")
    files = _service_files(open_dir)
    _service_config(main_file, files)

    assert main(["config", "check", str(main_file)]) == 2
    err = capsys.readouterr().err
    expected = {
        "crpt": ("[check.online] token_file", "markd.crpt-token"),
        "proxy": ("[check.online] proxy_auth_file", "markd.proxy-auth"),
        "catalog": ("[sale] catalog", None),
        "api": ("[api] token_file", "markd.api-token"),
        "metrics": ("[metrics] token_file", "markd.metrics-token"),
    }
    for name, (key, credential) in expected.items():
        path = files[name]
        (line,) = [line for line in err.splitlines() if f"{key}: {path}" in line]
        assert f"{main_file}:" in line
        assert "not readable by nobody" in line and "mode 0600, owner root:root" in line
        assert f"chown root:nobody {path}; chmod 0640 {path}" in line
        assert (credential is None) == ("credstore" not in line)
        if credential is not None:
            assert f"/etc/credstore/{credential}" in line
    assert "token-value" not in err

    # The advised fix (the service's group may read) is enough ...
    nogroup = os.getgrouplist("nobody", 65534)[0]
    for path in files.values():
        os.chown(path, 0, nogroup)
        path.chmod(0o640)
    assert main(["config", "check", str(main_file)]) == 0
    capsys.readouterr()

    # ... unless a directory on the way may not be entered.
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    moved = private / "api-token"
    files["api"].rename(moved)
    files["api"] = moved
    _service_config(main_file, files)
    assert main(["config", "check", str(main_file)]) == 2
    err = capsys.readouterr().err
    assert f"[api] token_file: {moved} is not readable by nobody" in err
    assert f"it may not enter {private}, mode 0700, owner root:root" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="judging another user's access needs root")
def test_credentials_and_a_missing_service_user_are_not_judged(
    open_dir: Path,
    main_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # From the credential store (key left empty): systemd reads it as root for the service.
    store = open_dir / "credstore"
    store.mkdir(mode=0o700)
    (store / "markd.api-token").write_text("api-token-value\n")
    (store / "markd.api-token").chmod(0o600)
    monkeypatch.setenv("MARKD_CREDSTORE", str(store))
    monkeypatch.setenv("MARKD_SERVICE_USER", "nobody")
    main_file.write_text('[api]\nlisten = "127.0.0.1:8391"\n')
    assert main(["config", "check", str(main_file)]) == 0, capsys.readouterr().err

    # No such account on this machine (markd not installed as a package): nothing to judge.
    files = _service_files(open_dir)
    _service_config(main_file, files)
    monkeypatch.setenv("MARKD_SERVICE_USER", "markd-no-such-user")
    assert main(["config", "check", str(main_file)]) == 0, capsys.readouterr().err
