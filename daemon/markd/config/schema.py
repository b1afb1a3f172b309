"""The configuration's schema: frozen dataclasses, one per TOML table.

Field annotations give the types, field defaults the defaults, and ``field(metadata=...)`` the
documentation and limits:

``doc``
    one-line meaning, used by ``docs/configuration.md`` (see :mod:`markd.config.reference`);
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
``parse`` / ``parsed_into``
    for a key naming a file markd reads (the price list): the function that parses the file
    (raising :class:`~markd.errors.ConfigError`) and the field that keeps the result; one load
    parses each file once, and the file's first problem becomes the key's;
``toml``
    ``False`` for fields that are not configuration keys (``Config.sources``).

``choices``, ``min``, ``max``, ``min_length`` and ``check`` are judged by :mod:`markd.validation`,
the validator the emulators' scenarios use too. The key checks below let the module that owns
a value judge it (a scanner URL by the scanner registry, a printer URL by the fiscal shim, a
proxy by :mod:`markd.proxy`), so ``markctl config check`` and the daemon agree; those imports
are plain imports: a check that cannot be imported fails loudly, it is never skipped.

Secrets (X-API-KEY, passwords, tokens) never live here; they come from systemd credentials.
Nothing here logs, so configuration values cannot leak into the journal.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import markd.scanners
from markd.catalog import Catalog, load_catalog
from markd.codes import CodesOptions
from markd.errors import PrinterURLError, ScannerError
from markd.fiscal.base import parse_printer_url
from markd.fiscal.model import (
    TAX_TYPES,
    TAXATION_TYPES,
    cashier_inn_problem,
    cashier_name_problem,
    tag1263_problem,
    taxation_type_problem,
)
from markd.listen import listen_overlap, parse_listen, remote_listen_problem, socket_path_problem
from markd.proxy import DEFAULT_NO_PROXY, no_proxy_problem, proxy_problem
from markd.receipts import PAYMENT_TYPES
from markd.store.signing import public_key_problem

DEFAULT_SCANNER_NAME = "scanner0"
DEFAULT_SCANNER_URL = "serial:///dev/markd/scanner0?baudrate=9600&terminator=cr"
"""The scanner used when no ``[scanners.NAME]`` table is configured: the udev symlink that
markd's rules create for the first serial (or USB-CDC) scanner, at the common factory speed."""

SCANNER_NAME_PATTERN = r"[A-Za-z0-9_-]{1,32}"
#: Scanner names markd uses itself: ``api`` for the control API's checks (``MARKD_SCANNER``,
#: the ``scanner`` label of the metrics), ``other`` for a label it cannot vouch for.
RESERVED_SCANNER_NAMES = frozenset({"api", "other", "mark-unit"})
"""What a scanner's NAME in ``[scanners.NAME]`` may look like: it ends up in journal fields
and D-Bus/CLI arguments, so it stays a short bare word."""

# Items of serial_lengths / ki_serial_lengths: a GS1 serial (AI 21) is at most 20 characters.
_SERIAL_LENGTH_LIMITS = {"min": 1, "max": 20}


# --------------------------------------------------------------------------------------------
# The schema


def _scanner_url_problem(url: str) -> str | None:
    """The scanner registry judges a URL; its message names the accepted form."""
    try:
        # Looked up at call time, so that a test can stand in for the registry's parser.
        markd.scanners.parse_url(url)
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


def _no_proxy_problem(entry: str) -> str | None:
    return no_proxy_problem((entry,))


def sync_proxy_problem(value: str) -> str | None:
    """Why ``value`` is not a ``[store] sync_proxy`` (None when it is one)."""
    if value in ("online", "direct"):
        return None
    return proxy_problem(value)


