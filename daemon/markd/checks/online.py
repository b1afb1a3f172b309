"""The online check: True API ``codes/check`` through the CRPT CDN (domain.md §3).

:class:`OnlineClient` asks one CDN host about one marking code and returns a
:class:`~markd.checks.results.SourceAnswer` or a :class:`~markd.checks.results.SourceFailure`
by the caller's deadline, whatever the hosts do. It never raises for a service problem.

**Authentication** (§3.1) is a separate piece, :class:`Auth`: :class:`ApiKeyAuth` sends the
``X-API-KEY`` token today; the fiscal-drive (ФН) scheme that replaces it in 2026 will be
another :class:`Auth`. The key never reaches a log line, an :class:`Exchange` or ``status()``.

**The CDN is split** (§3.2). The base URL is a *list service*: it answers
``GET {base}/api/v4/true-api/cdn/info`` and nothing else a checking client needs.
``codes/check`` and ``cdn/health/check`` go **only to the hosts it lists**, never to the base:
the base does not answer a check, so a check sent there would fail and the chain would fall
back to the Local Module, which checks blocks only — an already sold or expired unit would be
allowed.

**Host list.** A check that finds no usable list fetches ``cdn/info`` first, inside its own
deadline: the fetch may take ``list_fetch_share`` of the time left (40 % by default), and the
first listed host is then asked (the best ranked, when health figures exist). When the list
cannot be had in that share, the source fails (``unreachable``; ``unauthorized`` for a refused
key; a proxy's own kind when the proxy failed) and the chain goes on. Concurrent checks and the
background round share one fetch. The list is fetched again at a random point between 6 h and
7 h after the last fetch (CRPT text п. 1.4.1; the random point is the jitter), sooner after a
failed fetch (``refresh_retry_s``), and as soon as possible once every host has been
quarantined; meanwhile the old list stays in use. ``GET {host}/api/v4/true-api/cdn/health/check``
measures each host's round-trip latency; hosts are ranked by it (or by the ``avgTimeMs`` they
report, ``rank_by="avg_time"``, unconfirmed). Hosts never measured come after measured ones, in
list order. Refresh and health checks run in the background (:meth:`OnlineClient.maintain`,
started by :meth:`OnlineClient.start` or by a check when due), so a check never waits for them
once it has a list.

**Persisted list** (:mod:`markd.checks.cdn_hosts`). With ``hosts_file`` set, every fetched list
and every round of health figures is written to that file atomically, and read back when the
client is made: a list younger than ``persisted_max_age_s`` is used at once (``hosts_from`` is
``persisted`` in :meth:`OnlineClient.status`), and fetched again in the background when its
6–7 h are up.

**Proxy** (§3.8). ``proxy`` (:class:`~markd.proxy.ProxySettings`) sends every request through
an HTTP proxy (``CONNECT`` for HTTPS). A failure of the proxy itself (refused, 407, timeout, a
broken tunnel) is a failure of its own kind (``proxy-unreachable``, ``proxy-auth``,
``proxy-timeout``, ``proxy-error``): it quarantines no host, since every host is reached
through the same proxy, and it ends the online attempt at once so the next source has the
time left — except a ``CONNECT`` refused with 502/503/504 (the proxy could not reach that
host), which tries the next host.

**Failover and quarantine** (§3.3). A host that times out or fails at transport level
(refused, reset, cut answer) is quarantined for 15 minutes and the next best host is tried
*within the same deadline*: while other hosts remain, one attempt gets at most
``attempt_share`` of the time left, the last one gets all of it. When every host is
quarantined the marks are cleared and one more attempt is made (§3.3, §9).

**Status codes** (§3.3, §3.6), each uncertain choice an :class:`OnlineOptions` field:

=================  ===========================================================================
200                the answer; the entry of ``codes`` for our code (by ``cis``, else the
                   only entry) → :class:`SourceAnswer`; no such entry → ``bad-answer``
203                ``emergency`` (§3.6; ``emergency_203="answer"`` reads it as a normal answer)
401 / 403          ``unauthorized``: the token is refused — no failover (another host would
                   refuse it too), and ``status()["alert"]`` says so until a request succeeds
other 4xx          ``http-error``: our request is wrong — no failover
429, 5xx           retried once on the next host; the host gets a strike and is quarantined at
                   ``throttle_strikes`` (429: 1) or ``server_error_strikes`` (5xx: 2) strikes
                   in a row ("429 or repeated 5xx → block", attributed to the методичка)
5xx + code 5000    retried once (next host, else the same one), no strike, no quarantine
malformed JSON     ``bad-answer`` (``failover_on_bad_answer`` tries the next host instead)
=================  ===========================================================================

**Request** (§3.4): ``{"codes": [km], "fiscalDriveNumber": fn_serial}``, the full code with its
crypto tail, GS JSON-escaped as ``\\u001d``; ``fiscalDriveNumber`` is left out when the till
has no ФН serial (its being mandatory is unconfirmed). Connections are kept alive through
:class:`~markd.http.client.HTTPClient` (§3.4: the server keeps them 180 s).

**Record** (issue 4 point 7): every HTTP exchange — checks, host lists, health checks — goes to
the ``recorder`` as an :class:`~markd.checks.record.Exchange` with the bodies redacted (crypto
tail → ``<crypto>``) and no key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from markd.checks.base import CheckClient, transport_failure_kind
from markd.checks.cdn_hosts import (
    MAX_HOSTS,
    HostListFile,
    SavedHost,
    SavedList,
    usable_host_url,
)
from markd.checks.record import Exchange, Recorder, redact_json_text
from markd.checks.results import FailureKind, SourceAnswer, SourceFailure
from markd.codes import MarkingCode
from markd.errors import MarkdError
from markd.http.client import HTTPClient, HTTPError, HTTPTimeout, Response
from markd.numbers import read_int, read_number
from markd.secrets import Secret

if TYPE_CHECKING:
    from markd.proxy import ProxySettings

log = logging.getLogger(__name__)

API = "/api/v4/true-api"
INFO_PATH = f"{API}/cdn/info"
HEALTH_PATH = f"{API}/cdn/health/check"
CHECK_PATH = f"{API}/codes/check"

#: Body ``code`` of a 5xx that means "retry, the host is fine" (§3.3, unconfirmed).
RETRY_WITHOUT_QUARANTINE_CODE = 5000


# --------------------------------------------------------------------------------------------
# Authentication


class AuthError(MarkdError):
    """The credentials for a request cannot be produced (no token, signing failed)."""

    reason = "auth-unavailable"


class Auth(Protocol):
    """How a request to the True API is authenticated (§3.1). Returns the headers to add."""

    async def headers(self, deadline: float) -> dict[str, str]:
        """Headers for one request, ready before ``deadline`` (monotonic); may raise
        :class:`AuthError`."""
        ...


class ApiKeyAuth:
    """``X-API-KEY``: the «токен для ККТ» from the ЛК ГИС МТ (§3.1), sent on every request."""

    def __init__(self, secret: Secret) -> None:
        self._secret = secret

    async def headers(self, deadline: float) -> dict[str, str]:
        return {"X-API-KEY": self._secret.reveal()}

    def __repr__(self) -> str:
        return f"ApiKeyAuth({self._secret!r})"


# --------------------------------------------------------------------------------------------
# Options and host state


@dataclass(frozen=True)
class OnlineOptions:
    """Tunables, with defaults from domain.md §3.3, §3.6 and §9. Those marked (unconfirmed)
    are choices the domain is unsure of."""

    #: Quarantine after a timeout or transport failure (§3.3: 15 min, several clients agree).
    quarantine_s: float = 15 * 60
    #: The host list is fetched again at a random point in this window after the last fetch.
    refresh_min_s: float = 6 * 3600
    refresh_max_s: float = 7 * 3600
    #: After a failed fetch of the host list, try again this much later.
    refresh_retry_s: float = 300.0
    #: Health checks of every host this often (and after each host list fetch).
    health_interval_s: float = 300.0
    #: Time limit of one health check (§9: 2 s, unconfirmed).
    health_timeout_s: float = 2.0
    #: Time limit of one background round (host list + health checks); also of a host list
    #: fetch a check started, which goes on in the background when the check stops waiting.
    maintenance_timeout_s: float = 10.0
    #: With no usable host list, the share of a check's time left that fetching the list may
    #: take (the rest is the check's). 0.4 leaves 900 ms of a 1.5 s budget for the check.
    list_fetch_share: float = 0.4
    #: After a failed host list fetch, checks start no other for this long: they fail at once
    #: with that fetch's error, and the Local Module is asked without delay (the background
    #: round retries on its own schedule, ``refresh_retry_s``). Without it, every scan of a
    #: kiosk whose list service is unreachable would spend ``list_fetch_share`` of its budget
    #: (600 ms of 1.5 s against a network that drops packets) and log a warning. 0: every
    #: check tries again, the literal reading of §3.2.
    list_check_retry_s: float = 10.0
    #: After a failed fetch, the longest a check waits for a retry under way (instead of
    #: ``list_fetch_share`` of its budget): a list service that came back answers in time,
    #: one that does not answer costs a scan this much at most.
    list_retry_wait_s: float = 0.1
    #: A persisted host list older than this is not used: the client starts without one.
    persisted_max_age_s: float = 7 * 24 * 3600
    #: Checks start the background round when it is due (False: the caller runs maintain()).
    background_maintenance: bool = True
    #: Rank hosts by measured latency (most clients) or by their ``avgTimeMs`` (unconfirmed).
    rank_by: Literal["latency", "avg_time"] = "latency"
    #: Share of the time left one attempt may use while other hosts remain to try.
    attempt_share: float = 0.5
    #: When every host is quarantined, the marks are cleared and one more attempt made at
    #: most this often. §3.3 says "clear the marks and retry once" without saying how often;
    #: doing it for every check would make each scan of an offline kiosk pay a whole
    #: attempt (up to the online budget, against a black hole) before the Local Module is
    #: asked. 0: on every check, the literal reading.
    all_quarantined_retry_s: float = 60.0
    #: 429 strikes in a row that quarantine a host (unconfirmed: "429 → block").
    throttle_strikes: int = 1
    #: 5xx strikes in a row that quarantine a host (unconfirmed: "repeated 5xx → block").
    server_error_strikes: int = 2
    #: HTTP 203 on codes/check: ``emergency`` (a failure) or ``answer`` (§3.6, unconfirmed).
    emergency_203: Literal["emergency", "answer"] = "emergency"
    #: A body that is not the promised JSON: try the next host instead of failing.
    failover_on_bad_answer: bool = False
    #: Leave ``fiscalDriveNumber`` out when the till has no ФН serial (False: send "").
    omit_empty_fiscal_drive_number: bool = True
    #: Statuses meaning "the token was refused": no failover, alert.
    unauthorized_statuses: tuple[int, ...] = (401, 403)
    #: Idle kept-alive connections per host for checks: as many as checks run at once (a
    #: kiosk's scanners: a few; a shop server's tills: ``[mark_unit] max_checks``), so a
    #: burst of checks reuses its connections instead of opening new ones (against the real
    #: CDN each new one is a TLS handshake).
    max_idle_connections: int = 4


@dataclass
class _Host:
    url: str
    latency_ms: float | None = None  # last health-check round trip
    avg_time_ms: float | None = None  # what the host reported
    measured_at: float | None = None  # now() of the health check behind the figures
    quarantined_until: float | None = None  # clock()
    strikes: int = 0  # 429/5xx in a row
    last_error: str | None = None

    def quarantined(self, now: float) -> bool:
        return self.quarantined_until is not None and now < self.quarantined_until


@dataclass
class _Attempt:
    """What one codes/check attempt on one host came to."""

    result: SourceAnswer | SourceFailure
    #: What to do next: stop, try the next host, or retry (next host, else the same one).
    then: Literal["stop", "failover", "retry", "retry-any"] = "stop"
    quarantine: bool = False


@dataclass
class _CheckState:
    tried: list[str] = field(default_factory=list)
    status_retry_left: int = 1
    reset_done: bool = False
    same_host_retry: str | None = None


# --------------------------------------------------------------------------------------------
# The client


class OnlineClient(CheckClient):
    """True API ``codes/check`` through the CDN: the list service for the host list, the listed
    hosts for checks, with ranking, quarantine, failover and a persisted list (see the module
    docstring). Use from one event loop; :meth:`aclose` (or :meth:`close`) when done.

    Deadlines are ``time.monotonic()`` values, as :class:`~markd.http.client.HTTPClient`
    takes them. ``clock`` (monotonic seconds) drives the schedules only — quarantine, host list
    refresh, health checks — so a test can move it hours ahead; ``now`` is wall time, used for
    the times shown in :meth:`status` and kept in ``hosts_file``.
    """

    source = "cdn"

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth,
        fn_serial: str,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        options: OnlineOptions = OnlineOptions(),  # noqa: B008 - frozen, shared safely
        rng: random.Random | None = None,
        hosts_file: str | os.PathLike[str] | None = None,
        proxy: ProxySettings | None = None,
    ) -> None:
        self.base_url = _clean_url(base_url)
        #: A list fetched over HTTPS may name HTTPS hosts only.
        self._https_only = self.base_url.lower().startswith("https://")
        self.auth = auth
        self.fn_serial = fn_serial
        self.options = options
        self.proxy = proxy
        super().__init__(recorder=recorder)
        self._clock = clock
        self._now = now
        self._rng = rng or random.Random()
        # codes/check: kept warm between scans
        self._http = HTTPClient(proxy=proxy, max_idle=options.max_idle_connections)
        self._maintenance_http = HTTPClient(proxy=proxy)  # host list and health checks
        #: The listed hosts (never the base URL: it does not answer checks).
        self._hosts: list[_Host] = []
        self._hosts_from: Literal["none", "fetched", "persisted"] = "none"
        self._list_fetched_at: float | None = None  # now() of the list's fetch
        self._last_refresh: float | None = None  # clock() of the list's fetch
        self._next_refresh: float = clock()  # due at once
        #: Why the last host list fetch failed: (failure kind, HTTP status, text).
        self._list_error: tuple[FailureKind, int | None, str] | None = None
        #: When the last host list fetch failed (``self._clock()``), None after a success.
        self._list_failed_at: float | None = None
        #: When the marks of every quarantined host were last cleared (clock()), or None.
        self._last_reset: float | None = None
        self._last_health: float | None = None
        self._last_error: str | None = None
        self._alert: str | None = None
        self._emergency_at: float | None = None
        self._proxy_error: str | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._list_task: asyncio.Task[bool] | None = None
        self._save_task: asyncio.Task[None] | None = None
        #: (fetch time, host order) last written to ``hosts_file``.
        self._saved_shape: tuple[float, tuple[tuple[str, bool], ...]] | None = None
        self._file = HostListFile(hosts_file) if hosts_file else None
        if self._file is not None:
            self._load_saved_list()

    # -- the check ------------------------------------------------------------------------------

    async def check(self, code: MarkingCode, deadline: float) -> SourceAnswer | SourceFailure:
        """Ask the CDN about ``code``; the result is back by ``deadline`` (monotonic)."""
        self._start_maintenance_if_due()
        state = _CheckState()
        started = time.monotonic()
        if not self._hosts:
            failed = await self._list_for_check(started, deadline)
            if failed is not None:
                return failed
        last: SourceFailure | None = None
        while True:
            if time.monotonic() >= deadline:
                return self._timeout(last, started)
            host = self._pick_host(state)
            if host is None:
                return last or self._failure("unreachable", "no CDN host to ask", started)
            state.tried.append(host.url)
            attempt = await self._attempt(host, code, self._attempt_deadline(state, deadline))
            result = attempt.result
            if isinstance(result, SourceAnswer):
                host.strikes = 0
                return result
            last = SourceFailure(
                "cdn",
                result.kind,
                result.http_status,
                result.detail,
                (time.monotonic() - started) * 1000,
            )
            if attempt.quarantine:
                self._quarantine(host, result.detail)
            if attempt.then == "stop":
                return last
            if attempt.then in ("retry", "retry-any"):
                if state.status_retry_left <= 0:
                    return last
                state.status_retry_left -= 1
                if attempt.then == "retry-any":
                    state.same_host_retry = host.url

    async def _list_for_check(self, started: float, deadline: float) -> SourceFailure | None:
        """With no host list: wait for one (a running fetch, or a new one) for at most
        ``list_fetch_share`` of the time left. None when a list is there, else the failure
        this check ends with (the fetch itself goes on in the background).

        After a fetch failed (``list_check_retry_s`` > 0) the list service is known to be in
        trouble, and a scan must not pay for it each time: during the pause no fetch is
        started and a check fails at once; afterwards a check starts one retry, and any check
        waits for a retry at most ``list_retry_wait_s``."""
        running = self._list_task is not None and not self._list_task.done()
        share = max(deadline - started, 0.0) * self.options.list_fetch_share
        if self._list_error is not None and self.options.list_check_retry_s > 0:
            if not running and self._list_paused():
                kind, status, text = self._list_error
                return SourceFailure(
                    "cdn",
                    kind,
                    status,
                    f"no CDN host list: {text} (the last fetch failed moments ago)",
                    (time.monotonic() - started) * 1000,
                )
            share = min(share, self.options.list_retry_wait_s)
        task = self._list_fetch()
        if share > 0 and not task.done():
            await asyncio.wait({task}, timeout=share)
        if self._hosts:
            return None
        if not task.done():
            detail = f"no CDN host list within {share * 1000:.0f} ms (the fetch goes on)"
            return self._failure("unreachable", detail, started)
        kind, status, text = self._list_error or ("unreachable", None, "no host listed")
        return SourceFailure(
            "cdn", kind, status, f"no CDN host list: {text}", (time.monotonic() - started) * 1000
        )

    def _list_paused(self) -> bool:
        """Whether the last host list fetch failed less than ``list_check_retry_s`` ago."""
        return (
            self._list_error is not None
            and self._list_failed_at is not None
            and self._clock() - self._list_failed_at < self.options.list_check_retry_s
        )

    def _pick_host(self, state: _CheckState) -> _Host | None:
        """The best host not quarantined and not yet tried in this check; when every host is
        quarantined, clear the marks once per check (§3.3)."""
        now = self._clock()
        ranked = self._ranked()
        for host in ranked:
            if host.url not in state.tried and not host.quarantined(now):
                state.same_host_retry = None
                return host
        if state.same_host_retry is not None:
            # A 5xx with body code 5000 and no other host: retry where it happened.
            url, state.same_host_retry = state.same_host_retry, None
            return next((h for h in ranked if h.url == url), None)
        if not ranked or state.reset_done or not all(h.quarantined(now) for h in ranked):
            return None
        retry_s = self.options.all_quarantined_retry_s
        if self._last_reset is not None and now - self._last_reset < retry_s:
            return None  # cleared a short while ago: fail fast, the next source answers
        # Every host is marked: clear the marks, fetch the list again soon, retry once.
        state.reset_done = True
        self._last_reset = now
        for host in ranked:
            host.quarantined_until = None
        self._next_refresh = min(self._next_refresh, now)
        log.warning("every CDN host was quarantined: marks cleared, retrying once")
        untried = [h for h in ranked if h.url not in state.tried]
        return (untried or ranked)[0]

    def _attempt_deadline(self, state: _CheckState, deadline: float) -> float:
        """While another host could still be tried, one attempt gets ``attempt_share`` of the
        time left; otherwise all of it (failover happens within the caller's deadline)."""
        scheduled = self._clock()
        others = [
            h for h in self._hosts if h.url not in state.tried and not h.quarantined(scheduled)
        ]
        if not others:
            return deadline
        now = time.monotonic()
        return now + (deadline - now) * self.options.attempt_share

    async def _attempt(self, host: _Host, code: MarkingCode, deadline: float) -> _Attempt:
        url = host.url + CHECK_PATH
        body: dict[str, Any] = {"codes": [code.km]}
        if self.fn_serial or not self.options.omit_empty_fiscal_drive_number:
            body["fiscalDriveNumber"] = self.fn_serial
        started = time.monotonic()
        try:
            response = await self._request(
                self._http, "POST", url, deadline=deadline, json_body=body
            )
        except AuthError as exc:
            return _Attempt(self._failure("unauthorized", exc.message, started))
        except HTTPError as exc:
            kind = transport_failure_kind(exc)
            if kind.startswith("proxy-"):
                self._note_proxy_failure(exc)
                status = getattr(exc, "status", None)
                failure = SourceFailure("cdn", kind, status, str(exc), _ms_since(started))
                if getattr(exc, "target_failure", False):
                    # The proxy could not get through to this host (no answer to CONNECT, a
                    # 5xx, a tunnel closed at once): the host's failure, seen at the proxy.
                    return _Attempt(failure, "failover", quarantine=True)
                # The proxy itself failed (unreachable, credentials, policy): every host is
                # reached through it, so none is to blame and no other is tried.
                return _Attempt(failure, "stop")
            # Timeout or transport failure: quarantine, next host (§3.3).
            failure = self._failure(kind, f"{host.url}: {exc}", started)
            return _Attempt(failure, "failover", quarantine=True)
        self._proxy_error = None
        return self._judge(host, code, response)

    def _judge(self, host: _Host, code: MarkingCode, response: Response) -> _Attempt:
        """Map one codes/check answer to a result and what to do next (§3.3, §3.6)."""
        options = self.options
        status = response.status
        latency = response.elapsed_ms

        def failure(kind: FailureKind, detail: str) -> SourceFailure:
            return SourceFailure("cdn", kind, status, f"{host.url}: {detail}", latency)

        if status in options.unauthorized_statuses:
            self._alert = f"HTTP {status} from {host.url}: the X-API-KEY was refused"
            self._last_error = self._alert
            return _Attempt(failure("unauthorized", "the token was refused"))
        if status == 203 and options.emergency_203 == "emergency":
            self._emergency_at = self._now()
            return _Attempt(failure("emergency", "HTTP 203: emergency mode"))
        if status in (200, 203):
            self._emergency_at = None if status == 200 else self._emergency_at
            parsed = _answer(code, response)
            if isinstance(parsed, str):
                then = "failover" if options.failover_on_bad_answer else "stop"
                return _Attempt(failure("bad-answer", parsed), then)
            self._alert = None
            return _Attempt(parsed)
        if status == 429 or status >= 500:
            if status >= 500 and _body_code(response) == RETRY_WITHOUT_QUARANTINE_CODE:
                return _Attempt(failure("server-error", "code 5000, retrying"), "retry-any")
            host.strikes += 1
            limit = options.throttle_strikes if status == 429 else options.server_error_strikes
            kind: FailureKind = "throttled" if status == 429 else "server-error"
            return _Attempt(failure(kind, f"HTTP {status}"), "retry", host.strikes >= limit)
        return _Attempt(failure("http-error", f"HTTP {status}: {_description(response)}"))

    def _quarantine(self, host: _Host, reason: str) -> None:
        host.quarantined_until = self._clock() + self.options.quarantine_s
        host.strikes = 0
        host.last_error = reason
        self._last_error = reason
        log.warning(
            "CDN host %s quarantined for %.0f s: %s", host.url, self.options.quarantine_s, reason
        )

    def _failure(self, kind: FailureKind, detail: str, started: float) -> SourceFailure:
        return SourceFailure("cdn", kind, None, detail, (time.monotonic() - started) * 1000)

    def _timeout(self, last: SourceFailure | None, started: float) -> SourceFailure:
        elapsed = (time.monotonic() - started) * 1000
        if last is not None and last.kind == "timeout":
            return SourceFailure("cdn", "timeout", None, last.detail, elapsed)
        detail = "deadline passed" + (f" after {last.kind}: {last.detail}" if last else "")
        return SourceFailure("cdn", "timeout", None, detail, elapsed)

    # -- host list and health -------------------------------------------------------------------

    async def refresh_hosts(self, deadline: float) -> bool:
        """Fetch the host list from the list service's ``cdn/info`` (§3.2). True when a list
        arrived; on failure the current list stays, the next try is ``refresh_retry_s`` later
        and :meth:`status` says why."""
        url = self.base_url + INFO_PATH
        try:
            response = await self._request(self._maintenance_http, "GET", url, deadline=deadline)
        except (HTTPError, AuthError) as exc:
            kind: FailureKind = (
                "unauthorized" if isinstance(exc, AuthError) else transport_failure_kind(exc)
            )
            if kind.startswith("proxy-"):
                self._note_proxy_failure(exc)
            elif kind != "unauthorized":
                kind = "unreachable"
            return self._list_failed(kind, getattr(exc, "status", None), str(exc))
        if response.status in self.options.unauthorized_statuses:
            self._alert = f"HTTP {response.status} from cdn/info: the X-API-KEY was refused"
            return self._list_failed("unauthorized", response.status, self._alert)
        self._proxy_error = None
        try:
            urls = _host_list(response, https_only=self._https_only)
        except ValueError as exc:
            return self._list_failed("unreachable", response.status, str(exc))
        known = {h.url: h for h in self._hosts}
        self._hosts = [known.get(u) or _Host(u) for u in urls]
        self._hosts_from = "fetched"
        self._list_error = None
        self._list_failed_at = None
        self._list_fetched_at = self._now()
        self._last_refresh = self._clock()
        options = self.options
        self._next_refresh = self._last_refresh + self._rng.uniform(
            options.refresh_min_s, options.refresh_max_s
        )
        self._alert = None
        self._schedule_save()
        return True

    def _list_failed(self, kind: FailureKind, status: int | None, detail: str) -> bool:
        repeated = self._list_error is not None and self._list_error[2] == detail
        self._list_error = (kind, status, detail)
        self._list_failed_at = self._clock()
        self._last_error = f"cdn/info: {detail}"
        # With no list the next try comes after the checks' pause; with one (kept or fetched
        # earlier) the usual retry interval.
        retry = self.options.refresh_retry_s if self._hosts else self.options.list_check_retry_s
        self._next_refresh = self._clock() + retry
        # Once per reason: an unreachable list service must not write a line every few seconds.
        log.log(
            logging.DEBUG if repeated else logging.WARNING,
            "CDN host list not fetched from %s: %s",
            _safe_url(self.base_url),
            detail,
        )
        return False

    def _list_fetch(self) -> asyncio.Task[bool]:
        """The running host list fetch, or a new one: checks and the background round share
        it. It has ``maintenance_timeout_s``, whoever waits for it and however long."""
        if self._list_task is None or self._list_task.done():
            deadline = time.monotonic() + self.options.maintenance_timeout_s
            self._list_task = asyncio.get_running_loop().create_task(
                self._fetch_safely(deadline), name="markd-cdn-host-list"
            )
        return self._list_task

    async def _fetch_safely(self, deadline: float) -> bool:
        try:
            return await self.refresh_hosts(deadline)
        except Exception:  # a background fetch must never take the daemon down
            log.exception("fetching the CDN host list failed")
            return False

    async def health_check(self, deadline: float) -> None:
        """Measure every host's latency with ``cdn/health/check`` (§3.2), in parallel, each
        within ``health_timeout_s``; a host that fails it is quarantined."""
        limit = min(deadline, time.monotonic() + self.options.health_timeout_s)
        await asyncio.gather(*(self._health_one(h, limit) for h in list(self._hosts)))
        self._last_health = self._clock()
        self._schedule_save()

    async def _health_one(self, host: _Host, deadline: float) -> None:
        try:
            response = await self._request(
                self._maintenance_http, "GET", host.url + HEALTH_PATH, deadline=deadline
            )
        except (HTTPError, AuthError) as exc:
            if isinstance(exc, HTTPError) and transport_failure_kind(exc).startswith("proxy-"):
                self._note_proxy_failure(exc)
                if not getattr(exc, "target_failure", False):
                    return  # the proxy's own fault: the host keeps its standing
            host.latency_ms = None
            self._quarantine(host, f"health check: {exc}")
            return
        if response.status in self.options.unauthorized_statuses:
            self._alert = f"HTTP {response.status} from {host.url}: the X-API-KEY was refused"
            self._last_error = self._alert
            return
        try:
            data = response.json()
            healthy = (
                response.status == 200
                and isinstance(data, dict)
                and read_int(data.get("code")) == 0
            )
        except ValueError:
            data, healthy = None, False
        if not healthy:
            host.latency_ms = None
            self._quarantine(host, f"health check: HTTP {response.status}")
            return
        host.latency_ms = response.elapsed_ms
        host.measured_at = self._now()
        host.avg_time_ms = (
            read_number(data.get("avgTimeMs"), lo=0) if isinstance(data, dict) else None
        )

    async def maintain(self) -> None:
        """One background round: fetch the host list when due, then health checks when due."""
        deadline = time.monotonic() + self.options.maintenance_timeout_s
        refreshed = False
        if self._clock() >= self._next_refresh or (not self._hosts and not self._list_paused()):
            refreshed = await self._list_fetch()
        if self._hosts and (refreshed or self._health_due()):
            await self.health_check(deadline)

    async def probe(self, deadline: float) -> None:
        """Fetch the host list and measure every host now (``markctl status``)."""
        await self.refresh_hosts(deadline)
        await self.health_check(deadline)

    def start(self) -> None:
        """Start the background round now (the daemon calls this at start, so the list and
        the health figures are there before the first scan, without delaying READY)."""
        self._start_maintenance_if_due(force=True)

    def _health_due(self) -> bool:
        """Health checks are due (never with no host to check: then only the list is)."""
        return bool(self._hosts) and (
            self._last_health is None
            or self._clock() - self._last_health >= self.options.health_interval_s
        )

    def _start_maintenance_if_due(self, *, force: bool = False) -> None:
        if not (self.options.background_maintenance or force):
            return
        if self._maintenance is not None and not self._maintenance.done():
            return
        if force or self._clock() >= self._next_refresh or self._health_due():
            self._maintenance = asyncio.get_running_loop().create_task(
                self._maintain_safely(), name="markd-cdn-maintenance"
            )

    async def _maintain_safely(self) -> None:
        try:
            await self.maintain()
        except Exception:  # a background round must never take the daemon down
            log.exception("CDN maintenance round failed")

    def _ranked(self) -> list[_Host]:
        def key(item: tuple[int, _Host]) -> tuple[int, float, int]:
            index, host = item
            value = host.latency_ms if self.options.rank_by == "latency" else host.avg_time_ms
            return (0, value, index) if value is not None else (1, 0.0, index)

        return [host for _, host in sorted(enumerate(self._hosts), key=key)]

    def _note_proxy_failure(self, exc: BaseException) -> None:
        """A proxy failure goes to the journal once per new reason (not once per scan)."""
        text = str(exc)
        if text != self._proxy_error:
            self._proxy_error = text
            log.warning("CDN requests fail at the proxy: %s", text)
        self._last_error = text

    # -- the persisted list ---------------------------------------------------------------------

    def _load_saved_list(self) -> None:
        """Take the list kept in ``hosts_file``, when it is for this base URL and not too old.
        Health is measured again at start (the saved figures rank the hosts meanwhile)."""
        assert self._file is not None
        saved = self._file.load(self.base_url)
        if saved is None:
            return
        age = self._now() - saved.fetched_at
        if age > self.options.persisted_max_age_s:
            log.info(
                "CDN host list in %s is %.0f h old: fetching a new one first",
                self._file.path,
                age / 3600,
            )
            return
        hosts = [
            _Host(h.url, h.latency_ms, h.avg_time_ms, measured_at=h.measured_at)
            for h in saved.hosts
            if usable_host_url(h.url, https_only=self._https_only)
        ]
        if not hosts:
            return
        self._hosts = hosts
        self._hosts_from = "persisted"
        self._list_fetched_at = saved.fetched_at
        # A time in the future (the clock was set back) counts as due: fetch again soon.
        self._last_refresh = self._clock() - (age if age >= 0 else self.options.refresh_max_s)
        self._next_refresh = self._last_refresh + self._rng.uniform(
            self.options.refresh_min_s, self.options.refresh_max_s
        )

    def _schedule_save(self) -> None:
        """Write the list and its figures to ``hosts_file`` off the loop, in order."""
        if self._file is None or not self._hosts or self._list_fetched_at is None:
            return
        ranked = self._ranked()
        # What a restart needs: the list, when it was fetched, and the ranking. Figures that
        # moved without changing the order are not worth two fsyncs every health round.
        shape = (self._list_fetched_at, tuple((h.url, h.latency_ms is None) for h in ranked))
        if shape == self._saved_shape:
            return
        self._saved_shape = shape
        snapshot = SavedList(
            self.base_url,
            self._list_fetched_at,
            tuple(SavedHost(h.url, h.latency_ms, h.avg_time_ms, h.measured_at) for h in ranked),
        )
        previous = self._save_task
        file = self._file

        async def save() -> None:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await previous
            await asyncio.to_thread(file.save, snapshot)

        self._save_task = asyncio.get_running_loop().create_task(save(), name="markd-cdn-save")

    # -- plumbing -------------------------------------------------------------------------------

    async def _request(
        self,
        http: HTTPClient,
        method: str,
        url: str,
        *,
        deadline: float,
        json_body: Any = None,
    ) -> Response:
        """One HTTP exchange with auth headers, recorded whatever happens."""
        started = time.monotonic()
        request_text = ""
        if json_body is not None:
            request_text = redact_json_text(_json_text(json_body))
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HTTPTimeout("no time left for the request")
            try:
                headers = await asyncio.wait_for(self.auth.headers(deadline), remaining)
            except TimeoutError:
                raise HTTPTimeout("authentication took longer than the budget") from None
            response = await http.request(
                method, url, deadline=deadline, headers=headers, json_body=json_body
            )
        except (HTTPError, AuthError) as exc:
            self.record(
                Exchange(
                    "cdn",
                    method,
                    _safe_url(url),
                    None,
                    self._elapsed(started),
                    request_text,
                    "",
                    error=f"{getattr(exc, 'kind', 'auth')}: {exc}",
                )
            )
            raise
        self.record(
            Exchange(
                "cdn",
                method,
                _safe_url(url),
                response.status,
                response.elapsed_ms,
                request_text,
                redact_json_text(response.body),
                extra={"reused": response.reused},
            )
        )
        return response

    def _elapsed(self, started: float) -> float:
        return (time.monotonic() - started) * 1000

    # -- status and shutdown --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Health for ``markctl status``: hosts in rank order with latency and quarantine,
        where the host list came from (``fetched``, ``persisted`` or ``none``) and its age,
        the last error, and an alert when the token was refused."""
        now, wall = self._clock(), self._now()

        def wall_time(at: float | None) -> float | None:
            return None if at is None else wall + (at - now)

        hosts = []
        for host in self._ranked():
            quarantined = host.quarantined(now)
            hosts.append(
                {
                    "url": host.url,
                    "latency_ms": host.latency_ms,
                    "avg_time_ms": host.avg_time_ms,
                    "quarantined": quarantined,
                    "quarantined_until": wall_time(host.quarantined_until) if quarantined else None,
                    "last_error": host.last_error,
                }
            )
        fetched = self._list_fetched_at
        return {
            "base_url": self.base_url,
            "hosts": hosts,
            "hosts_from": self._hosts_from,
            "list_fetched_at": fetched,
            "list_age_s": None if fetched is None else max(0.0, wall - fetched),
            "hosts_file": None if self._file is None else str(self._file.path),
            "last_refresh": fetched,
            "next_refresh": wall_time(self._next_refresh),
            "last_health_check": wall_time(self._last_health),
            "last_error": self._last_error,
            "alert": self._alert,
            "emergency_at": self._emergency_at,
            "proxy": None if self.proxy is None else self.proxy.describe(),
            "proxy_error": self._proxy_error,
        }

    def close(self) -> None:
        """Stop the background work and close every connection (a pending save of the host
        list is abandoned: :meth:`aclose` waits for it). A request still finishing closes its
        own connection."""
        for task in (self._maintenance, self._list_task):
            if task is not None and not task.done():
                task.cancel()
        self._http.close()
        self._maintenance_http.close()

    async def aclose(self, save_timeout_s: float = 2.0) -> None:
        """Stop the background work and wait for it, wait (at most ``save_timeout_s``) for
        the host list to reach its file, then close every connection."""
        tasks = [t for t in (self._maintenance, self._list_task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._save_task is not None and not self._save_task.done():
            await asyncio.wait({self._save_task}, timeout=save_timeout_s)
        self.close()


# --------------------------------------------------------------------------------------------
# Helpers


def _clean_url(url: str) -> str:
    return url.strip().rstrip("/")


def _safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment (nothing secret goes to the record)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _body_code(response: Response) -> int | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return read_int(data.get("code")) if isinstance(data, dict) else None


def _description(response: Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return "(no JSON body)"
    text = data.get("description") if isinstance(data, dict) else None
    return str(text)[:200] if text else "(no description)"


def _host_list(response: Response, *, https_only: bool) -> list[str]:
    """The host URLs of a ``cdn/info`` answer; ValueError when it has none usable. A host
    that is not an ``http(s)`` URL is skipped, and so is an ``http://`` one when the list
    came over HTTPS (the X-API-KEY must not travel in clear); at most
    :data:`~markd.checks.cdn_hosts.MAX_HOSTS` are kept."""
    if response.status != 200:
        raise ValueError(f"HTTP {response.status}: {_description(response)}")
    data = response.json()
    if not isinstance(data, dict) or data.get("code", 0) != 0:
        raise ValueError("the answer is not code 0")
    hosts = data.get("hosts")
    urls: list[str] = []
    for entry in hosts if isinstance(hosts, list) else []:
        url = entry.get("host") if isinstance(entry, Mapping) else None
        if isinstance(url, str) and usable_host_url(url.strip(), https_only=https_only):
            cleaned = _clean_url(url)
            if cleaned not in urls:
                urls.append(cleaned)
        if len(urls) >= MAX_HOSTS:
            break
    if not urls:
        raise ValueError("no usable host in the list")
    return urls


def _answer(code: MarkingCode, response: Response) -> SourceAnswer | str:
    """The :class:`SourceAnswer` for ``code`` from a codes/check body, or why there is none.
    The entry is matched by ``cis`` (the code as sent); an entry without ``cis`` counts only
    when it is the only one (§3.5: one object per requested code, same order)."""
    try:
        data = response.json()
    except ValueError:
        return "the body is not JSON"
    if not isinstance(data, dict):
        return "the body is not a JSON object"
    entries = data.get("codes")
    if not isinstance(entries, list) or not entries:
        if data.get("code", 0) != 0:
            # A refusal of the whole request (code ≠ 0) is an answer the policy reads.
            return SourceAnswer.from_json(
                "cdn",
                data,
                raw=response.body.decode("utf-8", "replace"),
                http_status=response.status,
                latency_ms=response.elapsed_ms,
            )
        return "the answer has no codes"
    objects = [e for e in entries if isinstance(e, dict)]
    entry = next((e for e in objects if e.get("cis") == code.km), None)
    if entry is None and len(objects) == 1 and "cis" not in objects[0]:
        entry = objects[0]
    if entry is None:
        return "the answer has no entry for the code sent"
    return SourceAnswer.from_json(
        "cdn",
        {**data, "codes": [entry]},
        raw=response.body.decode("utf-8", "replace"),
        http_status=response.status,
        latency_ms=response.elapsed_ms,
    )


__all__ = [
    "ApiKeyAuth",
    "Auth",
    "AuthError",
    "OnlineClient",
    "OnlineOptions",
]
