"""The daemon as the Mark Unit front sees it (:class:`~markd.fronts.mark_unit.desk.TillBackend`):
checks for tills, the sold journal, the Local Module's sale reports.

A till's check runs the scan loop's own check (:meth:`ScanLoop.on_scan_checked`): parse, the
chain with its deadline, the decision table, the listeners (the journal record, events,
counts, metrics). It does **not** wait in the scan queue: a shop LAN of 20 tills each waiting
up to the online budget would put a kiosk scanner's scan 30 s behind them. The front runs at
most ``[mark_unit] max_checks`` checks at once instead. A reload may swap the chain while a
till's check is under way; the check keeps the chain it started with and fails to the
decision table's no-answer row if that chain's clients close under it (the till asks again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from markd.checks.chain import ANSWERS_SEEN
from markd.errors import StoreError
from markd.fronts.mark_unit.desk import TillCheck
from markd.scanners import Scan
from markd.service.wiring import sale_local_module

if TYPE_CHECKING:
    from markd.checks.chain import CheckChain
    from markd.checks.results import SourceAnswer, SourceFailure
    from markd.codes import MarkingCode
    from markd.config import Config
    from markd.service.scanloop import ScanLoop
    from markd.store import Store


class RunningService(Protocol):
    """What :class:`ServiceTills` reads of the :class:`~markd.service.Service` (a protocol,
    so this module does not import the one that imports it)."""

    config: Config
    scan_loop: ScanLoop
    store: Store | None

    @property
    def chain(self) -> CheckChain | None: ...


log = logging.getLogger("markd.fronts.mark_unit")

#: The name a till's check is journaled under (``MARKD_SCANNER``); reserved in the schema.
TILL_SCANNER = "mark-unit"
#: Seconds a Local Module sale report after a till's commit may take.
REPORT_DEADLINE_S = 5.0


class ServiceTills:
    """:class:`~markd.fronts.mark_unit.desk.TillBackend` over a running service."""

    def __init__(self, service: RunningService) -> None:
        self.service = service

    async def check_for_till(self, data: bytes, context: Mapping[str, str]) -> TillCheck:
        seen: list[SourceAnswer | SourceFailure] = []
        token = ANSWERS_SEEN.set(seen)
        try:
            checked = await self.service.scan_loop.on_scan_checked(
                Scan(TILL_SCANNER, data, time.monotonic()), for_sale=False, context=context
            )
        finally:
            ANSWERS_SEEN.reset(token)
        return TillCheck(checked, tuple(seen))

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

    def organisation(self) -> tuple[str, str]:
        terminal = self.service.config.terminal
        return terminal.inn, terminal.kpp