def _sync_url_problem(value: str) -> str | None:
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        return f"expected an http:// or https:// URL or nothing, got {shown_url(value)}"
    return _host_port_problem(value)


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
    sync_public_keys: tuple[str, ...] = field(
        default=(),
        metadata={
            "doc": "Public keys (`ed25519:BASE64`, from `markctl store keygen`) one of which "
            "must have signed the fleet's `index.json`; several while a fleet rotates keys. "
            "Empty: the index is not checked (see `sync_allow_unsigned`).",
            "check": lambda value: public_key_problem(value),
        },
    )
    sync_allow_unsigned: bool = field(
        default=False,
        metadata={
            "doc": "Without `sync_public_keys`, allow a sync over plain `http://` (anyone on "
            "the path could rewrite the blocklist); HTTPS is allowed either way.",
        },
    )
    sync_max_file_mb: int = field(
        default=1024,
        metadata={
            "doc": "The largest fleet file (snapshot or delta) a sync downloads, in MiB; a "
            "larger size in the index is refused before any download. The default holds a "
            "snapshot of 40 M+ entries (10 M are about 215 MB).",
            "min": 1,
            "max": 1 << 20,
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
    """A service's base URL: http(s), a host, and a port the clients can connect to. The
    clients parse it again when they are built; a port out of range found only then would be
    a traceback at start instead of a refused file."""
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        return f"expected an http:// or https:// URL, got {shown_url(value)}"
    return _host_port_problem(value)


def shown_url(value: str) -> str:
    """``value`` quoted for a problem, with any user information (``user:password@``) replaced
    by ``***``: a configuration problem is printed, journaled and pasted into tickets. All
    up to the last ``@`` goes, so a password holding ``/`` or ``@`` does not show either."""
    scheme, separator, rest = value.partition("://")
    if not separator:
        scheme, rest = "", value
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return repr(f"{scheme}{separator}{rest}")


def _host_port_problem(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError when not a number from 0 to 65535
    except ValueError:
        return f"expected a port from 1 to 65535, got {shown_url(value)}"
    if not parts.hostname:
        return f"expected a host name or address, got {shown_url(value)}"
    if port == 0:
        return f"expected a port from 1 to 65535, got {shown_url(value)}"
    return None


def _timezone_problem(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {value!r} (an IANA name such as Europe/Moscow)"
    return None


def _fn_serial_problem(value: str) -> str | None:
    if value and not (len(value) == 16 and value.isascii() and value.isdigit()):
        return f"a ФН serial is 16 digits, got {value!r}"
    return None


def _inn_problem(value: str) -> str | None:
    if value and not (len(value) in (10, 12) and value.isascii() and value.isdigit()):
        return f"an ИНН is 10 or 12 digits, got {value!r}"
    return None


def _kpp_problem(value: str) -> str | None:
    if value and not re.fullmatch(r"[0-9]{4}[0-9A-Z]{2}[0-9]{3}", value):
        return f"a КПП is 9 characters (digits, letters 5 and 6 may be A-Z), got {value!r}"
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
    inn: str = field(
        default="",
        metadata={
            "doc": "The seller's ИНН (10 or 12 digits). When set, a till's document through "
            "`[mark_unit]` naming another organisation is refused. Empty: not checked.",
            "check": lambda value: _inn_problem(value),
        },
    )
    kpp: str = field(
        default="",
        metadata={
            "doc": "The seller's КПП (9 characters), checked like `inn` when both are set.",
            "check": lambda value: _kpp_problem(value),
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
            "check": proxy_problem,
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
            "check": proxy_problem,
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
            "check": proxy_problem,
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
    parallel: bool = field(
        default=False,
        metadata={
            "doc": "Mode `direct`: ask the Local Module at the same time as the CDN instead of "
            "after it, so the budget is the longer of the two timeouts, not their sum. The "
            "CDN's answer still decides; the Local Module's `sold` can still deny.",
        },
    )
    cache_verdicts: bool = field(
        default=True,
        metadata={
            "doc": "Keep the facts of each online answer in the store, so that a later check "
            "with no online answer still denies a unit the CDN said was blocked, sold or "
            "expired. `false`: nothing new is kept (facts kept earlier are still read).",
        },
    )
    slow_scan_ms: int = field(
        default=250,
        metadata={
            "doc": "A scan that takes longer than this, from framing to the last listener of "
            "its verdict, leaves a `slow-scan` record (notice) with the time of each stage; "
            "`0`: never.",
            "min": 0,
            "max": 60_000,
        },
    )
    online: OnlineCheckConfig | None = field(default=None, metadata={"doc": "The CDN."})
    local_module: LocalModuleConfig | None = field(
        default=None, metadata={"doc": "The Local Module."}
    )
    tspiot: TspiotConfig | None = field(default=None, metadata={"doc": "The ТС ПИоТ."})


def _printer_url_problem(url: str) -> str | None:
    """The fiscal shim judges a printer URL; its message names the accepted form."""
    try:
        parse_printer_url(url)
    except PrinterURLError as exc:
        return str(exc)
    return None


def _web_user_problem(value: str) -> str | None:
    # RFC 7617: the user-id of Basic auth cannot hold a colon.
    if ":" in value or not value.isprintable():
        return f"an HTTP Basic user holds no ':' and no control characters, got {value!r}"
    return None


def _tag_length_problem(value: str, tag: int, longest: int) -> str | None:
    if not 1 <= len(value) <= longest:
        return f"tag {tag} is 1 to {longest} characters, got {value!r}"
    return None


@dataclass(frozen=True)
class FiscalConfig:
    """``[fiscal]``: the fiscal printer (ККТ) and the sale session (``docs/fiscal.md``)."""

    url: str = field(
        default="emulator:///var/lib/markd/kkt",
        metadata={
            "doc": "Printer URL: `atol-web://127.0.0.1:16732` (ATOL web server; "
            "`?deviceID=NAME` for one of several devices), `atol-lib://usb` (libfptr10), "
            "`shtrih:///dev/ttyACM0` or `shtrih://HOST:7778` (a Shtrih-M ККТ, protocol 1), or "
            "`emulator:///DIR` (the virtual ККТ).",
            "check": lambda value: _printer_url_problem(value),
        },
    )
    web_user: str = field(
        default="",
        metadata={
            "doc": "HTTP Basic user for an `atol-web://` printer whose web server asks for one; "
            "empty: no authentication.",
            "check": lambda value: _web_user_problem(value),
        },
    )
    web_password_file: str = field(
        default="",
        metadata={
            "doc": "File holding that user's password; empty: the systemd credential "
            "`atol-web-password`.",
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
            "check": tag1263_problem,
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
            # The fiscal model's own list: a tax type the configuration accepts is one the
            # receipt's positions accept.
            "choices": TAX_TYPES,
        },
    )
    payment_type: str = field(
        default="electronically",
        metadata={
            "doc": "Payment type of a receipt closed without one (`markctl sell`).",
            # The receipts' own list: a type the configuration accepts is one a receipt
            # can be closed with.
            "choices": PAYMENT_TYPES,
        },
    )
    taxation_type: str = field(
        default="",
        metadata={
            "doc": "Taxation system (tag 1055) sent with every receipt as ATOL's "
            f"`taxationType`: {', '.join(f'`{name}`' for name in TAXATION_TYPES)}. Needed "
            "when the ККТ is registered with more than one; empty: not sent (the ККТ uses "
            "its only one).",
            "check": lambda value: taxation_type_problem(value) if value else None,
        },
    )
    cashier_name: str = field(
        default="",
        metadata={
            "doc": "The cashier (tag 1021, ATOL `operator.name`) on every receipt and shift "
            "report, at most 64 characters; empty: none sent (the ККТ's own default).",
            "check": lambda value: cashier_name_problem(value) if value else None,
        },
    )
    cashier_inn: str = field(
        default="",
        metadata={
            "doc": "The cashier's ИНН (tag 1203, ATOL `operator.vatin`): 12 digits with valid "
            "check digits (a person's ИНН); needs `cashier_name`. Empty: not sent.",
            "check": lambda value: cashier_inn_problem(value) if value else None,
        },
    )
    auto_shift: bool = field(
        default=True,
        metadata={
            "doc": "Open a closed shift, and close and reopen an expired (24 h) one, before a "
            "receipt.",
        },
    )
    fn_days_warning: int = field(
        default=30,
        metadata={
            "doc": "Fiscal health: warn (journal, `markctl printer status`, the status API) "
            "when fewer days than this are left before the ФН's validity ends.",
            "min": 1,
            "max": 1000,
        },
    )
    unsent_days_warning: int = field(
        default=3,
        metadata={
            "doc": "Fiscal health: warn when the oldest document not yet sent to the ОФД is "
            "older than this many days (the ККТ blocks at 30).",
            "min": 1,
            "max": 30,
        },
    )
    health_interval_s: int = field(
        default=600,
        metadata={
            "doc": "Fiscal health: read the ККТ's status this often while no operation runs, "
            "so the ФН's days, unsent documents and the shift's age stay current on an idle "
            "kiosk (it is also read after every receipt operation); `0`: only then.",
            "min": 0,
            "max": 86_400,
        },
    )
    shift_hours_warning: int = field(
        default=23,
        metadata={
            "doc": "Fiscal health: warn when the shift has been open longer than this many "
            "hours (the ККТ refuses receipts after 24).",
            "min": 1,
            "max": 24,
        },
    )
    lm_sell: bool = field(
        default=True,
        metadata={
            "doc": "After a receipt, report its КИ to the Local Module (API v2 `/cis/sell`, "
            "`/cis/return`) when `[check.local_module]` is configured.",
        },
    )


def _absolute_path_problem(path: str) -> str | None:
    """A file the daemon reads must not depend on the directory it was started in."""
    if path and not os.path.isabs(path):
        return f"expected an absolute path, got {path!r}"
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
            "check": _absolute_path_problem,
            # The file must load too; its own problems name its file and line.
            "parse": load_catalog,
            "parsed_into": "parsed_catalog",
        },
    )
    use_mrp: bool = field(
        default=True,
        metadata={
            "doc": "Mode `kiosk`: a tobacco code carrying its maximum retail price is sold at "
            "that price when the price list has no line for its GTIN.",
        },
    )
    #: The price list ``catalog`` names, as :func:`markd.config.load` parsed it (None: no
    #: price list, or a section built in code). Not a key; use :meth:`price_list`.
    parsed_catalog: Catalog | None = field(
        default=None, compare=False, repr=False, metadata={"toml": False}
    )

    def price_list(self) -> Catalog | None:
        """The price list ``catalog`` names: the one the configuration load parsed, so that a
        load reads the file once; read now for a section built in code (tests), or when
        ``catalog`` was changed after loading. Raises :class:`~markd.errors.ConfigError` when
        the file does not load."""
        if not self.catalog:
            return None
        if self.parsed_catalog is not None and self.parsed_catalog.path == self.catalog:
            return self.parsed_catalog
        return load_catalog(self.catalog)


def config_warnings(config: Config) -> list[str]:
    """What is valid but unsafe (``markctl config check`` prints it; the daemon starts)."""
    store = config.store
    found: list[str] = []
    if store.sync_url and not store.sync_public_keys:
        if store.sync_url.lower().startswith("http://") and not store.sync_allow_unsigned:
            found.append(
                "[store] sync_url is plain http:// and [store] sync_public_keys is empty: every "
                "sync will be refused (unsigned-sync); set sync_public_keys (docs/store.md, "
                "Fleet keys), or sync_allow_unsigned = true to accept the risk"
            )
        else:
            found.append(
                "[store] sync_public_keys is empty: the blocklist from [store] sync_url is not "
                "verified, so whoever controls the file server"
                + (" or the network path" if store.sync_url.lower().startswith("http://") else "")
                + " can unblock codes or wipe the list (docs/store.md, Fleet keys)"
            )
    return found


def whole_config_problems(config: Config) -> list[tuple[tuple[str, ...], str]]:
    """What only the merged configuration can show (keys that depend on each other), as
    ``(key path, problem)`` pairs."""
    found: list[tuple[tuple[str, ...], str]] = []
    sale = config.sale
    if sale.mode == "kiosk" and not sale.catalog and not sale.use_mrp:
        found.append(
            (
                ("sale", "mode"),
                "[sale] mode: kiosk needs prices: set [sale] catalog, or use_mrp = true "
                "(tobacco only)",
            )
        )
    for name in config.scanners:
        if name in RESERVED_SCANNER_NAMES:
            found.append(
                (
                    ("scanners", name),
                    f"[scanners.{name}]: the name {name!r} is reserved (scans through the "
                    "control API and unknown scanners are counted under it); choose another",
                )
            )
    check = config.check
    if check.mode == "tspiot" and check.tspiot is None:
        found.append((("check", "mode"), '[check] mode: "tspiot" needs a [check.tspiot] section'))
    api = config.api
    if api.enabled and api.listen:
        host, _ = parse_listen(api.listen)  # its form was checked with the key
        problem = remote_listen_problem(host, allow_remote=api.allow_remote)
        if problem is not None:
            found.append((("api", "listen"), f"[api] listen: {problem}"))
    if (
        api.enabled
        and api.screen
        and (not api.listen or not ipaddress.ip_address(parse_listen(api.listen)[0]).is_loopback)
    ):
        # The page's cookie and tickets would cross a network in clear text, and browsers
        # send Sec-Fetch-Site (on which the page's own requests pass) to loopback only.
        found.append(
            (
                ("api", "screen"),
                "[api] screen: needs [api] listen on a loopback address (127.0.0.1:8391): the "
                "customer screen is for the till's own browser",
            )
        )
    found += _metrics_problems(config)
    found += _mark_unit_problems(config)
    fiscal = config.fiscal
    if fiscal.web_user and not fiscal.url.lower().startswith("atol-web://"):
        found.append(
            (
                ("fiscal", "web_user"),
                "[fiscal] web_user: HTTP authentication is for an atol-web:// printer, and "
                f"[fiscal] url is {fiscal.url!r}",
            )
        )
    if fiscal.cashier_inn and not fiscal.cashier_name:
        # The driver sends tag 1203 only with the cashier's name (operator.name is required
        # once operator is given: myscripts_base_receipt.js, validate).
        found.append(
            (
                ("fiscal", "cashier_inn"),
                "[fiscal] cashier_inn: needs [fiscal] cashier_name (the ККТ takes the "
                "cashier's ИНН only with the cashier's name)",
            )
        )
    return found


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
    # The control API reads [api] listen with the same reader, so a typo fails
    # `markctl config check` with the daemon's own message.
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _origin_problem(value: str) -> str | None:
    if not re.fullmatch(r"https?://[^/\s?#]+", value):
        return f"expected an origin such as http://localhost:8080 (no path), got {shown_url(value)}"
    return _host_port_problem(value)


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
            "check": lambda value: socket_path_problem(value),
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
    replay_events: int = field(
        default=1024,
        metadata={
            "doc": "Latest events kept for event stream clients that reconnect (`Last-Event-ID`, "
            "`since`); 0: none kept, a reconnecting client gets a `gap` event.",
            "min": 0,
            "max": 65_536,
        },
    )
    replay_kib: int = field(
        default=1024,
        metadata={
            "doc": "The most KiB (of their JSON) the kept events take together; the oldest go "
            "first when either limit is reached.",
            "min": 1,
            "max": 65_536,
        },
    )
    session_hours: int = field(
        default=24,
        metadata={
            "doc": "Hours a browser session (`POST /v1/session`, its cookie) lasts unused; "
            "each request it authorises, and each event stream it keeps open, moves its end on.",
            "min": 1,
            "max": 720,
        },
    )
    screen: bool = field(
        default=False,
        metadata={
            "doc": "Serve the reference customer screen at `/screen/` on `listen`, which must "
            'then be a loopback address (docs/api.md, "The customer screen").',
        },
    )
    screen_demo_pay: bool = field(
        default=False,
        metadata={
            "doc": "For demonstrations and tests only: the screen shows «Оплатить», and its "
            "session cookie may close the receipt, registering it as paid electronically with "
            "no payment taken. A real kiosk closes from its payment integration, with the "
            "token, once the bank approved.",
        },
    )


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: a TCP listener of its own for Prometheus, serving ``GET /metrics`` only
    (``docs/metrics.md``), with a bearer token of its own."""

    listen: str = field(
        default="",
        metadata={
            "doc": "Serve `GET /metrics` (and nothing else) on TCP at `HOST:PORT` (e.g. "
            "`127.0.0.1:9391`), with a bearer token; empty: no metrics listener. Needs "
            "`[api] enabled`; not the address of `[api] listen`.",
            "check": lambda value: _listen_problem(value),
        },
    )
    allow_remote: bool = field(
        default=False,
        metadata={
            "doc": "Allow `listen` on an address other than loopback, for a Prometheus server "
            "elsewhere (the token then crosses the network in clear text).",
        },
    )
    token_file: str = field(
        default="",
        metadata={
            "doc": "File holding the bearer token the scraper must send; empty: the systemd "
            "credential `metrics-token`. Required when `listen` is set.",
        },
    )


def _metrics_problems(config: Config) -> list[tuple[tuple[str, ...], str]]:
    """What ``[metrics] listen`` may not be, given the rest of the configuration."""
    metrics, api = config.metrics, config.api
    if not metrics.listen:
        return []
    key = ("metrics", "listen")
    if not api.enabled:
        # The listener is one of the control API server's: no API, nothing to serve it.
        return [(key, "[metrics] listen: the metrics listener needs [api] enabled = true")]
    host, _ = parse_listen(metrics.listen)  # its form was checked with the key
    problem = remote_listen_problem(host, allow_remote=metrics.allow_remote, section="metrics")
    if problem is not None:
        return [(key, f"[metrics] listen: {problem}")]
    if api.listen and listen_overlap(metrics.listen, api.listen):
        return [
            (
                key,
                f"[metrics] listen: {metrics.listen} takes the port of [api] listen "
                f"({api.listen}); give the metrics listener a port of its own",
            )
        ]
    return []


def _client_network_problem(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"expected an IP address or network such as 192.168.1.0/24, got {value!r}"
    return None


def _till_host_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", value):
            return f"expected an IP address or a host name, got {value!r}"
    return None


@dataclass(frozen=True)
class MarkUnitConfig:
    """``[mark_unit]``: the front that speaks the Mark Unit API Frontol tills call
    (``docs/mark_unit.md``), so an existing till checks its marked goods through markd."""

    enabled: bool = field(
        default=False,
        metadata={"doc": "Serve the Mark Unit API on `listen`. Off by default."},
    )
    listen: str = field(
        default="127.0.0.1:2578",
        metadata={
            "doc": "`HOST:PORT` the tills connect to (2578 is the port tills are set up with). "
            "An address other than loopback needs `allowed_clients` naming the tills.",
            "min_length": 1,
            "check": lambda value: _listen_problem(value),
        },
    )
    allowed_clients: tuple[str, ...] = field(
        default=("127.0.0.0/8", "::1"),
        metadata={
            "doc": "Addresses or networks (`192.168.1.20`, `192.168.1.0/24`) that may connect; "
            "anyone else is refused at once. The protocol carries no real authentication, so "
            "this list is the only gate.",
            "check": lambda value: _client_network_problem(value),
        },
    )
    encoding: str = field(
        default="utf-8",
        metadata={
            "doc": "Charset of the answers: `utf-8`, or `windows-1251` for tills set up that way.",
            "choices": ("utf-8", "windows-1251"),
        },
    )
    price_unit: str = field(
        default="rubles",
        metadata={
            "doc": "Unit of `product_price` and `total_price` in the tills' documents: `rubles` "
            "(FMU-API multiplies them by 100) or `kopecks`.",
            "choices": ("rubles", "kopecks"),
        },
    )
    trust_till_tspiot: bool = field(
        default=False,
        metadata={
            "doc": "Mode `tspiot`: ask the ТС ПИоТ a till names with a position (`esm`) instead "
            "of `[check.tspiot]` (its scheme, token and certificate rules kept). An allowed "
            "till can then make markd ask (and send the `[check.tspiot]` token to) the "
            "ТС ПИоТ on its own machine (a loopback address it names is read as its own) or "
            "on a host of `till_tspiot_hosts`; any other address is ignored. Off: the address "
            "is journaled and ignored.",
        },
    )
    till_tspiot_hosts: tuple[str, ...] = field(
        default=(),
        metadata={
            "doc": "With `trust_till_tspiot`: hosts (addresses or names) a till may name for "
            "its ТС ПИоТ besides its own address, such as a shop's shared ТС ПИоТ server.",
            "check": lambda value: _till_host_problem(value),
        },
    )
    lm_in_req_id: bool = field(
        default=False,
        metadata={
            "doc": "Frontol before 6.27: after a Local Module check, write its instance and "
            "version into `truemark_response.reqId` (`UUID&Inst=…&Ver=…`). Frontol 6.27 and "
            "later read them from the answer itself: leave `false`.",
        },
    )
    refund_check: bool = field(
        default=True,
        metadata={
            "doc": "Check the codes of a refund document (Frontol 22.4 and later want it); the "
            "answer never refuses a refund for `sold`. `false`: a refund without an ИНН "
            "(Frontol 20.5) is answered at once without a check.",
        },
    )
    repeat_cache_ms: int = field(
        default=3000,
        metadata={
            "doc": "A check the same till sends again within this time gets the first answer "
            "again, without asking the services (also when sent with its code cut short to "
            "the GTIN and serial or the КИ, as Frontol does); `0`: never.",
            "min": 0,
            "max": 60_000,
        },
    )
    max_checks: int = field(
        default=20,
        metadata={
            "doc": "Checks from tills under way at once; more wait their turn (never behind "
            "markd's own scanners, which have a queue of their own). The check clients (CDN, "
            "Local Module, ТС ПИоТ) keep as many connections to their service open between "
            "checks (at least 4, a kiosk's number).",
            "min": 1,
            "max": 256,
        },
    )
    pending_minutes: int = field(
        default=5,
        metadata={
            "doc": "Minutes a receipt stays pending between `begin` and its `commit` or "
            "`cancel` (FMU-API keeps it 5 minutes).",
            "min": 1,
            "max": 1440,
        },
    )


def _mark_unit_problems(config: Config) -> list[tuple[tuple[str, ...], str]]:
    """What ``[mark_unit]`` may not be, given the rest of the configuration."""
    front = config.mark_unit
    if not front.enabled:
        return []
    found: list[tuple[tuple[str, ...], str]] = []
    host, _ = parse_listen(front.listen)
    networks = [ipaddress.ip_network(item, strict=False) for item in front.allowed_clients]
    if not networks:
        found.append(
            (
                ("mark_unit", "allowed_clients"),
                "[mark_unit] allowed_clients: empty, no till can connect",
            )
        )
    elif any(net.prefixlen == 0 for net in networks):
        found.append(
            (
                ("mark_unit", "allowed_clients"),
                "[mark_unit] allowed_clients: a /0 network lets anyone who reaches the port "
                "check and sell codes (the protocol has no authentication); name the tills",
            )
        )
    elif not ipaddress.ip_address(host).is_loopback and all(
        net.network_address.is_loopback for net in networks
    ):
        found.append(
            (
                ("mark_unit", "listen"),
                f"[mark_unit] listen: {host} is not a loopback address but allowed_clients "
                "names loopback only; list the tills' addresses or network (the protocol has "
                "no authentication, so the allow-list is its only gate)",
            )
        )
    for key, other in (("api", config.api.listen), ("metrics", config.metrics.listen)):
        if other and listen_overlap(front.listen, other):
            found.append(
                (
                    ("mark_unit", "listen"),
                    f"[mark_unit] listen: {front.listen} takes the port of [{key}] listen",
                )
            )
    return found


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
    metrics: MetricsConfig = field(
        default_factory=MetricsConfig, metadata={"doc": "Metrics listener."}
    )
    mark_unit: MarkUnitConfig = field(
        default_factory=MarkUnitConfig, metadata={"doc": "Mark Unit API front for tills."}
    )
    sources: tuple[str, ...] = field(default=(), metadata={"toml": False})

    def codes_options(self) -> CodesOptions:
        """The ``[codes]`` section as the options :func:`markd.codes.parse` takes."""
        return CodesOptions(
            recover_lost_gs=self.codes.recover_lost_gs,
            serial_lengths=self.codes.serial_lengths,
            ki_serial_lengths=self.codes.ki_serial_lengths,
        )


def default_config() -> Config:
    """The configuration used when no file exists: every key at its default."""
    return Config()
