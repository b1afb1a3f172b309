"""Test-only hook: stop the process dead at a named step of a receipt.

When the environment variable ``MARKD_FISCAL_KILL_AT`` names a step, the process sends itself
SIGKILL on reaching it: no ``finally`` block, no flush, no atexit handler runs, exactly as when
power fails or the OOM killer strikes. The recovery tests start ``markctl sell`` with it set to
each step in turn and check that the next run neither loses nor duplicates the receipt.

Never set it on a till. The steps are listed in :data:`STEPS` and in ``docs/fiscal.md``.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "MARKD_FISCAL_KILL_AT"

#: The named steps, in the order a sale reaches them.
STEPS = (
    "opened",  # the receipt is journaled as open, nothing validated yet
    "validating",  # a unit is journaled as being validated, the ККТ not asked yet
    "validated",  # the ККТ has its answer on the code, not yet accepted
    "accepted",  # the ККТ accepted the code, the journal does not know yet
    "added",  # the unit is journaled as a position of the receipt
    "paid",  # the payment is journaled: from here the receipt must come to exist
    "closing",  # the close attempt is journaled, the ККТ not asked yet
    "sent-sell",  # atol-web: the receipt request reached the web server, no answer read yet
    "kkt-receipt-open",  # emulator: the virtual ККТ has opened the receipt on its side
    "printed",  # the ККТ fiscalised the receipt, the journal does not know yet
    "closed",  # the receipt is journaled as closed, the store not yet told
    "stored",  # the store's sold journal has the units, the Local Module not yet told
)


def kill_point(step: str) -> None:
    """SIGKILL this process if ``MARKD_FISCAL_KILL_AT`` names ``step`` (tests only)."""
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
