"""``tools/bench/store.py --fleet-only`` runs end to end at a tiny size: a master exports a
signed markd snapshot (and a CSV one), a kiosk with the public key syncs it over HTTP, both
files import, and the final JSON line's figures hold together. The rates themselves are the
benchmark's business (docs/performance.md), not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_fleet_step_of_the_store_bench_runs_and_reports(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench" / "store.py")]
        + ["--entries", "20000", "--lookups", "10", "--fleet-only", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("signed sync:") for line in lines)
    result = json.loads(lines[-1])
    assert result["entries"] == 20_000
    assert result["sync_rows_per_s"] > 0 and result["import_markd_rows_per_s"] > 0
    assert result["sync_import_seconds"] <= result["sync_seconds"]
    assert 0 < result["sync_peak_rss_mb"] < 300 and 0 < result["import_markd_peak_rss_mb"] < 300
    assert result["markd_over_csv"] > 1  # the CSV import of the same list, slower
    assert set(result["targets"]) == {"fleet_sync_ge_1M_per_s", "fleet_rss_le_300MB"}
    assert list(tmp_path.iterdir()) == []  # the work directory is removed
