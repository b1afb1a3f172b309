"""markd configuration: ``/etc/markd/markd.toml`` plus drop-ins, validated against dataclasses.

Files, in the order they are read (later files override earlier ones)::

    /etc/markd/markd.toml              main file (optional at the default location)
    /etc/markd/markd.toml.d/*.toml     drop-ins, sorted by file name

Tables merge key by key; scalars and arrays replace. ``load(path)`` with an explicit path
requires that file to exist and reads its drop-ins from ``<path>.d/``.

The frozen dataclasses below *are* the schema: field annotations give the types, field
defaults the defaults, and ``field(metadata=...)`` the documentation and limits:

``doc``
    one-line meaning, used by ``docs/configuration.md`` (see :func:`schema_reference`);
``choices``
    allowed values of a string (or of each item of an array);
``min`` / ``max``
    bounds of an integer (or of each item of an array of integers);
``min_length``
    shortest allowed string (1 for "must not be empty");
``name_pattern``
    for a table of named tables (``[scanners.NAME]``), the regular expression NAME must match;
``name_doc``
    the rule of ``name_pattern`` in words, for error messages;
``empty_is_default``
    an absent or empty table of named tables takes the field's default;
``check``
    a function returning a problem (str) or None, for what types cannot say (scanner URLs);
``toml``
    ``False`` for fields that are not configuration keys (``Config.sources``).

Validation walks the dataclasses and collects every problem in every file before raising
one :class:`~markd.errors.ConfigError`; each problem names the file, the line and the key,
e.g. ``/etc/markd/markd.toml:12: [store] map_size_mb: expected an integer, got a string ('big')``.

Secrets (X-API-KEY, passwords, tokens) never live here; they come from systemd credentials.
This module does not log at all, so configuration values cannot leak into the journal.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import json
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markd.errors import ConfigError, ScannerError
from markd.proxy import DEFAULT_NO_PROXY

if TYPE_CHECKING:
    from markd.codes import CodesOptions

DEFAULT_PATH = "/etc/markd/markd.toml"
"""The main configuration file; its drop-in directory is this path plus ``.d``."""

DROPIN_SUFFIX = ".d"
"""Appended to the main file's path to name its drop-in directory."""

DEFAULT_SCANNER_NAME = "scanner0"
DEFAULT_SCANNER_URL = "serial:///dev/markd/scanner0?baudrate=9600&terminator=cr"
"""The scanner used when no ``[scanners.NAME]`` table is configured: the udev symlink that
markd's rules create for the first serial (or USB-CDC) scanner, at the common factory speed."""

SCANNER_NAME_PATTERN = r"[A-Za-z0-9_-]{1,32}"
"""What a scanner's NAME in ``[scanners.NAME]`` may look like: it ends up in journal fields
and D-Bus/CLI arguments, so it stays a short bare word."""

# Items of serial_lengths / ki_serial_lengths: a GS1 serial (AI 21) is at most 20 characters.
_SERIAL_LENGTH_LIMITS = {"min": 1, "max": 20}


# --------------------------------------------------------------------------------------------
# The schema


def _scanner_url_problem(url: str) -> str | None:
    """Let the scanner layer judge a URL when it offers a parser; its message names the form."""
    try:
        from markd.scanners import parse_url  # type: ignore[attr-defined]
    except ImportError:
        return None  # no URL parser (yet): only "not empty" is checked here
    try:
        parse_url(url)
    except ScannerError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: where log lines go and how many."""

    target: str = field(
        default="auto",
        metadata={
            "doc": "Where log lines go: `journal` (structured fields), `stderr`, or `auto` "
            "(the journal when started by systemd, stderr otherwise).",
            "choices": ("auto", "journal", "stderr"),
        },
    )
    level: str = field(
        default="info",
        metadata={
            "doc": "Lowest level logged.",
            "choices": ("debug", "info", "warning", "error"),
        },
    )


def _proxy_problem(value: str) -> str | None:
    from markd.proxy import proxy_problem

    return proxy_problem(value)


def _no_proxy_problem(entry: str) -> str | None:
    from markd.proxy import no_proxy_problem

    return no_proxy_problem((entry,))


def sync_proxy_problem(value: str) -> str | None:
    """Why ``value`` is not a ``[store] sync_proxy`` (None when it is one)."""
    if value in ("online", "direct"):
        return None
    return _proxy_problem(value)


def _sync_url_problem(value: str) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        return f"expected an http:// or https:// URL or nothing, got {value!r}"
    return None


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: the local LMDB store of seen codes and check results."""

    path: str = field(
        default="/var/lib/markd/store",
        metadata={"doc": "Directory of the LMDB store.", "min_length": 1},
    )
    map_size_mb: int = field(
        default=64,
        metadata={
            "doc": "Initial LMDB map size in MiB; the store grows it when full.",
            "min": 1,
            "max": 1 << 20,
        },
    )
    max_age_hours: int = field(
        default=72,
        metadata={
            "doc": "A blocklist not confirmed current for longer is stale: it may still deny, "
            "never vouch (72 h, as the Local Module).",
            "min": 1,
            "max": 24 * 365,
        },
    )
    verdict_ttl_s: int = field(
        default=86_400,
        metadata={
            "doc": "How long a cached online verdict counts as fresh, in seconds.",
            "min": 0,
            "max": 366 * 86_400,
        },
    )
    delta_history: int = field(
        default=100,
        metadata={
            "doc": "How many applied deltas the store keeps for `markctl store export`.",
            "min": 0,
            "max": 100_000,
        },
    )
    sync_url: str = field(
        default="",
        metadata={
            "doc": "Static HTTP(S) directory with a fleet export (`index.json`) that the daemon "
            "syncs from; empty: no periodic sync.",
            "check": lambda value: _sync_url_problem(value),
        },
    )
    sync_interval_s: int = field(
        default=3600,
        metadata={
            "doc": "Seconds between periodic syncs from `sync_url`.",
            "min": 60,
            "max": 7 * 86_400,
        },
    )
    sync_proxy: str = field(
        default="online",
        metadata={
            "doc": "Proxy for the sync: `online` (the proxy, `no_proxy` and credentials of "
            "`[check.online]`; direct without that section), `direct`, `env`, or "
            "`http://HOST:PORT` (credentials: the systemd credential `proxy-auth`).",
            "check": lambda value: sync_proxy_problem(value),
        },
    )


