"""``tools/bench/shtrih.py`` runs end to end: a tiny run (4 units in receipts of 2) over a
paced pty prints its figures and a final JSON line whose numbers hold together. The figures
themselves are the benchmark's business (docs/performance.md), not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_shtrih_bench_runs_and_reports_its_split() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench" / "shtrih.py")]
        + ["--units", "4", "--per-receipt", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("target: markd's own time per unit") for line in lines)
    result = json.loads(lines[-1])
    assert result["units"] == 4
    assert result["receipts"] == 2
    assert result["baudrate"] == 115200
    assert result["refused_codes"] == 0 and result["documents_match"]
    # The warm-up receipt and the two timed ones, every unit on its own marked position.
    assert result["device_receipts"] == 3 and result["device_marked_positions"] == 6
    unit = result["unit_ms"]
    for part in ("total", "link", "own"):
        assert set(unit[part]) >= {"p50", "p99", "mean"}
    assert unit["link"]["mean"] > 0
    assert unit["own"]["p50"] >= 0
    assert unit["total"]["mean"] >= unit["link"]["mean"]
    # The line is paced: a unit's link time is at least its bytes' time at 115200 baud.
    bytes_per_unit = result["bytes_per_unit"]
    assert bytes_per_unit["sent"] > 0 and bytes_per_unit["received"] > 0
    assert unit["link"]["mean"] >= 0.9 * result["wire_ms_per_unit"] > 0
    assert 0 <= result["own_share"] < 1
    assert set(result["check_ms"]) == set(result["receipt_ms"]) == {"total", "link", "own"}
    assert isinstance(result["targets"]["own_p99_le_5ms"]["met"], bool)
