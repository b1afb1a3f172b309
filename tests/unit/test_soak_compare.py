"""The soak benchmark's ``--compare-scrape`` arithmetic (tools/bench/soak.py): which side of
the comparison each scan falls on, and which scans met a scrape. The figures it prints are
only as good as this matching."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SOAK = Path(__file__).resolve().parents[2] / "tools" / "bench" / "soak.py"


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("markd_soak_bench", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_scans_split_by_block_and_matched_to_the_scrapes_they_met(soak: ModuleType) -> None:
    # Ten scans, one a second, each answered after (i + 1) ms; scans 4 to 7 were sent in a
    # block with scrapes. Three scrapes: one while scan 4 was in flight, one between two
    # scans (it meets none), one that ends just after scan 6 was sent.
    sent_at = [float(i) for i in range(10)]
    latencies = [(i + 1) / 1000 for i in range(10)]
    scraping = [4 <= i <= 7 for i in range(10)]
    scraper = soak.Scraper(Path("/nonexistent/control.sock"), 1.0, block_ticks=4)
    scraper.intervals = [(4.002, 4.004), (5.5, 5.6), (5.999, 6.0005)]
    scraper.durations_s = [end - start for start, end in scraper.intervals]

    markd_ms = [latency * 500 for latency in latencies]  # half of each in markd
    found = soak.compare_scrape(
        sent_at, latencies, scraping, scraper, 4.0, warmup=1, markd_ms=markd_ms
    )

    assert found["without_scraping"] == {"scans": 5, "p50_ms": 4.0, "p99_ms": 10.0, "max_ms": 10.0}
    assert found["with_scraping"] == {"scans": 4, "p50_ms": 7.0, "p99_ms": 8.0, "max_ms": 8.0}
    assert found["p99_ratio"] == 0.8
    assert found["overlapping_scans"] == {"scans": 2, "p50_ms": 7.0, "p99_ms": 7.0, "max_ms": 7.0}
    assert found["overlapping_scans_in_markd"]["max_ms"] == 3.5
    assert found["scrapes_made"] == 3 and found["scrape_slowest_ms"] == 100.0


def test_blocks_alternate_starting_without_scrapes(soak: ModuleType) -> None:
    """Blocks of four ticks: the run's start and ticks 1-3 without, 4-7 with, 8-11 without;
    no blocks at all (plain ``--scrape-every``): a scrape at every tick."""
    assert [soak.in_scraping_block(tick, 4) for tick in range(12)] == (
        [False] * 4 + [True] * 4 + [False] * 4
    )
    assert all(soak.in_scraping_block(tick, 0) for tick in range(12))