@dataclass(frozen=True)
class CodesConfig:
    """``[codes]``: how scanned marking codes are parsed (see :class:`markd.codes.CodesOptions`)."""

    recover_lost_gs: bool = field(
        default=True,
        metadata={
            "doc": "Re-insert the GS separator that keyboard-emulating scanners drop, when the "
            "serial length makes the split unambiguous.",
        },
    )
    serial_lengths: tuple[int, ...] = field(
        default=(13, 6, 7),
        metadata={
            "doc": "Fixed serial lengths tried, in order, when re-inserting a lost GS.",
            **_SERIAL_LENGTH_LIMITS,
        },
    )
    ki_serial_lengths: tuple[int, ...] = field(
        default=(),
        metadata={
            "doc": "Serial lengths accepted for a bare КИ (a code without its crypto tail); "
            "empty by default, since a bare КИ of 13 could also be a beer code whose GS was lost.",
            **_SERIAL_LENGTH_LIMITS,
        },
    )


def _url_problem(value: str) -> str | None:
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        return f"expected an http:// or https:// URL, got {value!r}"
    return None


def _timezone_problem(value: str) -> str | None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {value!r} (an IANA name such as Europe/Moscow)"
    return None


def _fn_serial_problem(value: str) -> str | None:
    if value and not (len(value) == 16 and value.isascii() and value.isdigit()):
        return f"a ФН serial is 16 digits, got {value!r}"
    return None


@dataclass(frozen=True)
class TerminalConfig:
    """``[terminal]``: this till."""

    fn_serial: str = field(
        default="",
        metadata={
            "doc": "Serial of the fiscal drive (ФН), 16 digits: sent as `fiscalDriveNumber` and "
            "`X-ClientId`. Empty: taken from the ККТ once the fiscal side exists.",
            "check": lambda value: _fn_serial_problem(value),
        },
    )
    timezone: str = field(
        default="Europe/Moscow",
        metadata={
            "doc": "The shop's time zone (IANA name); expiry dates are judged in it.",
            "check": lambda value: _timezone_problem(value),
        },
    )


@dataclass(frozen=True)
class OnlineCheckConfig:
    """``[check.online]``: the True API CDN (absent: not used)."""

    url: str = field(
        default="https://cdn.crpt.ru",
        metadata={
            "doc": "Base URL the CDN host list is fetched from.",
            "check": lambda value: _url_problem(value),
        },
    )
    token_file: str = field(
        default="",
        metadata={
            "doc": "File holding the X-API-KEY; empty: the systemd credential `crpt-token`.",
        },
    )
    hosts_file: str = field(
        default="",
        metadata={
            "doc": "Where the CDN host list, its fetch time and the hosts' health figures are "
            "kept between runs; empty: `cdn-hosts.json` beside the store directory.",
        },
    )
    list_budget_percent: int = field(
        default=40,
        metadata={
            "doc": "With no usable host list, the share of a check's online budget that "
            "fetching the list may take (the rest is the check's).",
            "min": 10,
            "max": 90,
        },
    )
    rank_by: str = field(
        default="latency",
        metadata={
            "doc": "Rank CDN hosts by the round trip markd measures (`latency`) or by the "
            "`avgTimeMs` they report (`avg_time`; which one CRPT intends is unconfirmed).",
            "choices": ("latency", "avg_time"),
        },
    )
    proxy: str = field(
        default="",
        metadata={
            "doc": "HTTP proxy for these requests: `http://HOST:PORT` (HTTPS goes through "
            "`CONNECT`), `env` (follow `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`), or empty: "
            "direct. Credentials never go here: see `proxy_auth_file`.",
            "check": lambda value: _proxy_problem(value),
        },
    )
    no_proxy: tuple[str, ...] = field(
        default=DEFAULT_NO_PROXY,
        metadata={
            "doc": "Targets reached without the proxy: host names, domain suffixes, IP "
            "addresses, CIDR networks, or `*`.",
            "check": lambda value: _no_proxy_problem(value),
        },
    )
    proxy_auth_file: str = field(
        default="",
        metadata={
            "doc": "File holding the proxy's `user:password` (Basic); empty: the systemd "
            "credential `proxy-auth`, or none.",
        },
    )


@dataclass(frozen=True)
class LocalModuleConfig:
    """``[check.local_module]``: the Local Module ЛМ ЧЗ (absent: not used)."""

    url: str = field(
        default="http://127.0.0.1:5995",
        metadata={"doc": "Base URL of the Local Module.", "check": lambda v: _url_problem(v)},
    )
    api: int = field(
        default=2,
        metadata={"doc": "API version: 1, 2, or 0 to detect it.", "min": 0, "max": 2},
    )
    user: str = field(default="admin", metadata={"doc": "Basic-auth user."})
    password_file: str = field(
        default="",
        metadata={
            "doc": "File holding the password; empty: the systemd credential `lm-password`.",
        },
    )
    proxy: str = field(
        default="",
        metadata={
            "doc": "HTTP proxy for these requests: `http://HOST:PORT` (HTTPS goes through "
            "`CONNECT`), `env` (follow `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`), or empty: "
            "direct. Credentials never go here: see `proxy_auth_file`.",
            "check": lambda value: _proxy_problem(value),
        },
    )
    no_proxy: tuple[str, ...] = field(
        default=DEFAULT_NO_PROXY,
        metadata={
            "doc": "Targets reached without the proxy: host names, domain suffixes, IP "
            "addresses, CIDR networks, or `*`.",
            "check": lambda value: _no_proxy_problem(value),
        },
    )
    proxy_auth_file: str = field(
        default="",
        metadata={
            "doc": "File holding the proxy's `user:password` (Basic); empty: the systemd "
            "credential `proxy-auth`, or none.",
        },
    )


