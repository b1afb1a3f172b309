"""Client of the Local Module (ЛМ ЧЗ): the offline check markd falls back to (domain.md §4).

URL form: the module's base URL, ``http://127.0.0.1:5995`` by default (§4.2, §4.3); plain HTTP.
Options: API version (``1``, ``2``, or ``0`` to detect it), the Basic-auth user and password,
the ФН serial sent as ``X-ClientId`` on every call, and :class:`LocalModuleOptions`.

What it does:

* **check** — ``outCheck`` with the **КИ** (never the full code: the LM does not verify the
  crypto tail, §4.1, §4.8). API v1 (§4.4) posts ``{"cis_list": ["<КИ>"]}`` and gets a bare
  answer; API v2 (§4.5) posts ``{"cis_list": [{"cis": "<КИ>", "pg": <groupId>}]}`` (``pg``
  omitted when the group is unknown) and reads ``results[0]`` of the wrapper. The result is a
  :class:`~markd.checks.results.SourceAnswer` (source ``lm``, offline) or a
  :class:`~markd.checks.results.SourceFailure`; :meth:`LocalModuleClient.check` never raises
  for anything the module or the network does, and never outlives its deadline.
* **status** — ``GET /api/v{n}/status`` (§4.6), polled in the background
  (:meth:`LocalModuleClient.run_status_poller`, every 10 s as FMU-API does, §9; started by
  :meth:`LocalModuleClient.start`, stopped by ``close``/``aclose``). A check never
  waits on a module known to be down: when the last status says ``not_configured``,
  ``initialization`` or ``sync_error``, or the module did not answer the last poll, ``check``
  returns that failure at once without a request. A "down" status older than three poll
  intervals is not trusted (the poller may have stopped): the check then asks anyway.
* **health** — :meth:`LocalModuleClient.status` for ``markctl status``: state, ``lastSync`` age
  with alerts at 24 h and 48 h, well before the 72-hour block (§4.7 advice), version, inst,
  ``requiresDownload`` and the replication counters.
* **fiscal side** — ``/api/v2/cis/sell`` after a receipt and ``/api/v2/cis/return`` after a
  return (LM 2.x's sold-codes database, §4.5, unconfirmed); ``init`` with the participant's
  token (§4.4, §4.5), exposed by ``markctl lm init``.

How answers map (§4.6, §6.3):

=================================================  ==========================================
HTTP 200, ``code == 0``                            :class:`SourceAnswer` (the policy reads
                                                   ``isBlocked``, ``sold``, prices)
HTTP 200, ``code != 0``                            :class:`SourceAnswer` with that ``code``: the
                                                   module answered and refused; the decision
                                                   table denies on it (a refusal, not a
                                                   failure to fall back from)
``errorCode`` 4045                                 ``lm-not-ready``, ``lm_state`` from the body,
                                                   else from the last status, else asked with
                                                   ``status`` within the same deadline
``errorCode`` 4050                                 ``lm-sync-error`` (state ``sync_error``)
HTTP 401 / 403                                     ``unauthorized`` (wrong login or password)
HTTP 429 / 5xx / other                             ``throttled`` / ``server-error`` /
                                                   ``http-error``
not JSON, no ``results[0]``, no entry for the КИ   ``bad-answer``
no answer within the deadline; connection failed   ``timeout``; ``unreachable``
=================================================  ==========================================

Every HTTP exchange goes to the recorder as an :class:`~markd.checks.record.Exchange` with
``source="lm"`` and both bodies redacted (:func:`~markd.checks.record.redact_json_text`: the
``init`` token becomes ``<secret>``); a recorder that raises is logged and the check goes on
(:meth:`~markd.checks.base.CheckClient.record`). The password travels only in the
``Authorization`` header, which is never recorded, and never appears in ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from markd.checks.base import CheckClient
from markd.checks.record import Exchange, Recorder, redact_json_text
from markd.checks.results import FailureKind, SourceAnswer, SourceFailure
from markd.codes import MarkingCode
from markd.http.client import HTTPClient, HTTPError, Response
from markd.numbers import read_int
from markd.proxy import ProxySettings
from markd.secrets import Secret

#: States in which the module refuses checks (domain.md §4.6) → the failure kind.
NOT_READY_STATES: dict[str, FailureKind] = {
    "not_configured": "lm-not-ready",
    "initialization": "lm-not-ready",
    "sync_error": "lm-sync-error",
}
#: ``errorCode`` of a refused ``outCheck`` → the failure kind (domain.md §4.6).
ERROR_CODES: dict[int, FailureKind] = {4045: "lm-not-ready", 4050: "lm-sync-error"}
#: Failure kinds after which ``check`` does not call the module until the status changes.
_GATING_KINDS: frozenset[str] = frozenset(
    {"unreachable", "timeout", "lm-not-ready", "lm-sync-error"}
)
#: Keys under which a status may carry its replication counters (§4.6: the key is not
#: documented; the emulator says ``replicationStatus``, a spec ``dbState``).
_COUNTER_KEYS = ("replicationStatus", "replication", "dbState", "counters")
_MS_PER_HOUR = 3_600_000
#: The last millisecond a datetime can hold (9999-12-31T23:59:59.999Z): a ``lastSync`` past it
#: is garbage, and datetime.fromtimestamp() would raise on it when the status is shown.
_MAX_TIMESTAMP_MS = 253_402_300_799_999


@dataclass(frozen=True)
class LocalModuleOptions:
    """Tuning of :class:`LocalModuleClient`; the defaults follow domain.md §4.7 and §9."""

    #: Seconds between status polls (FMU-API polls every 10 s).
    status_interval_s: float = 10.0
    #: Budget of one background status poll, seconds.
    status_timeout_s: float = 2.0
    #: A "down" status older than ``status_interval_s × stale_factor`` is not trusted.
    stale_factor: float = 3.0
    #: Hours since ``lastSync`` for a warning and a critical alert (§4.7 advice: 24 h, 48 h).
    sync_warning_hours: float = 24.0
    sync_critical_hours: float = 48.0
    #: Hours since ``lastSync`` after which the module blocks checks (§4.7: 72 h).
    sync_limit_hours: float = 72.0
    #: Idle kept-alive connections for checks (as the online client's: as many as checks
    #: run at once).
    max_idle_connections: int = 4


@dataclass(frozen=True)
class LocalModuleStatus:
    """What markd knows of the module: the last status poll, updated by what checks saw.

    ``failure`` is why a check would fail now (``unreachable``, ``timeout``, ``lm-not-ready``,
    ``lm-sync-error``, or any failure of the poll itself); None when the module answered and
    is ready. ``observed_at`` (monotonic) is when ``state``/``failure`` were last confirmed —
    by a poll, or by a check that got 4045/4050 or a good answer; ``polled_at`` is when the
    other fields were read.
    """

    observed_at: float
    polled_at: float
    reachable: bool
    state: str | None = None
    failure: SourceFailure | None = None
    api: int | None = None
    version: str | None = None
    inst: str | None = None
    name: str | None = None
    inn: str | None = None
    #: ``lastSync`` as sent (Unix milliseconds, the module's clock).
    last_sync_ms: int | None = None
    requires_download: bool | None = None
    operation_mode: str | None = None
    #: Replication counters per database (``{cis: {localDocCount, serverDocCount, timeLag}}``).
    counters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CodesUpdate:
    """The outcome of ``/cis/sell`` or ``/cis/return``.

    ``skipped``: the module speaks API v1, which has no sold-codes database; nothing was sent
    and nothing needs to be. ``ok`` is True when nothing failed and no КИ was rejected.
    """

    accepted: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    failure: SourceFailure | None = None
    skipped: bool = False
    http_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.rejected


class LocalModuleClient(CheckClient):
    """Asks the Local Module about codes (API v1 or v2), watches its status, reports sales.

    ``base_url``: ``http://127.0.0.1:5995`` (the installer's default port). ``user`` and
    ``password``: HTTP Basic credentials (``admin``/``admin`` out of the box). ``fn_serial``:
    the ФН serial, sent as ``X-ClientId`` on every call (§4.3). ``api``: 1, 2, or 0 to detect
    the version through ``/api/v2/status`` then ``/api/v1/status`` (a 404 means "not this
    version"). ``recorder`` receives every exchange. ``clock`` (monotonic) ages statuses;
    ``now`` (Unix seconds) ages ``lastSync``. ``proxy``: the HTTP proxy settings (the module
    on loopback stays direct under the default ``no_proxy``; a proxy failure is reported as
    the failure kind of the same name, ``proxy-auth`` …). Use from one event loop.

    One client serves the whole daemon: the check chain asks it and polls its status
    (:meth:`start`), and the sale session reports sold units through it (:meth:`sell`).
    """

    source = "lm"

    def __init__(
        self,
        base_url: str,
        *,
        user: str,
        password: Secret,
        fn_serial: str,
        api: int = 2,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        options: LocalModuleOptions = LocalModuleOptions(),  # noqa: B008 - frozen, shared
        proxy: ProxySettings | None = None,
    ) -> None:
        if api not in (0, 1, 2):
            raise ValueError(f"Local Module API version must be 1, 2 or 0 (detect), not {api}")
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("Local Module URL must look like http://127.0.0.1:5995")
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        # Userinfo never reaches a URL we record; credentials go in the header only.
        self.base_url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        super().__init__(recorder=recorder)
        self.configured_api = api
        self.options = options
        self._detected_api: int | None = api or None
        self._clock = clock
        self._now = now
        credentials = base64.b64encode(f"{user}:{password.reveal()}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {credentials}", "X-ClientId": fn_serial}
        # Two connections: a background poll never holds the socket a check wants.
        self._http = HTTPClient(proxy=proxy, max_idle=options.max_idle_connections)
        self._status_http = HTTPClient(proxy=proxy)
        self._status: LocalModuleStatus | None = None
        self._poll_interval_s = options.status_interval_s
        self._poller: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"LocalModuleClient({self.base_url}, api={self.configured_api or 'detect'})"

    # -- public interface -------------------------------------------------------------------

    @property
    def api_version(self) -> int | None:
        """The API version in use: configured, or detected (None: not detected yet)."""
        return self._detected_api

    @property
    def last_status(self) -> LocalModuleStatus | None:
        return self._status

    async def check(self, code: MarkingCode, deadline: float) -> SourceAnswer | SourceFailure:
        """``outCheck`` for ``code``'s КИ, answered before ``deadline`` (``time.monotonic``).

        Returns at once, without a request, when the module is known to be down (see the
        module docstring). Never raises for a service or network problem.
        """
        known_down = self._known_failure()
        if known_down is not None:
            return known_down
        started = time.monotonic()
        api = await self._api(deadline)
        if isinstance(api, SourceFailure):
            return dataclasses.replace(api, latency_ms=_ms_since(started))
        if api == 1:
            body: dict[str, Any] = {"cis_list": [code.ki]}
        else:
            item: dict[str, Any] = {"cis": code.ki}
            if code.group_id is not None:
                item["pg"] = code.group_id
            body = {"cis_list": [item]}
        exchange = await self._exchange(
            self._http, "POST", f"/api/v{api}/cis/outCheck", deadline, body
        )
        if isinstance(exchange, SourceFailure):
            return dataclasses.replace(exchange, latency_ms=_ms_since(started))
        result = await self._read_check(exchange, api, code.ki, deadline, started)
        self._note_check(result)
        return result

    async def status_poll(self, deadline: float) -> LocalModuleStatus:
        """Read ``/api/v{n}/status`` (detecting the version first when asked to) and keep it
        as the last known status. Never raises for a service problem: an unreachable module
        gives a status with ``reachable=False`` and the failure."""
        if self._detected_api is None:
            return await self._detect(deadline)
        status, _ = await self._poll_version(self._detected_api, deadline)
        return status

    async def run_status_poller(
        self, interval_s: float | None = None, stop_event: asyncio.Event | None = None
    ) -> None:
        """Poll the status every ``interval_s`` seconds (default
        :attr:`LocalModuleOptions.status_interval_s`) until ``stop_event`` is set or the task
        is cancelled."""
        interval = self.options.status_interval_s if interval_s is None else interval_s
        if interval <= 0:
            raise ValueError("the status poll interval must be positive")
        self._poll_interval_s = interval
        stop = stop_event or asyncio.Event()
        while not stop.is_set():
            budget = min(self.options.status_timeout_s, interval)
            await self.status_poll(time.monotonic() + budget)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                continue

    def status(self) -> dict[str, Any]:
        """The module's health for ``markctl status`` (JSON-ready).

        Keys: ``url``, ``api``, ``polled`` (a status was ever read), ``reachable``, ``state``,
        ``status_age_s``, ``version``, ``inst``, ``requires_download``, ``operation_mode``,
        ``counters``, ``last_sync`` (ISO-8601 UTC), ``last_sync_age_hours``, ``sync_alert``
        (None, ``warning`` ≥ 24 h, ``critical`` ≥ 48 h, ``blocked`` ≥ 72 h since ``lastSync``,
        domain.md §4.7), ``error`` (the failure's kind and detail) and ``alerts`` (texts for a
        technician).
        """
        status = self._status
        out: dict[str, Any] = {"source": "lm", "url": self.base_url, "api": self._detected_api}
        if status is None:
            out.update(polled=False, reachable=None, state=None, alerts=["no status read yet"])
            return out
        alerts: list[str] = []
        out.update(
            polled=True,
            reachable=status.reachable,
            state=status.state,
            status_age_s=round(self._clock() - status.observed_at, 1),
            version=status.version,
            inst=status.inst,
            requires_download=status.requires_download,
            operation_mode=status.operation_mode,
            counters=dict(status.counters),
        )
        if status.failure is not None:
            out["error"] = {**status.failure.summary(), "detail": status.failure.detail}
            alerts.append(f"checks fail: {status.failure.kind}: {status.failure.detail}")
        age_h = self._last_sync_age_hours(status)
        out["last_sync"] = None
        out["last_sync_age_hours"] = None if age_h is None else round(age_h, 2)
        out["sync_alert"] = None
        if status.last_sync_ms is not None:
            synced = datetime.fromtimestamp(status.last_sync_ms / 1000, UTC)
            out["last_sync"] = synced.isoformat(timespec="seconds").replace("+00:00", "Z")
        if age_h is not None:
            opts = self.options
            level = None
            if age_h >= opts.sync_limit_hours:
                level = "blocked"
            elif age_h >= opts.sync_critical_hours:
                level = "critical"
            elif age_h >= opts.sync_warning_hours:
                level = "warning"
            out["sync_alert"] = level
            if level is not None:
                left = max(opts.sync_limit_hours - age_h, 0.0)
                alerts.append(
                    f"{level}: no synchronisation with Честный ЗНАК for {age_h:.1f} h; the "
                    f"module blocks checks after {opts.sync_limit_hours:g} h ({left:.1f} h left)"
                )
        if status.requires_download:
            alerts.append("the module is downloading its database (requiresDownload)")
        out["alerts"] = alerts
        return out

    async def init(
        self,
        token: Secret,
        deadline: float,
        *,
        clear_sold: bool | None = None,
        enable_grey_list: bool | None = None,
    ) -> SourceFailure | None:
        """``POST /api/v{n}/init`` with the participant's token (mandatory after install,
        domain.md §4.4). API v2 also takes ``clearSold`` and ``enableGreyList`` (§4.5,
        unconfirmed), sent only when given. Returns None when the module accepted it; the
        status is then read again (within ``deadline``)."""
        started = time.monotonic()
        api = await self._api(deadline)
        if isinstance(api, SourceFailure):
            return api
        body: dict[str, Any] = {"token": token.reveal()}
        if api >= 2:
            if clear_sold is not None:
                body["clearSold"] = clear_sold
            if enable_grey_list is not None:
                body["enableGreyList"] = enable_grey_list
        exchange = await self._exchange(self._http, "POST", f"/api/v{api}/init", deadline, body)
        if isinstance(exchange, SourceFailure):
            return exchange
        response, parsed = exchange
        latency = _ms_since(started)
        if not 200 <= response.status < 300:
            return self._status_failure(response, parsed, latency)
        code = parsed.get("code") if isinstance(parsed, Mapping) else None
        if code is not None and read_int(code) != 0:
            detail = _text(parsed.get("description")) if isinstance(parsed, Mapping) else ""
            return SourceFailure(
                "lm", "http-error", response.status, f"init refused: code {code} {detail}", latency
            )
        # The state changes with init (to initialization, or ready): read it now, so a "down"
        # status from before does not hold checks back until the next poll.
        if deadline > time.monotonic():
            await self.status_poll(deadline)
        return None

    async def sell(self, kis: Iterable[str | MarkingCode], deadline: float) -> CodesUpdate:
        """Report sold КИ to LM 2.x's sold-codes database (``/api/v2/cis/sell`` → 201)."""
        return await self._update_sold("sell", kis, deadline)

    async def return_(self, kis: Iterable[str | MarkingCode], deadline: float) -> CodesUpdate:
        """Remove returned КИ from the sold-codes database (``/api/v2/cis/return`` → 200)."""
        return await self._update_sold("return", kis, deadline)

    async def probe(self, deadline: float) -> None:
        """Read the status now (detecting the API version when asked to)."""
        await self.status_poll(deadline)

    def start(self) -> None:
        """Poll the status in the background (:meth:`run_status_poller`), so a check never
        waits on a module known to be down (domain.md §4.6). Does nothing while it runs."""
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self.run_status_poller(), name="markd-lm-status"
            )

    def close(self) -> None:
        """Stop the status poller and close the kept-alive connections."""
        if self._poller is not None:
            self._poller.cancel()
        self._http.close()
        self._status_http.close()

    async def aclose(self) -> None:
        """Stop the status poller, wait for it, and close the connections."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await poller
        self.close()

    # -- status -----------------------------------------------------------------------------

    def _stale_after_s(self) -> float:
        return self._poll_interval_s * self.options.stale_factor

    def _known_failure(self) -> SourceFailure | None:
        """The failure to return without asking, when a recent status says the module is
        down. A down status older than three poll intervals is not trusted."""
        status = self._status
        if status is None or status.failure is None:
            return None
        if status.failure.kind not in _GATING_KINDS:
            return None
        age = self._clock() - status.observed_at
        if age > self._stale_after_s():
            return None
        failure = status.failure
        kind: FailureKind = "unreachable" if failure.kind == "timeout" else failure.kind
        return SourceFailure(
            "lm",
            kind,
            failure.http_status,
            f"not asked: the module was down {age:.1f} s ago ({failure.detail})",
            0.0,
            failure.lm_state,
        )

    async def _api(self, deadline: float) -> int | SourceFailure:
        if self._detected_api is not None:
            return self._detected_api
        status = await self._detect(deadline)
        if self._detected_api is None:
            return status.failure or SourceFailure("lm", "bad-answer", None, "version unknown")
        return self._detected_api

    async def _detect(self, deadline: float) -> LocalModuleStatus:
        """Ask ``/api/v2/status``, then ``/api/v1/status``; a 404 means "not this version"."""
        status: LocalModuleStatus | None = None
        for version in (2, 1):
            status, readable = await self._poll_version(version, deadline, detecting=True)
            if readable:
                self._detected_api = version
                return status
            if status.failure is None or status.failure.http_status != 404:
                return status
        assert status is not None
        failure = SourceFailure(
            "lm", "http-error", 404, "neither /api/v2/status nor /api/v1/status exists"
        )
        return self._keep_status(dataclasses.replace(status, failure=failure))

    async def _poll_version(
        self, version: int, deadline: float, *, detecting: bool = False
    ) -> tuple[LocalModuleStatus, bool]:
        """One status request for API ``version``; also whether a status body was read."""
        previous = self._status
        exchange = await self._exchange(
            self._status_http, "GET", f"/api/v{version}/status", deadline
        )
        at = self._clock()
        if isinstance(exchange, SourceFailure):
            return self._keep_status(_failed_status(at, previous, exchange, False)), False
        response, parsed = exchange
        if response.status != 200:
            failure = self._status_failure(response, parsed, response.elapsed_ms)
            if response.status == 404 and not detecting and self.configured_api == 0:
                self._detected_api = None  # the module was replaced by another version
            return self._keep_status(_failed_status(at, previous, failure, True)), False
        if not isinstance(parsed, Mapping) or not isinstance(parsed.get("status"), str):
            failure = SourceFailure(
                "lm", "bad-answer", 200, "status: no 'status' field", response.elapsed_ms
            )
            return self._keep_status(_failed_status(at, previous, failure, True)), False
        state = parsed["status"]
        failure = None
        kind = NOT_READY_STATES.get(state)
        if kind is not None:
            failure = SourceFailure(
                "lm", kind, 200, f"status says {state}", response.elapsed_ms, state
            )
        counters = next(
            (parsed[k] for k in _COUNTER_KEYS if isinstance(parsed.get(k), Mapping)), {}
        )
        last_sync = parsed.get("lastSync")
        requires_download = parsed.get("requiresDownload")
        status = LocalModuleStatus(
            observed_at=at,
            polled_at=at,
            reachable=True,
            state=state,
            failure=failure,
            api=version,
            version=_text(parsed.get("version")) or None,
            inst=_text(parsed.get("inst")) or None,
            name=_text(parsed.get("name")) or None,
            inn=_text(parsed.get("inn")) or None,
            last_sync_ms=read_int(last_sync, lo=0, hi=_MAX_TIMESTAMP_MS),
            requires_download=requires_download if isinstance(requires_download, bool) else None,
            operation_mode=_text(parsed.get("operationMode")) or None,
            counters=dict(counters),
        )
        return self._keep_status(status), True

    def _keep_status(self, status: LocalModuleStatus) -> LocalModuleStatus:
        self._status = status
        return status

    def _note_check(self, result: SourceAnswer | SourceFailure) -> None:
        """What a check learned about the module's state updates the last status: 4045/4050
        mark it down, a good answer marks it up (a stale "down" status proved wrong)."""
        status = self._status
        at = self._clock()
        if isinstance(result, SourceAnswer):
            if status is not None and status.failure is not None:
                self._status = dataclasses.replace(
                    status, observed_at=at, reachable=True, state="ready", failure=None
                )
        elif result.kind in ("lm-not-ready", "lm-sync-error"):
            base = status or LocalModuleStatus(observed_at=at, polled_at=at, reachable=True)
            self._status = dataclasses.replace(
                base,
                observed_at=at,
                reachable=True,
                state=result.lm_state or base.state,
                failure=result,
            )

    def _last_sync_age_hours(self, status: LocalModuleStatus) -> float | None:
        if status.last_sync_ms is None or status.last_sync_ms <= 0:
            return None
        return max(self._now() * 1000 - status.last_sync_ms, 0) / _MS_PER_HOUR

    # -- check ------------------------------------------------------------------------------

    async def _read_check(
        self,
        exchange: tuple[Response, Any],
        api: int,
        ki: str,
        deadline: float,
        started: float,
    ) -> SourceAnswer | SourceFailure:
        response, parsed = exchange
        refusal = _refusal_code(parsed)
        if refusal is not None:
            return await self._not_ready(response, parsed, refusal, deadline, started)
        if not 200 <= response.status < 300:
            if response.status == 404 and self.configured_api == 0:
                self._detected_api = None  # detect again: the module may have been replaced
            return self._status_failure(response, parsed, _ms_since(started))

        def bad(detail: str) -> SourceFailure:
            return SourceFailure("lm", "bad-answer", response.status, detail, _ms_since(started))

        if parsed is _NOT_JSON:
            return bad("outCheck: the body is not JSON")
        result = parsed
        if api >= 2:
            results = parsed.get("results") if isinstance(parsed, Mapping) else None
            if not isinstance(results, list) or not results:
                return bad("outCheck v2: no results[0] in the answer")
            result = results[0]
        if not isinstance(result, Mapping):
            return bad("outCheck: the answer is not a JSON object")
        answer = SourceAnswer.from_json(
            "lm",
            result,
            raw=response.body.decode("utf-8", "replace"),
            http_status=response.status,
            latency_ms=_ms_since(started),
        )
        if answer.code == 0:
            codes = result.get("codes")
            entry = codes[0] if isinstance(codes, list) and codes else None
            if not isinstance(entry, Mapping):
                return bad("outCheck: code 0 but no entry for the КИ")
            if isinstance(entry.get("cis"), str) and entry["cis"] != ki:
                return bad("outCheck: the entry is for another code")
        return answer

    async def _not_ready(
        self,
        response: Response,
        parsed: Any,
        error_code: int,
        deadline: float,
        started: float,
    ) -> SourceFailure:
        """A 4045/4050 refusal, with the module's state: from the body, else the last status,
        else (4045 leaves it open) a status request within what is left of the deadline."""
        kind = ERROR_CODES[error_code]
        state = _body_state(parsed)
        if state is None and kind == "lm-sync-error":
            state = "sync_error"
        last = self._status
        if state is None and last is not None and NOT_READY_STATES.get(last.state or "") == kind:
            state = last.state
        if state is None and deadline - time.monotonic() > 0:
            polled = await self.status_poll(deadline)
            if NOT_READY_STATES.get(polled.state or "") == kind:
                state = polled.state
        description = _text(parsed.get("description")) if isinstance(parsed, Mapping) else ""
        return SourceFailure(
            "lm",
            kind,
            response.status,
            f"errorCode {error_code}: {description}".strip(),
            _ms_since(started),
            state,
        )

    # -- sold codes -------------------------------------------------------------------------

    async def _update_sold(
        self, action: str, kis: Iterable[str | MarkingCode], deadline: float
    ) -> CodesUpdate:
        wanted = [k.ki if isinstance(k, MarkingCode) else k for k in kis]
        if not wanted:
            return CodesUpdate()
        started = time.monotonic()
        api = await self._api(deadline)
        if isinstance(api, SourceFailure):
            return CodesUpdate(failure=api)
        if api < 2:
            return CodesUpdate(skipped=True)  # LM 1.x keeps no sold codes (§4.4, §4.5)
        path = f"/api/v{api}/cis/{action}"
        exchange = await self._exchange(self._http, "POST", path, deadline, {"cis_list": wanted})
        if isinstance(exchange, SourceFailure):
            return CodesUpdate(failure=exchange)
        response, parsed = exchange
        if not 200 <= response.status < 300:
            failure = self._status_failure(response, parsed, _ms_since(started))
            return CodesUpdate(failure=failure, http_status=response.status)
        results = parsed.get("results") if isinstance(parsed, Mapping) else None
        if not isinstance(results, list):
            failure = SourceFailure(
                "lm", "bad-answer", response.status, f"cis/{action}: no results list"
            )
            return CodesUpdate(failure=failure, http_status=response.status)
        accepted = {
            r["cis"]
            for r in results
            if isinstance(r, Mapping) and r.get("success") is True and isinstance(r.get("cis"), str)
        }
        return CodesUpdate(
            accepted=tuple(k for k in wanted if k in accepted),
            rejected=tuple(k for k in wanted if k not in accepted),
            http_status=response.status,
        )

    # -- transport --------------------------------------------------------------------------

    async def _exchange(
        self,
        http: HTTPClient,
        method: str,
        path: str,
        deadline: float,
        body: Any = None,
    ) -> tuple[Response, Any] | SourceFailure:
        """One request; the response with its parsed JSON (:data:`_NOT_JSON` when it is not),
        or the transport failure. Records the exchange either way."""
        url = self.base_url + path
        request_text = "" if body is None else json.dumps(body, ensure_ascii=False)
        started = time.monotonic()
        try:
            response = await http.request(
                method, url, deadline=deadline, headers=self._headers, json_body=body
            )
        except HTTPError as exc:
            latency = _ms_since(started)
            self._record(method, url, None, latency, request_text, b"", str(exc))
            return self.transport_failure(exc, f"{method} {path}: {exc}", latency)
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = _NOT_JSON
        self._record(
            method, url, response.status, response.elapsed_ms, request_text, response.body, ""
        )
        return response, parsed

    def _record(
        self,
        method: str,
        url: str,
        status: int | None,
        latency_ms: float,
        request_text: str,
        response_body: bytes,
        error: str,
    ) -> None:
        if self._recorder is None:
            return  # nothing to redact for nobody
        self.record(
            Exchange(
                source="lm",
                method=method,
                url=url,
                status=status,
                latency_ms=latency_ms,
                request=redact_json_text(request_text),
                response=redact_json_text(response_body),
                error=error,
            )
        )

    def _status_failure(self, response: Response, parsed: Any, latency: float) -> SourceFailure:
        """An HTTP status other than success, as a failure kind."""
        status = response.status
        description = ""
        if isinstance(parsed, Mapping):
            description = _text(parsed.get("description") or parsed.get("message"))
        detail = f"HTTP {status} {response.reason}".strip()
        if description:
            detail += f": {description[:200]}"
        return self.status_failure(status, detail, latency)


# --------------------------------------------------------------------------------------------
# Helpers

#: Marks a body that is not JSON (``None`` is a valid JSON body).
_NOT_JSON: Any = object()


def _ms_since(started: float) -> float:
    return max(0.0, (time.monotonic() - started) * 1000.0)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _refusal_code(parsed: Any) -> int | None:
    """``errorCode`` 4045 or 4050 at the top of the body, in its ``error`` object or in its
    first result (the shape in v2 is not documented; the emulator sends it unwrapped)."""
    if not isinstance(parsed, Mapping):
        return None
    places: list[Any] = [parsed, parsed.get("error")]
    results = parsed.get("results")
    if isinstance(results, list) and results:
        places.append(results[0])
    for place in places:
        if isinstance(place, Mapping):
            code = read_int(place.get("errorCode"))
            if code in ERROR_CODES:
                return code
    return None


def _body_state(parsed: Any) -> str | None:
    if not isinstance(parsed, Mapping):
        return None
    for key in ("status", "state"):
        value = parsed.get(key)
        if isinstance(value, str) and value in NOT_READY_STATES:
            return value
    return None


def _failed_status(
    at: float,
    previous: LocalModuleStatus | None,
    failure: SourceFailure,
    reachable: bool,
) -> LocalModuleStatus:
    """A poll that failed: keep what the previous poll read (version, lastSync…), but the
    state is unknown now."""
    if previous is None:
        return LocalModuleStatus(observed_at=at, polled_at=at, reachable=reachable, failure=failure)
    return dataclasses.replace(
        previous, observed_at=at, reachable=reachable, state=None, failure=failure
    )
