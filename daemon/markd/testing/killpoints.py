"""Kill points: stop a process dead at a named step of a receipt (tests only).

When the environment variable ``MARKD_FISCAL_KILL_AT`` names a step, the process sends itself
SIGKILL on reaching it: no ``finally`` block, no flush, no atexit handler runs, exactly as when
power fails or the OOM killer strikes. The recovery tests start ``markctl sell`` with it set to
each step in turn and check that the next run neither loses nor duplicates the receipt.

Production code holds no kill point. :func:`install` wraps the functions at which the steps
are reached — the session journal's ``append`` (the journaled steps), the printer's judging
of a validated code and its adding of an accepted one, the ATOL web transport's exchange and
the ATOL backend's fiscalising call — so the process dies right after (or before) them. The
tests' ``sitecustomize`` (``tests/sitehooks``, see :mod:`markd.testing.hooks`) installs it at
interpreter start in the processes they run with the variable set.

The steps are listed in :data:`STEPS` and in ``docs/fiscal.md``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

KILL_ENV = "MARKD_FISCAL_KILL_AT"

#: The named steps, in the order a sale reaches them.
STEPS = (
    "opened",  # the receipt is journaled as open, nothing validated yet
    "validating",  # a unit is journaled as being validated, the ККТ not asked yet
    "validated",  # the ККТ has its answer on the code, not yet accepted
    "accepted",  # the ККТ accepted the code, the journal does not know yet
    "added",  # the unit is journaled as a position of the receipt
    "close-asked",  # a close's Idempotency-Key is journaled, the payment not yet
    "paid",  # the payment is journaled: from here the receipt must come to exist
    "closing",  # the close attempt is journaled, the ККТ not asked yet
    "sent-sell",  # atol-web: the receipt request reached the web server, no answer read yet
    "kkt-receipt-open",  # the ККТ has opened the receipt (emulator: inside the virtual ККТ;
    # shtrih: markd dies right after the device answered 0x8D)
    "shtrih-position",  # shtrih: the first position is registered (FF46), its tags not yet
    "shtrih-bound",  # shtrih: a code is bound to its position (FF67), the receipt still open
    "sent-close",  # shtrih: the ККТ took the close (FF45 confirmed), no answer read yet
    "printed",  # the ККТ fiscalised the receipt, the journal does not know yet
    "closed",  # the receipt is journaled as closed, the store not yet told
    "stored",  # the store's sold journal has the units, the Local Module not yet told
)

#: Session journal events → the step reached once the record is on disk.
JOURNALED_STEPS = {
    "open": "opened",
    "unit-validating": "validating",
    "unit-added": "added",
    "close-requested": "close-asked",
    "paid": "paid",
    "closing": "closing",
    "closed": "closed",
    "stored": "stored",
}

_INSTALLED = "_markd_kill_points"


def kill_point(step: str) -> None:
    """SIGKILL this process if ``MARKD_FISCAL_KILL_AT`` names ``step``."""
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def install() -> None:
    """Put the kill points in place (once per process; a second call does nothing). The
    virtual ККТ reads ``MARKD_FISCAL_KILL_AT`` itself for its own step, ``kkt-receipt-open``."""
    from markd.fiscal import atol, base
    from markd.fiscal.journal import SessionJournal

    if getattr(SessionJournal.append, _INSTALLED, False):
        return

    append = SessionJournal.append

    def append_then_step(
        self: SessionJournal, event: str, receipt: str | None, **facts: Any
    ) -> dict[str, Any]:
        record = append(self, event, receipt, **facts)
        step = JOURNALED_STEPS.get(event)
        if step is not None:
            kill_point(step)
        return record

    judge = base.judge_validation

    def judge_after_validated(*args: Any, **kwargs: Any) -> Any:
        kill_point("validated")  # the answer is in, the code neither accepted nor declined
        return judge(*args, **kwargs)

    add_position = base.FiscalPrinter.add_position

    def add_after_accepted(self: base.FiscalPrinter, op_id: str, position: Any) -> None:
        kill_point("accepted")  # the ККТ accepted the code; the position is not made yet
        add_position(self, op_id, position)

    exchange = atol.WebRequestsTransport._exchange

    def exchange_then_sent(
        self: atol.WebRequestsTransport, method: str, path: str, body: Any, deadline: float
    ) -> tuple[int, Any]:
        status, answer = exchange(self, method, path, body, deadline)
        # The request is with the web server (taken, or known by its uuid); no result read yet.
        if method == "POST" and (200 <= status < 300 or status == 409):
            tasks = body.get("request") if isinstance(body, dict) else None
            if tasks:
                kill_point(f"sent-{tasks[0].get('type')}")
        return status, answer

    fiscalise = atol.AtolPrinter._fiscalise

    def fiscalise_then_printed(self: atol.AtolPrinter, *args: Any, **kwargs: Any) -> Any:
        result = fiscalise(self, *args, **kwargs)
        kill_point("printed")  # the ККТ registered the receipt; the journal does not know
        return result

    _install_shtrih()
    for wrapper in (append_then_step, add_after_accepted, exchange_then_sent):
        setattr(wrapper, _INSTALLED, True)
    SessionJournal.append = append_then_step  # type: ignore[method-assign]
    base.judge_validation = judge_after_validated
    base.FiscalPrinter.add_position = add_after_accepted  # type: ignore[method-assign]
    atol.WebRequestsTransport._exchange = exchange_then_sent  # type: ignore[method-assign]
    atol.AtolPrinter._fiscalise = fiscalise_then_printed  # type: ignore[method-assign]


#: Shtrih commands after whose answer a step is reached.
_SHTRIH_AFTER = {0x8D: "kkt-receipt-open", 0xFF46: "shtrih-position", 0xFF67: "shtrih-bound"}


def _install_shtrih() -> None:
    """The Shtrih backend's steps: after the device answered a receipt's commands, after it
    took the close but before its answer is read, and after the receipt is registered."""
    from markd.fiscal.shtrih import link, printer

    call = printer.ShtrihPrinter._call

    def call_then_step(self: printer.ShtrihPrinter, request: Any) -> bytes:
        answer = call(self, request)
        step = _SHTRIH_AFTER.get(request.command)
        if step is not None:
            kill_point(step)
        return answer

    await_answer = link.Link._await_answer

    def await_after_sent(self: link.Link, request: Any, *args: Any, **kwargs: Any) -> bytes:
        if request.command == 0xFF45:
            kill_point("sent-close")  # the ККТ confirmed the close frame; it runs it now
        return await_answer(self, request, *args, **kwargs)

    fiscalise = printer.ShtrihPrinter._fiscalise

    def fiscalise_then_printed(self: printer.ShtrihPrinter, *args: Any, **kwargs: Any) -> Any:
        result = fiscalise(self, *args, **kwargs)
        kill_point("printed")
        return result

    printer.ShtrihPrinter._call = call_then_step  # type: ignore[method-assign]
    link.Link._await_answer = await_after_sent  # type: ignore[method-assign]
    printer.ShtrihPrinter._fiscalise = fiscalise_then_printed  # type: ignore[method-assign]