@dataclass(frozen=True)
class TspiotConfig:
    """``[check.tspiot]``: the ТС ПИоТ service (absent: not used)."""

    url: str = field(
        default="https://localhost:51401",
        metadata={"doc": "Base URL of the ТС ПИоТ.", "check": lambda v: _url_problem(v)},
    )
    allow_self_signed: bool = field(
        default=False,
        metadata={
            "doc": "Accept the service's self-signed certificate (only for a loopback address).",
        },
    )
    token_file: str = field(
        default="",
        metadata={
            "doc": "File holding the `client_info` token; empty: the credential "
            "`tspiot-token`, or none.",
        },
    )
    proxy: str = field(
        default="",
        metadata={
            "doc": "HTTP proxy for these requests: `http://HOST:PORT` (HTTPS goes through "
            "`CONNECT`), `env` (follow `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`), or empty: "
            "direct. Credentials never go here: see `proxy_auth_file`.",
            "check": lambda value: _proxy_problem(value),
        },
    )
    no_proxy: tuple[str, ...] = field(
        default=DEFAULT_NO_PROXY,
        metadata={
            "doc": "Targets reached without the proxy: host names, domain suffixes, IP "
            "addresses, CIDR networks, or `*`.",
            "check": lambda value: _no_proxy_problem(value),
        },
    )
    proxy_auth_file: str = field(
        default="",
        metadata={
            "doc": "File holding the proxy's `user:password` (Basic); empty: the systemd "
            "credential `proxy-auth`, or none.",
        },
    )


@dataclass(frozen=True)
class CheckConfig:
    """``[check]``: how a code is checked before sale."""

    mode: str = field(
        default="store-only",
        metadata={
            "doc": "`direct` (online CDN, then the Local Module), `tspiot` (the ТС ПИоТ "
            "decides), or `store-only` (development: the local store alone).",
            "choices": ("store-only", "direct", "tspiot"),
        },
    )
    online_timeout_ms: int = field(
        default=1500,
        metadata={"doc": "Budget of the online check.", "min": 50, "max": 30_000},
    )
    local_module_timeout_ms: int = field(
        default=500,
        metadata={"doc": "Budget of the Local Module check.", "min": 50, "max": 30_000},
    )
    tspiot_timeout_ms: int = field(
        default=2000,
        metadata={"doc": "Budget of the ТС ПИоТ check.", "min": 50, "max": 60_000},
    )
    unanswered: str = field(
        default="allow",
        metadata={
            "doc": "Mode `direct` when no source answers: `allow` (unchecked, logged) or `deny`.",
            "choices": ("allow", "deny"),
        },
    )
    online: OnlineCheckConfig | None = field(default=None, metadata={"doc": "The CDN."})
    local_module: LocalModuleConfig | None = field(
        default=None, metadata={"doc": "The Local Module."}
    )
    tspiot: TspiotConfig | None = field(default=None, metadata={"doc": "The ТС ПИоТ."})


def _printer_url_problem(url: str) -> str | None:
    """The fiscal shim judges a printer URL; its message names the accepted form."""
    from markd.errors import PrinterURLError
    from markd.fiscal.base import parse_printer_url

    try:
        parse_printer_url(url)
    except PrinterURLError as exc:
        return str(exc)
    return None


def _tag_length_problem(value: str, tag: int, longest: int) -> str | None:
    if not 1 <= len(value) <= longest:
        return f"tag {tag} is 1 to {longest} characters, got {value!r}"
    return None


def _tag1263_problem(value: str) -> str | None:
    from markd.fiscal.model import tag1263_problem

    return tag1263_problem(value)


#: Tax types of ATOL JSON; keep equal to :data:`markd.fiscal.model.TAX_TYPES` (a test does).
FISCAL_TAX_TYPES = (
    "none",
    "vat0",
    "vat5",
    "vat7",
    "vat10",
    "vat20",
    "vat22",
    "vat105",
    "vat107",
    "vat110",
    "vat120",
    "vat122",
)


