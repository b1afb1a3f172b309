"""The daemon as the Mark Unit front sees it (:class:`~markd.fronts.mark_unit.desk.TillBackend`):
checks for tills, the sold journal, the Local Module's sale reports.

A till's check runs the scan loop's own check (:meth:`ScanLoop.on_scan_checked`): parse, the
chain with its deadline, the decision table, the listeners (the journal record, events,
counts, metrics). It does **not** wait in the scan queue: a shop LAN of 20 tills each waiting
up to the online budget would put a kiosk scanner's scan 30 s behind them. The front runs at
most ``[mark_unit] max_checks`` checks at once instead. A reload may swap the chain while a
till's check is under way; the check keeps the chain it started with, and the reload waits for
it (:meth:`ServiceTills.retire`, within that chain's budget) before closing the chain's
clients, so the till gets a real verdict.

With ``[mark_unit] trust_till_tspiot`` in mode ``tspiot``, a position's ``esm`` address (the
ТС ПИоТ the till uses) is asked instead of ``[check.tspiot]`` when it is the till's own machine
(a loopback address the till names means its own, :func:`till_tspiot_host`) or a host of
``[mark_unit] till_tspiot_hosts``; that ТС ПИоТ gets the configured token, which is why no
other address is asked. A chain of its own per address
(at most :data:`MAX_TILL_TSPIOTS`, the oldest closed first), built from the configuration with
only the URL's host and port replaced, so the token, proxy and certificate rules stay the
configured ones. A reload retires those chains: the next check builds them from the new
settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from markd import codes
from markd.checks.chain import ANSWERS_SEEN, DEADLINE_MARGIN_S
from markd.errors import StoreError
from markd.fronts.mark_unit.desk import TillCheck
from markd.scanners import Scan
from markd.service.wiring import build_chain, sale_local_module

if TYPE_CHECKING:
    from markd.checks.chain import CheckChain
    from markd.checks.record import Recorder
    from markd.checks.results import SourceAnswer, SourceFailure
    from markd.codes import CodesOptions, MarkingCode
    from markd.config import Config
    from markd.service.metrics import VerdictMetrics
    from markd.service.scanloop import ScanLoop
    from markd.store import Store


class RunningService(Protocol):
    """What :class:`ServiceTills` reads of the :class:`~markd.service.Service` (a protocol,
    so this module does not import the one that imports it)."""

    config: Config
    scan_loop: ScanLoop
    store: Store | None
    #: Records each check service exchange (the chains built here use it too).
    record_exchange: Recorder
    #: How codes are parsed (a reload may change it).
    codes_options: CodesOptions

    #: Counts what the check services answered (the chains built here report to it too).
    verdict_metrics: VerdictMetrics

    @property
    def chain(self) -> CheckChain | None: ...


log = logging.getLogger("markd.fronts.mark_unit")

#: The name a till's check is journaled under (``MARKD_SCANNER``); reserved in the schema.
TILL_SCANNER = "mark-unit"
#: Chains kept for the ТС ПИоТ addresses trusted tills name.
MAX_TILL_TSPIOTS = 16
#: A host a till may name: an IP literal or a DNS name (checked before it becomes a URL).
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
#: Seconds a Local Module sale report after a till's commit may take.
REPORT_DEADLINE_S = 5.0


def till_tspiot_host(named: str, till: str, listed: Sequence[str] = ()) -> str | None:
    """The host to ask for the ТС ПИоТ a till at address ``till`` names as ``named``, or None
    when it may not be asked. A loopback address (or ``localhost``) is the till's own machine,
    so it becomes the till's address; the till's own address and the ``listed`` hosts may be
    asked, nothing else (the configured token goes to whoever is asked). An IPv6 address
    comes back in brackets, ready for a URL."""
    host = named[1:-1] if named.startswith("[") and named.endswith("]") else named
    address = _address(host)
    if address is None:  # a name: asked only when listed
        if host.lower() in (h.lower() for h in listed) and host.lower() != "localhost":
            return host
        if host.lower() != "localhost":
            return None
    if address is None or address.is_loopback:
        address = _address(till)  # the till's own machine
        if address is None:
            return None
    elif address != _address(till) and all(_address(h) != address for h in listed):
        return None
    return f"[{address}]" if address.version == 6 else str(address)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address (an IPv4-mapped IPv6 one as IPv4), or None when ``text`` is none."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _Flights:
    """Tills' checks under way on one chain."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()


