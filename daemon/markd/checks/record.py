"""The record of every exchange with a check service.

Each request a client sends (CDN, Local Module, ТС ПИоТ) and what came back is kept as one
:class:`Exchange`: which service, URL, HTTP status, latency, and both bodies *redacted* — the
crypto tail of every marking code replaced by ``<crypto>``, base64-encoded codes (the ТС ПИоТ
form) decoded to their КИ, and secrets (API keys, passwords, tokens) never present. The chain
hands each exchange to a :data:`Recorder`, which the service sends to the journal with the scan
it belongs to, so a technician can reconstruct a disputed sale.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from markd.codes import CodeError, parse

#: Keys whose values are secrets wherever they appear in a JSON body.
SECRET_KEYS = frozenset({"token", "password", "pass", "x-api-key", "apikey", "api_key", "esptoken"})
MAX_BODY_CHARS = 16_384

_CODE_LIKE = re.compile(r"^(?:\x1d?01\d{14}21|\d{14}).{6,}$", re.S)


@dataclass
class Exchange:
    """One request/answer pair with a service, safe to log."""

    source: str  # cdn | lm | tspiot
    method: str
    url: str  # without userinfo or query secrets
    status: int | None  # None: no HTTP answer (timeout, refused, cut)
    latency_ms: float
    request: str  # redacted JSON text ("" when none)
    response: str  # redacted body text ("" when none)
    error: str = ""  # what went wrong, when something did
    scan_id: str = ""  # set by the chain: which scan this belongs to
    extra: dict[str, Any] = field(default_factory=dict)


Recorder = Callable[[Exchange], None]

#: The scan being checked (set by the service around a check), so exchanges name their scan.
CURRENT_SCAN: contextvars.ContextVar[str] = contextvars.ContextVar("markd_scan", default="")


def _redact_code(text: str) -> str:
    """A marking code → its КИ plus ``<crypto>``; anything else unchanged."""
    if not _CODE_LIKE.match(text):
        return text
    try:
        code = parse(text)
    except CodeError:
        # Not a code we can read: keep the first 31 characters at most, never a tail.
        head = re.split(r"\x1d|<GS>|\\u001d", text, maxsplit=1, flags=re.I)[0]
        return head[:31] + ("<…>" if len(head) < len(text) or len(head) > 31 else "")
    return code.ki + ("<crypto>" if code.crypto else "")


def _redact_base64(text: str) -> str:
    if len(text) < 24 or len(text) % 4:
        return text
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return text
    redacted = _redact_code(decoded)
    return f"base64({redacted})" if redacted != decoded else text


def redact_value(value: Any, key: str = "") -> Any:
    """A JSON value with codes reduced to their КИ and secrets removed."""
    if key.lower() in SECRET_KEYS:
        return "<secret>"
    if isinstance(value, dict):
        return {k: redact_value(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, key) for v in value]
    if isinstance(value, str):
        return _redact_base64(_redact_code(value))
    return value


def redact_json_text(text: str | bytes) -> str:
    """A JSON body, redacted; a body that is not JSON is reduced to its length and a hint."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(text)} bytes, not UTF-8>"
    if not text:
        return ""
    try:
        data = json.loads(text)
        out = json.dumps(redact_value(data), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return f"<{len(text)} characters, not JSON>"
    except RecursionError:
        # A hostile body nested deeper than Python recurses: nothing of it is kept.
        return f"<{len(text)} characters, nested too deeply>"
    return out if len(out) <= MAX_BODY_CHARS else out[:MAX_BODY_CHARS] + "<…>"
