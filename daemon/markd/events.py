"""The in-process event hub: what the daemon journals, also as a live stream for the control API.

The service writes every event to its :class:`~markd.systemd.EventLog` (the journal). An
:class:`EventPublisher`, registered as one of the log's observers, hands each of those events
to an :class:`EventHub`, which fans it out to the subscribers of the moment (the ``GET
/v1/events`` streams of kiosk screens and ``markctl events``)::

    service ─event()─▶ EventLog ─▶ journal / stderr
                          └─ observer ─▶ EventPublisher ─▶ EventHub ─┬▶ Subscription ─▶ client
    verdict listener ─publish_verdict()─▶ EventPublisher ──────────┘  └▶ Subscription ─▶ client

What a subscriber receives is what the journal shows, structured: the same kinds
(``verdict``, ``scanner-present``, ``service-started`` …) and the same fields, at the same
priorities (an event below ``[log] level`` is neither journaled nor published). A ``verdict``
carries the whole verdict as :func:`verdict_json` gives it: the service's verdict listener
publishes it whole, and its journal record (the same verdict as journal fields) is not
published a second time. Like the journal, an event never holds the full code or its crypto
tail: fields named ``km``, ``crypto``, ``code`` and ``raw`` are dropped. ``check-exchange``
records (redacted request and answer bodies of the check services) stay in the journal only;
the service publishes a ``scan`` event of its own when a scan arrives, before its verdict.

Publishing never waits: each subscription has a bounded queue, and a subscriber whose queue is
full (a client that stopped reading) is dropped, its ``on_drop`` callback scheduled on the loop.
:meth:`EventHub.publish` may be called from any thread; delivery happens on the loop the
subscribers live on.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from markd.checks.verdict import Verdict
from markd.systemd import PRIORITIES, EventLog, priority_value

#: Events waiting per subscriber before it counts as stalled and is dropped.
DEFAULT_QUEUE_LIMIT = 256

#: Event kinds kept out of the hub: the journal is their place (redacted HTTP bodies).
UNPUBLISHED_KINDS = frozenset({"check-exchange"})
#: Event kinds whose producer publishes them in a fuller form than their journal record:
#: a verdict goes out as :func:`verdict_json` (:meth:`EventPublisher.publish_verdict`).
PUBLISHED_WHOLE = frozenset({"verdict"})

_PRIORITY_NAMES = {number: name for name, number in PRIORITIES.items()}


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    """A :class:`~markd.checks.verdict.Verdict` as JSON-ready data: the form of ``POST
    /v1/check``, of ``verdict`` events and of ``markctl check --json``.

    Holds the КИ, never the full code or its crypto tail (a verdict has neither).
    """
    return {
        "decision": verdict.decision,
        "reason": verdict.reason,
        "message": verdict.message_ru,
        "source": verdict.source,
        "scanner": verdict.scanner,
        "ki": verdict.ki,
        "shape": verdict.shape,
        "repairs": list(verdict.repairs),
        "req_id": verdict.req_id,
        "req_timestamp": verdict.req_timestamp,
        "inst": verdict.inst,
        "version": verdict.version,
        "tag1265": verdict.tag1265,
        "latency_ms": round(verdict.latency_ms, 3),
        "checked": verdict.checked,
        "details": dict(verdict.details),
    }


@dataclass(frozen=True)
class Event:
    """One published event: a sequence number (per hub, from 1), the wall-clock time, the kind
    and its fields (JSON-ready, secrets and crypto tails already removed)."""

    seq: int
    kind: str
    time: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"seq", "kind", "time" (ISO 8601, UTC, milliseconds), "data"}``."""
        stamp = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return {
            "seq": self.seq,
            "kind": self.kind,
            "time": stamp.replace("+00:00", "Z"),
            "data": dict(self.data),
        }


class StreamClosed(Exception):
    """The subscription was closed (by its owner) or dropped (its queue overflowed)."""


