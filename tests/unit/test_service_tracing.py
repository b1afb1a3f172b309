"""The slow-scan tracer (markd.service.tracing): a slow scan leaves one ``slow-scan`` record
naming the stage that took its time; a fast one leaves none.

The scans run through the real scan loop, chain, store and listeners, on a clock the test
moves: a stage is made slow by moving the clock inside it (a source that "takes" 400 ms, a
collection that "takes" 300 ms), so nothing here depends on how busy the machine is.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from conftest import WATER, RecordingEventLog
from markd import config
from markd.checks.chain import ChainSettings, CheckChain
from markd.checks.results import CodeFacts, SourceAnswer, SourceFailure
from markd.checks.stages import CURRENT_STAGES, StageLog, stage
from markd.codes import CodesOptions, MarkingCode
from markd.errors import ConfigError
from markd.events import EventHub
from markd.scanners import Scan
from markd.service.listeners import CheckedScan, JournalListener, Notifier
from markd.service.scanloop import ScanLoop
from markd.service.tracing import GcPauses, breakdown
from markd.store import Store


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Parts:
    """What the loop reads of a service: a chain, the parse options, no sale desk."""

    def __init__(self, chain: CheckChain, slow_scan_ms: int) -> None:
        self.chain = chain
        self.codes_options = CodesOptions()
        self.sale_desk = None
        self.slow_scan_ms = slow_scan_ms


class Health:
    def refresh_status(self) -> None:
        pass


class SlowSource:
    """A Local Module that answers after ``seconds`` of the test's clock."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    async def check(self, code: MarkingCode, deadline: float) -> SourceAnswer | SourceFailure:
        self.clock.advance(self.seconds)
        facts = CodeFacts.from_json({"isBlocked": False, "sold": False})
        return SourceAnswer("lm", False, req_id="r", req_timestamp="1", facts=facts)


