"""markctl and markd turn errors into messages and exit statuses in one place
(``markd.cli.errors``): every command reports a bad configuration the same way with status 2,
any other error as ``PROG: REASON: MESSAGE`` with status 1 (2 when the input was wrong), and
none of them shows a traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from markd import config
from markd.cli import markctl
from markd.cli import markd as markd_cli
from markd.cli.errors import INPUT_REASONS, exit_status, report
from markd.errors import ConfigError, FiscalError, MarkdError, StoreError

#: Every markctl command that reads the configuration, with the arguments it needs otherwise.
COMMANDS = [
    ["config", "check", "{config}"],
    ["parse", "0104600439931256215abcdef", "--config", "{config}"],
    ["check", "0104600439931256215abcdef", "--config", "{config}"],
    ["status", "--config", "{config}"],
    ["events", "--config", "{config}"],
    ["lm", "init", "--config", "{config}"],
    ["lm", "status", "--config", "{config}"],
    ["printer", "status", "--config", "{config}"],
    ["printer", "recover", "--config", "{config}"],
    ["scan-test", "--config", "{config}"],
    ["sell", "0104600439931256215abcdef", "--config", "{config}"],
    ["store", "stats", "--config", "{config}"],
    ["store", "sync", "http://127.0.0.1:9/", "--config", "{config}"],
]


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "markd.toml"
    path.write_text("[log]\nlevel = 'verbose'\ncolour = 'red'\n", encoding="utf-8")
    return path


def expected_problems(path: Path, program: str) -> str:
    with pytest.raises(ConfigError) as found:
        config.load(str(path))
    assert len(found.value.problems) == 2
    return "".join(f"{program}: {problem}\n" for problem in found.value.problems)


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_every_command_reports_a_bad_configuration_alike(
    argv: list[str], bad_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = markctl.main([a.format(config=bad_config) for a in argv])
    out, err = capsys.readouterr()
    assert status == 2
    assert err == expected_problems(bad_config, "markctl")
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "stdout"),
    [
        (["store", "stats", "--json"], "error"),  # markctl store promises JSON on failure
        (["config", "check", "--json"], "valid"),  # its own answer: {"valid": false, …}
        (["check", "0104600439931256215abcdef", "--json"], None),
        (["lm", "status", "--json"], None),
    ],
)
def test_json_errors_go_to_stdout_only_where_the_command_promises_them(
    argv: list[str], stdout: str | None, bad_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = [str(bad_config)] if argv[0] == "config" else ["--config", str(bad_config)]
    assert markctl.main([*argv, *where]) == 2
    out, err = capsys.readouterr()
    assert err == expected_problems(bad_config, "markctl")
    if stdout is None:
        assert out == ""
    else:
        answer = json.loads(out)
        assert stdout in answer
        if stdout == "error":
            assert answer["error"]["reason"] == "bad-config"


def test_an_operational_failure_is_reason_and_message_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "no-store-here"
    empty.mkdir()
    config_file = tmp_path / "markd.toml"
    config_file.write_text("", encoding="utf-8")

    argv = ["store", "stats", "--config", str(config_file), "--store", str(empty)]
    assert markctl.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"markctl: store-missing: no store at {empty}")
    assert "Traceback" not in err

    assert markctl.main([*argv, "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["reason"] == "store-missing"
    assert err.startswith("markctl: store-missing: ")


def test_the_daemon_reports_a_bad_configuration_with_status_2(
    bad_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert markd_cli.main(["--config", str(bad_config)]) == 2
    assert capsys.readouterr().err == expected_problems(bad_config, "markd")


# -- the reporter itself ----------------------------------------------------------------------


def test_report_prints_each_problem_of_a_config_error() -> None:
    err, out = io.StringIO(), io.StringIO()
    exc = ConfigError("2 problems", ["a.toml:1: one", "a.toml:2: two"])
    assert report(exc, "markd", stderr=err, stdout=out) == 2
    assert err.getvalue() == "markd: a.toml:1: one\nmarkd: a.toml:2: two\n"
    assert out.getvalue() == ""


def test_report_prints_reason_and_message_and_json_when_asked() -> None:
    err, out = io.StringIO(), io.StringIO()
    exc = FiscalError("the ККТ does not answer", "printer-unavailable", device_code=2)
    assert report(exc, "markctl", json_output=True, stderr=err, stdout=out) == 1
    assert err.getvalue() == "markctl: printer-unavailable: the ККТ does not answer\n"
    assert json.loads(out.getvalue()) == {
        "error": {
            "reason": "printer-unavailable",
            "message": "the ККТ does not answer",
            "device_code": "2",
        }
    }


def test_input_reasons_make_status_2_only_where_the_program_passes_them() -> None:
    refused = StoreError("delta 7 after 5", "out-of-order-delta")
    assert exit_status(refused, INPUT_REASONS) == 2
    assert exit_status(refused) == 1  # markd: only a bad configuration is 2
    assert exit_status(MarkdError("boom"), INPUT_REASONS) == 1
    assert exit_status(ConfigError("bad")) == 2


def test_a_permanent_error_is_status_2_whatever_its_class() -> None:
    class NeedsAPerson(StoreError):
        permanent = True

    assert MarkdError.permanent is False and ConfigError.permanent is True
    assert exit_status(NeedsAPerson("store owned by root", "store-permission")) == 2
    assert exit_status(StoreError("disk full")) == 1
