"""The markd daemon: :class:`Service` and the parts it runs (see :mod:`markd.service.lifecycle`
for the start and stop order, and each module for its one job)."""

from markd.service.lifecycle import SALE_STOP_WAIT_S, Service
from markd.service.listeners import (
    CheckedScan,
    Notifier,
    VerdictListener,
    VerdictSink,
)
from markd.service.reload import RELOADABLE_SECTIONS, ReloadResult
from markd.service.storesync import StoreSync

__all__ = [
    "RELOADABLE_SECTIONS",
    "SALE_STOP_WAIT_S",
    "CheckedScan",
    "Notifier",
    "ReloadResult",
    "Service",
    "StoreSync",
    "VerdictListener",
    "VerdictSink",
]
