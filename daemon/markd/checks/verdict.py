"""The :class:`Verdict`: what markd decided about one scan, and why.

A verdict is what every sink receives: the journal (one record per scan), the control API, the
sale session. It carries no secret: the КИ (GTIN + serial) is safe to log, the full code and its
crypto tail never appear here.

``decision`` is ``allow`` (sell), ``deny`` (do not sell) or ``rescan`` (nothing is wrong with
the product, the scan is; ask the customer to scan again). ``reason`` is a kebab-case code for
machines and the journal (``MARKD_REASON``); ``message_ru`` is the short text for the customer
screen. ``source`` names who decided: ``store`` (markd's own LMDB store), ``parser`` (the scan
was not a usable code), ``cdn`` (True API online check), ``lm`` (the Local Module),
``tspiot`` / ``tspiot-offline`` (a ТС ПИоТ, online or from its Local Module), ``none`` (no
service answered, or nothing vetoed in the development mode).

A verdict that rests on a check service's answer carries that answer's ``reqId``,
``reqTimestamp`` (the text exactly as received), ``inst`` and ``version``, and the tag 1265
string built from them (domain.md §7.6). ``checked`` is False when no check service judged the
code: the decision table's ``unchecked`` verdicts (nothing answered), the store's and the
parser's own verdicts, and the development mode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from markd.codes import REASONS, RESCAN_REASONS, MarkingCode
from markd.errors import CodeError

Decision = Literal["allow", "deny", "rescan"]
Source = Literal["store", "parser", "cdn", "lm", "tspiot", "tspiot-offline", "none"]

#: Fallback customer-screen texts, for a reason :data:`markd.codes.REASONS` does not know
#: (a scan that never reached the parser). Kept short: a kiosk shows one line of large type.
GENERIC_DENY_RU = "Код маркировки не распознан, продажа невозможна"
GENERIC_RESCAN_RU = "Отсканируйте код ещё раз"


@dataclass(frozen=True)
class Verdict:
    """The decision on one scan. Immutable; sinks may keep it."""

    decision: Decision
    #: Kebab-case reason code, e.g. ``blocked-locally``, ``missing-crypto``, a parser reason.
    reason: str
    #: Short Russian text for the customer screen.
    message_ru: str
    source: Source
    #: Name of the scanner the code came from (``[scanners.NAME]``).
    scanner: str
    #: КИ (GTIN + serial, safe to log), None when the scan could not be parsed.
    ki: str | None = None
    #: Code shape (``gs1-93``, ``tobacco-pack`` ...), None when unparsed.
    shape: str | None = None
    #: What normalisation changed to read the code (from ``MarkingCode.repairs``).
    repairs: tuple[str, ...] = ()
    #: Milliseconds from the scan's last byte to this verdict.
    latency_ms: float = 0.0
    #: ``reqId`` of the answer the verdict rests on (a UUID), None without one.
    req_id: str | None = None
    #: ``reqTimestamp`` of that answer, exactly as received (milliseconds, as text).
    req_timestamp: str | None = None
    #: Local Module instance and version of an offline answer.
    inst: str | None = None
    version: str | None = None
    #: Tag 1265 for the receipt: ``UUID=…&Time=…`` (online) or ``…&Inst=…&Ver=…`` (offline);
    #: empty when no service answered.
    tag1265: str = ""
    #: True when a check service (CDN, Local Module or ТС ПИоТ) answered and its answer was
    #: judged; False means "unchecked".
    checked: bool = False
    #: Facts behind the decision for the record (rule id, blocking bodies, failures, the price
    #: thresholds applied …). JSON-ready; never a secret, a crypto tail or a raw body.
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def journal_fields(self) -> dict[str, str | float]:
        """Structured fields for the event log (the keys become ``MARKD_<KEY>``).

        Holds the КИ, the answer's ids, tag 1265, ``checked`` and the details as compact JSON;
        never the full code, its crypto tail or a secret (a verdict holds none of them).
        """
        fields: dict[str, str | float] = {
            "decision": self.decision,
            "reason": self.reason,
            "source": self.source,
            "scanner": self.scanner,
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.ki is not None:
            fields["ki"] = self.ki
        if self.shape is not None:
            fields["shape"] = self.shape
        if self.repairs:
            fields["repairs"] = ",".join(self.repairs)
        for name in ("req_id", "req_timestamp", "inst", "version"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        if self.tag1265:
            fields["tag1265"] = self.tag1265
        fields["checked"] = "true" if self.checked else "false"
        if self.details:
            fields["details"] = _DETAILS_JSON.encode(self.details)
        return fields


#: The details' JSON in a journal record (one encoder for every record: ``json.dumps`` with
#: options makes a new one per call).
_DETAILS_JSON = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str
)


def parser_verdict(error: CodeError, *, scanner: str, latency_ms: float = 0.0) -> Verdict:
    """The verdict for a scan that is not a usable code: ``rescan`` when scanning again may
    help (:data:`~markd.codes.RESCAN_REASONS`: a lost GS whose split is ambiguous, a cut or
    empty scan), otherwise ``deny``. Bad input never passes silently."""
    rescan = error.reason in RESCAN_REASONS
    known = REASONS.get(error.reason)
    message = known[1] if known else (GENERIC_RESCAN_RU if rescan else GENERIC_DENY_RU)
    return Verdict(
        decision="rescan" if rescan else "deny",
        reason=error.reason,
        message_ru=message,
        source="parser",
        scanner=scanner,
        latency_ms=latency_ms,
    )


@dataclass(frozen=True)
class CheckedCode:
    """A code as markd's check left it: the verdict, and the code parsed once on the way to
    it — or, when it was not a usable code, the parser's error (the verdict is then the
    parser's). Whoever sells the unit takes the parsed code from here instead of parsing the
    text again. The code holds its crypto tail, so it is kept out of ``repr``."""

    verdict: Verdict
    code: MarkingCode | None = field(default=None, repr=False)
    error: CodeError | None = None
