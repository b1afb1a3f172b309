"""``GET /v1/events`` upgraded to a WebSocket: the event stream, one text message per event.

The same events as the Server-Sent Events stream (:mod:`markd.api.sse`), from the same hub,
with the same ``?kinds=`` filter and the same replay (``?since=ID``: the events missed, or a
``gap`` event first): each is one text message holding the event's JSON, exactly the ``data:``
line the SSE stream sends for it (``Event.text``, its ``id`` included). The stream is one
way; the client has nothing to say but pings, pongs and its close.

Framing is wsproto's (sans-I/O, like h11): the server has read and checked the request with
h11 as any other; :func:`accept` hands its head to wsproto's handshake helper
(``H11Handshake.initiate_upgrade_connection``, in wsproto 1.2.0 as in Debian 12), which checks
the upgrade's own headers and writes the 101 answer; from then on a
``wsproto.connection.Connection`` frames the messages on the same socket. This module owns
the rest, as the server does for HTTP:

* every :attr:`WebSocketEvents.heartbeat_s` the server pings; a client that has not answered
  within ``pong_timeout_s`` is dropped (a screen whose machine went away without a FIN);
* each client has its own bounded queue, as on SSE: one that falls that far behind, or does
  not take a write within the write timeout, is dropped (close code 1008 when it can still be
  told) and the drop logged; the loop, the scans and the other clients never wait for it;
* a client message larger than :data:`MAX_CLIENT_MESSAGE_BYTES` gets close code 1009; smaller
  ones (some client libraries send a text keep-alive) are read and ignored; bytes that are not
  WebSocket frames get wsproto's close code (1002, 1007) and the connection ends;
* a client's close is answered with its code; when the daemon stops, clients get
  ``service-stopping`` and then a close with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)
from wsproto.events import Request as UpgradeRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from markd.api.messages import HTTPRefusal, Request, common_headers
from markd.events import EventHub, StreamClosed, Subscription

log = logging.getLogger("markd.api")

#: Largest message a client may send (it has nothing to send but a keep-alive); larger is
#: closed with 1009.
MAX_CLIENT_MESSAGE_BYTES = 4096
#: Bytes read from a client at a time.
READ_SIZE = 16 * 1024
#: Close codes (RFC 6455 §7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009


def wants_websocket(headers: Mapping[str, str]) -> bool:
    """Whether a request asks for the WebSocket upgrade (``Upgrade: websocket``)."""
    upgrade = headers.get("upgrade", "")
    return any(token.strip().lower() == "websocket" for token in upgrade.split(","))


def accept(request: Request) -> tuple[bytes, Connection]:
    """The 101 answer to ``request``'s upgrade and the connection that frames what follows.

    Raises :class:`HTTPRefusal` when the upgrade is not one RFC 6455 allows (no
    ``Connection: Upgrade``, no ``Sec-WebSocket-Key``, a version other than 13: 426 with the
    version markd speaks, or no ``Host``).
    """
    if "host" not in request.headers:
        # RFC 6455 §4.1 requires it (markd serves plain requests without one).
        raise HTTPRefusal(
            400, "bad-request", "WebSocket handshake: Missing header, 'Host'", close=True
        )
    handshake = H11Handshake(ConnectionType.SERVER)
    fields = [
        (name.encode("ascii"), value.encode("latin-1")) for name, value in request.headers.items()
    ]
    try:
        handshake.initiate_upgrade_connection(fields, request.target)
        asked = [event for event in handshake.events() if isinstance(event, UpgradeRequest)]
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        headers = {}
        if isinstance(hint, RejectConnection):
            headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in hint.headers}
        reason = "upgrade-required" if status == 426 else "bad-request"
        # wsproto's text names the header (never the client's bytes).
        raise HTTPRefusal(
            status, reason, f"WebSocket handshake: {exc}", headers=headers, close=True
        ) from None
    except h11.LocalProtocolError:
        # h11 re-frames the head for wsproto; what it read once it reads again, so this is
        # only a guard.
        raise HTTPRefusal(
            400, "bad-request", "WebSocket handshake: malformed request", close=True
        ) from None
    if not asked:
        raise HTTPRefusal(400, "bad-request", "WebSocket handshake: not an upgrade", close=True)
    extra = [
        (name.encode("ascii"), value.encode("latin-1"))
        for name, value in common_headers({}).items()
    ]
    answer = handshake.send(AcceptConnection(extra_headers=extra))
    connection = handshake.connection
    assert connection is not None
    return answer, connection


class WebSocketEvents:
    """One client's WebSocket stream: subscribed on creation, run by :meth:`run` until the
    client closes or goes, is dropped, or the daemon stops.

    :param connection: wsproto's connection, open (the 101 answer written or about to be).
    :param received: bytes the client sent after its handshake, already read.
    :param pong_timeout_s: seconds a ping may wait for its pong.
    """

    def __init__(
        self,
        hub: EventHub,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: Connection,
        *,
        kinds: list[str] | None,
        peer: str,
        heartbeat_s: float,
        pong_timeout_s: float,
        queue_limit: int | None,
        write_timeout_s: float,
        since: str | None = None,
        received: bytes = b"",
    ) -> None:
        self.hub = hub
        self.reader = reader
        self.writer = writer
        self.ws = connection
        self.heartbeat_s = heartbeat_s
        self.pong_timeout_s = pong_timeout_s
        self.write_timeout_s = write_timeout_s
        self.peer = peer
        self._received = received
        #: The payload of the ping awaiting its pong, and when it was sent.
        self._ping: bytes | None = None
        self._ping_sent_at = 0.0
        self._pings = 0
        #: The client closed, went, or broke the protocol: nothing more to send but a close.
        self._client_done = False
        self.subscription = hub.subscribe(
            kinds, limit=queue_limit, name=peer, on_drop=self._fell_behind, since=since
        )

    def _fell_behind(self, subscription: Subscription) -> None:
        log.warning(
            "control API: WebSocket event client %s dropped: it fell %d events behind",
            subscription.name,
            subscription.limit,
        )

    async def run(self) -> None:
        receiving = asyncio.ensure_future(self._receive())
        try:
            await self._send_events()
        finally:
            self.subscription.close()
            receiving.cancel()
            with contextlib.suppress(BaseException):
                await receiving

    # -- to the client --------------------------------------------------------------------------

    async def _send_events(self) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.heartbeat_s
        while True:
            if self._client_done or self.ws.state is not ConnectionState.OPEN:
                return  # the receiving side closed (or answered a close) meanwhile
            now = loop.time()
            if self._ping is not None and now - self._ping_sent_at >= self.pong_timeout_s:
                log.warning(
                    "control API: WebSocket event client %s dropped: no pong within %g s",
                    self.peer,
                    self.pong_timeout_s,
                )
                self.hub.dropped += 1
                self._drop(CLOSE_POLICY_VIOLATION, "no pong")
                return
            if now >= next_ping:
                if self._ping is None:
                    self._pings += 1
                    self._ping = b"markd %d" % self._pings
                    self._ping_sent_at = now
                    await self._write(self.ws.send(Ping(payload=self._ping)))
                next_ping = now + self.heartbeat_s
            wake = next_ping
            if self._ping is not None:
                wake = min(wake, self._ping_sent_at + self.pong_timeout_s)
            try:
                event = await self.subscription.next(max(0.0, wake - loop.time()))
            except StreamClosed:
                if self.subscription.closed == "queue-full":
                    self._drop(CLOSE_POLICY_VIOLATION, "fell behind")
                elif self.subscription.closed == "session-ended":
                    await self._close(CLOSE_POLICY_VIOLATION, "session ended")
                elif not self._client_done:  # the daemon is stopping
                    await self._close(CLOSE_GOING_AWAY, "markd stopping")
                return
            if event is not None:
                await self._write(self.ws.send(TextMessage(data=event.text)))

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        if not self.writer.transport.get_write_buffer_size():
            return
        try:
            await asyncio.wait_for(self.writer.drain(), self.write_timeout_s)
        except TimeoutError:
            log.warning(
                "control API: WebSocket event client %s dropped: it took no data for %g s",
                self.peer,
                self.write_timeout_s,
            )
            self.hub.dropped += 1
            self.writer.transport.abort()
            raise

    async def _close(self, code: int, reason: str | None) -> None:
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            await self._write(self.ws.send(CloseConnection(code=code, reason=reason)))

    def _drop(self, code: int, reason: str) -> None:
        """Cut a client off that does not keep up: its close frame goes out if the socket
        takes it now, and the connection ends at once (it would not read a proper close)."""
        if self.ws.state is ConnectionState.OPEN:
            self.writer.write(self.ws.send(CloseConnection(code=code, reason=reason)))
        self.writer.transport.abort()

    # -- from the client ------------------------------------------------------------------------

    async def _receive(self) -> None:
        message_bytes = 0
        try:
            data = self._received
            while True:
                if data:
                    self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, Ping):
                        if self.ws.state is ConnectionState.OPEN:  # not once we closed
                            await self._write(self.ws.send(event.response()))
                    elif isinstance(event, Pong):
                        if event.payload == self._ping:
                            self._ping = None
                    elif isinstance(event, Message):
                        size = event.data
                        message_bytes += len(
                            size.encode("utf-8") if isinstance(size, str) else size
                        )
                        if message_bytes > MAX_CLIENT_MESSAGE_BYTES:
                            await self._close(
                                CLOSE_TOO_BIG,
                                f"messages are at most {MAX_CLIENT_MESSAGE_BYTES} bytes",
                            )
                            return
                        if event.message_finished:
                            message_bytes = 0
                    elif isinstance(event, CloseConnection):
                        # The client's close (answered with its code), or wsproto's for bytes
                        # that are not frames (1002, 1007): either way the end.
                        await self._close(event.code, event.reason or None)
                        return
                data = await self.reader.read(READ_SIZE)
                if not data:
                    return  # gone without a close
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._client_done = True
            self.subscription.close()