class Subscription:
    """One subscriber's view of the hub: a bounded queue of the events it asked for.

    Made by :meth:`EventHub.subscribe`; read with :meth:`next`; ended with :meth:`close`.
    """

    def __init__(
        self,
        hub: EventHub,
        kinds: frozenset[str] | None,
        limit: int,
        name: str,
        on_drop: Callable[[Subscription], None] | None,
    ) -> None:
        self.hub = hub
        #: The kinds this subscriber wants, or families of kinds (``scanner`` takes
        #: ``scanner-present`` and ``scanner-absent``); None for every published kind.
        self.kinds = kinds
        self.limit = limit
        #: Who is reading (a peer address), for the record when it is dropped.
        self.name = name
        self.on_drop = on_drop
        #: Why the subscription ended (``closed``, ``queue-full``), None while it is live.
        self.closed: str | None = None
        self.delivered = 0
        self._queue: collections.deque[Event] = collections.deque()
        self._ready = asyncio.Event()
        self._finishing = False

    def wants(self, kind: str) -> bool:
        if self.kinds is None or kind in self.kinds:
            return True
        return any(kind.startswith(family + "-") for family in self.kinds)

    @property
    def pending(self) -> int:
        """Events queued and not yet read."""
        return len(self._queue)

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None when ``timeout`` seconds pass without one (time for a
        heartbeat). Raises :class:`StreamClosed` once the subscription has ended — at once
        after :meth:`close` or a drop (a dropped client is cut off, not drained), after the
        queued events when :meth:`finish` was called."""
        if self.closed is None and not self._queue and not self._finishing:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        if self.closed is None and not self._queue:  # finishing, and nothing is left
            self._end("closed")
        if self.closed is not None:
            raise StreamClosed(self.closed)
        self.delivered += 1
        return self._queue.popleft()

    def close(self) -> None:
        """Stop receiving now (the reader went away). Idempotent."""
        self._end("closed")

    def finish(self) -> None:
        """Take no more events; :meth:`next` hands out those already queued, then ends (the
        service is stopping: a client still gets ``service-stopping``)."""
        self._finishing = True
        self.hub._subscribers.discard(self)
        self._ready.set()

    def _offer(self, event: Event) -> bool:
        """Queue ``event``; False when the queue is full."""
        if len(self._queue) >= self.limit:
            return False
        self._queue.append(event)
        self._ready.set()
        return True

    def _end(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self._queue.clear()
            self.hub._subscribers.discard(self)
            self._ready.set()


class EventHub:
    """Fan-out of published events to live subscriptions, each with a bounded queue.

    :param queue_limit: default queue length of a subscription (``subscribe(limit=...)``).
    :param clock: wall clock for event times (tests pass a fixed one).
    """

    def __init__(
        self, *, queue_limit: int = DEFAULT_QUEUE_LIMIT, clock: Callable[[], float] = time.time
    ) -> None:
        self.queue_limit = queue_limit
        self._clock = clock
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = itertools.count(1)
        #: Subscriptions dropped because they fell behind, since the hub was made.
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        """How many subscriptions are live."""
        return len(self._subscribers)

    def subscribe(
        self,
        kinds: Iterable[str] | None = None,
        *,
        limit: int | None = None,
        name: str = "",
        on_drop: Callable[[Subscription], None] | None = None,
    ) -> Subscription:
        """A new subscription on the running loop; ``kinds`` None (or empty) means every
        kind. ``on_drop`` is called (soon, on the loop) if the subscriber falls behind by
        ``limit`` events and is dropped."""
        self._loop = asyncio.get_running_loop()
        wanted = frozenset(kinds) if kinds else None
        subscription = Subscription(self, wanted, limit or self.queue_limit, name, on_drop)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, kind: str, data: Mapping[str, Any]) -> Event:
        """Hand an event to every subscriber that wants its kind. Never blocks, never raises
        for a slow subscriber; callable from any thread."""
        event = Event(seq=next(self._seq), kind=kind, time=self._clock(), data=dict(data))
        loop = self._loop
        if loop is None or not self._subscribers:
            return event
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._deliver(event)
        else:
            try:
                loop.call_soon_threadsafe(self._deliver, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass
        return event

    def _deliver(self, event: Event) -> None:
        for subscription in list(self._subscribers):
            if subscription.wants(event.kind) and not subscription._offer(event):
                self.dropped += 1
                subscription._end("queue-full")
                if subscription.on_drop is not None and self._loop is not None:
                    # Later, not now: the callback logs, and a log record is itself published.
                    self._loop.call_soon(subscription.on_drop, subscription)


class EventPublisher:
    """Publishes what an :class:`~markd.systemd.EventLog` writes to an :class:`EventHub`.

    Register it with ``log.add_observer(publisher)``: each event the log writes (it passed
    ``[log] level``) is published with its fields, its message and its priority's name.
    Verdicts come through :meth:`publish_verdict`, whole.

    :param hub: where events go.
    :param log: the event log observed; its ``level`` also decides which verdicts are published.
    """

    def __init__(self, hub: EventHub, log: EventLog) -> None:
        self.hub = hub
        self.log = log

    def __call__(self, kind: str, message: str, priority: int, fields: Mapping[str, Any]) -> None:
        if not self.hub.subscribers:
            return  # nobody listens (the usual case on a till without a screen): no work
        if kind in UNPUBLISHED_KINDS or kind in PUBLISHED_WHOLE:
            return
        data = dict(fields)
        data["message"] = message
        data["priority"] = _PRIORITY_NAMES.get(priority, str(priority))
        self.hub.publish(kind, data)

    def publish_verdict(self, verdict: Verdict) -> None:
        """Publish ``verdict`` as a ``verdict`` event (:func:`verdict_json`), at the priority
        its journal record has."""
        priority = "info" if verdict.decision == "allow" else "notice"
        if self.hub.subscribers and priority_value(priority) <= self.log.level:
            self.hub.publish("verdict", verdict_json(verdict))
