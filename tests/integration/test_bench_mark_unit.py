"""``tools/bench/mark_unit.py`` runs end to end at a small size: a real markd with its Mark
Unit front, the CDN emulator and the tills each in their own process; every till's answer is
an allow within the verdict deadline, and the JSON line holds every figure. The overhead
figures themselves are the benchmark's business (docs/performance.md), not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_mark_unit_bench_runs_and_every_till_is_answered_in_time() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench" / "mark_unit.py")]
        + ["--count", "20", "--tills", "20", "--per-till", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    figures = json.loads(lines[-1])
    tills = figures["tills"]
    assert tills["answers"] == 60
    assert tills["allowed"] == tills["within_budget"] == 60, tills
    assert figures["overhead_ms"]["count"] == 20
    # the floor's server answered each of the till's requests after its own CDN round trip,
    # with answers as large as markd's
    floor = figures["floor_ms"]
    assert floor["count"] == 20
    assert floor["answer_bytes"] > 500
    assert 0 < floor["p50"] <= floor["p99"]
    cpus = figures["cpus"]
    if len(os.sched_getaffinity(0)) >= 2:  # the tills and the CDN apart from markd's CPUs
        assert cpus["tills_and_cdn"] and not set(cpus["tills_and_cdn"]) & set(cpus["markd"])
    else:
        assert cpus["tills_and_cdn"] == "any"
    assert set(figures) == {
        "cpus",
        "front_cpu_ms",
        "overhead_ms",
        "floor_ms",
        "front_in_server_ms",
        "verdict_ms_single",
        "tills",
    }
