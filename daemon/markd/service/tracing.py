"""The slow-scan tracer: where the time of a slow scan went, as one journal record.

A customer at a till feels a stall, not a percentile. Every scan the loop handles carries a
:class:`~markd.checks.stages.StageLog`; when a scan took longer than ``[check] slow_scan_ms``,
from the moment its scanner's thread framed it to the end of the last listener, the tracer
writes one ``slow-scan`` record naming the stage that took most of it and the time of each::

    queue         framed by the scanner's thread → taken up by the loop (the thread hand-off,
                  and whatever the loop was doing meanwhile: an earlier scan, a reload)
    parse         codes.parse
    store         the blocklist lookup
    cdn lm tspiot each check source, its answer awaited (the loop runs other tasks meanwhile)
    chain         the chain's own work around those (the decision table, the verdict)
    verdict-…     each listener of the verdict (verdict-record: the journal write, …)
    gc            garbage-collection pauses while the scan was under way, in any thread
    other         the rest: between stages, the ``scan`` event, other tasks of the loop

A stage's time leaves out the collections that fell inside it (they are ``gc``), so the
stages, ``gc`` and ``other`` add up to the total. Pauses come from ``gc.callbacks``
(:class:`GcPauses`), kept in a small ring while the scan loop runs.

A fast scan costs a log (one object and a list), a tuple per stage and a clock read at each
stage's ends; nothing is worked out or written unless the scan was slow.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from markd.checks.stages import Span, StageLog

if TYPE_CHECKING:
    from markd.checks.verdict import Verdict
    from markd.systemd import EventLog

#: Collections remembered; a scan with more inside it than this reports only the latest.
GC_RING_SIZE = 64

#: Stages that enclose others (the chain: the store lookup and the sources); their time is
#: their own work beside the stages inside them. Other stages may overlap (parallel sources)
#: and each keeps its whole time.
ENCLOSING_STAGES = frozenset({"chain"})

#: One pause: start and end (the tracer's clock, seconds) and the generation collected.
Pause = tuple[float, float, int]


class GcPauses:
    """The latest garbage-collection pauses of this process, from ``gc.callbacks``.

    A collection holds the GIL wherever it runs (a scanner's thread, the cache writer), so
    every pause stalls the event loop too. The callback stores two clock readings and the
    generation in a fixed ring: no allocation beyond the readings.
    """

    def __init__(self, clock: Callable[[], float], size: int = GC_RING_SIZE) -> None:
        self.clock = clock
        self.size = size
        self._starts = [0.0] * size
        self._ends = [0.0] * size
        self._generations = [0] * size
        self._began = 0.0
        #: Collections seen while installed.
        self.count = 0
        #: Whether :meth:`__call__` is in ``gc.callbacks``.
        self.installed = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = self.clock()
            return
        slot = self.count % self.size
        self._starts[slot] = self._began
        self._ends[slot] = self.clock()
        self._generations[slot] = info["generation"]
        self.count += 1

    def install(self) -> None:
        if not self.installed:
            gc.callbacks.append(self)
            self.installed = True

    def remove(self) -> None:
        if self.installed:
            gc.callbacks.remove(self)
            self.installed = False

    def between(self, start: float, end: float) -> list[Pause]:
        """The remembered pauses that overlap ``start`` … ``end``, oldest first."""
        found: list[Pause] = []
        for back in range(1, min(self.count, self.size) + 1):
            slot = (self.count - back) % self.size
            if self._ends[slot] <= start:
                break  # older ones ended earlier still
            if self._starts[slot] < end:
                found.append((self._starts[slot], self._ends[slot], self._generations[slot]))
        found.reverse()
        return found


class ScanTrace(StageLog):
    """The stage log of one traced scan, with when its scanner framed it."""

    __slots__ = ("received", "threshold_s")

    def __init__(self, clock: Callable[[], float], received: float, threshold_s: float) -> None:
        super().__init__(clock)
        self.received = received
        self.threshold_s = threshold_s


@dataclass(frozen=True)
class SlowScan:
    """Where the time of one slow scan went (milliseconds), as the record reports it."""

    total_ms: float
    #: Stage → milliseconds, in the order the stages began; then ``gc`` and ``other``.
    stages: dict[str, float]
    #: The generations of the collections inside the scan, oldest first.
    gc_generations: tuple[int, ...]

    @property
    def slowest(self) -> str:
        """The stage that took most of the scan."""
        return max(self.stages, key=lambda name: self.stages[name])

    def stages_text(self) -> str:
        """``queue=0.04 parse=0.03 … gc=120.31 other=0.20`` (ms)."""
        return " ".join(f"{name}={ms:.2f}" for name, ms in self.stages.items())


def _covered(start: float, end: float, intervals: Iterable[tuple[float, float]]) -> float:
    """How much of ``start`` … ``end`` the intervals cover together (overlaps counted once)."""
    clipped = sorted((max(s, start), min(e, end)) for s, e in intervals if e > start and s < end)
    covered = 0.0
    reach = start
    for s, e in clipped:
        if e <= reach:
            continue
        covered += e - max(s, reach)
        reach = e
    return covered


def breakdown(
    spans: Sequence[Span], received: float, end: float, pauses: Sequence[Pause]
) -> SlowScan:
    """Where ``received`` … ``end`` went, stage by stage (``spans`` in the order they began):
    each stage without the collections inside it (and the chain without its store lookup and
    sources), then ``gc`` and ``other``; see the module docstring."""
    gc_intervals = [(s, e) for s, e, _ in pauses]
    stages: dict[str, float] = {}
    for name, start, stop in spans:
        taken_out = gc_intervals
        if name in ENCLOSING_STAGES:
            inside = [(s, e) for n, s, e in spans if n != name and start <= s and e <= stop]
            taken_out = inside + gc_intervals
        own = (stop - start) - _covered(start, stop, taken_out)
        stages[name] = stages.get(name, 0.0) + max(0.0, own) * 1000
    total = end - received
    gc_s = _covered(received, end, gc_intervals)
    stages["gc"] = gc_s * 1000
    everything = [(s, e) for _, s, e in spans] + gc_intervals
    stages["other"] = max(0.0, total - _covered(received, end, everything)) * 1000
    return SlowScan(
        total_ms=total * 1000,
        stages=stages,
        gc_generations=tuple(generation for _, _, generation in pauses),
    )


class SlowScanTracer:
    """Traces each scan and journals the slow ones (``slow-scan``; see the module docstring).

    :param event_log: where the record goes.
    :param clock: seconds, monotonic: the clock scanners stamp ``Scan.received`` with.
    """

    def __init__(self, event_log: EventLog, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.event_log = event_log
        self.clock = clock
        self.gc_pauses = GcPauses(clock)
        #: Set while the scan loop runs: collections are watched only then.
        self.watching_gc = False

    def start(self, received: float, threshold_ms: int) -> ScanTrace | None:
        """A trace for a scan framed at ``received``; None when tracing is off
        (``threshold_ms`` 0)."""
        if threshold_ms <= 0:
            self.gc_pauses.remove()  # off after a reload: collections no longer watched
            return None
        if self.watching_gc and not self.gc_pauses.installed:
            self.gc_pauses.install()
        return ScanTrace(self.clock, received, threshold_ms / 1000)

    def finish(
        self, trace: ScanTrace, verdict: Verdict, scanner: str, *, queue_until: float
    ) -> SlowScan | None:
        """End ``trace``: the breakdown, journaled, when the scan was slow; else None.
        ``queue_until``: when the loop took the scan up (the end of its ``queue`` stage)."""
        end = self.clock()
        if end - trace.received < trace.threshold_s:
            return None
        spans = [("queue", trace.received, queue_until)]
        spans += [span for span in trace.spans if span is not None]
        slow = breakdown(spans, trace.received, end, self.gc_pauses.between(trace.received, end))
        slowest = slow.slowest
        generations = ",".join(str(g) for g in slow.gc_generations)
        self.event_log.event(
            "slow-scan",
            f"slow scan from {scanner}: {slow.total_ms:.1f} ms, mostly {slowest} "
            f"({slow.stages[slowest]:.1f} ms); {slow.stages_text()}",
            priority="notice",
            scanner=scanner,
            scan=f"{scanner}:{verdict.ki}" if verdict.ki is not None else None,
            total_ms=f"{slow.total_ms:.1f}",
            slowest=slowest,
            slowest_ms=f"{slow.stages[slowest]:.1f}",
            stages=slow.stages_text(),
            gc_generations=generations or None,
        )
        return slow

    def watch_gc(self, enabled: bool) -> None:
        """The scan loop starts (True) or ends (False): watch collections while it runs and
        tracing is on."""
        self.watching_gc = enabled
        if not enabled:
            self.gc_pauses.remove()
