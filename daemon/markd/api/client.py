"""A small blocking client of the control API over its Unix socket (``markctl`` uses it).

A plain ``AF_UNIX`` socket with h11 framing the requests and reading the answers (a
``Content-Length`` body, or the event stream, which runs until the daemon closes it). Every
call opens its own connection; ``markctl`` makes one or two requests. Each receive waits at
most the call's timeout, as a socket timeout does.

>>> client = ControlClient("/run/markd/control.sock")      # doctest: +SKIP
>>> client.check("0104680029460908215jcmHzLmkdPML\\x1d938p9E")["decision"]  # doctest: +SKIP
'allow'

:class:`DaemonNotRunning` means there is nobody to ask (no socket file, or a file left behind
by a daemon that is gone), which is when ``markctl`` does the work in-process instead; any
other failure (no permission on the socket, an error answer, an answer h11 refuses) is a
:class:`ControlClientError`.

It does not use :mod:`markd.http`, the client for peers on the network: a local Unix socket
needs no URLs, DNS, TLS, proxies or connection pools (docs/architecture.md, "Decisions").
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any

import h11

from markd.errors import MarkdError
from markd.http.refusals import H11_REFUSALS, refusal_text

#: Seconds a request may take (a check through the chain takes up to a few seconds).
REQUEST_TIMEOUT_S = 15.0
#: Seconds without a byte on an event stream before it counts as dead (heartbeats every 15 s).
STREAM_TIMEOUT_S = 60.0
#: Bytes asked of the socket at a time.
_READ_SIZE = 64 * 1024


class ControlClientError(MarkdError):
    """The daemon could not be asked, or answered with an error.

    ``status`` is the HTTP status of an error answer (None when there was no answer), and
    ``reason`` the answer's ``error`` field.
    """

    reason = "api-error"

    def __init__(self, message: str, reason: str | None = None, status: int | None = None):
        super().__init__(message, reason)
        self.status = status


class DaemonNotRunning(ControlClientError):
    """No daemon listens on the socket (it does not exist, or nobody accepts on it)."""

    reason = "daemon-not-running"


class _MalformedAnswer(Exception):
    """h11 refused the daemon's answer; the caller turns it into a ControlClientError."""


class _Exchange:
    """One request and its answer on one connection, h11 doing the framing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.http = h11.Connection(h11.CLIENT)

    def send(self, method: str, path: str, body: Any) -> None:
        headers = [("Host", "localhost"), ("Accept", "application/json")]
        payload = b""
        if body is not None:
            payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers.append(("Content-Type", "application/json"))
        if body is not None or method == "POST":
            headers.append(("Content-Length", str(len(payload))))
        data = self.http.send(h11.Request(method=method, target=path, headers=headers))
        if payload:
            data += self.http.send(h11.Data(data=payload))
        data += self.http.send(h11.EndOfMessage())
        self.sock.sendall(data)

    def response(self) -> h11.Response:
        """The answer's head (an interim 100 is skipped)."""
        while True:
            event = self._next()
            if isinstance(event, h11.Response):
                return event

    def body_parts(self) -> Iterator[bytes]:
        """The answer's body as it arrives, until its end."""
        while True:
            event = self._next()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return

    def body(self) -> bytes:
        return b"".join(self.body_parts())

    def _next(self) -> h11.Event:
        while True:
            try:
                event = self.http.next_event()
            except H11_REFUSALS as exc:  # ValueError too, from h11 0.14 (http/refusals.py)
                raise _MalformedAnswer(f"a malformed answer ({refusal_text(exc)})") from exc
            if event is h11.NEED_DATA:
                self.http.receive_data(self.sock.recv(_READ_SIZE))
                continue
            if isinstance(event, h11.ConnectionClosed) or not isinstance(event, h11.Event):
                raise ConnectionError("the daemon closed the connection")
            return event


