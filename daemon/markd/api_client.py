"""A small blocking client of the control API over its Unix socket (``markctl`` uses it).

Standard library only: :mod:`http.client` with the connection's socket swapped for an
``AF_UNIX`` one. Every call opens its own connection; ``markctl`` makes one or two requests.

>>> client = ControlClient("/run/markd/control.sock")      # doctest: +SKIP
>>> client.check("0104680029460908215jcmHzLmkdPML\\x1d938p9E")["decision"]  # doctest: +SKIP
'allow'

:class:`DaemonNotRunning` means there is nobody to ask (no socket file, or a file left behind
by a daemon that is gone), which is when ``markctl`` does the work in-process instead; any
other failure (no permission on the socket, an error answer) is a :class:`ControlClientError`.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

from markd.errors import MarkdError

#: Seconds a request may take (a check through the chain takes up to a few seconds).
REQUEST_TIMEOUT_S = 15.0
#: Seconds without a byte on an event stream before it counts as dead (heartbeats every 15 s).
STREAM_TIMEOUT_S = 60.0


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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


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
        connection = self._connect(self.timeout)
        try:
            response = self._send(connection, method, path, body)
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControlClientError(f"markd at {self.socket_path} did not answer: {exc}") from exc
        finally:
            connection.close()
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            raise ControlClientError(
                f"markd answered {path} with something other than JSON"
            ) from None
        if response.status >= 400:
            error = answer if isinstance(answer, dict) else {}
            raise ControlClientError(
                str(error.get("message") or f"HTTP {response.status}"),
                str(error.get("error") or "api-error"),
                response.status,
            )
        return answer

    def events(self, kinds: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Follow ``GET /v1/events``: each event as ``{"seq", "kind", "time", "data"}``.

        Ends when the daemon closes the stream (it stopped); a stream silent for
        :data:`STREAM_TIMEOUT_S` (no heartbeat either) raises :class:`ControlClientError`.
        """
        path = "/v1/events" + (f"?kinds={','.join(kinds)}" if kinds else "")
        connection = self._connect(STREAM_TIMEOUT_S)
        try:
            response = self._send(connection, "GET", path, None)
            if response.status != 200:
                data = response.read()
                try:
                    error = json.loads(data)
                except ValueError:
                    error = {}
                raise ControlClientError(
                    str(error.get("message") or f"HTTP {response.status}"),
                    str(error.get("error") or "api-error"),
                    response.status,
                )
            yield from _read_stream(response)
        except TimeoutError as exc:
            raise ControlClientError(
                f"markd at {self.socket_path} sent nothing for {STREAM_TIMEOUT_S:g} s"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ControlClientError(f"the event stream from markd broke: {exc}") from exc
        finally:
            connection.close()

    def _connect(self, timeout: float) -> _UnixConnection:
        connection = _UnixConnection(self.socket_path, timeout)
        try:
            connection.connect()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            # No socket, or one left behind by a daemon that is gone: nobody to ask.
            message = f"markd is not running (no daemon at {self.socket_path})"
            raise DaemonNotRunning(message) from exc
        except PermissionError as exc:
            raise ControlClientError(
                f"no permission to use {self.socket_path} (is this user in group markd?)",
                "api-permission-denied",
            ) from exc
        except OSError as exc:
            raise ControlClientError(
                f"cannot connect to {self.socket_path}: {exc.strerror or exc}"
            ) from exc
        return connection

    @staticmethod
    def _send(
        connection: _UnixConnection, method: str, path: str, body: Any
    ) -> http.client.HTTPResponse:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=headers)
        return connection.getresponse()


def _read_stream(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """Server-Sent Events as the server writes them: ``event:``/``data:`` blocks ending in
    an empty line; comment lines (``:`` heartbeats) and ``retry:`` are skipped."""
    data_lines: list[str] = []
    while True:
        raw = response.readline()
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data_lines:
                event = json.loads("\n".join(data_lines))
                data_lines = []
                if isinstance(event, dict):
                    yield event
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data_lines.append(value.removeprefix(" "))