@dataclass(frozen=True)
class FiscalConfig:
    """``[fiscal]``: the fiscal printer (ККТ) and the sale session (``docs/fiscal.md``)."""

    url: str = field(
        default="emulator:///var/lib/markd/kkt",
        metadata={
            "doc": "Printer URL: `atol-web://127.0.0.1:16732` (ATOL web server), "
            "`atol-lib://usb` (libfptr10), or `emulator:///DIR` (the virtual ККТ).",
            "check": lambda value: _printer_url_problem(value),
        },
    )
    journal: str = field(
        default="/var/lib/markd/fiscal/session.journal",
        metadata={
            "doc": "The sale session's journal (fsync'd JSON lines) that recovery reads after "
            "a crash.",
            "min_length": 1,
        },
    )
    timeout_ms: int = field(
        default=30_000,
        metadata={
            "doc": "Longest wait for one ККТ operation (a receipt includes printing it).",
            "min": 1000,
            "max": 300_000,
        },
    )
    validation_timeout_ms: int = field(
        default=10_000,
        metadata={
            "doc": "Longest wait for the ККТ's answer on a marking code (begin → ready).",
            "min": 500,
            "max": 120_000,
        },
    )
    validation_poll_ms: int = field(
        default=200,
        metadata={"doc": "Pause between validation status polls.", "min": 20, "max": 5000},
    )
    on_oism_no_answer: str = field(
        default="accept",
        metadata={
            "doc": "When the marking operator's system does not answer the ККТ (0xFF): `accept` "
            "the unit (the permit check allowed it) or `decline` it.",
            "choices": ("accept", "decline"),
        },
    )
    sale_status: int = field(
        default=1,
        metadata={
            "doc": "Tag 2003 for a sale: 1 (piece sold) or 2 (as several ATOL examples pass).",
            "min": 1,
            "max": 2,
        },
    )
    tag1262: str = field(
        default="030",
        metadata={
            "doc": "Tag 1262 of tag 1260 (ФОИВ id) on every marked position.",
            "check": lambda value: _tag_length_problem(value, 1262, 3),
        },
    )
    tag1263: str = field(
        default="26.03.2022",
        metadata={
            "doc": "Tag 1263 (date of the founding document, DD.MM.YYYY).",
            "check": lambda value: _tag1263_problem(value),
        },
    )
    tag1264: str = field(
        default="477",
        metadata={
            "doc": "Tag 1264 (number of the founding document).",
            "check": lambda value: _tag_length_problem(value, 1264, 32),
        },
    )
    tax: str = field(
        default="none",
        metadata={
            "doc": "Tax type of a position unless the sale says otherwise.",
            "choices": FISCAL_TAX_TYPES,
        },
    )
    payment_type: str = field(
        default="electronically",
        metadata={
            "doc": "Payment type of a receipt closed without one (`markctl sell`).",
            "choices": ("electronically", "cash"),
        },
    )
    auto_shift: bool = field(
        default=True,
        metadata={
            "doc": "Open a closed shift, and close and reopen an expired (24 h) one, before a "
            "receipt.",
        },
    )
    lm_sell: bool = field(
        default=True,
        metadata={
            "doc": "After a receipt, report its КИ to the Local Module (API v2 `/cis/sell`, "
            "`/cis/return`) when `[check.local_module]` is configured.",
        },
    )


def _catalog_problem(path: str) -> str | None:
    """A named price list must be an absolute path to a file that loads (its own problems
    name the catalog's file and line)."""
    if not path:
        return None
    if not os.path.isabs(path):
        return f"expected an absolute path, got {path!r}"
    from markd.catalog import load_catalog

    try:
        load_catalog(path)
    except ConfigError as exc:
        more = len(exc.problems) - 1
        return exc.problems[0] + (f" (and {more} more)" if more else "")
    return None


@dataclass(frozen=True)
class SaleConfig:
    """``[sale]``: how scans become sales (``docs/operations.md``, "Sale modes")."""

    mode: str = field(
        default="off",
        metadata={
            "doc": "`off` (no printer is opened: verdicts only), `attendant` (markd reports "
            "verdicts; the POS drives receipts through the control API) or `kiosk` (an "
            "allowed scan goes straight onto the open receipt).",
            "choices": ("off", "attendant", "kiosk"),
        },
    )
    catalog: str = field(
        default="",
        metadata={
            "doc": "Price list for mode `kiosk`: a CSV file of `gtin;name;price` lines (price "
            "in roubles, `#` comments, header optional). Empty: no price list.",
            "check": lambda value: _catalog_problem(value),
        },
    )
    use_mrp: bool = field(
        default=True,
        metadata={
            "doc": "Mode `kiosk`: a tobacco code carrying its maximum retail price is sold at "
            "that price when the price list has no line for its GTIN.",
        },
    )


def _sale_problems(config: Config) -> list[tuple[tuple[str, ...], str]]:
    """What only the whole ``[sale]`` section can show: ``(key path, problem)`` pairs."""
    sale = config.sale
    if sale.mode == "kiosk" and not sale.catalog and not sale.use_mrp:
        return [
            (
                ("sale", "mode"),
                "[sale] mode: kiosk needs prices: set [sale] catalog, or use_mrp = true "
                "(tobacco only)",
            )
        ]
    return []


@dataclass(frozen=True)
class ScannerConfig:
    """``[scanners.NAME]``: one barcode scanner."""

    url: str = field(
        metadata={
            "doc": "Scanner URL: `serial:///dev/ttyACM0?baudrate=9600&terminator=cr`, "
            "`hid-kbd://0c2e:0b61`, `hid-pos://1eab:0010` or `virtual://NAME` (see "
            "docs/operations.md).",
            "min_length": 1,
            "check": _scanner_url_problem,
        },
    )


