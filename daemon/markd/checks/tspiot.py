"""Client of a ТС ПИоТ (domain.md §5): the certified module that decides, in mode ``tspiot``,
whether a unit may be sold. ESP's ESM listens on ``https://localhost:51401`` with a self-signed
certificate (§5.2).

What it speaks (§5.3–§5.5)::

    GET  /api/v{3,2,1}/info          → {"tspiotId", "kktSerial", "fnSerial", "kktInn",
                                        "codesCheckTimeout": ms, "lm": {…}}
    POST /api/v{n}/codes/check       v1/v2: {"codes": ["<base64 КМ>"], "client_info": {…}}
                                     v3:    {"codes": [{"cis": "<base64 КМ>", "pg": 13}], …}
        v2/v3 → {"codesResponse": [entry]}
        v1    → {"codesResponse": {"codesResponse": [entry]}}     (protobuf double wrapping)
        error → {"error": {"errorCode", "errorDescription"}}
        emergency → HTTP 203 and/or {"code": 203, "message", "details"}

The code sent is base64 of the UTF-8 КМ *with raw GS bytes* (0x1D), never the КИ alone.

Behaviour:

* **Version detection** probes ``GET /api/v3/info``, then v2, then v1, as FMU-API does (§5.3);
  a 404 (or 405/501) means "not this version". The version and the ``/info`` facts are kept;
  :meth:`TspiotClient.codes_check_timeout_ms` gives ``codesCheckTimeout`` so the chain can size
  its budget from it (§5.3 advice, §9). A ``codes/check`` that answers 404 later (the service was
  replaced by another version) triggers one new detection within the same deadline.
* **Offline answers at any time** (§5.4, §5.6): ``isCheckedOffline=true`` gives a
  :class:`~markd.checks.results.SourceAnswer` with ``online=False`` and the LM's ``inst`` and
  ``version``; the first check after the service starts is often one. What the missing or
  ``found=false`` fields of such an answer mean is the policy's call (§6.3), not this client's.
* **One deadline** (``time.monotonic()`` based) covers detection and the check; :meth:`check`
  never raises for a service problem — it returns a :class:`~markd.checks.results.SourceFailure`
  (``timeout``, ``unreachable``, ``bad-answer``, ``emergency``, ``unauthorized``, ``throttled``,
  ``server-error``, ``http-error``). In mode ``tspiot`` any failure refuses the unit (§5.6).
  No retries inside a sale: §5.5 advises staying within ``codesCheckTimeout``.
* **TLS:** the service's self-signed certificate is accepted only when ``allow_self_signed`` is
  set *and* the host is loopback (``localhost``, ``127.0.0.1``, ``::1``); otherwise the
  handshake fails and the check reports ``unreachable`` with a detail saying why.
* **Every exchange is recorded** (:class:`~markd.checks.record.Exchange`, source ``tspiot``)
  with both bodies redacted: base64 codes decoded to their КИ, the crypto tail replaced by
  ``<crypto>``, ``client_info.token`` and the ``/info`` LM credentials replaced by ``<secret>``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import markd
from markd.checks.base import CheckClient
from markd.checks.local_module import ERROR_CODES as LM_ERROR_CODES
from markd.checks.record import Exchange, Recorder, redact_json_text
from markd.checks.results import (
    FailureKind,
    SourceAnswer,
    SourceFailure,
    failure_kind_for_status,
)
from markd.codes import MarkingCode
from markd.http.client import HTTPClient, HTTPError, Response, is_loopback
from markd.numbers import read_int
from markd.proxy import ProxySettings
from markd.secrets import Secret

log = logging.getLogger(__name__)

SOURCE = "tspiot"
#: Probe order of protocol detection (domain.md §5.3: FMU-API tries v3, then v2, then v1).
PROBE_ORDER: tuple[int, ...] = (3, 2, 1)
SUPPORTED_VERSIONS = frozenset(PROBE_ORDER)
#: Statuses of ``/api/vN/info`` that mean "this service does not speak vN".
_NOT_THIS_VERSION = frozenset({404, 405, 501})
#: Body code (and HTTP status) of emergency mode (domain.md §5.5).
EMERGENCY_CODE = 203
#: Longest quote of the service's own text kept in a failure's detail.
_MAX_DETAIL_QUOTE = 200
#: ``/info`` LM fields safe to show in ``markctl status`` (``token``, ``login``, ``pass`` are not).
_SAFE_LM_KEYS = ("version", "status", "lastSync", "expDate", "ip", "port")


@dataclass(frozen=True)
class TspiotOptions:
    """Tuning of :class:`TspiotClient` (defaults suit ESP's ESM).

    ``api_version``: use this version without detection (None: detect). ``probe_order``: the
    versions tried by detection, first to last. ``info_timeout_ms``: the longest one ``/info``
    probe may take, within the caller's deadline (FMU-API uses 1 s, §9).
    ``redetect_on_not_found``: a ``codes/check`` answering 404 forgets the version and detects
    again once, within the same deadline. ``max_idle_connections``: kept-alive connections
    waiting for reuse (as the online client's: as many as checks run at once; each new one to
    a ТС ПИоТ is a TLS handshake).
    """

    api_version: int | None = None
    probe_order: tuple[int, ...] = PROBE_ORDER
    info_timeout_ms: int = 1000
    redetect_on_not_found: bool = True
    max_idle_connections: int = 4

    def __post_init__(self) -> None:
        if self.api_version is not None and self.api_version not in SUPPORTED_VERSIONS:
            raise ValueError(f"ТС ПИоТ api_version must be 1, 2 or 3, not {self.api_version!r}")
        if not self.probe_order or not set(self.probe_order) <= SUPPORTED_VERSIONS:
            raise ValueError(f"ТС ПИоТ probe_order must list versions 1–3: {self.probe_order!r}")
        if self.info_timeout_ms <= 0:
            raise ValueError("ТС ПИоТ info_timeout_ms must be positive")


@dataclass(frozen=True)
class TspiotInfo:
    """What ``/api/vN/info`` said (domain.md §5.3), without the LM credentials it also carries.

    ``codes_check_timeout_ms`` is None when the service did not say (or said something
    unreadable). ``lm`` keeps only ``version``, ``status``, ``lastSync``, ``expDate``, ``ip``
    and ``port``.
    """

    version: int
    tspiot_id: str | None = None
    kkt_serial: str | None = None
    fn_serial: str | None = None
    kkt_inn: str | None = None
    codes_check_timeout_ms: int | None = None
    lm: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, version: int, obj: Any) -> TspiotInfo:
        """Read an ``/info`` body leniently: anything missing or of the wrong type is None."""
        if not isinstance(obj, Mapping):
            return cls(version)
        # The identifier's key differs between renderings: ``tspiotId`` in the documented
        # answer, ``TsPiotId`` under the protobuf JSON mapping of the published schema.
        tspiot_id = next(
            (v for k, v in obj.items() if k.lower() == "tspiotid" and isinstance(v, str)), None
        )
        lm = obj.get("lm")
        safe_lm = (
            {k: lm[k] for k in _SAFE_LM_KEYS if k in lm and _is_scalar(lm[k])}
            if isinstance(lm, Mapping)
            else {}
        )
        return cls(
            version=version,
            tspiot_id=tspiot_id,
            kkt_serial=_text(obj.get("kktSerial")),
            fn_serial=_text(obj.get("fnSerial")),
            kkt_inn=_text(obj.get("kktInn")),
            codes_check_timeout_ms=read_int(obj.get("codesCheckTimeout"), lo=1),
            lm=safe_lm,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields for ``markctl status``."""
        return {
            "version": self.version,
            "tspiot_id": self.tspiot_id,
            "kkt_serial": self.kkt_serial,
            "fn_serial": self.fn_serial,
            "kkt_inn": self.kkt_inn,
            "codes_check_timeout_ms": self.codes_check_timeout_ms,
            "lm": dict(self.lm),
        }


def encode_code(code: MarkingCode) -> str:
    """The КМ as the ТС ПИоТ takes it: base64 of its UTF-8 bytes, GS as the raw byte 0x1D."""
    return base64.b64encode(code.km.encode("utf-8")).decode("ascii")


def check_request(
    code: MarkingCode, version: int, client_info: Mapping[str, str]
) -> dict[str, Any]:
    """The ``codes/check`` body for ``version`` (domain.md §5.3): v1/v2 a base64 string per
    code, v3 an object ``{"cis", "pg"}`` with ``pg`` only when the product group is known."""
    encoded = encode_code(code)
    item: Any = encoded
    if version >= 3:
        item = {"cis": encoded}
        if code.group_id is not None:
            item["pg"] = code.group_id
    return {"codes": [item], "client_info": dict(client_info)}


def unwrap_entry(body: Any) -> Mapping[str, Any] | None:
    """The first result entry of a ``codes/check`` answer: ``codesResponse[0]`` (v2/v3) or
    ``codesResponse.codesResponse[0]`` (v1). Either shape is accepted whatever the version
    asked, since what matters is that the entry is there. None when it is not."""
    if not isinstance(body, Mapping):
        return None
    wrapped = body.get("codesResponse")
    if isinstance(wrapped, Mapping):
        wrapped = wrapped.get("codesResponse")
    if isinstance(wrapped, list) and wrapped and isinstance(wrapped[0], Mapping):
        return wrapped[0]
    return None


class TspiotClient(CheckClient):
    """Checks codes through one ТС ПИоТ (``base_url`` such as ``https://localhost:51401``).

    ``client_name``, ``client_version``, ``client_id`` and ``token`` form ``client_info``
    (the ПМСР's identity and access key; the token is left out when None).
    ``allow_self_signed`` accepts the service's self-signed certificate on a loopback host only.
    ``recorder`` receives every exchange, redacted. ``clock`` is the monotonic clock deadlines
    are read against (``time.monotonic``, which the HTTP client uses too). ``proxy``: the HTTP
    proxy settings (a loopback ТС ПИоТ stays direct under the default ``no_proxy``; a proxy
    failure is reported as the failure kind of the same name, ``proxy-auth`` …).

    Use from one event loop; :meth:`close` (or ``async with``) releases the kept-alive
    connection.
    """

    source = SOURCE

    def __init__(
        self,
        base_url: str,
        *,
        client_name: str = "markd",
        client_version: str = markd.__version__,
        client_id: str,
        token: Secret | None,
        allow_self_signed: bool,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        options: TspiotOptions | None = None,
        proxy: ProxySettings | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"ТС ПИоТ URL must be http(s)://host[:port]: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.allow_self_signed = allow_self_signed
        self.options = options or TspiotOptions()
        self._client_name = client_name
        self._client_version = client_version
        self._client_id = client_id
        self._token = token
        super().__init__(recorder=recorder)
        self._clock = clock
        self._http = HTTPClient(
            user_agent=f"{client_name}/{client_version}",
            allow_self_signed_loopback=allow_self_signed,
            proxy=proxy,
            max_idle=self.options.max_idle_connections,
        )
        self._detect_lock = asyncio.Lock()
        self._version: int | None = self.options.api_version
        self._info: TspiotInfo | None = None
        self._last_error: SourceFailure | None = None
        self._last_offline: bool | None = None
        self._last_latency_ms: float | None = None

    # -- public interface -----------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        """The API version in use (None until detected or configured)."""
        return self._version

    @property
    def info(self) -> TspiotInfo | None:
        """What the last successful ``/info`` said (None before one)."""
        return self._info

    def codes_check_timeout_ms(self) -> int | None:
        """``codesCheckTimeout`` from ``/info`` (ms), or None when not known yet or not said."""
        return self._info.codes_check_timeout_ms if self._info is not None else None

    async def detect(self, deadline: float) -> TspiotInfo | SourceFailure:
        """Find the API version (``/api/v3/info``, then v2, then v1) and read ``/info``;
        ``deadline`` is a ``time.monotonic()`` value. Never raises for service problems.

        With :attr:`TspiotOptions.api_version` set only that version is asked. Call it at
        start-up (domain.md §5.6 advice) so the first scan does not pay for detection.
        """
        return await self._detect_locked(deadline, again=True)

    async def _detect_locked(self, deadline: float, *, again: bool) -> TspiotInfo | SourceFailure:
        """Detect under the lock, so concurrent scans probe once; with ``again=False`` a
        version another scan found meanwhile is used as is."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            return self._failed("timeout", "no time left to detect the ТС ПИоТ API version")
        try:
            async with asyncio.timeout(remaining):
                await self._detect_lock.acquire()
        except TimeoutError:
            return self._failed("timeout", "waited for another detection past the deadline")
        try:
            if not again and self._version is not None:
                return self._info or TspiotInfo(self._version)
            return await self._detect(deadline)
        finally:
            self._detect_lock.release()

    async def check(self, code: MarkingCode, deadline: float) -> SourceAnswer | SourceFailure:
        """Check one code before ``deadline`` (``time.monotonic()``); detects the version first
        when needed, within the same deadline. Never raises for service problems."""
        started = self._clock()
        if self._version is None:
            detected = await self._detect_locked(deadline, again=False)
            if isinstance(detected, SourceFailure):
                return _with_latency(detected, started, self._clock)
        result = await self._check_once(code, deadline, started)
        if (
            isinstance(result, SourceFailure)
            and result.http_status == 404
            and self.options.redetect_on_not_found
            and self.options.api_version is None
            and self._clock() < deadline
        ):
            # The service behind the URL no longer speaks the version we detected.
            self._version = None
            detected = await self._detect_locked(deadline, again=False)
            if isinstance(detected, SourceFailure):
                return _with_latency(detected, started, self._clock)
            result = await self._check_once(code, deadline, started)
        if isinstance(result, SourceAnswer):
            self._last_offline = not result.online
            self._last_error = None
        else:
            self._last_error = result
        self._last_latency_ms = result.latency_ms
        return result

    def status(self) -> dict[str, Any]:
        """Health for ``markctl status``: URL, version, ``/info`` facts (no credentials), the
        last failure (kind, status, detail) and whether the last answer was offline."""
        error = None
        if self._last_error is not None:
            error = {**self._last_error.summary(), "detail": self._last_error.detail}
        return {
            "url": self.base_url,
            "version": self._version,
            "info": self._info.to_dict() if self._info is not None else None,
            "last_error": error,
            "last_offline": self._last_offline,
            "last_latency_ms": self._last_latency_ms,
        }

    async def probe(self, deadline: float) -> None:
        """Detect the API version and read ``/info`` now (``markctl status``)."""
        await self.detect(deadline)

    def close(self) -> None:
        """Close the kept-alive connection."""
        self._http.close()

    async def __aenter__(self) -> TspiotClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- detection ------------------------------------------------------------------------------

    async def _detect(self, deadline: float) -> TspiotInfo | SourceFailure:
        started = self._clock()
        order = (
            (self.options.api_version,)
            if self.options.api_version is not None
            else self.options.probe_order
        )
        not_served: list[str] = []
        for version in order:
            probe_deadline = min(deadline, self._clock() + self.options.info_timeout_ms / 1000)
            url = f"{self.base_url}/api/v{version}/info"
            outcome = await self._exchange("GET", url, None, probe_deadline)
            if isinstance(outcome, SourceFailure):
                # Nothing answered: trying an older version would only spend the budget.
                return self._remember(_with_latency(outcome, started, self._clock))
            if outcome.status in _NOT_THIS_VERSION:
                not_served.append(f"v{version}: {outcome.status}")
                continue
            if not 200 <= outcome.status < 300:
                return self._remember(
                    _with_latency(self._failure_for(outcome), started, self._clock)
                )
            try:
                body = outcome.json()
            except ValueError:
                body = None
            if not isinstance(body, Mapping):
                # The version answered, so it exists; its /info is just unreadable.
                log.warning("ТС ПИоТ %s: /api/v%d/info is not a JSON object", self.host, version)
            info = TspiotInfo.from_json(version, body)
            self._version = version
            self._info = info
            return info
        return self._failed(
            "http-error",
            "the ТС ПИоТ speaks none of the API versions tried (" + ", ".join(not_served) + ")",
            http_status=404,
            started=started,
        )

    # -- check ----------------------------------------------------------------------------------

    async def _check_once(
        self, code: MarkingCode, deadline: float, started: float
    ) -> SourceAnswer | SourceFailure:
        version = self._version or 1
        url = f"{self.base_url}/api/v{version}/codes/check"
        request = check_request(code, version, self._client_info())
        outcome = await self._exchange("POST", url, request, deadline)
        if isinstance(outcome, SourceFailure):
            return _with_latency(outcome, started, self._clock)
        latency_ms = (self._clock() - started) * 1000
        if outcome.status == EMERGENCY_CODE:
            return self._emergency(outcome, latency_ms)
        try:
            body = outcome.json()
        except ValueError:
            body = _NOT_JSON
        if not 200 <= outcome.status < 300:
            return _with_latency(self._failure_for(outcome, body), started, self._clock)
        if body is _NOT_JSON:
            return SourceFailure(
                SOURCE,
                "bad-answer",
                outcome.status,
                f"codes/check answered {len(outcome.body)} bytes that are not JSON",
                latency_ms,
            )
        entry = unwrap_entry(body)
        if entry is None:
            if isinstance(body, Mapping) and "error" in body:
                return _with_latency(self._failure_for(outcome, body), started, self._clock)
            if isinstance(body, Mapping) and read_int(body.get("code")) == EMERGENCY_CODE:
                return self._emergency(outcome, latency_ms)
            return SourceFailure(
                SOURCE,
                "bad-answer",
                outcome.status,
                "codes/check answer has no codesResponse entry",
                latency_ms,
            )
        if read_int(entry.get("code")) == EMERGENCY_CODE:
            return self._emergency(outcome, latency_ms)
        answer = SourceAnswer.from_json(
            SOURCE,
            entry,
            raw=outcome.body.decode("utf-8", "replace"),
            http_status=outcome.status,
            latency_ms=latency_ms,
        )
        codes = entry.get("codes")
        if answer.code == 0 and not (isinstance(codes, list) and codes):
            # "Processed" but nothing about our code: there is nothing to decide on.
            return SourceFailure(
                SOURCE,
                "bad-answer",
                outcome.status,
                "codes/check answer says code 0 but carries no per-code object",
                latency_ms,
            )
        return answer

    def _client_info(self) -> dict[str, str]:
        info = {
            "name": self._client_name,
            "version": self._client_version,
            "id": self._client_id,
        }
        if self._token is not None:
            info["token"] = self._token.reveal()
        return info

    # -- one exchange ---------------------------------------------------------------------------

    async def _exchange(
        self, method: str, url: str, json_body: Any, deadline: float
    ) -> Response | SourceFailure:
        """One HTTP request, recorded; a transport problem becomes a failure."""
        body = (
            None
            if json_body is None
            else json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode()
        )
        headers = {"Content-Type": "application/json"} if body is not None else None
        started = self._clock()
        try:
            response = await self._http.request(
                method, url, deadline=deadline, headers=headers, body=body
            )
        except HTTPError as exc:
            latency_ms = (self._clock() - started) * 1000
            detail = self._transport_detail(exc)
            self._record(method, url, None, latency_ms, body, b"", detail)
            return self.transport_failure(exc, detail, latency_ms)
        self._record(method, url, response.status, response.elapsed_ms, body, response.body, "")
        return response

    def _transport_detail(self, exc: HTTPError) -> str:
        detail = str(exc)
        if isinstance(exc.__cause__, ssl.SSLError):
            if not self.allow_self_signed:
                detail += (
                    "; the ТС ПИоТ's certificate is not trusted (it is usually self-signed:"
                    " set allow_self_signed for a loopback URL)"
                )
            elif not is_loopback(self.host):
                detail += (
                    f"; a self-signed certificate is accepted only on a loopback host,"
                    f" not {self.host}"
                )
        return detail

    def _record(
        self,
        method: str,
        url: str,
        status: int | None,
        latency_ms: float,
        request: bytes | None,
        response: bytes,
        error: str,
    ) -> None:
        if self._recorder is None:
            return  # nothing to redact for nobody
        exchange = Exchange(
            source=SOURCE,
            method=method,
            url=url,
            status=status,
            latency_ms=latency_ms,
            request=redact_json_text(request or b""),
            response=redact_json_text(response),
            error=error,
            extra={"api_version": self._version} if self._version is not None else {},
        )
        self.record(exchange)

    # -- failures -------------------------------------------------------------------------------

    def _failure_for(self, response: Response, body: Any = None) -> SourceFailure:
        """A failure for an error status or an ``{"error": …}`` body (domain.md §5.5)."""
        if body is None:
            try:
                body = response.json()
            except ValueError:
                body = _NOT_JSON
        error = body.get("error") if isinstance(body, Mapping) else None
        error_code = read_int(error.get("errorCode")) if isinstance(error, Mapping) else None
        text = _text(error.get("errorDescription")) if isinstance(error, Mapping) else None
        status = response.status
        # With HTTP 200 the error's own code says what happened (OrangeData: 514 ЧЗ unavailable).
        basis = status if status >= 300 or error_code is None else error_code
        kind: FailureKind
        if basis == EMERGENCY_CODE:
            kind = "emergency"
        elif error_code in LM_ERROR_CODES:
            # The ТС ПИоТ's own Local Module refused (4045 not ready, 4050 out of sync): the
            # decision table shows these as their own reasons, as for a direct Local Module.
            kind = LM_ERROR_CODES[error_code]
        else:
            kind = failure_kind_for_status(basis)
        detail = f"HTTP {status}"
        if error_code is not None:
            detail += f", errorCode {error_code}"
        if text:
            detail += f": {text[:_MAX_DETAIL_QUOTE]}"
        latency_ms = response.elapsed_ms
        return SourceFailure(SOURCE, kind, status, detail, latency_ms)

    def _emergency(self, response: Response, latency_ms: float) -> SourceFailure:
        """Emergency mode: neither ГИС МТ nor the LM answered the ТС ПИоТ (domain.md §5.5)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        message = _text(body.get("message")) if isinstance(body, Mapping) else None
        detail = f"emergency mode (HTTP {response.status}, code 203)"
        if message:
            detail += f": {message[:_MAX_DETAIL_QUOTE]}"
        return SourceFailure(SOURCE, "emergency", response.status, detail, latency_ms)

    def _failed(
        self,
        kind: FailureKind,
        detail: str,
        *,
        http_status: int | None = None,
        started: float | None = None,
    ) -> SourceFailure:
        latency_ms = 0.0 if started is None else (self._clock() - started) * 1000
        return self._remember(SourceFailure(SOURCE, kind, http_status, detail, latency_ms))

    def _remember(self, failure: SourceFailure) -> SourceFailure:
        self._last_error = failure
        return failure


# --------------------------------------------------------------------------------------------
# Small helpers

_NOT_JSON: Any = object()


def _with_latency(
    failure: SourceFailure, started: float, clock: Callable[[], float]
) -> SourceFailure:
    """``failure`` with its latency measured from ``started`` (the whole check, not one
    request)."""
    return SourceFailure(
        failure.source,
        failure.kind,
        failure.http_status,
        failure.detail,
        (clock() - started) * 1000,
        failure.lm_state,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
