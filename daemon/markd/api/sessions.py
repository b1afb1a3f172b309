"""Browser sessions of the control API: the bearer token exchanged once for a cookie and a ticket.

A kiosk screen in a browser cannot put ``Authorization`` on an ``EventSource`` or a
``WebSocket``. So the page sends the token once, ``POST /v1/session``, and gets back

* a session cookie, ``markd_session`` (``HttpOnly``: the page's scripts never read it;
  ``SameSite=Strict``: a page of another site never makes the browser send it), which
  authorises :data:`SESSION_ROUTES` only, until it goes unused for ``[api] session_hours``
  (each request it authorises, and each event stream it keeps open, counts as a use); and
* a ticket in the JSON body, for a client that cannot use the cookie (a page on another site
  than the API, e.g. ``http://localhost:8080`` reading ``http://127.0.0.1:8391``): one
  connection to ``GET /v1/events?ticket=…`` (Server-Sent Events or WebSocket) within
  :data:`TICKET_TTL_S`, then never again; or one exchange for a session of its own, which
  comes without a ticket (a ticket never yields another ticket: only the token mints them).

Both are 256 random bits. Only their SHA-256 digests are kept, so the lookup of what a client
sends is a dict lookup on a digest: nothing about a kept value leaks through its timing, and a
memory dump holds no usable credential. Both are bounded in number (:data:`MAX_SESSIONS`,
:data:`MAX_TICKETS`; the oldest ticket goes first, and the least recently used session — but
one used within :data:`RECENTLY_USED_S` only for an exchange of the token, never of a ticket:
:class:`SessionsFull`) and expire on the monotonic clock (a till's wall clock may jump at
boot, when NTP answers). The live sessions' digests and ends may be kept in a file
(``path``; the server puts it beside the control socket, in ``/run/markd``): a markd that
restarts — killed during a close, say — then still knows the screen's cookie, and the page
reconnects and reads the receipt's outcome. The
file holds no usable credential (digests only), is written mode 0600, and counts only on the
boot that wrote it (the monotonic clock starts again at each boot: its ``boot_id`` must
match). A session that ends — revoked, expired or pushed out — is reported to ``on_end``
with its digest, so that the server can end the event streams it opened. Nothing here logs,
and neither value ever appears in a log line: ``docs/api.md``, "Browsers".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: The session cookie's name.
SESSION_COOKIE = "markd_session"
#: Seconds a ticket may wait for its connection.
TICKET_TTL_S = 30.0
#: Sessions kept at most; one more pushes out the least recently used. A kiosk has one
#: screen, reloaded now and then: a few sessions are all it ever holds.
MAX_SESSIONS = 16
#: A session used within this many seconds (a screen showing the till: its event stream
#: counts as a use every :data:`KEEP_ALIVE_S`) is pushed out only to make room for a session
#: the token asked for; a ticket's exchange is refused instead.
RECENTLY_USED_S = 600.0
#: How often an open event stream counts as a use of the session that opened it.
KEEP_ALIVE_S = 300.0
#: The sessions file is written at most this often when only sessions' ends moved on (a
#: session that begins or ends is written at once). Its ends may lag by as much: nothing
#: against ``[api] session_hours``.
SAVE_EVERY_S = 60.0
#: Unused tickets kept at most; one more pushes out the oldest.
MAX_TICKETS = 32
#: Characters a session or ticket value has (``secrets.token_urlsafe(32)``: 256 bits).
_VALUE_CHARS = 43
#: Where Linux names the current boot; a sessions file of another boot is not read.
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

#: What a session cookie authorises, as ``(method, path)``: what a kiosk screen does, and no
#: more. It follows the stream (events) and the till's state (status, the open receipt), and
#: in kiosk mode, where allowed scans go onto the receipt by themselves, it cancels that
#: receipt; it may end its own session. It may not check or add codes, open or close receipts,
#: reload the configuration, read the metrics or mint more sessions and tickets: those stay
#: with the bearer token (an attendant's POS, ``markctl``, a launcher, the payment
#: integration), so a stolen cookie cannot sell anything the scanner did not scan, nor
#: register a receipt as paid.
SESSION_ROUTES = frozenset(
    {
        ("GET", "/v1/events"),
        ("GET", "/v1/status"),
        ("GET", "/v1/receipt"),
        ("GET", "/v1/receipts/{id}"),
        ("POST", "/v1/receipt/cancel"),
        ("DELETE", "/v1/session"),
    }
)
#: What a session cookie authorises besides, with ``[api] screen_demo_pay`` only: the close,
#: for the reference screen's «Оплатить» button, which registers the receipt as paid with no
#: payment taken. For demonstrations and tests; a real kiosk closes from its payment
#: integration, with the token, once the bank approved.
SCREEN_DEMO_ROUTES = frozenset({("POST", "/v1/receipt/close")})


def session_routes(demo_pay: bool) -> frozenset[tuple[str, str]]:
    """What a session cookie authorises: :data:`SESSION_ROUTES`, and with ``demo_pay``
    (``[api] screen_demo_pay``) :data:`SCREEN_DEMO_ROUTES`."""
    return SESSION_ROUTES | SCREEN_DEMO_ROUTES if demo_pay else SESSION_ROUTES


#: What a ticket authorises: one event stream connection (SSE or WebSocket), or one exchange
#: for a session of its own (``POST /v1/session``, answered with the cookie only, no ticket):
#: how a page served by markd itself (the customer screen) turns the ticket its launcher
#: handed it into its cookie. A leaked ticket thus yields one session, never a chain of them.
TICKET_ROUTES = frozenset({("GET", "/v1/events"), ("POST", "/v1/session")})


class SessionsFull(Exception):  # noqa: N818 - the condition's name, as the API answers it
    """Every kept session was used within :data:`RECENTLY_USED_S`, and the new one was asked
    for with a ticket: it may not push out a screen in use."""


@dataclass
class _Session:
    #: Monotonic seconds when it expires (moved on by each use).
    until: float
    #: Monotonic seconds of its last use (None: never used since it was opened).
    used: float | None = None


@dataclass(frozen=True)
class OpenedSession:
    """What ``POST /v1/session`` hands out: the cookie's value, and a ticket unless the
    session was itself asked for with a ticket."""

    session: str
    ticket: str | None
    session_s: int
    ticket_s: int

    def __repr__(self) -> str:  # never the values, should one reach a log by mistake
        return f"OpenedSession(session_s={self.session_s}, ticket_s={self.ticket_s})"


def _digest(value: str) -> bytes | None:
    if len(value) != _VALUE_CHARS:
        return None
    return hashlib.sha256(value.encode("ascii", "replace")).digest()


class SessionStore:
    """Sessions and tickets of one control API server (kept in memory: a restart ends them).

    :param session_s: seconds a session lasts from its last use (its opening, a request it
        authorised, :meth:`keep_alive`). There is no limit from its opening: a screen used
        every day would otherwise go dark at a fixed hour with no one to log it in again
        (``docs/api.md``, "Browsers").
    :param ticket_s: seconds a ticket lasts.
    :param clock: monotonic seconds (tests pass their own).
    :param on_end: called with a session's digest when it ends (revoked, expired, pushed out).
    :param path: a file that keeps the live sessions across a restart of markd (None: memory
        only). Read at once; written whenever a session begins, is revoked or is pushed out
        (one that expired is dropped when the file is read), and at most every
        :data:`SAVE_EVERY_S` when only their ends moved on.
    """

    def __init__(
        self,
        session_s: float,
        *,
        ticket_s: float = TICKET_TTL_S,
        max_sessions: int = MAX_SESSIONS,
        max_tickets: int = MAX_TICKETS,
        clock: Callable[[], float] = time.monotonic,
        on_end: Callable[[bytes], None] | None = None,
        path: Path | None = None,
    ) -> None:
        self.session_s = session_s
        self.ticket_s = ticket_s
        self.max_sessions = max_sessions
        self.max_tickets = max_tickets
        self._clock = clock
        self.on_end = on_end
        #: digest → its end and last use; the most recently used last.
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()
        #: digest → when it expires; the newest last.
        self._tickets: OrderedDict[bytes, float] = OrderedDict()
        self.path = path
        self._saved_at: float | None = None
        if path is not None:
            self._load(path)

    @property
    def sessions(self) -> int:
        """Sessions live now."""
        self._expire()
        return len(self._sessions)

    def open(self, *, with_ticket: bool = True) -> OpenedSession:
        """A new session, and a ticket unless ``with_ticket`` is false (the session is asked
        for with a ticket: a ticket never yields another). When :data:`MAX_SESSIONS` are
        kept, the least recently used one makes room: one not used within
        :data:`RECENTLY_USED_S` first; failing that, for the token's exchange
        (``with_ticket``), the least recently used of all; for a ticket's,
        :class:`SessionsFull`."""
        self._expire()
        now = self._clock()
        if len(self._sessions) >= self.max_sessions:
            victim = self._idlest(now, recent_too=with_ticket)
            if victim is None:
                raise SessionsFull(
                    f"{len(self._sessions)} browser sessions are kept, each used within the "
                    f"last {RECENTLY_USED_S / 60:.0f} minutes"
                )
            del self._sessions[victim]
            self._ended(victim)
        session = secrets.token_urlsafe(32)
        self._sessions[_digest(session) or b""] = _Session(now + self.session_s)
        ticket = None
        if with_ticket:
            ticket = secrets.token_urlsafe(32)
            self._tickets[_digest(ticket) or b""] = now + self.ticket_s
            while len(self._tickets) > self.max_tickets:
                self._tickets.popitem(last=False)
        self._save()
        return OpenedSession(session, ticket, int(self.session_s), int(self.ticket_s))

    def _idlest(self, now: float, *, recent_too: bool) -> bytes | None:
        """The session to push out for a new one (None: none may go): one never used (a
        launcher's, whose ticket became the page's own session) before one used long ago."""
        for digest, kept in self._sessions.items():  # the least recently used first
            if kept.used is None:
                return digest
        for digest, kept in self._sessions.items():
            if kept.used is not None and now - kept.used >= RECENTLY_USED_S:
                return digest
        if recent_too and self._sessions:
            return next(iter(self._sessions))
        return None

    def find(self, values: Iterable[str]) -> bytes | None:
        """The digest of the live session among ``values`` (the cookies of that name a
        request sent), None when there is none; that session counts as used now."""
        self._expire()
        for value in values:
            digest = _digest(value)
            if digest is not None and digest in self._sessions:
                self._used(digest)
                return digest
        return None

    def keep_alive(self, digest: bytes) -> bool:
        """The session of ``digest`` counts as used now (an event stream it opened is still
        open: the screen is showing); False when it is no longer live."""
        self._expire()
        if digest not in self._sessions:
            return False
        self._used(digest)
        return True

    def _used(self, digest: bytes) -> None:
        now = self._clock()
        kept = self._sessions[digest]
        kept.until, kept.used = now + self.session_s, now
        self._sessions.move_to_end(digest)
        if self._saved_at is None or now - self._saved_at >= SAVE_EVERY_S:
            self._save()

    def session_valid(self, values: Iterable[str]) -> bool:
        """Whether one of ``values`` is a live session (:meth:`find`)."""
        return self.find(values) is not None

    def expires_in(self, digest: bytes) -> float | None:
        """Seconds the session of ``digest`` has left; None when it is not live."""
        kept = self._sessions.get(digest)
        return None if kept is None else max(0.0, kept.until - self._clock())

    def revoke(self, values: Iterable[str]) -> bool:
        """End the sessions among ``values``; whether there was one."""
        found = False
        for value in values:
            digest = _digest(value)
            if digest is not None and self._sessions.pop(digest, None) is not None:
                self._ended(digest)
                found = True
        if found:
            self._save()
        return found

    def use_ticket(self, value: str) -> bool:
        """Whether ``value`` is a live ticket; it is used up either way."""
        self._expire()
        digest = _digest(value)
        return digest is not None and self._tickets.pop(digest, None) is not None

    def expire(self) -> None:
        """Forget what has expired (done by every other method too)."""
        self._expire()

    def _expire(self) -> None:
        now = self._clock()
        for digest in [d for d, until in self._tickets.items() if until <= now]:
            del self._tickets[digest]
        for digest in [d for d, kept in self._sessions.items() if kept.until <= now]:
            del self._sessions[digest]
            self._ended(digest)

    def _ended(self, digest: bytes) -> None:
        if self.on_end is not None:
            self.on_end(digest)

    def _load(self, path: Path) -> None:
        """The sessions a previous run of this boot kept (a missing, unreadable or foreign
        file: none)."""
        try:
            kept = json.loads(path.read_text(encoding="ascii"))
            if kept.get("boot") != _boot_id() or _boot_id() is None:
                return
            now = self._clock()
            ends = sorted(
                (float(until), bytes.fromhex(digest)) for digest, until in kept["sessions"].items()
            )
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return
        for until, digest in ends[-self.max_sessions :]:
            if until > now and len(digest) == hashlib.sha256().digest_size:
                # Its last use is not kept, but its end was set a lifetime after it: that
                # is the last use as far as the file knows (never "never used", which a
                # ticket's session could push out before the screen reconnects).
                self._sessions[digest] = _Session(until, used=until - self.session_s)

    def _save(self) -> None:
        """Write the live sessions to :attr:`path` (atomically, mode 0600). A file that cannot
        be written leaves the sessions in memory only: a restart then ends them."""
        if self.path is None:
            return
        self._saved_at = self._clock()
        sessions = {digest.hex(): kept.until for digest, kept in self._sessions.items()}
        body = json.dumps({"boot": _boot_id(), "sessions": sessions})
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        # Created anew, never opened through a link or over a file left in its place (a
        # kill between writing and renaming leaves one: it is removed first).
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        with contextlib.suppress(OSError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            descriptor = os.open(temporary, flags, 0o600)
            try:
                with os.fdopen(descriptor, "w", encoding="ascii") as file:
                    file.write(body)
                os.replace(temporary, self.path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise


def _boot_id() -> str | None:
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def session_cookies(headers: Mapping[str, str]) -> list[str]:
    """The values of every ``markd_session`` cookie in a request's ``Cookie`` header(s)."""
    found = []
    for pair in headers.get("cookie", "").replace(",", ";").split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep and name == SESSION_COOKIE:
            found.append(value.strip().strip('"'))
    return found


def cookie_header(value: str, max_age_s: int | None = None) -> str:
    """``Set-Cookie`` for the session. No ``Secure``: markd speaks plain HTTP, and browsers
    keep a ``Secure`` cookie from an ``http://`` answer for ``localhost`` at most, never for
    ``127.0.0.1`` or a LAN address (on loopback nothing crosses a network; ``docs/api.md``,
    "Browsers"). No ``Max-Age`` for a session (``max_age_s`` None): the browser keeps the
    cookie while it runs and markd ends the session when it goes unused (a ``Max-Age`` would
    make the browser drop a session in use); ``0`` clears it."""
    header = f"{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/v1"
    return header if max_age_s is None else f"{header}; Max-Age={max_age_s}"
