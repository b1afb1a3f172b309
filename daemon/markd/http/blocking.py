"""The HTTP client for code that runs in a thread of its own, not on an event loop.

The fleet sync runs in a child process and the ATOL web backend on the sale session's worker
thread; both block on purpose. :class:`BlockingHTTPClient` gives them the very client the
check services use (:class:`~markd.http.client.HTTPClient`: h11 framing, deadlines, proxies,
the same errors from :mod:`markd.http.errors`) by running it on a private event loop:

* the loop is made at the first call and each call runs it with ``run_until_complete``
  until that call is done; between calls nothing runs, yet pooled connections stay open, so
  the ATOL backend keeps one kept-alive connection to its web server across requests (a
  connection the server closed meanwhile is noticed before reuse: see
  :meth:`markd.http.connection.Connection.fit_for_reuse`);
* it is **confined to one thread**: the first thread that makes a request owns it, and a
  call from any other thread raises :class:`RuntimeError` (an event loop is not thread-safe,
  and two threads sharing one connection would interleave two exchanges). A caller whose
  work moves to another thread makes a new client there;
* it cannot be called from a thread whose own event loop is running (that code should await
  :class:`~markd.http.client.HTTPClient` instead): that is a :class:`RuntimeError` too;
* :meth:`BlockingHTTPClient.close` drops the pooled connections and closes the loop. It may
  be called from the owning thread, or from another once the owner has stopped using the
  client (a worker that has ended: the sale desk closes its printer after its worker), but
  never while a call is under way. From a thread whose own loop runs (a daemon shutting down
  from its loop), the cleanup runs in a short-lived helper thread.

Deadlines are ``time.monotonic()`` values, exactly as for the asyncio client.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from markd.http.client import READ_SIZE, HTTPClient, Response, StreamResponse
from markd.proxy import ProxySettings

T = TypeVar("T")


class BlockingHTTPClient:
    """:class:`~markd.http.client.HTTPClient` for one thread that is not on an event loop
    (see the module docstring). Usable as a context manager that closes it."""

    def __init__(
        self,
        *,
        user_agent: str = "markd",
        allow_self_signed_loopback: bool = False,
        max_idle: int = 1,
        proxy: ProxySettings | None = None,
    ) -> None:
        self._client = HTTPClient(
            user_agent=user_agent,
            allow_self_signed_loopback=allow_self_signed_loopback,
            max_idle=max_idle,
            proxy=proxy,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: threading.Thread | None = None
        self._busy = False
        self._closed = False

    @property
    def owner(self) -> threading.Thread | None:
        """The thread the client belongs to (None until its first call)."""
        return self._owner

    @property
    def closed(self) -> bool:
        return self._closed

    def request(
        self,
        method: str,
        url: str,
        *,
        deadline: float,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        json_body: Any = None,
    ) -> Response:
        """:meth:`HTTPClient.request <markd.http.client.HTTPClient.request>`, blocking."""
        return self._run(
            self._client.request(
                method, url, deadline=deadline, headers=headers, body=body, json_body=json_body
            )
        )

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        url: str,
        *,
        max_bytes: int,
        deadline: float | None = None,
        read_timeout: float | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Iterator[BlockingStreamResponse]:
        """:meth:`HTTPClient.stream <markd.http.client.HTTPClient.stream>`, blocking: each
        :meth:`BlockingStreamResponse.read` runs the loop until that piece has come."""
        manager = self._client.stream(
            method,
            url,
            max_bytes=max_bytes,
            deadline=deadline,
            read_timeout=read_timeout,
            headers=headers,
            body=body,
        )
        answer = self._run(manager.__aenter__())
        try:
            yield BlockingStreamResponse(self, answer)
        except BaseException as exc:
            if not self._run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._run(manager.__aexit__(None, None, None))

    def close(self) -> None:
        """Close the pooled connections and the private loop; the client cannot be used
        again. Safe to call more than once. Raises :class:`RuntimeError` while a call is
        under way (in the owning thread)."""
        if self._closed:
            return
        if self._busy:
            raise RuntimeError(
                f"{self._describe()} is in a call in thread {self._owner_name()}; "
                "close it when that call has returned"
            )
        self._closed = True
        loop = self._loop
        self._loop = None
        if loop is None:
            return
        if _running_loop() is None:
            _shut_down(loop, self._client)
        else:
            # This thread runs a loop of its own, so ours cannot run here.
            helper = threading.Thread(
                target=_shut_down, args=(loop, self._client), name="markd-http-close"
            )
            helper.start()
            helper.join()

    def __enter__(self) -> BlockingHTTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{self._describe()}, thread {self._owner_name()}>"

    # -- internals ------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            loop = self._enter()
        except BaseException:
            coro.close()  # never started: no "was never awaited" warning
            raise
        task = loop.create_task(coro)
        self._busy = True
        try:
            return loop.run_until_complete(task)
        finally:
            if not task.done():
                # Interrupted from outside (KeyboardInterrupt in a callback): end the exchange
                # now, so that it cannot go on during the next call.
                task.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(task)
            self._busy = False

    def _enter(self) -> asyncio.AbstractEventLoop:
        """The loop, after checking that this thread may run it."""
        if self._closed:
            raise RuntimeError(f"{self._describe()} is closed")
        current = threading.current_thread()
        if self._owner is None:
            self._owner = current
        elif self._owner is not current:
            raise RuntimeError(
                f"{self._describe()} belongs to thread {self._owner_name()} and was called "
                f"from thread {current.name!r}: make one client per thread"
            )
        if _running_loop() is not None:
            raise RuntimeError(
                f"{self._describe()} was called from a running event loop; await "
                "markd.http.client.HTTPClient there instead"
            )
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def _describe(self) -> str:
        return "BlockingHTTPClient"

    def _owner_name(self) -> str:
        return repr(self._owner.name) if self._owner is not None else "(none yet)"


class BlockingStreamResponse:
    """A streamed answer of :meth:`BlockingHTTPClient.stream`: ``status``, ``reason`` and
    ``headers`` (lower-case names) at once, the body through :meth:`read` or iteration."""

    def __init__(self, client: BlockingHTTPClient, answer: StreamResponse) -> None:
        self._client = client
        self._answer = answer
        self.status = answer.status
        self.reason = answer.reason
        self.headers = answer.headers
        self.elapsed_ms = answer.elapsed_ms
        self.reused = answer.reused

    @property
    def received(self) -> int:
        """Bytes of the body handed out so far."""
        return self._answer.received

    def read(self, amount: int = READ_SIZE) -> bytes:
        """Up to ``amount`` bytes of the body, at least one; ``b""`` at its end (the errors
        of :meth:`StreamResponse.read <markd.http.client.StreamResponse.read>`)."""
        return self._client._run(self._answer.read(amount))

    def __iter__(self) -> Iterator[bytes]:
        while block := self.read():
            yield block

    def __repr__(self) -> str:
        return f"<BlockingStreamResponse {self.status} {self.reason!r}>"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _shut_down(loop: asyncio.AbstractEventLoop, client: HTTPClient) -> None:
    """Drop ``client``'s pooled connections and close ``loop``; runs in a thread where no
    other loop runs. Pooled connections are aborted rather than closed: nothing is in flight
    on them, and a TLS goodbye could wait on the peer."""

    async def drop() -> None:
        client.abort_idle()
        await asyncio.sleep(0)  # the transports finish closing on the next turn

    try:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(drop())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


__all__ = ["BlockingHTTPClient", "BlockingStreamResponse"]
