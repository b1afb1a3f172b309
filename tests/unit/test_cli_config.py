"""``markctl config check``: exit status, output and error lines as a technician sees them."""

from __future__ import annotations

import json
import os
import re
import tomllib
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