def _listen_problem(value: str) -> str | None:
    if not value:
        return None
    # The control API reads [api] listen; checking the file uses its reader, so a typo fails
    # `markctl config check` with the daemon's own message. Imported here, not at the top:
    # the API is a layer above the configuration (docs/architecture.md).
    from markd.api.listeners import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _origin_problem(value: str) -> str | None:
    if not re.fullmatch(r"https?://[^/\s?#]+", value):
        return f"expected an origin such as http://localhost:8080 (no path), got {value!r}"
    return None


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: the control API (``docs/api.md``) for kiosk screens and ``markctl``."""

    enabled: bool = field(
        default=True,
        metadata={"doc": "Serve the control API on `socket` (and on `listen` when set)."},
    )
    socket: str = field(
        default="/run/markd/control.sock",
        metadata={
            "doc": "Unix socket of the API, mode 0660; the directory comes from systemd's "
            "`RuntimeDirectory=` (created when missing).",
            "min_length": 1,
        },
    )
    socket_group: str = field(
        default="markd",
        metadata={
            "doc": "Group given the socket when that group exists; its members may use the API. "
            "Empty: leave the group as created.",
        },
    )
    listen: str = field(
        default="",
        metadata={
            "doc": "Also serve on TCP at `HOST:PORT` (e.g. `127.0.0.1:8391`) for browser-based "
            "screens, with a bearer token; empty: no TCP.",
            "check": lambda value: _listen_problem(value),
        },
    )
    allow_remote: bool = field(
        default=False,
        metadata={
            "doc": "Allow `listen` on an address other than loopback (the token then crosses "
            "the network in clear text).",
        },
    )
    token_file: str = field(
        default="",
        metadata={
            "doc": "File holding the bearer token TCP clients must send; empty: the systemd "
            "credential `api-token`. Required when `listen` is set.",
        },
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata={
            "doc": "Browser origins (`http://localhost:8080`) that get CORS headers; a request "
            "with another `Origin` is refused.",
            "check": lambda value: _origin_problem(value),
        },
    )


def _default_scanners() -> dict[str, ScannerConfig]:
    return {DEFAULT_SCANNER_NAME: ScannerConfig(url=DEFAULT_SCANNER_URL)}


@dataclass(frozen=True)
class Config:
    """The effective configuration: every section, plus the files it was read from."""

    log: LogConfig = field(default_factory=LogConfig, metadata={"doc": "Logging."})
    store: StoreConfig = field(default_factory=StoreConfig, metadata={"doc": "Local store."})
    codes: CodesConfig = field(default_factory=CodesConfig, metadata={"doc": "Code parsing."})
    terminal: TerminalConfig = field(default_factory=TerminalConfig, metadata={"doc": "Till."})
    check: CheckConfig = field(default_factory=CheckConfig, metadata={"doc": "Checks."})
    fiscal: FiscalConfig = field(
        default_factory=FiscalConfig, metadata={"doc": "Fiscal printer and sales."}
    )
    sale: SaleConfig = field(default_factory=SaleConfig, metadata={"doc": "Sale mode."})
    scanners: dict[str, ScannerConfig] = field(
        default_factory=_default_scanners,
        metadata={
            "doc": "Barcode scanners by name.",
            "name_pattern": SCANNER_NAME_PATTERN,
            "name_doc": "a name is 1 to 32 letters, digits, _ or -",
            "empty_is_default": True,
        },
    )
    api: ApiConfig = field(default_factory=ApiConfig, metadata={"doc": "Control API."})
    sources: tuple[str, ...] = field(default=(), metadata={"toml": False})

    def codes_options(self) -> CodesOptions:
        """The ``[codes]`` section as the options :func:`markd.codes.parse` takes."""
        # Imported here so that loading the configuration does not pull in the parser.
        from markd.codes import CodesOptions

        return CodesOptions(
            recover_lost_gs=self.codes.recover_lost_gs,
            serial_lengths=self.codes.serial_lengths,
            ki_serial_lengths=self.codes.ki_serial_lengths,
        )


def default_config() -> Config:
    """The configuration used when no file exists: every key at its default."""
    return Config()


# --------------------------------------------------------------------------------------------
# Loading


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    default_path: str | os.PathLike[str] = DEFAULT_PATH,
) -> Config:
    """Read, merge and validate the configuration.

    With ``path`` None, reads ``default_path`` (:data:`DEFAULT_PATH`) if it exists (a missing
    default file means all defaults) and the drop-ins in ``<default_path>.d/`` if that directory
    exists. With an explicit ``path``, that file must exist; its drop-ins are read from
    ``<path>.d/``.

    Raises :class:`~markd.errors.ConfigError` listing every problem found in all files; the
    error never carries a traceback-worthy OSError or decode error, only readable problems.
    """
    main = Path(default_path if path is None else path)
    problems: list[str] = []
    documents: list[_Document] = []

    def read(file: Path, missing_ok: bool) -> None:
        # Each file is validated on its own, so that a bad value is reported even when a
        # later file overrides it, and problems come out in file order.
        doc = _read_document(file, problems, missing_ok)
        if doc is not None:
            documents.append(doc)
            checker = _Checker(doc.where, require=False)
            _build(Config, doc.data, (), checker)
            problems.extend(checker.problems)

    read(main, missing_ok=path is None)
    for dropin in _dropin_files(Path(str(main) + DROPIN_SUFFIX), problems):
        read(dropin, missing_ok=False)

    # The merged result is validated again for what only merging can show: a required key
    # that no file sets. Findings already made in a single file come out the same and are
    # reported once.
    merged, origins = _merge(documents)
    by_name = {doc.name: doc for doc in documents}

    def where_merged(key_path: tuple[str, ...]) -> str:
        for depth in range(len(key_path), 0, -1):
            name = origins.get(key_path[:depth])
            if name is not None:
                return by_name[name].where(key_path)
        return documents[0].name if documents else str(main)

    checker = _Checker(where_merged, require=True)
    config = _build(Config, merged, (), checker)
    if config is not _INVALID:
        for key_path, problem in _sale_problems(config):
            checker.add(key_path, problem)
    problems.extend(checker.problems)
    problems = list(dict.fromkeys(problems))  # drop duplicates, keep the order found

    if problems or config is _INVALID:
        count = len(problems)
        raise ConfigError(f"configuration has {count} problem{'s' if count != 1 else ''}", problems)
    return dataclasses.replace(config, sources=tuple(doc.name for doc in documents))


@dataclass
class _Document:
    """One parsed file, with the line of each key for error messages."""

    name: str
    text: str
    data: dict[str, Any]
    _lines: dict[tuple[str, ...], int] | None = field(default=None, repr=False)

    def where(self, key_path: tuple[str, ...]) -> str:
        """``file:line`` of the key (or of its nearest enclosing table), else ``file``."""
        if self._lines is None:
            self._lines = _key_lines(self.text)
        for depth in range(len(key_path), 0, -1):
            line = self._lines.get(key_path[:depth])
            if line is not None:
                return f"{self.name}:{line}"
        return self.name


def _read_document(path: Path, problems: list[str], missing_ok: bool) -> _Document | None:
    """Read and parse one TOML file; on failure append a problem and return None."""
    name = str(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            problems.append(f"{name}: is a directory, expected a TOML file")
            return None
        if not stat.S_ISREG(mode):
            # A FIFO or device would block or never end; refuse before opening it.
            problems.append(f"{name}: not a regular file")
            return None
        raw = path.read_bytes()
    except FileNotFoundError:
        if not missing_ok:
            problems.append(f"{name}: no such file")
        return None
    except OSError as exc:
        problems.append(f"{name}: cannot read: {exc.strerror or exc}")
        return None

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        problems.append(
            f"{name}:{line}: not valid UTF-8 text "
            f"(byte 0x{raw[exc.start]:02x} at byte offset {exc.start})"
        )
        return None
    # Editors on Windows save UTF-8 with a byte-order mark, which TOML forbids; a technician
    # copying a file from a laptop should not have to know that.
    text = text.removeprefix("\ufeff")

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(_syntax_problem(name, str(exc)))
        return None
    return _Document(name=name, text=text, data=data)


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _syntax_problem(name: str, message: str) -> str:
    """``file:line:column: TOML syntax error: ...`` from tomllib's ``... (at line L, column C)``."""
    found = _TOML_POSITION.search(message)
    if found is None:
        return f"{name}: TOML syntax error: {message}"
    line, column = found.groups()
    return f"{name}:{line}:{column}: TOML syntax error: {message[: found.start()]}"


