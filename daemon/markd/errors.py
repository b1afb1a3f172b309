"""The markd error tree.

Every error markd raises on purpose derives from :class:`MarkdError`. Each carries a
machine-readable ``reason`` (a short kebab-case code that lands in the journal as
``MARKD_REASON`` and in JSON output) and a human ``message``.

::

    MarkdError
    ├── CodeError          a scanned text is not a usable marking code (markd.codes)
    ├── ConfigError        a configuration file or value is wrong (markd.config)
    ├── StoreError         the LMDB store cannot be opened, read or written (markd.store)
    │   └── StoreAccessError   permissions: the process may not open the store (permanent)
    ├── ScannerError       a scanner URL is wrong or a device cannot be used (markd.scanners)
    │   └── ScannerGone    the device vanished (unplug); the service retries
    └── FiscalError        the fiscal printer (ККТ) or its shim failed (markd.fiscal)
        ├── PrinterURLError     a printer URL is wrong (also a ValueError)
        ├── PrinterUnavailable  the ККТ cannot be reached, or its driver is not installed;
        │   │                   the operation did not reach the device
        │   ├── PrinterGone     its serial port or socket vanished (unplugged, closed); the
        │   │                   link reopens on the next call once the device is back
        │   ├── DriverMissing   the library the printer URL needs is not installed
        │   │                   (permanent: installing it takes a person)
        │   └── OutcomeUnknown  the link broke while the device was changing state (a receipt
        │                       may or may not exist); only reconciliation can tell
        ├── PrinterFault        the ККТ answered and refused (no paper, ФН error, shift expired…)
        └── FiscalTimeout       the ККТ gave no final answer in time (also a TimeoutError)

``permanent`` tells whether trying again can help: a permanent error (a bad configuration, a
missing secret, a store the service user may not open) stays until a person changes something,
so the daemon exits with status 2, which its unit does not restart on; any other failure exits
with status 1 and systemd tries again.

Low-level exceptions (OSError, lmdb.Error, serial.SerialException) are wrapped with
``raise ... from`` so the original stays visible in tracebacks but callers catch one type.
Messages never contain the crypto tail of a marking code or any secret.
"""

from __future__ import annotations


class MarkdError(Exception):
    """Root of markd's errors: a reason code plus a human message."""

    reason: str = "error"
    #: True when retrying cannot help until a person acts (see the module docstring): the
    #: daemon exits 2 on it instead of 1. Subclasses set it; an instance may override it.
    permanent: bool = False

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message}

    def __str__(self) -> str:
        return self.message


class CodeError(MarkdError, ValueError):
    """A scanned text cannot be used as a marking code.

    ``reason`` is one of the codes listed in :data:`markd.codes.REASONS`. Which of them call
    for a re-scan rather than a refusal is the verdict's business
    (:func:`markd.checks.verdict.parser_verdict`); this module imports nothing of markd.
    """

    reason = "malformed"


class ConfigError(MarkdError):
    """Configuration is invalid; ``problems`` lists every finding with its file, line and key."""

    reason = "bad-config"
    permanent = True

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return self.message + "\n" + "\n".join(f"  {p}" for p in self.problems)


class StoreError(MarkdError):
    """The store cannot be opened, read or written."""

    reason = "store-error"


class StoreAccessError(StoreError):
    """The store's directory or files do not let this process open them (a ``data.mdb`` left
    owned by root by a ``markctl`` run as root, a directory of the wrong user), or markctl,
    run as root, could not become the store's owner (reason ``store-owner``) or would have
    followed a link on the store's path that another user could have placed (reason
    ``store-symlink``).

    The message names the path, whom it belongs to and its mode, who the process runs as,
    and the command that fixes it (:mod:`markd.store.ownership`). ``permanent``: restarting
    cannot fix it, a technician must; the daemon exits with the status its unit does not
    restart on.
    """

    reason = "store-access"
    permanent = True


#: :class:`StoreError` reasons of a fleet sync refused because its data cannot be trusted (see
#: :func:`markd.store.fleet.sync`): markctl exits 3, the daemon logs ``store-sync-refused``.
UNTRUSTED_SYNC_REASONS = frozenset(
    {"unsigned-index", "unknown-key", "bad-signature", "tampered-download", "unsigned-sync"}
)


#: :class:`StoreError` reasons of a fleet sync refused for its size: a file the index lists
#: over ``[store] sync_max_file_mb``. The daemon counts it with the untrusted ones (a sync it
#: will refuse again each time, until somebody acts), not with the passing failures.
OVERSIZED_SYNC_REASONS = frozenset({"download-too-large"})


class ScannerError(MarkdError):
    """A scanner URL is wrong or the device cannot be opened."""

    reason = "scanner-error"


class ScannerGone(ScannerError):
    """The scanner vanished (unplugged, port closed); the service keeps retrying."""

    reason = "scanner-gone"


class FiscalError(MarkdError):
    """The fiscal printer (ККТ) or the shim in front of it failed.

    ``device_code`` is the device's own error number when it sent one (ATOL's
    ``LIBFPTR_ERROR_*`` values), None otherwise. Messages name the КИ at most, never a full
    marking code.
    """

    reason = "fiscal-error"

    def __init__(
        self, message: str, reason: str | None = None, device_code: int | None = None
    ) -> None:
        super().__init__(message, reason)
        self.device_code = device_code

    def as_dict(self) -> dict[str, str]:
        data = super().as_dict()
        if self.device_code is not None:
            data["device_code"] = str(self.device_code)
        return data


class PrinterURLError(FiscalError, ValueError):
    """A printer URL (``[fiscal] url``) is malformed; the message restates the accepted form."""

    reason = "bad-printer-url"


class PrinterUnavailable(FiscalError):
    """The ККТ cannot be reached (unplugged, its web server down) or the driver it needs is
    not installed (``driver-missing``). The operation did not reach the device."""

    reason = "printer-unavailable"


class PrinterGone(PrinterUnavailable):
    """The ККТ's serial port or network connection vanished under markd (a USB cable pulled,
    the port's device file removed, the socket closed by the far end). Nothing more was sent;
    the next operation opens the port again, so a device plugged back in simply answers."""

    reason = "printer-gone"


class DriverMissing(PrinterUnavailable):
    """The driver or library a printer URL needs (ATOL's libfptr10 for ``atol-lib://``) is not
    installed or does not load. Permanent: starting again does not install it, so the daemon
    exits with status 2 instead of being restarted in a loop."""

    reason = "driver-missing"
    permanent = True


class OutcomeUnknown(PrinterUnavailable):
    """The link to the ККТ broke while an operation that changes it (a receipt, a shift) was
    under way: it may or may not have happened. The sale session reconciles with the device
    (its document counter, the request's id) before doing anything else."""

    reason = "outcome-unknown"


class PrinterFault(FiscalError):
    """The ККТ answered and refused the operation; ``reason`` names why (``paper-out``,
    ``fn-error``, ``shift-expired``, ``receipt-open``, ``mark-not-checked`` …)."""

    reason = "printer-fault"


class FiscalTimeout(FiscalError, TimeoutError):
    """The ККТ did not finish an operation (or the ФН a code validation) within its time."""

    reason = "fiscal-timeout"


def raised_at(exc: BaseException) -> str:
    """``module:function:line`` of the innermost frame of ``exc``'s traceback: how a record
    names an unexpected error without its text, which is not vetted for secrets or codes."""
    tb = exc.__traceback__
    if tb is None:
        return "an unknown place"
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    module = frame.f_globals.get("__name__", "?")
    return f"{module}:{frame.f_code.co_name}:{tb.tb_lineno}"