class ControlClient:
    """Requests to the control API on ``socket_path``."""

    def __init__(self, socket_path: str, *, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        return self.request("GET", "/v1/status")

    def check(self, code: str) -> dict[str, Any]:
        """``POST /v1/check``: the verdict on ``code`` (GS as ``\\x1d`` or a ``<GS>`` token)."""
        return self.request("POST", "/v1/check", {"code": code})

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request; the JSON answer, or :class:`ControlClientError` for an error status."""
        sock = self._connect(self.timeout)
        try:
            exchange = _Exchange(sock)
            exchange.send(method, path, body)
            response = exchange.response()
            data = exchange.body()
        except (OSError, h11.ProtocolError, _MalformedAnswer) as exc:
            raise ControlClientError(f"markd at {self.socket_path} did not answer: {exc}") from exc
        finally:
            sock.close()
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            raise ControlClientError(
                f"markd answered {path} with something other than JSON"
            ) from None
        if response.status_code >= 400:
            raise _error_answer(response.status_code, answer)
        return answer

    def events(
        self, kinds: list[str] | None = None, since: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Follow ``GET /v1/events``: each event as ``{"id", "seq", "kind", "time", "data"}``.
        With ``since`` (an event id) the events after it come first, or a ``gap`` event.

        Ends when the daemon closes the stream (it stopped); a stream silent for
        :data:`STREAM_TIMEOUT_S` (no heartbeat either) raises :class:`ControlClientError`.
        """
        query = {"kinds": ",".join(kinds) if kinds else "", "since": since or ""}
        given = urllib.parse.urlencode({k: v for k, v in query.items() if v}, safe=",")
        path = "/v1/events" + (f"?{given}" if given else "")
        sock = self._connect(STREAM_TIMEOUT_S)
        try:
            exchange = _Exchange(sock)
            exchange.send("GET", path, None)
            response = exchange.response()
            if response.status_code != 200:
                data = exchange.body()
                try:
                    error = json.loads(data)
                except ValueError:
                    error = {}
                raise _error_answer(response.status_code, error)
            yield from _read_stream(exchange.body_parts())
        except TimeoutError as exc:
            raise ControlClientError(
                f"markd at {self.socket_path} sent nothing for {STREAM_TIMEOUT_S:g} s"
            ) from exc
        except (OSError, h11.ProtocolError, _MalformedAnswer) as exc:
            raise ControlClientError(f"the event stream from markd broke: {exc}") from exc
        finally:
            sock.close()

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            # No socket, or one left behind by a daemon that is gone: nobody to ask.
            message = f"markd is not running (no daemon at {self.socket_path})"
            raise DaemonNotRunning(message) from exc
        except PermissionError as exc:
            sock.close()
            raise ControlClientError(
                f"no permission to use {self.socket_path} (is this user in group markd?)",
                "api-permission-denied",
            ) from exc
        except OSError as exc:
            sock.close()
            raise ControlClientError(
                f"cannot connect to {self.socket_path}: {exc.strerror or exc}"
            ) from exc
        return sock


def _error_answer(status: int, answer: Any) -> ControlClientError:
    error = answer if isinstance(answer, dict) else {}
    return ControlClientError(
        str(error.get("message") or f"HTTP {status}"),
        str(error.get("error") or "api-error"),
        status,
    )


#: The longest event stream line markctl keeps while waiting for its end (the daemon's
#: events are a few KiB; a stream without line ends is not one).
MAX_EVENT_BYTES = 1 << 20


def _read_stream(parts: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Server-Sent Events as the server writes them: ``event:``/``data:`` blocks ending in
    an empty line; comment lines (``:`` heartbeats) and ``retry:`` are skipped."""
    data_lines: list[str] = []
    held = 0  # bytes of the event being read
    pending = b""
    for part in parts:
        pending += part
        *lines, pending = pending.split(b"\n")
        if len(pending) > MAX_EVENT_BYTES:
            raise ControlClientError(
                f"markd sent an event stream line longer than {MAX_EVENT_BYTES} bytes"
            )
        for raw in lines:
            try:
                line = raw.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError:
                raise ControlClientError(
                    "markd sent an event stream line that is not UTF-8"
                ) from None
            if not line:
                held = 0
                if data_lines:
                    try:
                        event = json.loads("\n".join(data_lines))
                    except ValueError:
                        raise ControlClientError(
                            "markd sent an event whose data is not JSON"
                        ) from None
                    data_lines = []
                    if isinstance(event, dict):
                        yield event
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if name == "data":
                data_lines.append(value.removeprefix(" "))
                held += len(raw)
                if held > MAX_EVENT_BYTES:
                    raise ControlClientError(
                        f"markd sent an event longer than {MAX_EVENT_BYTES} bytes"
                    )
