"""What a check service answered about one code, as typed values the decision table reads.

Three services can be asked (domain.md §3–§5), named by :data:`SourceKind`:

``cdn``     True API ``codes/check`` on a CDN host: always an *online* answer.
``lm``      the Local Module (ЛМ ЧЗ) ``outCheck``: always an *offline* answer.
``tspiot``  a ТС ПИоТ ``codes/check``: online, or offline when it says ``isCheckedOffline``.

A request ends in exactly one of two values:

* :class:`SourceAnswer` — the service answered with a usable body: the envelope (``code``,
  ``reqId``, ``reqTimestamp``, ``inst``, ``version``) and the per-code :class:`CodeFacts`.
  A body whose top-level ``code`` is not 0 is still an answer (the service refused); a client
  that wants the chain to fall back to another service reports a :class:`SourceFailure`.
* :class:`SourceFailure` — no usable answer: timeout, transport error, HTTP status, malformed
  body, emergency mode (203), a Local Module that is not ready (4045) or out of sync (4050).

The clients unwrap each protocol's envelope (LM v2 ``results[0]``, ТС ПИоТ
``codesResponse[0]``, the ТС ПИоТ v1 double wrapping) and hand the inner object to
:meth:`SourceAnswer.from_json`; everything after that is shared.

**Absence is kept as absence.** Every :class:`CodeFacts` field is optional and ``None`` means
"the answer did not say". The ТС ПИоТ speaks the protobuf JSON mapping, which omits fields left
at their default (``false``, ``0``, ``""``); the Local Module never sends
``found``/``verified``/``utilised``/``realizable``. What a missing field means therefore depends
on whether the answer is online or offline, and that is the policy's call
(:mod:`markd.checks.policy`), not the parser's.

Nothing here holds the crypto tail except :attr:`SourceAnswer.raw` (the body as received, kept
for the exchange record and out of ``repr``): ``cis`` (the full code as sent) is not copied into
:class:`CodeFacts`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

from markd.numbers import read_int

SourceKind = Literal["cdn", "lm", "tspiot"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("cdn", "lm", "tspiot")

FailureKind = Literal[
    "timeout",
    "unreachable",
    "http-error",
    "bad-answer",
    "unauthorized",
    "emergency",
    "lm-not-ready",
    "lm-sync-error",
    "throttled",
    "server-error",
    "proxy-unreachable",
    "proxy-timeout",
    "proxy-auth",
    "proxy-error",
]

#: Every failure kind with what it means (and which status or error code produces it).
FAILURE_KINDS: dict[FailureKind, str] = {
    "timeout": "no complete answer within the source's timeout (connect or read)",
    "unreachable": "connection refused or reset, DNS or TLS failure: nothing was exchanged",
    "http-error": "an HTTP status the protocol does not define for this call (other 4xx)",
    "bad-answer": "the body is not the JSON the protocol promises (or lacks the code's entry)",
    "unauthorized": "HTTP 401/403: the token, key or password was refused (alert, no failover)",
    "emergency": "HTTP 203 or body code 203: emergency mode (domain.md §3.6, §5.5)",
    "lm-not-ready": "Local Module errorCode 4045: state not_configured or initialization",
    "lm-sync-error": "Local Module errorCode 4050: state sync_error (72 h without sync)",
    "throttled": "HTTP 429: too many requests",
    "server-error": "HTTP 5xx (or CDN body code 5000): the service failed",
    "proxy-unreachable": "the HTTP proxy in the way cannot be reached (refused, DNS, reset "
    "before it answered): the service was not asked",
    "proxy-timeout": "connecting to the HTTP proxy, or its answer to CONNECT, took past the "
    "timeout",
    "proxy-auth": "HTTP 407 from the proxy (or 401 to CONNECT): proxy credentials missing or "
    "refused",
    "proxy-error": "the proxy refused the tunnel (another status, e.g. 502), answered "
    "CONNECT with garbage, or closed the tunnel before TLS with the service began",
}


# --------------------------------------------------------------------------------------------
# Lenient readers for JSON values (the protobuf JSON mapping and hand-written servers differ;
# integers go through markd.numbers.read_int, the reader every client shares)


def _as_bool(value: Any) -> bool | None:
    """``true``/``false``, or the strings ``"true"``/``"false"`` (protobuf JSON parsers accept
    both); anything else is unreadable (None)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_int_tuple(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        return None
    items = [read_int(v) for v in value]
    if any(v is None for v in items):
        return None
    return tuple(v for v in items if v is not None)


def _as_str_tuple(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO-8601 date or date-time as an aware datetime; None when unreadable.

    ``2025-06-02T00:00:00.000Z`` (what ГИС МТ sends) keeps its offset (UTC). A value without an
    offset, or a bare date ``2025-06-02``, is read as UTC midnight / UTC time: ГИС МТ renders
    its dates in UTC. The offset is kept as written, so the policy can tell a date-only value
    (midnight in its own offset) from a date with a time of day.
    """
    if not isinstance(value, str) or not 8 <= len(value) <= 40:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Per-code facts

# JSON name → (attribute, reader). One table, so from_json and to_json cannot drift apart.
_FIELDS: dict[str, tuple[str, Any]] = {
    "valid": ("valid", _as_bool),
    "printView": ("print_view", _as_str),
    "gtin": ("gtin", _as_str),
    "groupIds": ("group_ids", _as_int_tuple),
    "found": ("found", _as_bool),
    "utilised": ("utilised", _as_bool),
    "verified": ("verified", _as_bool),
    "realizable": ("realizable", _as_bool),
    "isBlocked": ("is_blocked", _as_bool),
    "ogvs": ("ogvs", _as_str_tuple),
    "sold": ("sold", _as_bool),
    "expireDate": ("expire_date", parse_timestamp),
    "productionDate": ("production_date", parse_timestamp),
    "isOwner": ("is_owner", _as_bool),
    "isTracking": ("is_tracking", _as_bool),
    "eliminationState": ("elimination_state", read_int),
    "mrp": ("mrp", read_int),
    "smp": ("smp", read_int),
    "grayZone": ("gray_zone", _as_bool),
    "isGreyGtin": ("is_grey_gtin", _as_bool),
    "innerUnitCount": ("inner_unit_count", read_int),
    "soldUnitCount": ("sold_unit_count", read_int),
    "packageType": ("package_type", _as_str),
    "parent": ("parent", _as_str),
    "producerInn": ("producer_inn", _as_str),
    "errorCode": ("error_code", read_int),
    "message": ("message", _as_str),
}


@dataclass(frozen=True, slots=True)
class CodeFacts:
    """The per-code object of a check answer (domain.md §3.5, §4.5, §5.4), every field optional.

    ``None`` means the answer did not carry the field (or carried something unreadable; the
    JSON names of such fields are listed in :attr:`unreadable`). Money is in kopecks.
    """

    #: КМ structure valid.
    valid: bool | None = None
    #: The code without its crypto tail (the КИ).
    print_view: str | None = None
    gtin: str | None = None
    #: Product-group ids (3 tobacco, 8 dairy, 13 water, …).
    group_ids: tuple[int, ...] | None = None
    #: The КИ exists in ГИС МТ.
    found: bool | None = None
    #: Application ("нанесение") was reported.
    utilised: bool | None = None
    #: The crypto tail was verified.
    verified: bool | None = None
    #: Status «В обороте»: may be sold at retail.
    realizable: bool | None = None
    #: Sale blocked by a government body (``ogvs`` names them).
    is_blocked: bool | None = None
    ogvs: tuple[str, ...] | None = None
    #: Already withdrawn from circulation.
    sold: bool | None = None
    expire_date: datetime | None = None
    production_date: datetime | None = None
    #: The requester's INN owns the code / traceability started for the group.
    is_owner: bool | None = None
    is_tracking: bool | None = None
    #: Withdrawal reason that still allows sale.
    elimination_state: int | None = None
    #: Max retail price (tobacco) or minimum price (other groups); 0 means none.
    mrp: int | None = None
    #: Single minimum price (ЕМЦ); 0 means none.
    smp: int | None = None
    #: Tobacco "grey zone".
    gray_zone: bool | None = None
    #: Local Module: the GTIN is on a grey list (a block that only an online check settles).
    is_grey_gtin: bool | None = None
    inner_unit_count: int | None = None
    sold_unit_count: int | None = None
    package_type: str | None = None
    parent: str | None = None
    producer_inn: str | None = None
    #: 0 no error; 1–11 per domain.md §3.5; anything else is unknown but still an error.
    error_code: int | None = None
    #: Error text (``message``, or ``description``/``desctiption`` on the code's object).
    message: str | None = None
    #: JSON names of fields present but unreadable (wrong type), for the record.
    unreadable: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | Any) -> CodeFacts:
        """Read one per-code object. Never raises: anything not a JSON object gives empty facts.

        Accepted quirks: missing fields stay None; numbers may be digit strings (protobuf JSON
        64-bit integers); booleans may be ``"true"``/``"false"``; the code's error text may be
        ``message``, ``description`` or the protobuf schema's ``desctiption`` (sic).
        """
        if not isinstance(obj, Mapping):
            return cls(unreadable=("<not an object>",))
        values: dict[str, Any] = {}
        unreadable: list[str] = []
        for name, (attr, reader) in _FIELDS.items():
            raw = obj.get(name)
            if raw is None:
                continue
            value = reader(raw)
            if value is None:
                unreadable.append(name)
            else:
                values[attr] = value
        if "message" not in values:
            for name in ("description", "desctiption"):
                text = _as_str(obj.get(name))
                if text is not None:
                    values["message"] = text
                    break
        return cls(unreadable=tuple(unreadable), **values)

    def to_json(self) -> dict[str, Any]:
        """The present fields under their JSON names (dates in ISO-8601): what the store keeps
        as a cached verdict's facts; :meth:`from_json` reads it back unchanged."""
        out: dict[str, Any] = {}
        for name, (attr, _) in _FIELDS.items():
            value = getattr(self, attr)
            if value is None:
                continue
            if isinstance(value, datetime):
                value = value.isoformat().replace("+00:00", "Z")
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


#: Facts of an answer that said nothing about the code.
NO_FACTS = CodeFacts()


# --------------------------------------------------------------------------------------------
# Answers and failures


@dataclass(frozen=True, slots=True)
class SourceAnswer:
    """A usable answer from one check service about one code.

    ``req_timestamp`` is the text of ``reqTimestamp`` exactly as received (a JSON number
    rendered in decimal, or the string the ТС ПИоТ sent): tag 1265 carries it verbatim.
    """

    source: SourceKind
    #: False for the Local Module, and for a ТС ПИоТ answer with ``isCheckedOffline=true``.
    online: bool
    #: Top-level ``code``: 0 means processed.
    code: int = 0
    description: str | None = None
    req_id: str | None = None
    req_timestamp: str | None = None
    #: Local Module instance and version (offline answers only).
    inst: str | None = None
    version: str | None = None
    facts: CodeFacts = NO_FACTS
    http_status: int | None = None
    latency_ms: float = 0.0
    #: The body as received, for the exchange record; holds the crypto tail, never logged raw.
    raw: str = field(default="", repr=False)

    @classmethod
    def from_json(
        cls,
        source: SourceKind,
        obj: Mapping[str, Any],
        *,
        online: bool | None = None,
        raw: str | None = None,
        http_status: int | None = None,
        latency_ms: float = 0.0,
    ) -> SourceAnswer:
        """Read an unwrapped result object: ``{code, description, reqId, reqTimestamp, inst,
        version, isCheckedOffline, codes: [per-code]}`` (only the first code is read; markd
        checks one code per request).

        ``online`` defaults to: ``cdn`` → True, ``lm`` → False, ``tspiot`` → not
        ``isCheckedOffline``. A missing ``code`` is 0 (protobuf default); an unreadable one is
        -1, which the policy treats as a refusal. ``raw`` defaults to the object re-encoded.
        """
        if online is None:
            if source == "tspiot":
                online = _as_bool(obj.get("isCheckedOffline")) is not True
            else:
                online = source == "cdn"
        code_value = obj.get("code")
        code = 0 if code_value is None else read_int(code_value)
        codes = obj.get("codes")
        first = codes[0] if isinstance(codes, list) and codes else None
        description = _as_str(obj.get("description"))
        if description is None:
            description = _as_str(obj.get("desctiption"))
        return cls(
            source=source,
            online=online,
            code=-1 if code is None else code,
            description=description,
            req_id=_as_str(obj.get("reqId")),
            req_timestamp=timestamp_text(obj.get("reqTimestamp")),
            inst=_as_str(obj.get("inst")),
            version=_as_str(obj.get("version")),
            facts=CodeFacts.from_json(first) if first is not None else NO_FACTS,
            http_status=http_status,
            latency_ms=latency_ms,
            raw=raw if raw is not None else json.dumps(obj, ensure_ascii=False),
        )


def timestamp_text(value: Any) -> str | None:
    """``reqTimestamp`` as text for tag 1265: a digit string is kept exactly as received; a JSON
    integer is written in decimal (``1735000000000``); a float that is a whole number (a JSON
    parser's ``1.735e12``) likewise. Anything else is None."""
    if isinstance(value, str):
        return value if value else None
    number = read_int(value)
    return None if number is None else str(number)


@dataclass(frozen=True, slots=True)
class SourceFailure:
    """A check service gave no usable answer. ``kind`` is one of :data:`FAILURE_KINDS`."""

    source: SourceKind
    kind: FailureKind
    http_status: int | None = None
    #: Technician's text (what was seen). May quote the service; never a secret or crypto tail.
    detail: str = ""
    latency_ms: float = 0.0
    #: Local Module state behind ``lm-not-ready`` / ``lm-sync-error`` (``initialization`` …).
    lm_state: str | None = None

    def summary(self) -> dict[str, Any]:
        """Safe fields for a verdict's details and the journal (no free text)."""
        out: dict[str, Any] = {"source": self.source, "kind": self.kind}
        if self.http_status is not None:
            out["http_status"] = self.http_status
        if self.lm_state is not None:
            out["lm_state"] = self.lm_state
        return out


SourceResult = SourceAnswer | SourceFailure


def failure_kind_for_status(status: int) -> FailureKind:
    """The failure kind of an HTTP status that is not an answer (shared by the clients):
    401/403 unauthorized, 429 throttled, 5xx server-error, anything else http-error."""
    if status in (401, 403):
        return "unauthorized"
    if status == 429:
        return "throttled"
    if status >= 500:
        return "server-error"
    return "http-error"