def _dropin_files(directory: Path, problems: list[str]) -> list[Path]:
    """The ``*.toml`` files of a drop-in directory in name order; none if it does not exist."""
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        problems.append(f"{directory}: not a directory (drop-ins go in a directory)")
        return []
    except OSError as exc:
        problems.append(f"{directory}: cannot list drop-ins: {exc.strerror or exc}")
        return []
    # Hidden files are editor and package-manager leftovers (.50-till.toml.swp, .dpkg-new).
    return [directory / e for e in entries if e.endswith(".toml") and not e.startswith(".")]


def _merge(documents: list[_Document]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Merge parsed files in order: tables key by key, anything else replaced.

    Also returns, for every merged key path, the file that set it (for a table: the file
    that first created it), so that problems found after merging still name a file.
    """
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}

    def merge_into(
        target: dict[str, Any], source: dict[str, Any], prefix: tuple[str, ...], name: str
    ) -> None:
        for key, value in source.items():
            key_path = (*prefix, key)
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                merge_into(target[key], value, key_path, name)
                continue
            for stale in [p for p in origins if p[: len(key_path)] == key_path]:
                del origins[stale]
            origins[key_path] = name
            if isinstance(value, dict):
                target[key] = {}
                merge_into(target[key], value, key_path, name)
            else:
                target[key] = value

    for doc in documents:
        merge_into(merged, doc.data, (), doc.name)
    return merged, origins


# --------------------------------------------------------------------------------------------
# Validation: walk the dataclasses


_INVALID: Any = object()  # a value that failed validation (its problems are already recorded)


class _Checker:
    """Collects problems; ``where`` turns a key path into ``file:line``."""

    def __init__(self, where: Callable[[tuple[str, ...]], str], require: bool) -> None:
        self.where = where
        self.require = require  # False for a single file: another file may set the key
        self.problems: list[str] = []

    def add(self, key_path: tuple[str, ...], message: str) -> None:
        self.problems.append(f"{self.where(key_path)}: {message}")


def _build(cls: type, raw: Any, table: tuple[str, ...], checker: _Checker) -> Any:
    """Validate ``raw`` (a parsed TOML table) against dataclass ``cls`` and construct it."""
    if not isinstance(raw, dict):
        checker.add(table, f"{_table_name(table)}: expected a table, got {_describe(raw)}")
        return _INVALID
    fields_by_name = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("toml", True)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    invalid = False
    for key, value in raw.items():
        key_path = (*table, key)
        spec = fields_by_name.get(key)
        if spec is None:
            checker.add(key_path, _unknown_key_message(table, key, value, sorted(fields_by_name)))
            continue
        converted = _convert(value, hints[key], spec.metadata, key_path, checker)
        if converted is _INVALID:
            invalid = True
        elif not (spec.metadata.get("empty_is_default") and not converted):
            values[key] = converted

    for name, spec in fields_by_name.items():
        if name not in raw and not _has_default(spec):
            invalid = True
            if checker.require:
                checker.add((*table, name), f"{_key_name((*table, name))}: required key is missing")
    return _INVALID if invalid else cls(**values)


def _convert(
    value: Any, hint: Any, meta: Mapping[str, Any], key_path: tuple[str, ...], checker: _Checker
) -> Any:
    """Check one value against a type hint and field metadata; return it in schema form."""
    optional = _optional_dataclass(hint)
    if optional is not None:
        hint = optional  # an optional sub-table: present in the file means used
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key_path, checker)  # type: ignore[arg-type]

    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            message = f"{_table_name(key_path)}: expected a table, got {_describe(value)}"
            checker.add(key_path, message)
            return _INVALID
        item_hint = typing.get_args(hint)[1]
        pattern = meta.get("name_pattern")
        result: dict[str, Any] = {}
        for name, item in value.items():
            item_path = (*key_path, name)
            if pattern is not None and not re.fullmatch(pattern, name):
                checker.add(
                    item_path,
                    f"{_table_name(item_path)}: bad name: {meta.get('name_doc', pattern)}",
                )
                continue
            converted = _convert(item, item_hint, {}, item_path, checker)
            if converted is not _INVALID:
                result[name] = converted
        return result if len(result) == len(value) else _INVALID

    if origin is tuple:
        if not isinstance(value, list):
            checker.add(
                key_path,
                f"{_key_name(key_path)}: expected {_expected(hint)}, got {_describe(value)}",
            )
            return _INVALID
        item_hint = typing.get_args(hint)[0]
        ok = True
        for index, item in enumerate(value, start=1):
            problem = _scalar_problem(item, item_hint, meta)
            if problem is not None:
                checker.add(key_path, f"{_key_name(key_path)}: item {index}: {problem}")
                ok = False
        return tuple(value) if ok else _INVALID

    problem = _scalar_problem(value, hint, meta)
    if problem is not None:
        checker.add(key_path, f"{_key_name(key_path)}: {problem}")
        return _INVALID
    return value


def _optional_dataclass(hint: Any) -> Any:
    """The dataclass of an ``X | None`` hint, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _scalar_problem(value: Any, hint: Any, meta: Any) -> str | None:
    """Why ``value`` is not a valid ``hint`` under ``meta``'s limits, or None if it is."""
    # bool is a subclass of int in Python, but `map_size_mb = true` is a mistake in TOML.
    type_ok = (
        isinstance(value, bool)
        if hint is bool
        else isinstance(value, hint) and not isinstance(value, bool)
    )
    if not type_ok:
        return f"expected {_expected(hint)}, got {_describe(value)}"
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        return f"expected one of {', '.join(choices)}, got {_describe(value)}"
    if hint is int:
        low, high = meta.get("min"), meta.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"expected an integer {_bounds(low, high)}, got {value}"
    min_length = meta.get("min_length")
    if hint is str and min_length is not None and len(value) < min_length:
        return "must not be empty" if min_length == 1 else f"shorter than {min_length} characters"
    check = meta.get("check")
    return None if check is None else check(value)


def _has_default(spec: dataclasses.Field[Any]) -> bool:
    return (
        spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING
    )


# --------------------------------------------------------------------------------------------
# Wording of problems


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    """A key as it would be written in TOML: bare when possible, else quoted."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _table_name(table: tuple[str, ...]) -> str:
    return "[" + ".".join(_toml_key(k) for k in table) + "]"


def _key_name(key_path: tuple[str, ...]) -> str:
    """``[store] map_size_mb`` for ``("store", "map_size_mb")``."""
    return f"{_table_name(key_path[:-1])} {_toml_key(key_path[-1])}"


def _unknown_key_message(table: tuple[str, ...], key: str, value: Any, known: list[str]) -> str:
    if not table:
        sections = ", ".join(known)
        if not isinstance(value, dict):
            # `level = "debug"` above every [section] header: the header was forgotten.
            return f"unknown top-level key {_toml_key(key)} (keys belong in a section: {sections})"
        return f"unknown section [{_toml_key(key)}] (known sections: {sections})"
    return f"unknown key {_key_name((*table, key))} (known keys: {', '.join(known)})"


def _expected(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "an array of " + {str: "strings", int: "integers", bool: "booleans"}.get(
            typing.get_args(hint)[0], "values"
        )
    return {str: "a string", int: "an integer", bool: "a boolean (true or false)"}.get(
        hint, "a table"
    )


def _describe(value: Any) -> str:
    """``a string ('big')``: what was found, shortened so a pasted blob stays readable."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def _bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"from {low} to {high}"
    if low is not None:
        return f"of at least {low}"
    return f"of at most {high}"


# --------------------------------------------------------------------------------------------
# Locating keys in the file text (tomllib reports no positions for keys)


_ESCAPES = {
    "b": "\b",
    "t": "\t",
    "n": "\n",
    "f": "\f",
    "r": "\r",
    '"': '"',
    "\\": "\\",
    "e": "\x1b",
}
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")


def _unescape(text: str) -> str:
    def one(found: re.Match[str]) -> str:
        code = found.group(1)
        if code[0] in "uU" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, code)

    return _ESCAPE.sub(one, text)


