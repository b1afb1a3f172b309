"""The hang hook: SIGUSR2 blocks the daemon's event loop, as a bug that hangs it would (tests
only).

With ``MARKD_TEST_HOOKS=1`` in the environment of a daemon the tests start (and the tests'
``sitecustomize`` on its ``PYTHONPATH``, see :mod:`markd.testing.hooks`), :func:`install`
wraps :meth:`markd.service.Service.run` so that, when the service handles signals, SIGUSR2
journals a ``test-hook`` record and then sleeps :data:`HANG_S` seconds on the loop. The
watchdog pings stop while the process lives on: tests/integration/test_watchdog.py and the
systemd system test prove that the watchdog notices. The daemon itself knows nothing of it:
without the hook SIGUSR2 keeps its default action (the process ends).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

TEST_HOOKS_ENV = "MARKD_TEST_HOOKS"
HANG_S = 3600.0
#: The ``test-hook`` record's MESSAGE_ID; the kind exists only where the hook is installed.
MESSAGE_ID = "898a658b6f084cb8be7bad892a90785d"

_INSTALLED = "_markd_hang_hook"


def install() -> None:
    """Give every service that handles signals the SIGUSR2 hang (once per process)."""
    from markd.service.lifecycle import Service
    from markd.systemd import MESSAGE_IDS

    if getattr(Service.run, _INSTALLED, False):
        return
    MESSAGE_IDS.setdefault("test-hook", MESSAGE_ID)
    run = Service.run

    async def run_with_hang(
        self: Service, stop_event: asyncio.Event | None = None, *, handle_signals: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        if handle_signals:
            loop.add_signal_handler(signal.SIGUSR2, hang, self)
        try:
            await run(self, stop_event, handle_signals=handle_signals)
        finally:
            if handle_signals:
                loop.remove_signal_handler(signal.SIGUSR2)

    setattr(run_with_hang, _INSTALLED, True)
    Service.run = run_with_hang  # type: ignore[method-assign]


def hang(service: Any) -> None:
    """Block the loop as a hang would, after saying so in the journal."""
    service.event_log.event(
        "test-hook",
        f"test hook: SIGUSR2 blocks the event loop for {HANG_S:g} s",
        priority="warning",
        hook="hang",
    )
    time.sleep(HANG_S)
