"""``GET /v1/events``: Server-Sent Events from the :class:`~markd.events.EventHub` to one client.

Each client has its own bounded queue (a :class:`~markd.events.Subscription`). A client that
falls the queue's length behind, or does not take a write within the write timeout, is cut
off and the drop logged; the event loop, the scans and the other clients never wait for it.
Each event is one block: ``id:`` (its id, ``RUN-SEQ``), ``event:`` (its kind) and one ``data:``
line of JSON; an idle stream gets a ``: heartbeat`` comment every :data:`HEARTBEAT_S`.

A client that reconnects sends the id of the last event it read — a browser's ``EventSource``
as ``Last-Event-ID`` by itself, anyone as ``?since=ID`` — and first gets what it missed, in the
same bytes as it was sent live, or one ``gap`` event (:func:`replay_from`,
:meth:`markd.events.EventHub.subscribe`).

The stream is close-delimited: its head says ``Connection: close`` and carries neither
``Content-Length`` nor ``Transfer-Encoding``, and the body is the events until either side
closes. That is why the head is written here and not by h11, which would frame an open-ended
body to an HTTP/1.1 client as chunked; browsers, curl and ``markctl`` read both, but a
screen reading the socket line by line would not, and the stream's wire form is part of the
API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from markd import __version__
from markd.api.messages import PHRASES, HTTPRefusal, common_headers
from markd.events import UNPUBLISHED_KINDS, Event, EventHub, StreamClosed, Subscription
from markd.systemd import MESSAGE_IDS

log = logging.getLogger("markd.api")

#: Seconds between comment lines on an idle event stream (proxies and clients see it alive).
HEARTBEAT_S = 15.0
#: ``retry:`` sent to event-stream clients: how long a browser waits before reconnecting.
SSE_RETRY_MS = 2000
#: Event kinds the service publishes besides those of the journal.
EXTRA_EVENT_KINDS = ("scan",)


def event_kinds() -> list[str]:
    """Kinds a ``GET /v1/events`` client may receive (and name in ``?kinds=``)."""
    return sorted((set(MESSAGE_IDS) | set(EXTRA_EVENT_KINDS)) - UNPUBLISHED_KINDS)


def wanted_kinds(query: Mapping[str, list[str]]) -> list[str] | None:
    """``?kinds=verdict,scanner``: exact kinds or families (``scanner`` = ``scanner-*``);
    None for every kind. An unknown name is refused with the known ones."""
    names = [n.strip() for value in query.get("kinds", []) for n in value.split(",") if n.strip()]
    if not names:
        return None
    known = event_kinds()
    unknown = [n for n in names if n not in known and not any(k.startswith(n + "-") for k in known)]
    if unknown:
        raise HTTPRefusal(
            400,
            "unknown-kind",
            f"unknown event kind(s) {', '.join(unknown)}; known: {', '.join(known)} "
            "(or a family such as 'scanner')",
        )
    return names


def replay_from(query: Mapping[str, list[str]], headers: Mapping[str, str]) -> str | None:
    """The id a client wants the events after: ``Last-Event-ID`` when sent (a browser sends
    it on each reconnect, while the URL keeps the ``since`` of its first connection), else the
    last ``?since=``; None (live events only) when neither is, or both are empty. Not checked
    here: an id that is not one gets a ``gap`` event, never an error."""
    header = headers.get("last-event-id", "").strip()
    if header:
        return header
    given = [value.strip() for value in query.get("since", []) if value.strip()]
    return given[-1] if given else None


def event_block(event: Event) -> bytes:
    """``event`` as the stream sends it, live or replayed: ``id:``, ``event:``, ``data:``."""
    return f"id: {event.id}\nevent: {event.kind}\ndata: {event.text}\n\n".encode()


class EventStream:
    """One client's stream: subscribed on creation, written by :meth:`run` until the client
    goes, falls behind, or the hub finishes the subscription (the daemon stops)."""

    def __init__(
        self,
        hub: EventHub,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        kinds: list[str] | None,
        peer: str,
        heartbeat_s: float,
        queue_limit: int | None,
        write_timeout_s: float,
        headers: Mapping[str, str],
        since: str | None = None,
    ) -> None:
        self.hub = hub
        self.reader = reader
        self.writer = writer
        self.heartbeat_s = heartbeat_s
        self.write_timeout_s = write_timeout_s
        self.headers = dict(headers)
        self.subscription = hub.subscribe(
            kinds, limit=queue_limit, name=peer, on_drop=self._fell_behind, since=since
        )

    def _fell_behind(self, subscription: Subscription) -> None:
        log.warning(
            "control API: event stream client %s dropped: it fell %d events behind",
            subscription.name,
            subscription.limit,
        )
        self.writer.transport.abort()

    async def run(self) -> None:
        subscription = self.subscription
        # The client's closing ends the stream at once, not at the next heartbeat.
        watcher = asyncio.ensure_future(_close_on_eof(self.reader, subscription))
        try:
            await self._write(
                self._head() + f"retry: {SSE_RETRY_MS}\n: markd {__version__} events\n\n".encode()
            )
            while True:
                try:
                    event = await subscription.next(self.heartbeat_s)
                except StreamClosed:
                    return
                await self._write(b": heartbeat\n\n" if event is None else event_block(event))
        finally:
            subscription.close()
            watcher.cancel()

    def _head(self) -> bytes:
        headers = common_headers(
            {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "Connection": "close",
                # nginx and its kind would otherwise hold events back to fill a buffer.
                "X-Accel-Buffering": "no",
                **self.headers,
            }
        )
        lines = [f"HTTP/1.1 200 {PHRASES[200]}", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            await asyncio.wait_for(self.writer.drain(), self.write_timeout_s)
        except TimeoutError:
            log.warning(
                "control API: event stream client %s dropped: it took no data for %g s",
                self.subscription.name,
                self.write_timeout_s,
            )
            self.hub.dropped += 1
            self.writer.transport.abort()
            raise


async def _close_on_eof(reader: asyncio.StreamReader, subscription: Subscription) -> None:
    with contextlib.suppress(Exception):
        while await reader.read(4096):
            pass
    subscription.close()
