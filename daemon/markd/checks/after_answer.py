"""Work a check leaves behind that may wait until the caller's answer is written.

A caller that answers someone on a socket as soon as a verdict is decided (the Mark Unit
front: the till waits for its answer) collects the work nobody acts on before that answer —
the verdict cache's write, the live ``verdict`` event, the counts and metrics, the repeat
cache — and runs it right after the answer is written, in the order it was added::

    later = AfterAnswer()
    with later.collecting():
        answer = await check(...)
    write(answer)
    later.run()

Without a collector (markd's own scans, the control API, a test calling the chain) the work
runs at once, as before. What must exist before anyone may act on a verdict, its journal
record, is never handed over (:class:`~markd.service.listeners.Notifier`): a crash after the
answer loses only what a crash loses anyway (memory, and the cache, which is an aid).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("markd.checks")


class AfterAnswer:
    """Work collected while a caller's answer is made, run by :meth:`run` once it is out."""

    __slots__ = ("_work", "answer_size")

    def __init__(self) -> None:
        self._work: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        #: Bytes of the answer's body as written, when the caller says (work that measures
        #: the answer, the Mark Unit front's repeat cache, need not encode it again).
        self.answer_size: int | None = None

    def add(self, fn: Callable[..., Any], *args: Any) -> None:
        self._work.append((fn, args))

    def __len__(self) -> int:
        return len(self._work)

    @contextlib.contextmanager
    def collecting(self) -> Iterator[AfterAnswer]:
        """Make this the collector of the current task (and of the tasks it starts)."""
        token = AFTER_ANSWER.set(self)
        try:
            yield self
        finally:
            AFTER_ANSWER.reset(token)

    def run(self) -> None:
        """Run what was collected, in order; one failure does not stop the rest (each piece
        handles its own errors, this is the last resort). Never raises."""
        work, self._work = self._work, []
        for fn, args in work:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - the answer is out; the rest must run
                log.error("work after an answer failed: %s", type(exc).__name__)


#: The current task's collector, None when the work runs at once.
AFTER_ANSWER: contextvars.ContextVar[AfterAnswer | None] = contextvars.ContextVar(
    "markd_after_answer", default=None
)


def after_answer(fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` once the current caller's answer is written, or now when no caller
    collects (:class:`AfterAnswer`)."""
    later = AFTER_ANSWER.get()
    if later is None:
        fn(*args)
    else:
        later.add(fn, *args)
