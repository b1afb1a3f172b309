"""What the control API needs of the daemon, and nothing more.

The API is written against :class:`ControlledService`; :class:`markd.service.Service`
implements it. The API never reaches into the service's parts (its chain, scanners or
store): what ``GET /v1/status`` shows is assembled by the service itself
(:meth:`ControlledService.status_snapshot`), so a new part of the daemon shows up there
without the API changing, and a test (or a benchmark) can stand a small stub in for the
whole daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from markd.checks.verdict import CheckedCode, Verdict
    from markd.events import EventHub
    from markd.receipts import ReceiptOperations


class ReloadOutcome(Protocol):
    """The outcome of a reload, as ``POST /v1/reload`` answers it."""

    @property
    def ok(self) -> bool:
        """The new configuration is in force."""
        ...

    @property
    def message(self) -> str:
        """What was applied, or why it was refused."""
        ...

    @property
    def generation(self) -> int:
        """Reloads tried since the daemon started, this one included."""
        ...


class ControlledService(Protocol):
    """The daemon as the control API sees it."""

    #: Live events for ``GET /v1/events`` (each client subscribes with its own queue).
    events: EventHub
    #: The sale session behind the receipt endpoints; None when ``[sale] mode`` is off.
    receipts: ReceiptOperations | None

    async def submit(
        self, data: bytes, scanner: str, *, price_kopecks: int | None = None
    ) -> Verdict:
        """Decide on a code exactly like a scan (journal, events), without selling it.
        ``price_kopecks``: the price the unit is sold at, for the price rules."""
        ...

    async def check_unit(self, data: bytes, scanner: str, *, price_kopecks: int) -> CheckedCode:
        """:meth:`submit` for a unit about to be sold at ``price_kopecks``: the verdict with the
        code as it was parsed on the way (or the parser's error), which the sale takes as it
        is (the code is parsed once)."""
        ...

    async def reload(self) -> ReloadOutcome:
        """Re-read the configuration and apply it between two scans, as SIGHUP does."""
        ...

    def metrics(self, api: Mapping[str, Any] | None = None) -> bytes:
        """``GET /metrics``: the daemon's metrics in the Prometheus text format 0.0.4, with
        ``api`` (the server's own part of ``GET /v1/status``: its connections and refused
        requests). Cheap, like :meth:`status_snapshot`."""
        ...

    async def metrics_in_turns(self, api: Mapping[str, Any] | None = None) -> bytes:
        """:meth:`metrics` written a few families per turn of the event loop, so that a scan
        arriving during a scrape waits for one part of it, not all of it."""
        ...

    def status_snapshot(self) -> dict[str, Any]:
        """``GET /v1/status`` without its ``api`` part (the server adds that): ``service``,
        ``scanners``, ``sources``, ``store``, ``printer``. Cheap: no device or network I/O,
        since a screen may poll it."""
        ...
