"""The markd error tree.

Every error markd raises on purpose derives from :class:`MarkdError`. Each carries a
machine-readable ``reason`` (a short kebab-case code that lands in the journal as
``MARKD_REASON`` and in JSON output) and a human ``message``.

::

    MarkdError
    ├── CodeError          a scanned text is not a usable marking code (markd.codes)
    ├── ConfigError        a configuration file or value is wrong (markd.config)
    ├── StoreError         the LMDB store cannot be opened, read or written (markd.store)
    └── ScannerError       a scanner URL is wrong or a device cannot be used (markd.scanners)
        └── ScannerGone    the device vanished (unplug); the service retries

Low-level exceptions (OSError, lmdb.Error, serial.SerialException) are wrapped with
``raise ... from`` so the original stays visible in tracebacks but callers catch one type.
Messages never contain the crypto tail of a marking code or any secret.
"""

from __future__ import annotations


class MarkdError(Exception):
    """Root of markd's errors: a reason code plus a human message."""

    reason: str = "error"

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

    ``reason`` is one of the codes listed in :data:`markd.codes.REASONS`. For
    ``ambiguous-lost-gs`` the right reaction is a re-scan, not a refusal of the product.
    """

    reason = "malformed"

    @property
    def rescan(self) -> bool:
        """True when scanning again (or with other scanner settings) may succeed."""
        from markd.codes import RESCAN_REASONS

        return self.reason in RESCAN_REASONS


class ConfigError(MarkdError):
    """Configuration is invalid; ``problems`` lists every finding with its file, line and key."""

    reason = "bad-config"

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


class ScannerError(MarkdError):
    """A scanner URL is wrong or the device cannot be opened."""

    reason = "scanner-error"


class ScannerGone(ScannerError):
    """The scanner vanished (unplugged, port closed); the service keeps retrying."""

    reason = "scanner-gone"