class ServiceTills:
    """:class:`~markd.fronts.mark_unit.desk.TillBackend` over a running service."""

    def __init__(self, service: RunningService) -> None:
        self.service = service
        self._till_chains: OrderedDict[str, CheckChain] = OrderedDict()
        self._retired: set[asyncio.Task[None]] = set()
        #: Tills' checks under way, by the chain they run on (set when none is left).
        self._flights: dict[CheckChain, _Flights] = {}

    async def check_for_till(
        self,
        data: bytes,
        context: Mapping[str, str],
        *,
        received: float | None = None,
        until: float | None = None,
    ) -> TillCheck:
        seen: list[SourceAnswer | SourceFailure] = []
        # The chain is taken here, once: a reload swapping the service's chain meanwhile
        # waits for this check (retire) before closing the one it runs on.
        chain = (
            self._till_chain(context.get("till_esm", ""), context.get("till", ""))
            or self.service.chain
        )
        flights = None if chain is None else self._flights.setdefault(chain, _Flights())
        if flights is not None:
            flights.count += 1
            flights.idle.clear()
        token = ANSWERS_SEEN.set(seen)
        try:
            checked = await self.service.scan_loop.on_scan_checked(
                Scan(TILL_SCANNER, data, time.monotonic() if received is None else received),
                for_sale=False,
                context=context,
                chain=chain,
                until=until,
            )
        finally:
            ANSWERS_SEEN.reset(token)
            if flights is not None and chain is not None:
                flights.count -= 1
                if not flights.count:
                    flights.idle.set()
                    self._flights.pop(chain, None)
        return TillCheck(checked, tuple(seen))

    async def retire(self, old: CheckChain | None) -> None:
        """A reload replaces the service's chain ``old``: wait for the tills' checks under
        way on it and on the chains kept for tills' ТС ПИоТ addresses (each within its
        budget), and close the latter; the next check builds them from the new settings."""
        kept = list(self._till_chains.values())
        self._till_chains.clear()
        chains = [c for c in (old, *kept) if c is not None]
        waits = [self._flights[c].idle.wait() for c in chains if c in self._flights]
        if waits:
            budget = max(c.budget_s() for c in chains) + DEADLINE_MARGIN_S + 0.1
            tasks = [asyncio.ensure_future(w) for w in waits]
            _, late = await asyncio.wait(tasks, timeout=budget)
            for task in late:
                task.cancel()
        for chain in kept:
            await chain.aclose()

    def record_sale(self, codes: Sequence[MarkingCode], receipt: str, *, refund: bool) -> None:
        store = self.service.store
        if store is None:
            log.error("mark unit: no store open; %d sold code(s) not recorded", len(codes))
            return
        for code in codes:
            try:
                if refund:
                    store.mark_returned(code)
                else:
                    store.mark_sold(code, receipt)
            except StoreError as exc:
                log.error("mark unit: recording %s in the store failed: %s", code.ki, exc)

    async def report_sale(self, codes: Sequence[MarkingCode], *, refund: bool) -> None:
        chain = self.service.chain
        client = sale_local_module(
            self.service.config, None if chain is None else chain.local_module
        )
        if client is None:
            return
        deadline = time.monotonic() + REPORT_DEADLINE_S
        try:
            if refund:
                update = await client.return_(list(codes), deadline)
            else:
                update = await client.sell(list(codes), deadline)
        except Exception as exc:  # noqa: BLE001 - a report is an aid; the store has the sale
            log.warning("mark unit: Local Module sale report failed: %s", type(exc).__name__)
            return
        if not update.ok:
            log.warning(
                "mark unit: Local Module took %d of %d sold code(s)",
                len(update.accepted),
                len(codes),
            )

    def budget_s(self) -> float:
        chain = self.service.chain
        return 0.0 if chain is None else chain.budget_s() + DEADLINE_MARGIN_S

    def parse_code(self, data: bytes) -> MarkingCode:
        return codes.parse(data, self.service.codes_options)

    def _till_chain(self, esm: str, till: str = "") -> CheckChain | None:
        """The chain asking the ТС ПИоТ at ``esm`` (``host:port``) that the till at ``till``
        names, when the configuration trusts it (:func:`till_tspiot_host`), else None (the
        service's chain)."""
        config = self.service.config
        tspiot = config.check.tspiot
        if not esm or not config.mark_unit.trust_till_tspiot:
            return None
        if config.check.mode != "tspiot" or tspiot is None or self.service.store is None:
            return None
        host, _, port_text = esm.rpartition(":")
        if (
            not _HOST.fullmatch(host)
            or not (port_text.isascii() and port_text.isdigit())
            or not 0 < int(port_text) < 65536
        ):
            log.warning("mark unit: a till named a ТС ПИоТ address that is not HOST:PORT")
            return None
        asked = till_tspiot_host(host, till, config.mark_unit.till_tspiot_hosts)
        if asked is None:
            log.warning(
                "mark unit: till %s named a ТС ПИоТ on %s, neither its own address nor in "
                "[mark_unit] till_tspiot_hosts; asking the configured one",
                till,
                host,
            )
            return None
        where = f"{asked}:{int(port_text)}"
        chain = self._till_chains.get(where)
        if chain is not None:
            self._till_chains.move_to_end(where)
            return chain
        scheme = urlsplit(tspiot.url).scheme
        url = f"{scheme}://{where}"
        trusted = dataclasses.replace(
            config,
            check=dataclasses.replace(config.check, tspiot=dataclasses.replace(tspiot, url=url)),
        )
        chain = build_chain(trusted, self.service.store, recorder=self.service.record_exchange)
        chain.observer = self.service.verdict_metrics.record_source
        self._till_chains[where] = chain
        while len(self._till_chains) > MAX_TILL_TSPIOTS:
            _, old = self._till_chains.popitem(last=False)
            task = asyncio.get_running_loop().create_task(old.aclose())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        log.info("mark unit: asking the ТС ПИоТ a till named at %s", url)
        return chain

    async def aclose(self) -> None:
        """Close the chains of the tills' ТС ПИоТ addresses."""
        chains = list(self._till_chains.values())
        self._till_chains.clear()
        for chain in chains:
            await chain.aclose()
        if self._retired:
            await asyncio.wait(list(self._retired), timeout=5.0)

    def organisation(self) -> tuple[str, str]:
        terminal = self.service.config.terminal
        return terminal.inn, terminal.kpp
