"""markctl check and status in store-only mode (the service modes are tested with emulators)."""

from __future__ import annotations

import json
from pathlib import Path

from markd.cli import markctl

WATER = "0104680029460908215jcmHzLmkdPML<GS>938p9E"


def config_file(tmp_path: Path) -> str:
    path = tmp_path / "markd.toml"
    # The control socket in the temporary directory too: no daemon there, so in-process.
    path.write_text(
        f"[store]\npath = '{tmp_path / 'store'}'\n[api]\nsocket = '{tmp_path / 'control.sock'}'\n"
    )
    return str(path)


def test_check_json_keys_and_exit_codes(tmp_path: Path, capsys) -> None:
    cfg = config_file(tmp_path)
    assert markctl.main(["check", WATER, "--config", cfg, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in (
        "decision",
        "reason",
        "message",
        "source",
        "req_id",
        "req_timestamp",
        "inst",
        "version",
        "tag1265",
        "latency_ms",
    ):
        assert key in data
    assert data["decision"] == "allow" and data["ki"] == "0104680029460908215jcmHzLmkdPML"
    assert (
        markctl.main(
            ["store", "block", "0104680029460908215jcmHzLmkdPML", "--reason", "x", "--config", cfg]
        )
        == 0
    )
    capsys.readouterr()
    assert markctl.main(["check", WATER, "--config", cfg]) == 3  # denied
    assert "blocked-locally" in capsys.readouterr().out
    assert markctl.main(["check", "hello", "--config", cfg]) == 2  # not a code


def test_status_reports_mode_and_store(tmp_path: Path, capsys) -> None:
    cfg = config_file(tmp_path)
    # No daemon: exit status 3, and the report probed in-process.
    assert markctl.main(["status", "--config", cfg, "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "store-only" and "error" in report["store"]  # no store yet
    assert markctl.main(["status", "--config", cfg, "--in-process"]) == 1  # the store is down


def test_bad_configuration_exit_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[check]\nmode = 'online'\n")
    assert markctl.main(["check", WATER, "--config", str(path)]) == 2
    assert "[check] mode" in capsys.readouterr().err