class CollectingListener:
    """A verdict listener that forces a full collection which "takes" 300 ms of the test's
    clock (as an allocation-heavy listener could cause)."""

    name = "collecting"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.collecting = False

    def on_verdict(self, checked: CheckedScan) -> None:
        self.collecting = True
        try:
            gc.collect()
        finally:
            self.collecting = False

    def move_clock(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` entry after the tracer's: it reads the clock before the move at
        the start of the collection and after it at the end."""
        if phase == "start" and self.collecting:
            self.clock.advance(0.3)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def scan_loop(
    chain: CheckChain,
    event_log: RecordingEventLog,
    clock: Clock,
    slow_scan_ms: int = 100,
    *extra_listeners: Any,
) -> ScanLoop:
    notifier = Notifier(
        [JournalListener(event_log), *extra_listeners], on_error=lambda what, exc: None
    )
    loop = ScanLoop(
        Parts(chain, slow_scan_ms),  # type: ignore[arg-type]
        notifier,
        event_log,
        EventHub(),
        Health(),  # type: ignore[arg-type]
        clock=clock,
    )
    return loop


def slow_records(event_log: RecordingEventLog) -> list[dict[str, Any]]:
    return [fields for kind, _, fields in event_log.events if kind == "slow-scan"]


def stages_of(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in (pair.split("=") for pair in record["stages"].split())}


async def test_a_slow_source_is_named_as_the_stage_that_took_the_scan(
    tmp_store: Store, event_log: RecordingEventLog, clock: Clock
) -> None:
    chain = CheckChain(tmp_store, ChainSettings(mode="direct"), local_module=SlowSource(clock, 0.4))
    loop = scan_loop(chain, event_log, clock)

    verdict = await loop.on_scan(Scan("front", WATER.encode(), clock.now))

    assert verdict.decision == "allow"
    [record] = slow_records(event_log)
    assert record["slowest"] == "lm"
    assert record["total_ms"] == "400.0" and record["slowest_ms"] == "400.0"
    assert record["scan"] == f"front:{verdict.ki}" and record["scanner"] == "front"
    stages = stages_of(record)
    assert list(stages) == [
        "queue", "parse", "chain", "store", "lm", "verdict-record", "gc", "other"
    ]  # fmt: skip
    assert stages["lm"] == 400.0 and sum(stages.values()) == 400.0
    # The verdict record comes first, then the slow-scan record (the listener is timed too).
    assert event_log.kinds()[-2:] == ["verdict", "slow-scan"]
    assert "mostly lm (400.0 ms)" in event_log.text


async def test_a_collection_in_a_listener_is_counted_as_gc_not_as_the_listener(
    tmp_store: Store, event_log: RecordingEventLog, clock: Clock
) -> None:
    collecting = CollectingListener(clock)
    loop = scan_loop(
        CheckChain(tmp_store, ChainSettings(mode="store-only")), event_log, clock, 100, collecting
    )
    loop.tracer.watch_gc(True)  # as the running loop does
    loop.tracer.gc_pauses.install()
    gc.callbacks.append(collecting.move_clock)
    try:
        await loop.on_scan(Scan("front", WATER.encode(), clock.now))
    finally:
        gc.callbacks.remove(collecting.move_clock)
        loop.tracer.watch_gc(False)

    [record] = slow_records(event_log)
    assert record["slowest"] == "gc" and "2" in record["gc_generations"].split(",")
    stages = stages_of(record)
    assert stages["gc"] == 300.0 and stages["collecting"] == 0.0
    assert loop.tracer.gc_pauses not in gc.callbacks  # gone with the loop


async def test_a_fast_scan_leaves_no_record(
    tmp_store: Store, event_log: RecordingEventLog, clock: Clock
) -> None:
    chain = CheckChain(
        tmp_store, ChainSettings(mode="direct"), local_module=SlowSource(clock, 0.099)
    )
    loop = scan_loop(chain, event_log, clock, 100)

    await loop.on_scan(Scan("front", WATER.encode(), clock.now))

    assert event_log.kinds() == ["verdict"]


async def test_a_scan_that_waited_in_the_queue_names_the_queue(
    tmp_store: Store, event_log: RecordingEventLog, clock: Clock
) -> None:
    loop = scan_loop(CheckChain(tmp_store, ChainSettings(mode="store-only")), event_log, clock)
    framed = clock.now
    clock.advance(0.25)  # the loop was busy elsewhere after the scanner framed the scan

    await loop.on_scan(Scan("front", WATER.encode(), framed))

    [record] = slow_records(event_log)
    assert (record["slowest"], record["slowest_ms"]) == ("queue", "250.0")


async def test_threshold_zero_traces_nothing(
    tmp_store: Store, event_log: RecordingEventLog, clock: Clock
) -> None:
    chain = CheckChain(tmp_store, ChainSettings(mode="direct"), local_module=SlowSource(clock, 5))
    loop = scan_loop(chain, event_log, clock, 0)
    loop.tracer.watch_gc(True)
    try:
        await loop.on_scan(Scan("front", WATER.encode(), clock.now))
        assert not loop.tracer.gc_pauses.installed
    finally:
        loop.tracer.watch_gc(False)

    assert event_log.kinds() == ["verdict"]


def test_stages_outside_a_traced_scan_cost_nothing_and_record_nothing() -> None:
    with stage("store"):
        pass
    log = StageLog(Clock())
    token = CURRENT_STAGES.set(log)
    try:
        with pytest.raises(KeyError), stage("store"):
            raise KeyError("a stage that fails is still timed")
    finally:
        CURRENT_STAGES.reset(token)
    assert [name for name, _, _ in log.spans] == ["store"]


def test_breakdown_takes_nested_stages_and_collections_out_of_their_parents() -> None:
    spans = [
        ("queue", 0.0, 0.001),
        ("parse", 0.001, 0.002),
        ("chain", 0.002, 0.100),
        ("store", 0.002, 0.003),
        ("cdn", 0.003, 0.050),
        ("lm", 0.003, 0.090),  # parallel sources overlap; the chain keeps only its own time
        ("verdict-record", 0.100, 0.180),
    ]
    pauses = [(0.120, 0.170, 2)]  # inside the journal write

    slow = breakdown(spans, 0.0, 0.200, pauses)

    ms = {name: round(value, 3) for name, value in slow.stages.items()}
    assert ms == {
        "queue": 1.0,
        "parse": 1.0,
        "chain": 10.0,
        "store": 1.0,
        "cdn": 47.0,
        "lm": 87.0,
        "verdict-record": 30.0,
        "gc": 50.0,
        "other": 20.0,
    }
    assert slow.slowest == "lm" and slow.gc_generations == (2,)


def test_the_gc_ring_keeps_the_latest_pauses() -> None:
    clock = Clock()
    pauses = GcPauses(clock, size=4)
    for generation in range(6):
        pauses("start", {"generation": generation})
        clock.advance(0.01)
        pauses("stop", {"generation": generation})
        clock.advance(0.01)
    found = pauses.between(0.0, clock.now)
    assert [g for _, _, g in found] == [2, 3, 4, 5]
    assert pauses.between(clock.now, clock.now + 1) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-1", "[check] slow_scan_ms: expected an integer"),
        ('"fast"', "[check] slow_scan_ms: expected an integer, got a string"),
        ("60001", "[check] slow_scan_ms: expected an integer"),
    ],
)
def test_a_bad_threshold_is_refused_naming_the_key(
    tmp_path: Path, value: str, problem: str
) -> None:
    main = tmp_path / "markd.toml"
    main.write_text(f"[check]\nslow_scan_ms = {value}\n")

    with pytest.raises(ConfigError) as refused:
        config.load(main)

    assert problem in str(refused.value)
    assert f"{main}:2:" in str(refused.value)


def test_the_threshold_is_read_from_the_configuration(tmp_path: Path) -> None:
    main = tmp_path / "markd.toml"
    main.write_text("[check]\nslow_scan_ms = 40\n")

    assert config.load(main).check.slow_scan_ms == 40
    assert config.default_config().check.slow_scan_ms == 250
