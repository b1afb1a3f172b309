"""What every check service client is: :class:`CheckClient`.

The CDN (:mod:`markd.checks.online`), the Local Module (:mod:`markd.checks.local_module`) and
the ТС ПИоТ (:mod:`markd.checks.tspiot`) speak different protocols, but the chain and the
service treat them alike, through this base:

* :meth:`CheckClient.check` answers one code by a deadline with a
  :class:`~markd.checks.results.SourceAnswer` or a :class:`~markd.checks.results.SourceFailure`
  and never raises for anything the service or the network does;
* :meth:`CheckClient.status` says what the client last saw (``markctl status``,
  ``GET /v1/status``), :meth:`CheckClient.probe` asks the service now so that the status is
  current (``markctl status`` without a daemon);
* :meth:`CheckClient.start` begins the client's background work once the daemon is ready (the
  CDN host list, the Local Module's status), :meth:`CheckClient.aclose` ends it and closes the
  connections (:meth:`CheckClient.close` without waiting, for code that has no loop).

The base also does, once for the three, the two things each used to do its own way:

* **the recorder guard** (:meth:`CheckClient.record`): every exchange goes to the recorder,
  and a recorder that raises (a journal that cannot be written, a bug) is logged and
  forgotten — the record never costs a sale its check;
* **HTTP client errors as failures** (:func:`transport_failure_kind`,
  :meth:`CheckClient.transport_failure`, :meth:`CheckClient.status_failure`): a timeout is
  ``timeout``, an answer that is not HTTP is ``bad-answer``, a proxy's own failure keeps its
  kind (``proxy-auth`` …), anything else is ``unreachable``; an HTTP status that is not an
  answer is ``unauthorized``, ``throttled``, ``server-error`` or ``http-error``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

from markd.checks.record import Exchange, Recorder
from markd.checks.results import (
    FailureKind,
    SourceAnswer,
    SourceFailure,
    SourceKind,
    failure_kind_for_status,
)
from markd.codes import MarkingCode
from markd.http.errors import HTTPError

log = logging.getLogger(__name__)

#: :attr:`HTTPError.kind` → failure kind. The HTTP client's kinds are failure kinds of the
#: same name (a :class:`~markd.http.errors.ProxyError` keeps its proxy kind; a body cut short
#: is ``unreachable``: the peer went away mid-answer).
TRANSPORT_KINDS: dict[str, FailureKind] = {
    "timeout": "timeout",
    "unreachable": "unreachable",
    "bad-answer": "bad-answer",
    "proxy-unreachable": "proxy-unreachable",
    "proxy-timeout": "proxy-timeout",
    "proxy-auth": "proxy-auth",
    "proxy-error": "proxy-error",
}


def transport_failure_kind(exc: HTTPError) -> FailureKind:
    """The failure kind of an HTTP client error; a kind the table does not know counts as
    ``unreachable`` (nothing usable was exchanged)."""
    return TRANSPORT_KINDS.get(exc.kind, "unreachable")


class CheckClient(ABC):
    """A client of one check service (see the module docstring).

    Subclasses set :attr:`source` and implement :meth:`check` and :meth:`status`; they
    override :meth:`probe`, :meth:`start`, :meth:`close` and :meth:`aclose` when they have
    something to ask, to run or to release. Use from one event loop.
    """

    #: Which service this is, as verdicts and failures name it: ``cdn``, ``lm`` or ``tspiot``.
    source: SourceKind
    #: Receives every exchange (None: nothing is recorded).
    _recorder: Recorder | None = None

    def __init__(self, *, recorder: Recorder | None = None) -> None:
        self._recorder = recorder

    @abstractmethod
    async def check(self, code: MarkingCode, deadline: float) -> SourceAnswer | SourceFailure:
        """Answer about ``code`` before ``deadline`` (``time.monotonic()``); never raise for
        the service's or the network's problems."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """What the client knows of its service, JSON-ready, without any I/O."""

    async def probe(self, deadline: float) -> None:
        """Ask the service now for what :meth:`status` shows (``markctl status`` in-process);
        never raises for the service's problems. By default there is nothing to ask."""
        return None

    def start(self) -> None:
        """Begin background work (the daemon calls it after ``READY=1``). None by default."""
        return None

    def close(self) -> None:
        """Stop background work and close idle connections, without waiting. The client may
        be used again afterwards (it opens connections anew)."""
        return None

    async def aclose(self) -> None:
        """Stop background work and wait for it, let the client write what it keeps, then
        close its connections."""
        self.close()

    # -- for subclasses -----------------------------------------------------------------------

    def record(self, exchange: Exchange) -> None:
        """Hand one exchange to the recorder. A recorder that raises is logged, never passed
        on: a broken journal must not break a check, nor a sale."""
        recorder = self._recorder
        if recorder is None:
            return
        try:
            recorder(exchange)
        except Exception:  # noqa: BLE001 - the record is an aid, never worth a verdict
            log.exception("recording a %s exchange failed", self.source)

    def transport_failure(
        self,
        exc: HTTPError,
        detail: str,
        latency_ms: float,
        *,
        http_status: int | None = None,
    ) -> SourceFailure:
        """The failure for an exchange that ended in an HTTP client error."""
        return SourceFailure(
            self.source, transport_failure_kind(exc), http_status, detail, latency_ms
        )

    def status_failure(self, status: int, detail: str, latency_ms: float) -> SourceFailure:
        """The failure for an HTTP status that is not an answer (401/403, 429, 5xx, other)."""
        return SourceFailure(
            self.source, failure_kind_for_status(status), status, detail, latency_ms
        )
