"""``tools/bench/soak.py --compare-scrape`` runs end to end at a tiny size: a real markd on
the store-only path, scans from a pty, blocks without and with a scrape a second, and the
final JSON line's comparison holds together. The figures themselves are the benchmark's
business (docs/performance.md), not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: soak.py's WARMUP_SCANS: left out of both sides of the comparison.
WARMUP_SCANS = 2_000


def test_the_soak_compares_blocks_without_and_with_scrapes(tmp_path: Path) -> None:
    scans = 6_000
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon"), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench" / "soak.py")]
        + ["--scans", str(scans), "--distinct", "1000", "--mode", "store"]
        + ["--compare-scrape", "--block-s", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["verdicts_received"] == scans
    comparison = result["scrape_comparison"]
    without, with_ = comparison["without_scraping"], comparison["with_scraping"]
    assert without["scans"] > 0 and with_["scans"] > 0
    assert without["scans"] + with_["scans"] == scans - WARMUP_SCANS
    assert comparison["scrapes_made"] >= 1 and comparison["scrapes_failed"] == 0
    assert comparison["p99_ratio"] == round(with_["p99_ms"] / without["p99_ms"], 3)
    # A scrape meets at least the scan in flight when it arrives (one in flight at a time).
    assert comparison["overlapping_scans"]["scans"] >= 1
    assert "scrape_p99_rise_le_10pct" in result["targets"]
    assert "scrape comparison: alternate 1 s blocks" in done.stderr
    assert list(tmp_path.iterdir()) == []  # the work directory is removed