class _KeyLineScanner:
    """Maps every dotted key path of a TOML text to the line where it first appears.

    Only used on text tomllib has already accepted, so it can be lenient: it follows table
    headers, dotted and quoted keys and inline tables, and steps over strings (including
    multi-line ones) and arrays so that their insides are not mistaken for keys.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[tuple[str, ...], int] = {}
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def run(self) -> dict[tuple[str, ...], int]:
        table: tuple[str, ...] = ()
        text = self.text
        while True:
            self._skip_space(newlines=True)
            if self.pos >= len(text):
                return self.lines
            start = self.pos
            if text[self.pos] == "[":
                self.pos += 2 if text.startswith("[[", self.pos) else 1
                table = self._key()
                self._record(table, start)
            else:
                key = self._key()
                self._record((*table, *key), start)
                self._skip_space()
                if text.startswith("=", self.pos):
                    self.pos += 1
                    self._value((*table, *key))
            self._skip_to_line_end()
            if self.pos == start:  # never loop on something unexpected
                self.pos += 1

    def _record(self, key_path: tuple[str, ...], pos: int) -> None:
        line = bisect.bisect_left(self._newlines, pos) + 1
        for depth in range(1, len(key_path) + 1):
            self.lines.setdefault(key_path[:depth], line)

    def _skip_space(self, newlines: bool = False) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#" and newlines:
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _skip_to_line_end(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def _key(self) -> tuple[str, ...]:
        """A possibly dotted, possibly quoted key; stops before ``=``, ``]`` or ``}``."""
        parts: list[str] = []
        text = self.text
        while self.pos < len(text):
            self._skip_space()
            char = text[self.pos] if self.pos < len(text) else ""
            if char == '"':
                parts.append(_unescape(self._basic_string()))
            elif char == "'":
                end = text.find("'", self.pos + 1)
                end = len(text) if end < 0 else end
                parts.append(text[self.pos + 1 : end])
                self.pos = end + 1
            else:
                found = _BARE_KEY.match(text, self.pos)
                if found is None:
                    break
                parts.append(found.group())
                self.pos = found.end()
            self._skip_space()
            if not text.startswith(".", self.pos):
                break
            self.pos += 1
        return tuple(parts)

    def _basic_string(self) -> str:
        """Consume ``"..."`` at ``pos`` (one line, with escapes); return its raw inside."""
        text = self.text
        start = self.pos + 1
        index = start
        while index < len(text) and text[index] not in '"\n':
            index += 2 if text[index] == "\\" else 1
        self.pos = index + 1
        return text[start:index]

    def _value(self, key_path: tuple[str, ...] | None) -> None:
        """Step over one value; record the keys of an inline table under ``key_path``."""
        self._skip_space()
        text = self.text
        if self.pos >= len(text):
            return
        for quotes in ('"""', "'''"):
            if text.startswith(quotes, self.pos):
                index = self.pos + 3
                while index < len(text) and not text.startswith(quotes, index):
                    index += 2 if quotes == '"""' and text[index] == "\\" else 1
                index += 3
                # Up to two quote characters may sit right before the closing delimiter.
                while index < len(text) and text[index] == quotes[0]:
                    index += 1
                self.pos = index
                return
        char = text[self.pos]
        if char == '"':
            self._basic_string()
        elif char == "'":
            end = text.find("'", self.pos + 1)
            self.pos = len(text) if end < 0 else end + 1
        elif char == "[":
            self._container("]", None)
        elif char == "{":
            self._container("}", key_path)
        else:
            # Numbers, booleans, dates (which may contain a space) run to a delimiter.
            found = re.compile(r"[^,\]}#\n]*").match(text, self.pos)
            self.pos = found.end() if found else self.pos + 1

    def _container(self, closing: str, key_path: tuple[str, ...] | None) -> None:
        """Step over an array (``key_path`` None) or an inline table."""
        text = self.text
        self.pos += 1
        while self.pos < len(text):
            self._skip_space(newlines=True)
            if self.pos >= len(text):
                return
            char = text[self.pos]
            before = self.pos
            if char == closing:
                self.pos += 1
                return
            if char == ",":
                self.pos += 1
            elif key_path is None:
                self._value(None)
            else:
                start = self.pos
                key = self._key()
                self._record((*key_path, *key), start)
                self._skip_space()
                if text.startswith("=", self.pos):
                    self.pos += 1
                self._value((*key_path, *key))
            if self.pos == before:
                self.pos += 1


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line (1-based) of every table header and key path in ``text``, first occurrence wins."""
    scanner = _KeyLineScanner(text)
    try:
        return scanner.run()
    except (IndexError, ValueError):
        # Best effort: positions are a convenience, a problem without a line is still reported.
        return scanner.lines


# --------------------------------------------------------------------------------------------
# Output


def to_dict(config: Config) -> dict[str, Any]:
    """The configuration as plain data (dicts, lists, str, int, bool) for JSON or TOML.

    ``sources`` is left out: the result is configuration only, so writing it back as TOML and
    loading it gives the same configuration.
    """

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {
                f.name: plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.metadata.get("toml", True) and getattr(value, f.name) is not None
            }
        if isinstance(value, dict):
            return {name: plain(item) for name, item in value.items()}
        if isinstance(value, tuple | list):
            return [plain(item) for item in value]
        return value

    return plain(config)


def to_toml(config: Config) -> str:
    """The configuration as a complete TOML file (every key, defaults included)."""
    lines: list[str] = []

    def table(path: tuple[str, ...], data: dict[str, Any]) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        if scalars or not data:
            if lines:
                lines.append("")
            lines.append(_table_name(path))
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items())
        for key, value in data.items():
            if isinstance(value, dict):
                table((*path, key), value)

    for section, data in to_dict(config).items():
        table((section,), data)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string, except that TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


# --------------------------------------------------------------------------------------------
# Reference documentation, generated from the schema


@dataclass(frozen=True)
class KeyReference:
    """One configuration key as documented: ``[section] key``, type, default and meaning."""

    table: str
    key: str
    type: str
    default: str
    doc: str
    limits: str


def schema_keys() -> Iterator[KeyReference]:
    """Every configuration key of the schema, in declaration order (sub-tables after their
    table's own keys)."""
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        if not section.metadata.get("toml", True):
            continue
        hint = hints[section.name]
        if typing.get_origin(hint) is dict:
            yield from _table_keys(f"{section.name}.NAME", typing.get_args(hint)[1])
        else:
            yield from _table_keys(section.name, hint)


def _table_keys(table: str, cls: Any) -> Iterator[KeyReference]:
    cls_hints = typing.get_type_hints(cls)
    nested = []
    for spec in dataclasses.fields(cls):
        sub_table = _optional_dataclass(cls_hints[spec.name])
        if sub_table is not None or dataclasses.is_dataclass(cls_hints[spec.name]):
            nested.append((f"{table}.{spec.name}", sub_table or cls_hints[spec.name]))
            continue
        default = (
            _toml_value(list(spec.default) if isinstance(spec.default, tuple) else spec.default)
            if spec.default is not dataclasses.MISSING
            else "(required)"
        )
        yield KeyReference(
            table=table,
            key=spec.name,
            type=_type_name(cls_hints[spec.name]),
            default=default,
            doc=spec.metadata.get("doc", ""),
            limits=_limits(spec.metadata, cls_hints[spec.name]),
        )
    for sub_table, sub_cls in nested:
        yield from _table_keys(sub_table, sub_cls)


def _type_name(hint: Any) -> str:
    return _expected(hint).removeprefix("an ").removeprefix("a ").replace(" (true or false)", "")


def _limits(meta: Any, hint: Any) -> str:
    each = " each" if typing.get_origin(hint) is tuple else ""
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    if "min" in meta or "max" in meta:
        parts.append(_bounds(meta.get("min"), meta.get("max")).removeprefix("of ") + each)
    if meta.get("min_length") == 1:
        parts.append("not empty")
    return "; ".join(parts)


def schema_reference() -> str:
    """A Markdown table of every key, for ``docs/configuration.md`` (a test keeps them equal)."""
    rows = [
        "| Key | Type | Default | Allowed | Meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for ref in schema_keys():
        default = f"`{ref.default}`" if ref.default != "(required)" else "(required)"
        rows.append(
            f"| `[{ref.table}] {ref.key}` | {ref.type} | {default} | {ref.limits} | {ref.doc} |"
        )
    return "\n".join(rows) + "\n"
