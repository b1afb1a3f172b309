"""Living under systemd: readiness notification (sd_notify) and the structured event log.

:func:`notify` tells the service manager about state changes (``READY=1``, ``STATUS=...``,
``RELOADING=1``, ``STOPPING=1``, ``WATCHDOG=1``). It uses ``systemd.daemon.notify``
(systemd-python, a wrapper of sd_notify(3)) when importable, else writes the datagram to
``$NOTIFY_SOCKET`` itself, including abstract ``@`` sockets. Off systemd there is no socket and
it returns False, so the daemon runs the same way in a terminal, a container or a test.
:func:`watchdog_interval` says whether and how often to ping ``WATCHDOG=1``.

:class:`EventLog` writes one record per event. Under journald each record carries structured
fields, so a technician filters without grepping::

    journalctl -u markd MARKD_DECISION=deny
    journalctl -u markd MARKD_EVENT=scanner-absent MARKD_SCANNER=front

and a fixed ``MESSAGE_ID`` per event kind (:data:`MESSAGE_IDS`) for the journal catalog.
Off journald the same event is one plain line on stderr. The full marking code and its crypto
tail are never logged: fields named ``km``, ``crypto``, ``code`` or ``raw`` are dropped.

Whoever else wants what the log writes (the control API's live event stream) registers an
observer with :meth:`EventLog.add_observer` and is handed each event that passed the level,
its fields already cleaned.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any, TextIO, TypeVar

try:  # systemd-python is a dependency, but markd must still run where it failed to build.
    from systemd import daemon as _sd_daemon
except ImportError:  # pragma: no cover - exercised by monkeypatching in tests
    _sd_daemon = None

try:
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover
    _sd_journal = None


# --------------------------------------------------------------------------------------------
# sd_notify


def notify(*states: str) -> bool:
    """Send state lines (``"READY=1"``, ``"STATUS=..."``) to the service manager.

    Returns True when the message was sent, False when not running under a systemd service
    with ``Type=notify`` (no ``$NOTIFY_SOCKET``) or when sending failed. Never raises: a lost
    status line must not take the daemon down.
    """
    if not states:
        return False
    message = "\n".join(states)
    if _sd_daemon is not None:
        try:
            return bool(_sd_daemon.notify(message))
        except (OSError, ValueError):
            return False
    return notify_via_socket(message)


def notify_via_socket(message: str, address: str | None = None) -> bool:
    """Fallback sd_notify: send ``message`` as one datagram to ``address``
    (default ``$NOTIFY_SOCKET``). A leading ``@`` names an abstract socket. Returns False when
    there is no address or sending fails."""
    address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not address or not (address.startswith("/") or address.startswith("@")):
        # Unset, or a form this fallback does not speak (systemd's vsock: addresses).
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode("utf-8"), target)
    except OSError:
        return False
    return True


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd's ``MONOTONIC_USEC=`` is read on."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading_states() -> tuple[str, str]:
    """The lines that open a reload: ``RELOADING=1`` and ``MONOTONIC_USEC=`` (now).

    systemd 253 and later (``Type=notify-reload``) accept a reload only when the timestamp is
    not older than the moment they sent SIGHUP; systemd 252, which Debian 12 ships, ignores the
    field. Sending both keeps one daemon right under either.
    """
    return "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"


def watchdog_interval(
    environ: dict[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings, or None when the watchdog is off for us.

    Like sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` is the unit's ``WatchdogSec=`` in
    microseconds, and ``$WATCHDOG_PID``, when set, names the one process meant to ping (a child
    that inherited the environment must not). We ping at half the timeout, as systemd advises,
    so one late tick is not yet a kill.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


#: The file in ``$RUNTIME_DIRECTORY`` where the daemon writes each reload's outcome, as JSON
#: (``pid``, ``generation``, ``ok``, ``message``), for ``markd reload`` (the unit's
#: ``ExecReload=``).
RELOAD_STATUS_FILE = "reload.json"


def runtime_file(name: str, environ: dict[str, str] | None = None) -> Path | None:
    """``$RUNTIME_DIRECTORY/name`` (the unit's ``RuntimeDirectory=``); None off systemd."""
    directory = (os.environ if environ is None else environ).get("RUNTIME_DIRECTORY", "")
    directory = directory.split(":")[0]  # several directories come colon-separated
    return Path(directory, name) if directory else None


# --------------------------------------------------------------------------------------------
# Event log

#: One fixed MESSAGE_ID per event kind (journalctl MESSAGE_ID=..., catalog entries).
MESSAGE_IDS: dict[str, str] = {
    "verdict": "5fe0b6fff4444395ae1f64bc7488ed3f",
    "source-notice": "ab8f98e2bc84468e927f1ec8bf8d39ea",
    "check-exchange": "84ac3f34cce34ce1acaed0182aa8105a",
    "scan-overflow": "c38b2d31bc144f99886e6335edc61739",
    "scanner-present": "e3983ba85d72413eb3a31f120b87c79e",
    "scanner-absent": "6daf63fedaf54974b41d007667e7115a",
    "service-started": "8ae22f5ca4dc4f7aa03e0927adc0a85b",
    "service-stopping": "003aaf6ca2bb4d60b8088dc64a522555",
    "service-error": "effc337f438544f9b80dfbe0fb5be220",
    # markd could not start (bad configuration, missing secret, store, port …): at err.
    "start-failed": "e63a1096eda54d1f8800aa28aaa2fe5a",
    "store-sync": "6be57e0b3828417c8f08784a89f0a56e",
    "store-sync-failed": "7ca3f14fdad744fca7d93ed9ed7de181",
    # A sync refused as untrusted (bad or missing signature, tampered file) or for a file over
    # the size limit: at err, not warning.
    "store-sync-refused": "eae535ee66204ca1b478e518ef37ab04",
    "service-reloaded": "43352c76c0f34279b9570f6493771a90",
    "reload-refused": "dddc3c727f464537a4d1e68cc583eb31",
    "watchdog-unhealthy": "9c93f53c7d9b441393ccd52396fc9635",
    "watchdog-recovered": "4d6dd52b0acc4308a6c3154012e6ee98",
    "slow-scan": "c792c844d78b44fc92cb93d4e7e9f8aa",
    # The fiscal side (markd.fiscal): the ККТ's view of units, receipts and recovery.
    "fiscal-unit": "0c3f6e1d9b2a4c7e8f5a1b2c3d4e5f60",
    "fiscal-receipt": "5b8e2f7a1c9d4e3b8a6f0d1c2b3a4e59",
    "fiscal-error": "9e1d7c3b5a2f4e8d9c0b1a2f3e4d5c68",
    "fiscal-recovery": "2a7f9c1e3b5d4a6c8e0f1d2c3b4a5e77",
    # The sale desk (markd.sale): what became of a unit offered for sale, and the desk itself.
    "sale-unit": "49033432b5cd4091a6fff0ba60cd3679",
    "sale-refused": "c973fb05b90c4e1da693ff37278be9dd",
    "sale-desk": "796e8a50300744bdad1499ec10d593bd",
    "sale-recovery": "9b4ed93224624a33b7d21f3b548de722",
}
"""Every kind needs an entry, in English and Russian, in ``systemd/markd.catalog`` (a test
checks), so that ``journalctl -x`` explains each record to a technician."""

#: syslog priorities by name, as used in ``[log] level`` and ``PRIORITY=``.
PRIORITIES: dict[str, int] = {
    "error": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
_PRIORITY_ALIASES = {"err": "error", "warn": "warning"}

#: Field names that would carry the crypto tail; refused whatever the caller passes.
FORBIDDEN_FIELDS = frozenset({"km", "crypto", "code", "raw"})

#: Called with each event an :class:`EventLog` writes: kind, message, priority (a number) and
#: the fields as written (``None`` values and :data:`FORBIDDEN_FIELDS` already left out).
EventObserver = Callable[[str, str, int, Mapping[str, Any]], None]


def priority_value(level: str | int) -> int:
    """A syslog priority number from a name (``info``) or a number; ``ValueError`` if unknown."""
    if isinstance(level, int):
        if 0 <= level <= 7:
            return level
        raise ValueError(f"priority {level} out of range 0-7")
    name = _PRIORITY_ALIASES.get(level.lower(), level.lower())
    try:
        return PRIORITIES[name]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; use one of {', '.join(PRIORITIES)}"
        ) from None


def journal_stream_matches(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``).

    systemd sets ``JOURNAL_STREAM=DEV:INODE`` for a service whose stdout/stderr go to journald;
    comparing it with the stream's fstat tells "stderr is the journal" from "stderr was
    redirected by the user", which is what sd_journal_stream_fd(3) recommends.
    """
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    dev, _, ino = value.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


#: The journal field of each field name met so far (``ki`` → ``MARKD_KI``), None for a name
#: of :data:`FORBIDDEN_FIELDS`: every record of a kind names the same fields, so each name is
#: worked out once rather than per record (the names are markd's keyword arguments, a few
#: dozen; the table stops growing at :data:`_MAX_FIELD_KEYS` all the same).
_FIELD_KEYS: dict[str, str | None] = {}
_MAX_FIELD_KEYS = 4096


def _journal_key(name: str) -> str | None:
    """``MARKD_<NAME>`` for field ``name``; None when it must never be written."""
    if name in _FIELD_KEYS:
        return _FIELD_KEYS[name]
    key = None if name.lower() in FORBIDDEN_FIELDS else f"MARKD_{name.upper()}"
    if len(_FIELD_KEYS) < _MAX_FIELD_KEYS:
        _FIELD_KEYS[name] = key
    return key


#: A quoted value's JSON (one encoder for every line: ``json.dumps`` with an option makes a
#: new one per call, and a value with a space, a verdict's message among them, is quoted).
_LINE_JSON = json.JSONEncoder(ensure_ascii=False)


def _format_value(value: Any) -> str:
    """``value`` as it goes on a line: bare when it is printable text without a space or a
    quote, else quoted as JSON with every character that is not printable escaped
    (``\\u2028``, ``\\u202e``, ``\\u0085``: a value must not break the line or change how a
    terminal shows it)."""
    text = str(value)
    # str.isprintable is False for every whitespace character but the space, and runs in C
    # (a character-by-character test in Python cost a verdict's record 24 µs).
    if text and text.isprintable() and " " not in text and '"' not in text:
        return text
    quoted = _LINE_JSON.encode(text)
    if quoted.isprintable():
        return quoted
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in quoted)


class EventLog:
    """Structured events to journald, or one plain line each to a stream.

    :param target: ``"journal"`` (send to journald), ``"stderr"`` (lines on ``stream``) or
        ``"auto"``: journald when ``stream`` is the journal stream systemd connected, else lines.
        ``"journal"`` without systemd-python falls back to lines.
    :param level: least important priority still logged (``info`` drops ``debug``).
    :param stream: where lines go (default ``sys.stderr``).
    :param journal: the journal module (``systemd.journal``); tests pass a recorder.
    """

    def __init__(
        self,
        target: str = "auto",
        stream: TextIO | None = None,
        level: str | int = "info",
        journal: ModuleType | Any | None = None,
    ) -> None:
        if target not in ("auto", "journal", "stderr"):
            raise ValueError(f"unknown log target {target!r}; use auto, journal or stderr")
        self.stream = stream if stream is not None else sys.stderr
        self.level = priority_value(level)
        self._journal = journal if journal is not None else _sd_journal
        if target == "auto":
            use_journal = self._journal is not None and journal_stream_matches(self.stream)
        else:
            use_journal = target == "journal" and self._journal is not None
        self.target = "journal" if use_journal else "stderr"
        self._observers: list[EventObserver] = []
        if self._journal is None and (
            target == "journal" or (target == "auto" and journal_stream_matches(self.stream))
        ):
            # Said once, where a technician looks: the records still come, as plain lines
            # without their MARKD_* fields and MESSAGE_ID.
            print(
                "markd: systemd-python is not importable; journal records are written as "
                "plain lines without their fields (install python3-systemd)",
                file=self.stream,
            )

    def add_observer(self, observer: EventObserver) -> None:
        """Hand every event written from now on to ``observer`` too, after the journal."""
        self._observers.append(observer)

    def remove_observer(self, observer: EventObserver) -> None:
        """Stop handing events to ``observer`` (one that was never added is ignored)."""
        if observer in self._observers:
            self._observers.remove(observer)

    def event(
        self,
        kind: str,
        message: str,
        *,
        priority: str | int = "info",
        code_location: tuple[str, int, str] | None = None,
        **fields: Any,
    ) -> None:
        """Log one event of ``kind`` (a key of :data:`MESSAGE_IDS`).

        ``fields`` become ``MARKD_<NAME>`` journal fields (``ki`` → ``MARKD_KI``) or ``name=value``
        pairs on the line. ``None`` values are left out. Never raises on a write failure. The
        observers get the event after it is written, in the order they were added.
        ``code_location``: the file, line and function the record is from (the journal's
        ``CODE_FILE``, ``CODE_LINE``, ``CODE_FUNC``), when not the caller of this method (a
        ``logging`` record's own).
        """
        if kind not in MESSAGE_IDS:
            raise ValueError(f"unknown event kind {kind!r}; add it to MESSAGE_IDS")
        prio = priority_value(priority)
        if prio > self.level:
            return
        clean = {
            name: value
            for name, value in fields.items()
            if value is not None and _journal_key(name) is not None
        }
        try:
            if self.target == "journal":
                journal_fields = {_journal_key(name) or name: str(v) for name, v in clean.items()}
                code_file, code_line, code_func = code_location or _caller()
                self._journal.send(
                    MESSAGE=message,
                    MESSAGE_ID=MESSAGE_IDS[kind],
                    CODE_FILE=code_file,
                    CODE_LINE=code_line,
                    CODE_FUNC=code_func,
                    PRIORITY=str(prio),
                    SYSLOG_IDENTIFIER="markd",
                    MARKD_EVENT=kind,
                    **journal_fields,
                )
            else:
                pairs = " ".join(f"{name}={_format_value(v)}" for name, v in clean.items())
                line = f"{kind}: {message}" + (f" | {pairs}" if pairs else "")
                self.stream.write(line + "\n")
                self.stream.flush()
        except (OSError, ValueError):
            # journald gone or stderr closed: keep checking codes rather than die logging.
            pass
        for observer in self._observers:
            observer(kind, message, prio, clean)


#: Code of the functions that only hand their arguments on to :meth:`EventLog.event`
#: (:func:`passes_events_on`), by identity: a record names their caller, not them. (Code
#: objects compare equal by content, not by file: a set of them could match a twin elsewhere.)
_PASSERS: dict[int, CodeType] = {}

_F = TypeVar("_F", bound=Callable[..., Any])


def passes_events_on(function: _F) -> _F:
    """Mark ``function`` as one that only hands an event on to :meth:`EventLog.event` (a
    component's own ``event`` method over its optional event log): the journal's
    ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC`` then name the code that called it. The
    innermost decorator of a function (it marks the function's own code)."""
    code = function.__code__
    _PASSERS[id(code)] = code
    return function


def _caller() -> tuple[str, int | None, str]:
    """File, line and function of the code that called :meth:`EventLog.event`, past any
    :func:`passes_events_on` function between. Given to ``systemd.journal.send`` rather
    than left to it: it would look them up with ``traceback.extract_stack``, which checks
    each frame's source file on disk, for every record (about 30 µs of a verdict's), and
    would name ``EventLog.event`` itself. No frame is kept in a local of the frame it is
    (that would be a reference cycle per record)."""
    frame = getattr(getattr(inspect.currentframe(), "f_back", None), "f_back", None)
    while frame is not None and id(frame.f_code) in _PASSERS:
        frame = frame.f_back
    if frame is None:
        return __file__, None, "event"
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name


class LogBridge(logging.Handler):
    """Forwards Python ``logging`` records of markd's modules (a CDN host quarantined, a
    Local Module gone) to the event log as ``source-notice`` events, so they reach the journal
    with the rest instead of a bare stderr line."""

    def __init__(self, event_log: EventLog) -> None:
        super().__init__(level=logging.DEBUG)
        self.event_log = event_log

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            priority = "error"
        elif record.levelno >= logging.WARNING:
            priority = "warning"
        elif record.levelno >= logging.INFO:
            priority = "info"
        else:
            priority = "debug"
        try:
            self.event_log.event(
                "source-notice",
                record.getMessage(),
                priority=priority,
                code_location=(record.pathname, record.lineno, record.funcName),
                logger=record.name,
            )
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)
