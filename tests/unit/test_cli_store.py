"""markctl store: import, delta, stats, lookup, block/unblock through the real CLI entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from markd.cli import markctl

KI = "0104670540176099215LpGKy"
OTHER_KI = "0104680029460908215jcmHzLmkdPML"
MARKCTL = Path(sys.executable).with_name("markctl")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = markctl.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def store_dir(tmp_path: Path) -> str:
    return str(tmp_path / "store")


def test_import_stats_lookup_round_trip(tmp_path: Path, store_dir: str, capsys) -> None:
    blocklist = tmp_path / "list.txt"
    blocklist.write_text(f"{KI}\n4680029460908\n")
    status, out, _ = run(capsys, "store", "import", str(blocklist), "--store", store_dir)
    assert status == 0 and "version 1, 2 rows (1 КИ, 1 GTIN, 0 series)" in out

    status, out, _ = run(capsys, "store", "stats", "--store", store_dir, "--json")
    stats = json.loads(out)
    assert status == 0
    assert stats["version"] == 1 and stats["blocked"] == {"ki": 1, "gtin": 1, "series": 0}
    assert stats["stale"] is False and stats["size_bytes"] > 0

    status, out, _ = run(capsys, "store", "lookup", f"{KI}<GS>93dGVz", "--store", store_dir)
    assert status == 0 and f"BLOCKED by ki {KI}: blocklist" in out
    status, out, _ = run(capsys, "store", "lookup", OTHER_KI, "--store", store_dir, "--json")
    found = json.loads(out)
    assert found["deny_reason"] == "blocked-locally" and found["blocked"]["kind"] == "gtin"


def test_config_path_is_honoured(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "markd.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'from-config'}'\n")
    blocklist = tmp_path / "l.txt"
    blocklist.write_text(f"{KI}\n")
    assert run(capsys, "store", "import", str(blocklist), "--config", str(cfg))[0] == 0
    assert (tmp_path / "from-config" / "data.mdb").exists()


def test_bad_rows_exit_2_and_name_file_and_line(tmp_path: Path, store_dir: str, capsys) -> None:
    blocklist = tmp_path / "bad.txt"
    blocklist.write_text(f"{KI}\nnot a code\n")
    status, _, err = run(capsys, "store", "import", str(blocklist), "--store", store_dir)
    assert status == 2 and f"{blocklist}:2:" in err and "nothing changed" in err
    status, out, _ = run(
        capsys, "store", "import", str(blocklist), "--store", store_dir, "--skip-bad", "--json"
    )
    result = json.loads(out)
    assert status == 0 and result["skipped"] == 1 and result["stored"]["ki"] == 1


def test_delta_in_order_and_refusals(tmp_path: Path, store_dir: str, capsys) -> None:
    delta = tmp_path / "d1.jsonl"
    delta.write_text(
        json.dumps({"format": "markd-delta", "version": 1})
        + "\n"
        + json.dumps({"op": "add", "ki": KI, "reason": "recalled"})
        + "\n"
    )
    status, out, _ = run(capsys, "store", "delta", str(delta), "--store", store_dir)
    assert status == 0 and "applied delta 1: 1 added" in out
    status, _, err = run(capsys, "store", "delta", str(delta), "--store", store_dir)
    assert status == 2 and "already applied" in err


def test_block_unblock_by_hand(store_dir: str, capsys) -> None:
    assert run(capsys, "store", "block", KI, "--reason", "damaged", "--store", store_dir)[0] == 0
    _, out, _ = run(capsys, "store", "lookup", KI, "--store", store_dir)
    assert "damaged" in out and "source manual" in out
    assert run(capsys, "store", "unblock", KI, "--store", store_dir)[1].strip() == "removed"
    _, out, _ = run(capsys, "store", "lookup", KI, "--store", store_dir)
    assert "nothing known" in out


def test_missing_store_and_missing_file_are_clear(tmp_path: Path, store_dir: str, capsys) -> None:
    status, _, err = run(capsys, "store", "stats", "--store", store_dir)
    assert status == 1 and store_dir in err and "no store" in err
    status, _, err = run(capsys, "store", "import", str(tmp_path / "nope"), "--store", store_dir)
    assert status == 2 and "nope" in err  # a file that is not there is bad input


def test_progress_json_lines_on_stderr(tmp_path: Path, store_dir: str) -> None:
    blocklist = tmp_path / "l.txt"
    blocklist.write_text("".join(f"{KI[:-3]}{i:03d}\n" for i in range(500)))
    proc = subprocess.run(
        [
            str(MARKCTL),
            "store",
            "import",
            str(blocklist),
            "--store",
            store_dir,
            "--progress",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    phases = [json.loads(line)["phase"] for line in proc.stderr.splitlines()]
    assert phases[0] == "read" and phases[-1] == "switch"
