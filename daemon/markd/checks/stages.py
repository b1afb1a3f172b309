"""Where one scan's time goes: named stages, timed for the slow-scan tracer.

The service opens a :class:`StageLog` for each scan it traces (:mod:`markd.service.tracing`)
and makes it current for the scan's task; the code a scan passes through marks its stages
with :func:`stage`::

    with stage("store"):
        found = store.lookup(code)

With no log current (tracing off, a test or a tool calling the chain directly) :func:`stage`
costs one context-variable read. A log keeps ``(name, start, end)`` and nothing else: what the
times mean (garbage collection inside a stage, the time no stage covers) is worked out
afterwards, and only for a scan that was slow.

Tasks started inside a scan (the parallel sources) inherit the current log, so a source's
stage lands in its scan's log even when it runs beside another.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from types import TracebackType

#: One timed stage: its name, and its start and end on the log's clock (seconds).
Span = tuple[str, float, float]


class StageLog:
    """The stages of one scan, in the order they began (a stage still under way holds its
    place as None).

    :param clock: seconds, monotonic (``time.monotonic`` in the daemon; tests pass their own).
    """

    __slots__ = ("clock", "spans")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.spans: list[Span | None] = []

    def add(self, name: str, start: float, end: float | None = None) -> None:
        """Record stage ``name`` from ``start`` to ``end`` (default: now)."""
        self.spans.append((name, start, self.clock() if end is None else end))


class _Stage:
    """One stage being timed (:func:`stage`); recorded also when the block raises."""

    __slots__ = ("log", "name", "start", "place")

    def __init__(self, log: StageLog, name: str) -> None:
        self.log = log
        self.name = name
        self.start = 0.0
        self.place = 0

    def __enter__(self) -> None:
        spans = self.log.spans
        self.place = len(spans)
        spans.append(None)
        self.start = self.log.clock()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.log.spans[self.place] = (self.name, self.start, self.log.clock())


class _Untimed:
    """What :func:`stage` returns when no scan is traced: does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


_UNTIMED = _Untimed()

#: The stage log of the scan being handled in this task (None: not traced).
CURRENT_STAGES: contextvars.ContextVar[StageLog | None] = contextvars.ContextVar(
    "markd_stages", default=None
)


def stage(name: str) -> _Stage | _Untimed:
    """A context manager that times its block as stage ``name`` of the current scan."""
    log = CURRENT_STAGES.get()
    return _UNTIMED if log is None else _Stage(log, name)
