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
:meth:`EventHub.publish` may be called from any thread; numbering, keeping and delivery happen
on the loop the subscribers live on, so every subscriber sees the events in the order of their
numbers.

Replay. An event's id is ``RUN-SEQ``: the hub's run token (random, made when the daemon starts)
and the event's number in that run. The hub keeps its latest events (:class:`EventHistory`,
bounded by count and by bytes), so a client that reconnects with the id of the last event it
read (``Last-Event-ID`` on the event stream, ``since`` on a WebSocket) is handed what it missed
before anything live: ``hub.subscribe(since=ID)``. When that cannot be done — the id is from
another run (the daemon restarted), older than anything kept, or not an id at all — the client
gets one :class:`Gap` event instead, then the live events. The run token is random rather than
the start time because a till may start with its clock wrong (no RTC battery, before NTP), and
two runs must never share ids.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from markd.checks.verdict import Verdict
from markd.systemd import PRIORITIES, EventLog, priority_value

#: Events waiting per subscriber before it counts as stalled and is dropped.
DEFAULT_QUEUE_LIMIT = 256
#: Events the hub keeps for clients that reconnect (``[api] replay_events``): at a scan every
#: few seconds, the last half hour or more of a busy kiosk.
DEFAULT_REPLAY_EVENTS = 1024
#: Bytes of JSON the kept events may take together (``[api] replay_kib``): a verdict is about
#: 700 bytes, so the count is what usually limits; this bounds a flood of big events.
DEFAULT_REPLAY_BYTES = 1024 * 1024
#: The kind of the event that stands for events a reconnecting client cannot be given.
GAP_KIND = "gap"
#: An event id: the run token (8 lowercase hex digits) and the event's number in that run.
_EVENT_ID = re.compile(r"([0-9a-f]{8})-([0-9]{1,18})")

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
    and its fields (JSON-ready, secrets and crypto tails already removed), and the run token of
    the hub that numbered it."""

    seq: int
    kind: str
    time: float
    data: Mapping[str, Any] = field(default_factory=dict)
    run: str = ""

    @property
    def id(self) -> str:
        """``RUN-SEQ``: unambiguous across restarts of the daemon (see the module's doc)."""
        return f"{self.run}-{self.seq}"

    def to_json(self) -> dict[str, Any]:
        """``{"id", "seq", "kind", "time" (ISO 8601, UTC, milliseconds), "data"}``."""
        stamp = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return {
            "id": self.id,
            "seq": self.seq,
            "kind": self.kind,
            "time": stamp.replace("+00:00", "Z"),
            "data": dict(self.data),
        }

    @cached_property
    def text(self) -> str:
        """:meth:`to_json` as compact JSON, made once: every client, live or catching up, is
        sent the same text, and its size is what :class:`EventHistory` counts."""
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"), default=str)

    @cached_property
    def size(self) -> int:
        """Bytes of :attr:`text` in UTF-8."""
        return len(self.text.encode("utf-8"))


@dataclass(frozen=True)
class Gap(Event):
    """Stands, for one reconnecting client, for events it cannot be given (``kind`` ``gap``).

    Not published, not kept: made by :meth:`EventHub.subscribe` for that client only. Its
    ``seq`` (and so its id) is the hub's latest event number when it is made — the point the
    client's stream continues from, so that a client which reconnects again with the gap's id
    misses nothing after it. Its JSON has no ``seq``: no event of that number is meant.
    ``data``: ``reason`` (``restarted``, ``too-old``, ``too-large``, ``unknown-id``),
    ``message``, and
    ``oldest``, the id of the oldest event kept (None when none is).
    """

    def to_json(self) -> dict[str, Any]:
        shown = super().to_json()
        del shown["seq"]
        return shown


def parse_event_id(text: str) -> tuple[str, int] | None:
    """``RUN-SEQ`` as ``(run, seq)``; None for anything else (never raises)."""
    match = _EVENT_ID.fullmatch(text) if len(text) <= 32 else None
    if match is None:
        return None
    return match.group(1), int(match.group(2))


class EventHistory:
    """The latest events in the order they were numbered, bounded by count and by bytes.

    Adding an event drops the oldest ones while more than ``max_events`` are kept or their
    :attr:`Event.size` adds up to more than ``max_bytes``. An event bigger than ``max_bytes``
    on its own is not kept at all, and the ones kept stay (dropping them would not make room
    for it): its number is a hole, remembered in :attr:`unkept_through`. What is kept is every
    event after :attr:`dropped_through` but those holes, so a client that missed events after
    a number below either mark is owed a gap.
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max(0, max_events)
        self.max_bytes = max(0, max_bytes)
        self._events: collections.deque[Event] = collections.deque()
        #: Bytes of the events kept.
        self.bytes = 0
        #: The highest event number no longer (or never) kept; 0 while nothing was dropped.
        self.dropped_through = 0
        #: The highest number of an event too large to keep (0: none was): a hole among the
        #: kept ones. Only the highest matters: whoever missed it missed every later hole too.
        self.unkept_through = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def oldest(self) -> Event | None:
        return self._events[0] if self._events else None

    def add(self, event: Event) -> None:
        if self.max_events == 0:
            self.dropped_through = event.seq
            return
        if event.size > self.max_bytes:
            self.unkept_through = event.seq
            return
        self._events.append(event)
        self.bytes += event.size
        while self._events and (len(self._events) > self.max_events or self.bytes > self.max_bytes):
            gone = self._events.popleft()
            self.bytes -= gone.size
            self.dropped_through = gone.seq

    def after(self, seq: int) -> list[Event] | None:
        """Every kept event numbered above ``seq``; None when some of those are not kept (see
        :meth:`gap_reason`)."""
        if self.gap_reason(seq) is not None:
            return None
        missed: list[Event] = []
        for event in reversed(self._events):  # a reconnect misses the latest few
            if event.seq <= seq:
                break
            missed.append(event)
        missed.reverse()
        return missed

    def gap_reason(self, seq: int) -> str | None:
        """Why the events after ``seq`` cannot all be given: ``too-old`` (some were dropped
        for newer ones), ``too-large`` (one was too large to keep); None when they can."""
        if seq < self.dropped_through:
            return "too-old"
        if seq < self.unkept_through:
            return "too-large"
        return None


class StreamClosed(Exception):
    """The subscription was closed (by its owner) or dropped (its queue overflowed)."""


class Subscription:
    """One subscriber's view of the hub: a bounded queue of the events it asked for.

    Made by :meth:`EventHub.subscribe`; read with :meth:`next`; ended with :meth:`close`.
    What a reconnecting subscriber missed (its backlog) is handed out before the live events
    and does not count against ``limit``: it is at most what the hub keeps.
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
        #: Events replayed at subscription (or the one gap), handed out first.
        self.backlog: collections.deque[Event] = collections.deque()
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
        return len(self.backlog) + len(self._queue)

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None when ``timeout`` seconds pass without one (time for a
        heartbeat). Raises :class:`StreamClosed` once the subscription has ended — at once
        after :meth:`close` or a drop (a dropped client is cut off, not drained), after the
        queued events when :meth:`finish` was called."""
        if self.closed is None and self.backlog:
            self.delivered += 1
            return self.backlog.popleft()
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

    def close(self, reason: str = "closed") -> None:
        """Stop receiving now (the reader went away; or ``reason``, e.g. the session that
        let the reader in ended). Idempotent: the first reason stays."""
        self._end(reason)

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
            self.backlog.clear()
            self._queue.clear()
            self.hub._subscribers.discard(self)
            self._ready.set()


#: What a :class:`Gap` tells, by its reason.
GAP_MESSAGES = {
    "restarted": "markd restarted since that event; the events of the run before are not kept",
    "too-old": "the events after that one are no longer kept",
    "too-large": "an event after that one was too large to keep",
    "unknown-id": "not the id of an event of this daemon",
}


class EventHub:
    """Fan-out of published events to live subscriptions, each with a bounded queue, and the
    latest events kept for subscribers that reconnect.

    :param queue_limit: default queue length of a subscription (``subscribe(limit=...)``).
    :param replay_events: events kept for reconnecting subscribers; 0 keeps none.
    :param replay_bytes: the most bytes (of the events' JSON) those kept events may take.
    :param run: the run token in event ids (8 lowercase hex digits); default a random one.
    :param clock: wall clock for event times (tests pass a fixed one).
    """

    def __init__(
        self,
        *,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        replay_events: int = DEFAULT_REPLAY_EVENTS,
        replay_bytes: int = DEFAULT_REPLAY_BYTES,
        run: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if run is not None and parse_event_id(f"{run}-0") is None:
            raise ValueError("a run token is 8 lowercase hex digits")
        self.queue_limit = queue_limit
        #: This hub's part of every event id; a new one each time the daemon starts.
        self.run = run or secrets.token_hex(4)
        self.history = EventHistory(replay_events, replay_bytes)
        self._clock = clock
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Until a loop is known, events are numbered in the publishing thread, under this lock.
        self._lock = threading.Lock()
        self._latest = 0
        #: Subscriptions dropped because they fell behind, since the hub was made.
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        """How many subscriptions are live."""
        return len(self._subscribers)

    @property
    def wanted(self) -> bool:
        """Whether a published event goes anywhere: to a live subscriber, or into the history
        for one that reconnects. (False only with no subscriber and ``replay_events`` 0.)"""
        return bool(self._subscribers) or self.history.max_events > 0

    @property
    def latest_id(self) -> str:
        """The id of the latest event numbered (``RUN-0`` before the first)."""
        return f"{self.run}-{self._latest}"

    def subscribe(
        self,
        kinds: Iterable[str] | None = None,
        *,
        limit: int | None = None,
        name: str = "",
        on_drop: Callable[[Subscription], None] | None = None,
        since: str | None = None,
    ) -> Subscription:
        """A new subscription on the running loop; ``kinds`` None (or empty) means every
        kind. ``on_drop`` is called (soon, on the loop) if the subscriber falls behind by
        ``limit`` events and is dropped.

        ``since``: the id of the last event the subscriber read before (``Last-Event-ID``,
        a WebSocket's ``since``); the subscription first hands out the events after it that
        ``kinds`` takes, or one :class:`Gap` when they cannot all be given, then the live
        ones. None or empty: live events only. Taking the backlog and joining the live
        subscribers happen in one step on the loop, so no event is missed or given twice.
        """
        loop = asyncio.get_running_loop()
        wanted = frozenset(kinds) if kinds else None
        subscription = Subscription(self, wanted, limit or self.queue_limit, name, on_drop)
        with self._lock:
            self._loop = loop
            if since:
                subscription.backlog.extend(
                    event
                    for event in self._missed_since(since)
                    if isinstance(event, Gap) or subscription.wants(event.kind)
                )
            self._subscribers.add(subscription)
        return subscription

    def _missed_since(self, since: str) -> list[Event]:
        """The kept events after ``since``, or the one gap that stands for them."""
        parsed = parse_event_id(since)
        if parsed is None:
            reason = "unknown-id"
        elif parsed[0] != self.run:
            reason = "restarted"
        elif parsed[1] > self._latest:
            reason = "unknown-id"  # a number this run has not reached
        else:
            missed = self.history.after(parsed[1])
            if missed is not None:
                return missed
            reason = self.history.gap_reason(parsed[1]) or "too-old"
        oldest = self.history.oldest
        data = {
            "reason": reason,
            "message": GAP_MESSAGES[reason] + ": read GET /v1/status for the present state",
            "oldest": None if oldest is None else oldest.id,
        }
        return [Gap(seq=self._latest, kind=GAP_KIND, time=self._clock(), data=data, run=self.run)]

    def publish(self, kind: str, data: Mapping[str, Any]) -> Event | None:
        """Number an event, keep it, and hand it to every subscriber that wants its kind.
        Never blocks, never raises for a slow subscriber; callable from any thread.

        Returns the event, or None when it was called from another thread than the loop's:
        the event is then numbered on the loop, in its turn."""
        stamp = self._clock()
        fields = dict(data)
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        with self._lock:
            loop = self._loop
            if loop is None or loop.is_closed():
                if running is None:
                    # No loop yet (or none any more), so no live subscriber: kept only.
                    return self._number(kind, stamp, fields)
                self._loop = loop = running
        if running is loop:
            return self._admit(kind, stamp, fields)
        try:
            loop.call_soon_threadsafe(self._admit, kind, stamp, fields)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass
        return None

    def _number(self, kind: str, stamp: float, fields: dict[str, Any]) -> Event:
        self._latest += 1
        event = Event(seq=self._latest, kind=kind, time=stamp, data=fields, run=self.run)
        self.history.add(event)
        return event

    def _admit(self, kind: str, stamp: float, fields: dict[str, Any]) -> Event:
        """On the loop: number, keep, deliver."""
        with self._lock:
            event = self._number(kind, stamp, fields)
        self._deliver(event)
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
        if not self.hub.wanted:
            return  # nobody listens and nothing is kept for later: no work
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
        if self.hub.wanted and priority_value(priority) <= self.log.level:
            self.hub.publish("verdict", verdict_json(verdict))
