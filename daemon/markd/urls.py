"""Device URLs: what the scanner and printer registries share.

Scanners (``serial://``, ``hid-kbd://`` …) and fiscal printers (``atol-web://``, ``emulator://``
…) are both chosen by a URL whose scheme names a backend class, imported only when a URL names
it, and whose query holds backend-specific options. :class:`Registry` keeps the scheme table
and does the strict parts every backend wants alike: an unknown scheme or option, an option
given twice, a malformed query or a value that does not convert is an error that restates the
accepted form for the scheme (so a typo in ``markd.toml`` is caught by ``markctl config check``,
not at the till). What differs — the target's form, options common to every backend of a kind
— stays in :func:`markd.scanners.base.parse_url` and
:func:`markd.fiscal.base.parse_printer_url`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from markd.errors import MarkdError

#: An :class:`Option` default meaning "left out": an option with it appears in the parsed
#: options only when the URL gives it (the backend reads it with ``options.get``).
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()


@dataclass(frozen=True)
class Option:
    """One backend-specific URL option: how to convert its text, its default (or
    :data:`ABSENT`), its form."""

    convert: Callable[[str], Any]
    default: Any
    #: The accepted values as error messages show them, e.g. ``"9600|19200|115200"``.
    form: str


@dataclass(frozen=True)
class Backend:
    """A registry entry: ``module:Class`` to import, and the form restated in errors."""

    import_path: str
    usage: str


class Registry:
    """Scheme → backend for one kind of device (``"scanner"``, ``"printer"``).

    :param kind: the word error messages use (``scanner URL '…': …``).
    :param backends: the scheme table.
    :param error: builds the kind's error from a message (its own :class:`MarkdError`).
    """

    def __init__(
        self,
        kind: str,
        backends: Mapping[str, Backend],
        error: Callable[[str], MarkdError],
    ) -> None:
        self.kind = kind
        self.backends = dict(backends)
        self._error = error

    def usage(self, scheme: str | None = None) -> str:
        if scheme in self.backends:
            return f"the form is {self.backends[scheme].usage}"
        return "accepted forms: " + "; ".join(b.usage for b in self.backends.values())

    def fail(self, text: str, problem: str, scheme: str | None = None) -> MarkdError:
        """The error for a bad URL: what is wrong, then the accepted form."""
        return self._error(f"{self.kind} URL {text!r}: {problem}; {self.usage(scheme)}")

    def backend_class(self, scheme: str) -> Any:
        """Import and return the backend class for ``scheme``."""
        try:
            entry = self.backends[scheme]
        except KeyError:
            raise self._error(f"unknown {self.kind} backend {scheme!r}; {self.usage()}") from None
        module_name, _, class_name = entry.import_path.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    def query(self, url: str, query: str, scheme: str, known: Iterable[str]) -> dict[str, str]:
        """The query's options as text, each at most once and each one of ``known``."""
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise self.fail(url, f"malformed query {query!r}", scheme) from None
        allowed = set(known)
        given: dict[str, str] = {}
        for key, value in pairs:
            if key in given:
                raise self.fail(url, f"option {key!r} given twice", scheme)
            if key not in allowed:
                raise self.fail(url, f"unknown option {key!r}", scheme)
            given[key] = value
        return given

    def convert(
        self, url: str, scheme: str, specs: Mapping[str, Option], given: Mapping[str, str]
    ) -> dict[str, Any]:
        """Every backend option converted, defaults filled in for those not given (except an
        :data:`ABSENT` one, which is left out)."""
        options: dict[str, Any] = {}
        for key, spec in specs.items():
            if key not in given:
                if spec.default is not ABSENT:
                    options[key] = spec.default
                continue
            try:
                options[key] = spec.convert(given[key])
            except ValueError:
                raise self.fail(
                    url, f"bad {key}={given[key]!r}, expected {spec.form}", scheme
                ) from None
        return options
