"""Scenarios for the check-service emulators, and the HTTP machinery that plays them.

A **scenario** says what the emulated services answer: per marking code (keyed by КИ, or
``"*"`` for every code) and per endpoint (latency, error statuses, malformed bodies, dropped
connections, black holes), plus the settings of each service (the CDN token and host list, the
Local Module's state, the ТС ПИоТ's protocol versions and JSON quirks). One scenario can drive
all three emulators at once — each reads its own section — so a Local Module and a CDN started
from the same file agree about which unit is blocked unless a section says otherwise.

The format (JSON or TOML file, or a Python dict; every key optional; unknown keys are errors
so a typo cannot silently do nothing)::

    {
      "description": "free text",
      "codes": {                                  # answers shared by every emulator
        "*": {"found": true},                     # defaults for every code
        "0104680029460908215jcmHzLmkdPML": {"isBlocked": true, "ogvs": ["FNS"]}
      },
      "cdn":          {"token": "…", "hosts": ["http://…"], "avg_time_ms": 25,
                       "codes": {…}, "endpoints": {…}},
      "local_module": {"state": "ready", "api_versions": [1, 2], "user": "admin", …,
                       "codes": {…}, "endpoints": {…}},
      "tspiot":       {"versions": [1, 2, 3], "offline_codes": […], "string_timestamps": false,
                       …, "codes": {…}, "endpoints": {…}}
    }

Per-code answers use the protocol's own field names (``found``, ``utilised``, ``verified``,
``realizable``, ``isBlocked``, ``sold``, ``expireDate``, ``mrp``, ``smp``, ``grayZone``,
``errorCode``, ``groupIds``… see :data:`CODE_FIELDS`). A section's ``codes`` override the shared
ones for that emulator only. Lookup order, later wins: shared ``"*"``, section ``"*"``, shared
entry of the code, section entry of the code; a code's entry is found by its КИ first, then by
the exact text sent.

``endpoints`` maps an endpoint name (``"codes/check"``, ``"cis/outCheck"``, ``"status"``,
``"info"``…; ``"v2/cis/outCheck"`` for one API version only; ``"*"`` for every endpoint of
the emulator; the most specific key wins) to a :class:`Behaviour`, or to a list of them played
one per request with the last one repeating::

    "codes/check": {"latency_ms": [20, 900]}          # cycles 20, 900, 20, …
    "codes/check": {"status": 500, "code": 5000}      # 5xx whose body has code 5000
    "codes/check": [{"status": 429}, {}]              # 429 once, then normal answers
    "status":      {"black_hole": true}               # accept, never answer

The machinery (:class:`EmulatorServer`) is shared by the emulators: a
:class:`~http.server.ThreadingHTTPServer` on 127.0.0.1 speaking HTTP/1.1 with keep-alive, each
answer written with one ``send`` and ``TCP_NODELAY`` set (a header write followed by a body write
would cost ~40 ms per request on loopback through Nagle's algorithm and delayed ACKs), optional
TLS with a self-signed certificate made at start, a request log, run-time scenario changes and
an admin endpoint (``/_emulator/…``, see :class:`EmulatorServer`).
"""

from __future__ import annotations

import atexit
import copy
import email.utils
import json
import select
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import typing
import urllib.parse
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self

from markd import validation
from markd.codes import GS, parse
from markd.errors import CodeError, MarkdError
from markd.validation import ANY, BOOLEAN, INTEGER, JSON, NUMBER, STRING, TABLE, Kind, array_of


class ScenarioError(MarkdError, ValueError):
    """A scenario file or dict is malformed; the message names the offending key."""

    reason = "bad-scenario"


class TLSUnavailableError(MarkdError, RuntimeError):
    """``tls=True`` was asked for but no certificate can be made (neither the ``cryptography``
    package nor the ``openssl`` command is available)."""

    reason = "tls-unavailable"


# --------------------------------------------------------------------------------------------
# Per-code answers

#: The per-code fields a scenario may set, with their JSON kind (domain.md §3.5 and §4.5).
CODE_FIELDS: dict[str, Kind] = {
    "cis": STRING,
    "valid": BOOLEAN,
    "printView": STRING,
    "gtin": STRING,
    "groupIds": array_of(INTEGER),
    "verified": BOOLEAN,
    "found": BOOLEAN,
    "realizable": BOOLEAN,
    "utilised": BOOLEAN,
    "isBlocked": BOOLEAN,
    "ogvs": array_of(STRING),
    "sold": BOOLEAN,
    "expireDate": STRING,
    "productionDate": STRING,
    "variableExpirations": ANY,
    "productWeight": NUMBER,
    "prVetDocument": STRING,
    "isOwner": BOOLEAN,
    "isTracking": BOOLEAN,
    "eliminationState": INTEGER,
    "mrp": INTEGER,
    "smp": INTEGER,
    "grayZone": BOOLEAN,
    "innerUnitCount": INTEGER,
    "soldUnitCount": INTEGER,
    "packageType": STRING,
    "parent": STRING,
    "producerInn": STRING,
    "productionSerialNumber": STRING,
    "productionBatchNumber": STRING,
    "factorySerialNumber": STRING,
    "packageQuantity": INTEGER,
    "message": STRING,
    "errorCode": INTEGER,
    "isGreyGtin": BOOLEAN,  # Local Module 2.x only (unconfirmed)
}

#: ``errorCode`` → ``message`` of the True API (domain.md §3.5), used when a scenario sets an
#: ``errorCode`` without a ``message``.
ERROR_MESSAGES: dict[int, str] = {
    1: "Ошибка валидации КМ",
    2: "КМ не содержит GTIN",
    3: "КМ не содержит серийный номер",
    4: "КМ содержит недопустимые символы",
    5: "Ошибка верификации крипто-подписи КМ (формат крипто-подписи не соответствует типу КМ)",
    6: "Ошибка верификации крипто-подписи КМ (крипто-подпись не валидная)",
    7: "Ошибка верификации крипто-подписи КМ (крипто-ключ не валиден)",
    8: "КМ не прошел верификацию в стране эмитента",
    9: "Найденные AI в КМ не поддерживаются",
    10: "КМ не найден в ГИС МТ",
    11: "КМ не найден в трансгране",
}

#: Fields an offline answer (Local Module, ТС ПИоТ from the LM) carries when the scenario
#: sets them, besides the always-present cis, isBlocked, sold, gtin, mrp and smp.
OFFLINE_OPTIONAL_FIELDS = ("isGreyGtin", "errorCode", "message")


@dataclass(frozen=True)
class CodeIdentity:
    """What the emulator derives from a code as sent: its КИ, GTIN, product groups, MRP."""

    ki: str
    gtin: str
    group_ids: tuple[int, ...]
    mrp: int
    valid: bool


def _guess_gtin(text: str) -> str:
    if text.startswith("01") and len(text) >= 16 and text[2:16].isdigit():
        return text[2:16]
    if len(text) >= 14 and text[:14].isdigit():
        return text[:14]
    return ""


def identify(text: str) -> CodeIdentity:
    """The КИ and facts of ``text`` (a full КМ with GS, or a bare КИ) by :func:`markd.codes.parse`.

    A text that does not parse as a full code (a bare КИ, garbage) keeps everything before the
    first GS as its КИ and is not ``valid``.
    """
    try:
        code = parse(text)
    except CodeError:
        ki = text.split(GS, 1)[0]
        return CodeIdentity(ki=ki, gtin=_guess_gtin(ki), group_ids=(), mrp=0, valid=False)
    groups = (code.group_id,) if code.group_id is not None else ()
    return CodeIdentity(code.ki, code.gtin, groups, code.mrp_kopecks or 0, True)


def online_code(scenario: Scenario, section: str, text: str) -> dict[str, Any]:
    """The per-code object of an online answer (True API ``codes/check``, domain.md §3.5).

    Defaults: a code that parses is found, utilised, verified, realizable, not blocked, not
    sold, ``errorCode`` 0; one that does not parse is ``valid: false`` with ``errorCode`` 1.
    ``expireDate`` and the other optional fields appear only when the scenario sets them.
    """
    ident = identify(text)
    answer: dict[str, Any] = {
        "cis": text,
        "valid": ident.valid,
        "printView": ident.ki,
        "gtin": ident.gtin,
        "groupIds": list(ident.group_ids),
        "verified": ident.valid,
        "found": ident.valid,
        "realizable": ident.valid,
        "utilised": ident.valid,
        "isBlocked": False,
        "sold": False,
        "mrp": ident.mrp,
        "smp": 0,
        "grayZone": False,
        "packageType": "UNIT",
        "errorCode": 0 if ident.valid else 1,
    }
    if not ident.valid:
        answer["message"] = ERROR_MESSAGES[1]
    overrides = scenario.answer_for(section, ident.ki, text)
    answer.update(copy.deepcopy(overrides))
    if "message" not in overrides:
        error_code = answer.get("errorCode") or 0
        if error_code:
            answer["message"] = ERROR_MESSAGES.get(error_code, "Ошибка")
        else:
            answer.pop("message", None)
    return answer


def offline_code(
    scenario: Scenario, section: str, text: str, *, sold: bool = False
) -> dict[str, Any]:
    """The per-code object of an offline answer (Local Module ``outCheck``, domain.md §4.5):
    only ``cis``, ``isBlocked``, ``sold``, ``gtin``, ``mrp``, ``smp`` (and ``isGreyGtin``,
    ``errorCode``, ``message`` when the scenario sets them). ``sold`` is also true when the
    caller says so (the Local Module's own sold-codes database)."""
    ident = identify(text)
    overrides = scenario.answer_for(section, ident.ki, text)
    answer: dict[str, Any] = {
        "cis": text,
        "isBlocked": bool(overrides.get("isBlocked", False)),
        "sold": bool(overrides.get("sold", False)) or sold,
        "gtin": overrides.get("gtin", ident.gtin),
        "mrp": overrides.get("mrp", ident.mrp),
        "smp": overrides.get("smp", 0),
    }
    for name in OFFLINE_OPTIONAL_FIELDS:
        if name in overrides:
            answer[name] = overrides[name]
    return answer


# --------------------------------------------------------------------------------------------
# The scenario model

_DEFAULT_MALFORMED = '{"code": 0, "description": "ok", "codes": [{"cis": '


@dataclass(frozen=True)
class Behaviour:
    """How one endpoint behaves for one request. All keys are optional; an empty behaviour
    (``{}``) answers normally.

    ``latency_ms``
        wait this long before answering (a number, or a list cycled one entry per request);
        combines with every other key.
    ``status``
        answer with this HTTP status and the emulator's error body for it (CDN and Local
        Module ``{"code", "description"}``, ТС ПИоТ ``{"error": {"errorCode",
        "errorDescription"}}``); with ``code``/``body``/``malformed``/``emergency`` it sets
        their status instead of the default.
    ``code`` / ``description``
        the error body's code and text (``{"status": 500, "code": 5000}``: a 5xx whose body
        has code 5000). Without ``status`` the HTTP status is 200.
    ``body``
        answer with exactly this JSON value (status 200 unless ``status``).
    ``malformed``
        answer with a body that is not valid JSON (``true``: a truncated answer; a string: that
        exact text), status 200 unless ``status``.
    ``emergency``
        the emergency answer ``{"code": 203, "message": description, "details": []}``
        (domain.md §3.6, §5.5), HTTP status 203 unless ``status``.
    ``drop``
        read the request, then close the connection without a byte (the client sees
        ``RemoteDisconnected``).
    ``reset``
        read the request, then reset the connection (RST: ``ConnectionResetError``).
    ``black_hole``
        read the request and never answer: the connection stays open until the client gives
        up (its timeout) or the emulator stops.
    """

    latency_ms: tuple[float, ...] = ()
    status: int | None = None
    code: int | None = None
    description: str | None = None
    body: Any = None
    malformed: str | None = None
    emergency: bool = False
    drop: bool = False
    reset: bool = False
    black_hole: bool = False

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Behaviour:
        data = _mapping(data, where)
        _check_keys(data, {f.name for f in fields(cls)}, where)
        kwargs: dict[str, Any] = {}
        if "latency_ms" in data:
            latency = data["latency_ms"]
            values = latency if isinstance(latency, list) else [latency]
            if not values or not all(validation.is_number(v) and v >= 0 for v in values):
                raise ScenarioError(
                    f"{where}.latency_ms: expected a number ≥ 0 or a non-empty list of them"
                )
            kwargs["latency_ms"] = tuple(float(v) for v in values)
        if "status" in data:
            status = data["status"]
            if not validation.is_integer(status) or not 100 <= status <= 599:
                raise ScenarioError(f"{where}.status: expected an HTTP status 100..599")
            kwargs["status"] = status
        if "code" in data:
            kwargs["code"] = _checked(data["code"], INTEGER, f"{where}.code")
        if "description" in data:
            kwargs["description"] = _checked(data["description"], STRING, f"{where}.description")
        if "body" in data:
            kwargs["body"] = copy.deepcopy(data["body"])
        if "malformed" in data:
            malformed = data["malformed"]
            if malformed is True:
                kwargs["malformed"] = _DEFAULT_MALFORMED
            elif isinstance(malformed, str):
                kwargs["malformed"] = malformed
            elif malformed is not False:
                raise ScenarioError(f"{where}.malformed: expected true, false or a text")
        for name in ("emergency", "drop", "reset", "black_hole"):
            if name in data:
                kwargs[name] = _checked(data[name], BOOLEAN, f"{where}.{name}")
        behaviour = cls(**kwargs)
        behaviour._check(where)
        return behaviour

    def _check(self, where: str) -> None:
        kinds = [
            name
            for name, present in (
                ("body", self.body is not None),
                ("code", self.code is not None or (self.description and not self.emergency)),
                ("malformed", self.malformed is not None),
                ("emergency", self.emergency),
                ("drop", self.drop),
                ("reset", self.reset),
                ("black_hole", self.black_hole),
            )
            if present
        ]
        if len(kinds) > 1:
            raise ScenarioError(f"{where}: {' and '.join(kinds)} exclude each other")
        if self.status is not None and kinds and kinds[0] in ("drop", "reset", "black_hole"):
            raise ScenarioError(f"{where}: status makes no sense with {kinds[0]}")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.latency_ms:
            data["latency_ms"] = (
                self.latency_ms[0] if len(self.latency_ms) == 1 else list(self.latency_ms)
            )
        for name in ("status", "code", "description"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.body is not None:
            data["body"] = copy.deepcopy(self.body)
        if self.malformed is not None:
            data["malformed"] = True if self.malformed == _DEFAULT_MALFORMED else self.malformed
        for name in ("emergency", "drop", "reset", "black_hole"):
            if getattr(self, name):
                data[name] = True
        return data

    def latency_for(self, index: int) -> float:
        """The latency in ms of the ``index``-th request (0-based) to this endpoint."""
        if not self.latency_ms:
            return 0.0
        return self.latency_ms[index % len(self.latency_ms)]


#: Endpoint name → the behaviours played one per request (the last one repeats).
Endpoints = Mapping[str, tuple[Behaviour, ...]]
#: Code key (КИ, code text or "*") → field overrides.
CodeAnswers = Mapping[str, Mapping[str, Any]]


def _setting(default: Any = None, **limits: Any) -> Any:
    """A settings field. Its type hint is the kind of value it takes
    (:func:`markd.validation.kind_of`); ``limits`` are the validator's (``choices``, ``min``,
    ``max``, ``min_length``, ``check``). ``codes`` and ``endpoints`` have readers of their own
    (:func:`_settings`)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=limits)
    return field(default=default, metadata=limits)


def _error_status_problem(status: int) -> str | None:
    return None if 400 <= status <= 599 else "expected an error status 400..599"


@dataclass(frozen=True)
class CdnSettings:
    """Section ``cdn`` (:mod:`markd.emulators.crpt_cdn`).

    ``token``: the only ``X-API-KEY`` accepted (None: any non-empty one). ``hosts``: base URLs
    the list service's ``cdn/info`` names (None: the hosts started with it; ``[]``: an empty
    list). ``refusal_status``: the status a list service gives to a host's endpoint and a host
    to ``cdn/info`` (the real status is unknown). ``avg_time_ms``: ``avgTimeMs`` of the health
    check. ``max_codes``: larger ``codes/check`` batches get 400.
    ``require_fiscal_drive_number``: a ``codes/check`` without ``fiscalDriveNumber`` gets 400
    (whether the real service demands it is unconfirmed).
    """

    token: str | None = _setting()
    hosts: tuple[str, ...] | None = _setting()
    refusal_status: int = _setting(404, check=_error_status_problem)
    avg_time_ms: int = _setting(25)
    max_codes: int = _setting(100)
    require_fiscal_drive_number: bool = _setting(False)
    codes: CodeAnswers = _setting({})
    endpoints: Endpoints = _setting({})


#: Local Module states (domain.md §4.6).
LM_STATES = ("ready", "initialization", "not_configured", "sync_error")


@dataclass(frozen=True)
class LocalModuleSettings:
    """Section ``local_module`` (:mod:`markd.emulators.local_module`).

    ``state``: one of :data:`LM_STATES`; anything but ``ready`` makes ``outCheck`` answer HTTP
    400 with ``errorCode`` 4045 (``not_configured``, ``initialization``) or 4050
    (``sync_error``). ``state_after_init``: the state ``POST /init`` switches to.
    ``api_versions``: the API versions served (others answer 404). ``user``/``password``: HTTP
    Basic credentials (None user: no authentication). ``last_sync``: ``lastSync`` in Unix ms;
    None: ``last_sync_age_s`` seconds before each status request. ``status_extra``: merged into
    the status body as is.
    """

    state: str = _setting("ready", choices=LM_STATES)
    state_after_init: str = _setting("ready", choices=LM_STATES)
    api_versions: tuple[int, ...] = _setting((1, 2))
    version: str = _setting("2.6.0")
    inst: str = _setting("6f1c3a52-4f6e-4a8e-9d1b-0c2d5e7f9a10")
    name: str = _setting("markd local module emulator")
    inn: str = _setting("7700000000")
    user: str | None = _setting("admin")
    password: str = _setting("admin")
    last_sync: int | None = _setting()
    last_sync_age_s: float = _setting(60.0)
    operation_mode: str = _setting("active")
    status_extra: Mapping[str, Any] = _setting({})
    codes: CodeAnswers = _setting({})
    endpoints: Endpoints = _setting({})


@dataclass(frozen=True)
class TspiotSettings:
    """Section ``tspiot`` (:mod:`markd.emulators.tspiot`).

    ``versions``: the API versions served (others answer 404). ``tspiot_id``, ``kkt_serial``,
    ``fn_serial``, ``kkt_inn``, ``codes_check_timeout`` (ms), ``lm`` (merged into the ``lm``
    object of ``/info``): what ``/info`` reports; ``id_key`` names the identifier's key
    (``tspiotId``; the protobuf mapping of ``imc_checker.proto`` would give ``TsPiotId``).
    ``token``: the only ``client_info.token`` accepted (None: any).
    ``offline_codes``: КИ (or code texts) answered offline (``isCheckedOffline: true``);
    ``offline_first_checks``: the first N checks after start (or :meth:`reset_warmup`) are
    answered offline, like ESP's ТС ПИоТ before its channel is up (domain.md §5.6). ``inst``,
    ``lm_version``: ``inst``/``version`` of offline answers. Protobuf-JSON quirks (§5.4):
    ``string_timestamps`` (``reqTimestamp`` as a JSON string), ``omit_defaults`` (false, 0,
    "" and [] left out), ``desctiption`` (the schema's spelling of ``description``).
    """

    versions: tuple[int, ...] = _setting((1, 2, 3))
    tspiot_id: str = _setting("c0ffee00-0000-4000-8000-000000000001")
    id_key: str = _setting("tspiotId")
    kkt_serial: str = _setting("00106700000001")
    fn_serial: str = _setting("7380440700000001")
    kkt_inn: str = _setting("7700000000")
    codes_check_timeout: int = _setting(2000)
    lm: Mapping[str, Any] = _setting({})
    token: str | None = _setting()
    inst: str = _setting("6f1c3a52-4f6e-4a8e-9d1b-0c2d5e7f9a10")
    lm_version: str = _setting("2.6.0")
    offline_codes: tuple[str, ...] = _setting(())
    offline_first_checks: int = _setting(0)
    string_timestamps: bool = _setting(False)
    omit_defaults: bool = _setting(False)
    desctiption: bool = _setting(False)
    codes: CodeAnswers = _setting({})
    endpoints: Endpoints = _setting({})


_SECTIONS: dict[str, type] = {
    "cdn": CdnSettings,
    "local_module": LocalModuleSettings,
    "tspiot": TspiotSettings,
}


@dataclass(frozen=True)
class Scenario:
    """What the emulators answer. Immutable: change one through an emulator's methods
    (:meth:`EmulatorServer.set_scenario`, :meth:`~EmulatorServer.patch_scenario`, …), which
    swap in a new scenario between requests."""

    description: str = ""
    codes: CodeAnswers = field(default_factory=dict)
    cdn: CdnSettings = field(default_factory=CdnSettings)
    local_module: LocalModuleSettings = field(default_factory=LocalModuleSettings)
    tspiot: TspiotSettings = field(default_factory=TspiotSettings)

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "scenario") -> Scenario:
        data = _mapping(data, where)
        _check_keys(data, {"description", "codes", *_SECTIONS}, where)
        kwargs: dict[str, Any] = {}
        if "description" in data:
            kwargs["description"] = _checked(data["description"], STRING, f"{where}.description")
        if "codes" in data:
            kwargs["codes"] = _code_answers(data["codes"], f"{where}.codes")
        for name, settings_class in _SECTIONS.items():
            if name in data:
                kwargs[name] = _settings(settings_class, data[name], f"{where}.{name}")
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a ``.json`` or ``.toml`` scenario file."""
        path = Path(path)
        try:
            if path.suffix == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".toml":
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            else:
                raise ScenarioError(f"{path}: a scenario file ends in .json or .toml")
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
        return cls.from_dict(data, where=str(path))

    @classmethod
    def coerce(cls, value: Scenario | Mapping[str, Any] | str | Path | None) -> Scenario:
        """A scenario from a :class:`Scenario`, a dict, a file path, or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, Scenario):
            return value
        if isinstance(value, str | Path):
            return cls.load(value)
        return cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        """The scenario as a JSON-ready dict; :meth:`from_dict` reads it back unchanged."""
        data: dict[str, Any] = {}
        if self.description:
            data["description"] = self.description
        data["codes"] = copy.deepcopy({k: dict(v) for k, v in self.codes.items()})
        for name in _SECTIONS:
            data[name] = _settings_to_dict(getattr(self, name))
        return data

    def merged(self, patch: Mapping[str, Any]) -> Scenario:
        """A new scenario: ``patch`` merged into this one. Nested dicts merge key by key, other
        values replace, ``None`` removes a key (back to its default); an endpoint's behaviour
        is replaced whole."""
        data = self.to_dict()
        _deep_merge(data, _mapping(patch, "patch"), ())
        return Scenario.from_dict(data)

    # -- reading --------------------------------------------------------------------------------

    def section(self, name: str) -> Any:
        """The settings of one emulator: ``cdn``, ``local_module`` or ``tspiot``."""
        return getattr(self, name)

    def answer_for(self, section: str, *keys: str) -> dict[str, Any]:
        """The field overrides for a code known by ``keys`` (its КИ, then the text sent)."""
        layers = (self.codes, self.section(section).codes)
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update(layer.get("*", {}))
        for layer in layers:
            for key in keys:
                if key in layer:
                    merged.update(layer[key])
                    break
        return merged


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not TABLE.accepts(value):
        raise ScenarioError(f"{where}: expected {JSON.expected(TABLE)}, got {type(value).__name__}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: Collection[str], where: str) -> None:
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}"
        )


def _checked(value: Any, kind: Kind, where: str, limits: Mapping[str, Any] | None = None) -> Any:
    """``value``, when it is a valid ``kind`` under ``limits`` (markd's one validator,
    :mod:`markd.validation`, in its JSON wording); else a :class:`ScenarioError` naming
    ``where``."""
    for problem in validation.problems(value, kind, limits, JSON):
        raise ScenarioError(f"{where}: {problem}")
    return value


def _code_answers(value: Any, where: str) -> dict[str, dict[str, Any]]:
    answers: dict[str, dict[str, Any]] = {}
    for key, overrides in _mapping(value, where).items():
        here = f"{where}[{key!r}]"
        overrides = _mapping(overrides, here)
        _check_keys(overrides, CODE_FIELDS, here)
        for name, field_value in overrides.items():
            _checked(field_value, CODE_FIELDS[name], f"{here}.{name}")
        answers[str(key)] = copy.deepcopy(dict(overrides))
    return answers


def _endpoints(value: Any, where: str) -> dict[str, tuple[Behaviour, ...]]:
    result: dict[str, tuple[Behaviour, ...]] = {}
    for name, steps in _mapping(value, where).items():
        here = f"{where}[{name!r}]"
        if isinstance(steps, list | tuple):
            if not steps:
                raise ScenarioError(f"{here}: an empty list of behaviours")
            result[name] = tuple(
                Behaviour.from_dict(step, f"{here}[{i}]") for i, step in enumerate(steps)
            )
        else:
            result[name] = (Behaviour.from_dict(steps, here),)
    return result


def _settings(cls: type, value: Any, where: str) -> Any:
    """Read one emulator's section into its settings dataclass: each field's type hint is
    its kind, its metadata its limits; ``codes`` and ``endpoints`` have readers of their own."""
    data = _mapping(value, where)
    known = {f.name: f for f in fields(cls)}
    _check_keys(data, known, where)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, raw in data.items():
        here = f"{where}.{name}"
        if name == "codes":
            kwargs[name] = _code_answers(raw, here)
        elif name == "endpoints":
            kwargs[name] = _endpoints(raw, here)
        else:
            kind = validation.kind_of(hints[name])
            checked = _checked(raw, kind, here, known[name].metadata)
            if kind.item is not None and checked is not None:
                checked = tuple(checked)  # settings are immutable: no list to change later
            elif kind is TABLE:
                checked = copy.deepcopy(dict(checked))
            elif kind is NUMBER:
                checked = float(checked)
            kwargs[name] = checked
    return cls(**kwargs)


def _settings_to_dict(settings: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "endpoints":
            data[f.name] = {
                name: steps[0].to_dict() if len(steps) == 1 else [s.to_dict() for s in steps]
                for name, steps in value.items()
            }
        elif isinstance(value, tuple):
            data[f.name] = list(value)
        elif isinstance(value, Mapping):
            data[f.name] = copy.deepcopy(dict(value))
        else:
            data[f.name] = value
    return data


def _deep_merge(base: dict[str, Any], patch: Mapping[str, Any], path: tuple[str, ...]) -> None:
    """Merge ``patch`` into ``base`` in place (see :meth:`Scenario.merged`)."""
    replace_whole = len(path) == 2 and path[1] == "endpoints"  # a section's endpoint entries
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping):
            current = base.get(key)
            merged = dict(current) if isinstance(current, Mapping) and not replace_whole else {}
            _deep_merge(merged, value, (*path, key))  # also drops the Nones of a new entry
            base[key] = merged
        else:
            base[key] = copy.deepcopy(value)


# --------------------------------------------------------------------------------------------
# TLS


_CERTIFICATE_LOCK = threading.Lock()
_CERTIFICATE: tuple[Path, Path] | None = None


def self_signed_certificate() -> tuple[Path, Path]:
    """``(certificate, key)``: PEM files of a self-signed certificate for ``localhost``,
    ``127.0.0.1`` and ``::1``, made once per process in a temporary directory (removed at
    exit). Uses the ``cryptography`` package when installed, else the ``openssl`` command;
    raises :class:`TLSUnavailableError` when neither is there."""
    global _CERTIFICATE
    with _CERTIFICATE_LOCK:
        if _CERTIFICATE is not None and all(p.exists() for p in _CERTIFICATE):
            return _CERTIFICATE
        directory = Path(tempfile.mkdtemp(prefix="markd-emulator-tls-"))
        atexit.register(shutil.rmtree, directory, True)
        cert, key = directory / "cert.pem", directory / "key.pem"
        try:
            import cryptography  # noqa: F401 - only probing for the package
        except ImportError:
            _certificate_with_openssl(cert, key)
        else:
            _certificate_with_cryptography(cert, key)
        _CERTIFICATE = (cert, key)
        return _CERTIFICATE


def _certificate_with_openssl(cert: Path, key: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TLSUnavailableError(
            "tls needs a self-signed certificate: install the Python package 'cryptography' "
            "or the 'openssl' command"
        )
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "30",
        "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
        "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TLSUnavailableError(f"openssl could not make a certificate: {exc}") from exc
    if done.returncode != 0:
        raise TLSUnavailableError(f"openssl could not make a certificate: {done.stderr.strip()}")


def _certificate_with_cryptography(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


# --------------------------------------------------------------------------------------------
# The request log


@dataclass
class RequestRecord:
    """One request as an emulator saw it. It is logged as soon as the request is read, before
    any latency or fault, and ``status``/``outcome`` are filled in before the answer goes out:
    a client that has its answer can rely on the log being complete.

    ``outcome``: ``pending`` (latency running, or a black hole), ``answered``, ``malformed``,
    ``dropped``, ``reset``, ``black-hole``.
    """

    time: float  # Unix seconds when the request was read
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # as sent (names in their original case)
    body: bytes
    json: Any = None  # the parsed body (None: empty or not JSON)
    endpoint: str | None = None  # "codes/check", "cis/outCheck", …; None: unknown path
    version: int | None = None  # API version from the path (Local Module, ТС ПИоТ)
    status: int | None = None
    outcome: str = "pending"

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    @property
    def api_key(self) -> str | None:
        return self.header("X-API-KEY")

    @property
    def authorization(self) -> str | None:
        return self.header("Authorization")

    @property
    def client_id(self) -> str | None:
        return self.header("X-ClientId")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "endpoint": self.endpoint,
            "version": self.version,
            "headers": self.headers,
            "status": self.status,
            "outcome": self.outcome,
        }
        if self.json is not None:
            data["json"] = self.json
        elif self.body:
            data["body"] = self.body.decode("utf-8", "replace")
        return data


# --------------------------------------------------------------------------------------------
# The server


@dataclass
class Request:
    """What an endpoint handler gets: the request and the scenario it is answered from."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]  # email.message.Message: case-insensitive get()
    body: bytes
    json: Any
    json_error: str | None  # why the body is not JSON (None: it is, or it is empty)
    version: int | None
    scenario: Scenario

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Reply:
    """An answer: a JSON value (or raw bytes) with its status and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.body is None:
            return b""
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Route:
    """An endpoint matched by path: its name, the API version in the path, the methods it
    takes and the handler that answers it."""

    endpoint: str
    version: int | None
    methods: tuple[str, ...]
    handler: Callable[[Request], Reply]


class EmulatorServer:
    """Base of the emulators: serves ``route()``'d endpoints on ``host:port`` (port 0: any free
    one) from a background thread, plays the scenario's faults and logs every request.

    Use as a context manager, or :meth:`start` and :meth:`close`. Subclasses set ``name`` and
    ``section`` and implement :meth:`route` (and may override :meth:`error_body`,
    :meth:`emergency_body` and :meth:`reset_state`).

    ``tls=True`` serves HTTPS with a self-signed certificate (:func:`self_signed_certificate`;
    its path is :attr:`certificate_path`, for clients that pin it), or with ``certificate``
    (a ``(certificate, key)`` pair of PEM files) when given. ``admin=True`` serves the
    admin endpoint, which is never logged and never faulted:

    * ``GET /_emulator/scenario`` → the scenario; ``POST`` replaces it, ``PATCH`` merges into it
      (:meth:`Scenario.merged`); both answer ``{"ok": true}`` or 400 ``{"error": …}``;
    * ``GET /_emulator/requests`` → the request log; ``DELETE`` clears it;
    * ``POST /_emulator/reset`` → clears the log, the fault sequences and the emulator's state
      (the Local Module's sold codes, the ТС ПИоТ's warm-up).

    ``verbose=True`` prints each request as one JSON line on stderr.
    """

    name: ClassVar[str] = "emulator"
    section: ClassVar[str] = ""

    def __init__(
        self,
        scenario: Scenario | Mapping[str, Any] | str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        admin: bool = True,
        verbose: bool = False,
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        self._lock = threading.Condition(threading.RLock())
        self._scenario = Scenario.coerce(scenario)
        self._requests: list[RequestRecord] = []
        self._steps_taken: dict[str, int] = {}
        self._stopping = threading.Event()
        self.admin = admin
        self.verbose = verbose
        self.tls = tls
        self.certificate_path: Path | None = None
        self._httpd = _HTTPServer((host, port), self)
        if tls:
            try:
                cert, key = certificate or self_signed_certificate()
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(cert, key)
            except BaseException:
                self._httpd.server_close()
                raise
            self.certificate_path = cert
            # The handshake runs in the connection's own thread (see _Handler.setup), so a
            # client that stalls in it cannot block accept().
            self._httpd.socket = context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` with TLS; no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> Self:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._httpd.serve_until_stopped,
                name=f"{self.name}-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close every connection, black-holed ones included."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.stop()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections(timeout=2.0)
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the scenario ---------------------------------------------------------------------------

    @property
    def scenario(self) -> Scenario:
        with self._lock:
            return self._scenario

    def set_scenario(self, scenario: Scenario | Mapping[str, Any] | str | Path | None) -> None:
        """Replace the scenario from the next request on; fault lists start again from their
        first step."""
        self._replace(Scenario.coerce(scenario), restart_faults=True)

    def patch_scenario(self, patch: Mapping[str, Any]) -> None:
        """Merge ``patch`` into the scenario (:meth:`Scenario.merged`). Fault lists start
        again only when the patch changes this emulator's endpoints."""
        with self._lock:
            self._replace(self._scenario.merged(patch), restart_faults=False)

    def _replace(self, new: Scenario, *, restart_faults: bool) -> None:
        with self._lock:
            old_endpoints = self._scenario.section(self.section).endpoints
            self._scenario = new
            if restart_faults or new.section(self.section).endpoints != old_endpoints:
                self._steps_taken.clear()

    def configure(self, **settings: Any) -> None:
        """Change this emulator's section: ``cdn.configure(token="…")``,
        ``lm.configure(state="sync_error")``, ``tspiot.configure(versions=[1])``."""
        self.patch_scenario({self.section: settings})

    def set_code(self, key: str, **fields: Any) -> None:
        """Merge field overrides into the shared answer for a code (КИ, code text or ``"*"``):
        ``server.set_code(ki, isBlocked=True)``; a field set to None is removed."""
        self.patch_scenario({"codes": {key: fields}})

    def set_fault(
        self,
        endpoint: str,
        steps: Behaviour | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        **behaviour: Any,
    ) -> None:
        """Set how ``endpoint`` behaves: ``set_fault("codes/check", status=500, code=5000)``,
        ``set_fault("status", black_hole=True)``, ``set_fault("codes/check", [{"status":
        429}, {}])``. ``set_fault(endpoint)`` with nothing else restores normal answers."""
        if isinstance(steps, Behaviour):
            value: Any = steps.to_dict()
        elif steps is not None:
            value = steps if isinstance(steps, Mapping) else list(steps)
            if behaviour:
                raise TypeError("set_fault takes steps or keyword arguments, not both")
        else:
            value = behaviour or None
        with self._lock:
            patch = {self.section: {"endpoints": {endpoint: value}}}
            self._replace(self._scenario.merged(patch), restart_faults=True)

    def clear_faults(self) -> None:
        """Every endpoint answers normally again (latencies included)."""
        with self._lock:
            data = self._scenario.to_dict()
            data[self.section]["endpoints"] = {}
            self.set_scenario(data)

    def reset_state(self) -> None:
        """Forget what the emulated service accumulated (subclasses extend this)."""

    # -- the request log ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request so far, oldest first (admin requests excluded)."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, endpoint: str) -> list[RequestRecord]:
        """The requests to ``endpoint`` (``"codes/check"``; ``"v2/cis/outCheck"`` for one
        version only), oldest first."""
        return [r for r in self.requests if _endpoint_matches(r, endpoint)]

    def count(self, endpoint: str | None = None) -> int:
        """How many requests reached ``endpoint`` (None: any)."""
        return len(self.requests if endpoint is None else self.requests_for(endpoint))

    def last(self, endpoint: str | None = None) -> RequestRecord:
        """The latest request (to ``endpoint``); IndexError when there is none."""
        found = self.requests if endpoint is None else self.requests_for(endpoint)
        return found[-1]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for_requests(
        self, count: int, endpoint: str | None = None, timeout: float = 5.0
    ) -> list[RequestRecord]:
        """Block until at least ``count`` requests (to ``endpoint``) are logged; TimeoutError
        after ``timeout`` seconds. For requests whose client never gets an answer."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = self.requests if endpoint is None else self.requests_for(endpoint)
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.name}: {len(found)} of {count} requests to "
                        f"{endpoint or 'any endpoint'} after {timeout} s"
                    )
                self._lock.wait(remaining)

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)
            self._lock.notify_all()

    # -- what subclasses provide ----------------------------------------------------------------

    def route(self, method: str, path: str) -> Route | None:
        """The endpoint serving ``path`` (None: 404)."""
        raise NotImplementedError

    def error_body(self, status: int, code: int | None, description: str | None) -> Any:
        """The body of an error answer (overridden by the ТС ПИоТ)."""
        return {
            "code": status if code is None else code,
            "description": description or _phrase(status),
        }

    def emergency_body(self, description: str | None) -> Any:
        """The emergency answer (domain.md §3.6, §5.5)."""
        return {"code": 203, "message": description or "Аварийный режим", "details": []}

    def error(self, status: int, description: str | None = None, code: int | None = None) -> Reply:
        return Reply(status, self.error_body(status, code, description))

    # -- playing a request (called from the connection threads) ---------------------------------

    def _next_step(self, scenario: Scenario, route: Route) -> tuple[Behaviour, float]:
        endpoints = scenario.section(self.section).endpoints
        keys = [route.endpoint, "*"]
        if route.version is not None:
            keys.insert(0, f"v{route.version}/{route.endpoint}")
        for key in keys:
            if key in endpoints:
                steps = endpoints[key]
                with self._lock:
                    index = self._steps_taken.get(key, 0)
                    self._steps_taken[key] = index + 1
                step = steps[min(index, len(steps) - 1)]
                return step, step.latency_for(index)
        return Behaviour(), 0.0

    def _fault_reply(self, step: Behaviour) -> Reply | None:
        if step.malformed is not None:
            return Reply(step.status or 200, step.malformed.encode())
        if step.emergency:
            return Reply(step.status or 203, self.emergency_body(step.description))
        if step.body is not None:
            return Reply(step.status or 200, copy.deepcopy(step.body))
        if step.code is not None or step.description is not None:
            status = step.status or 200
            return Reply(status, self.error_body(status, step.code, step.description))
        if step.status is not None:
            return Reply(step.status, self.error_body(step.status, None, None))
        return None

    def _admin(self, method: str, path: str, body: bytes) -> Reply:
        try:
            payload = json.loads(body) if body else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return Reply(400, {"error": f"body is not JSON: {exc}"})
        try:
            if path == "/_emulator/scenario":
                if method == "GET":
                    return Reply(200, self.scenario.to_dict())
                if method == "POST":
                    self.set_scenario(_mapping(payload, "scenario"))
                    return Reply(200, {"ok": True})
                if method == "PATCH":
                    self.patch_scenario(_mapping(payload, "patch"))
                    return Reply(200, {"ok": True})
            elif path == "/_emulator/requests":
                if method == "GET":
                    return Reply(200, [r.to_dict() for r in self.requests])
                if method == "DELETE":
                    self.clear_requests()
                    return Reply(200, {"ok": True})
            elif path == "/_emulator/reset" and method == "POST":
                self.clear_requests()
                self.reset_state()
                with self._lock:
                    self._steps_taken.clear()
                return Reply(200, {"ok": True})
            else:
                return Reply(404, {"error": f"no admin endpoint {path}"})
        except ScenarioError as exc:
            return Reply(400, {"error": str(exc)})
        return Reply(405, {"error": f"{method} not allowed on {path}"})


def _endpoint_matches(record: RequestRecord, endpoint: str) -> bool:
    if record.endpoint is None:
        return False
    if endpoint == record.endpoint:
        return True
    return record.version is not None and endpoint == f"v{record.version}/{record.endpoint}"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection; connections are tracked so :meth:`close_connections` can end
    keep-alive and black-holed ones (the stock server would wait for them forever)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], emulator: EmulatorServer) -> None:
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.connections_done = threading.Condition(self.connections_lock)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self._wake_reader, self._wake_writer = socket.socketpair()

    def serve_until_stopped(self) -> None:
        """Like ``serve_forever()``, but :meth:`stop` ends it at once rather than at the next
        poll, so a test's teardown does not wait (tests start and stop dozens of these)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                events = selector.select()
                if any(key.fileobj is self._wake_reader for key, _ in events):
                    return
                self._handle_request_noblock()

    def stop(self) -> None:
        self._wake_writer.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self.connections_lock:
                self.connections.discard(request)
                self.connections_done.notify_all()

    def close_connections(self, timeout: float) -> None:
        with self.connections_lock:
            for connection in list(self.connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.connections_done.wait_for(lambda: not self.connections, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, OSError | ssl.SSLError):
            return  # a client went away or refused the certificate: normal for tests
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10)
            self.connection.do_handshake()
            self.connection.settimeout(None)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        pass  # the emulator logs requests itself (RequestRecord; verbose: JSON on stderr)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET  # noqa: N815

    # -- reading --------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        emulator = self.server.emulator
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(Reply(400, {"error": "bad Content-Length or chunked body"}))
            return
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        if emulator.admin and path.startswith("/_emulator/"):
            self._send(emulator._admin(self.command, path, body))
            return
        parsed: Any = None
        json_error: str | None = None
        if body:
            try:
                parsed = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                json_error = str(exc)
        route = emulator.route(self.command, path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        record = RequestRecord(
            time=time.time(),
            method=self.command,
            path=path,
            query=query,
            headers=dict(self.headers.items()),
            body=body,
            json=parsed,
            endpoint=route.endpoint if route else None,
            version=route.version if route else None,
        )
        emulator._log(record)
        if route is None:
            self._answer(record, Reply(404, b"Not Found", content_type="text/plain"))
            return
        scenario = emulator.scenario  # one snapshot answers the whole request
        step, latency_ms = emulator._next_step(scenario, route)
        if latency_ms and emulator._stopping.wait(latency_ms / 1000):
            self._drop(record, "dropped")  # stopping while the answer was "on its way"
            return
        if step.black_hole:
            self._hold(record)
            return
        if step.drop or step.reset:
            self._drop(record, "reset" if step.reset else "dropped")
            return
        reply = emulator._fault_reply(step)
        if reply is None:
            if self.command not in route.methods:
                reply = emulator.error(405, f"{self.command} not allowed")
                reply.headers["Allow"] = ", ".join(route.methods)
            else:
                request = Request(
                    method=self.command,
                    path=path,
                    query=query,
                    headers=self.headers,  # type: ignore[arg-type] - Message is a Mapping here
                    body=body,
                    json=parsed,
                    json_error=json_error,
                    version=route.version,
                    scenario=scenario,
                )
                reply = route.handler(request)
        outcome = "malformed" if step.malformed is not None else "answered"
        self._answer(record, reply, outcome)

    # -- answering ------------------------------------------------------------------------------

    def _answer(self, record: RequestRecord, reply: Reply, outcome: str = "answered") -> None:
        record.status = reply.status
        record.outcome = outcome
        self._verbose(record)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        """Status line, headers and body in one write: with TCP_NODELAY, one segment."""
        payload = reply.encode()
        lines = [
            f"HTTP/1.1 {reply.status} {_phrase(reply.status)}",
            f"Server: markd-emulator-{self.server.emulator.name}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
        ]
        if payload or reply.status not in (204, 304):
            lines.append(f"Content-Type: {reply.content_type}")
            lines.append(f"Content-Length: {len(payload)}")
        lines.extend(f"{name}: {value}" for name, value in reply.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command == "HEAD":
            payload = b""
        try:
            self.wfile.write(head + payload)
        except OSError:
            self.close_connection = True

    def _drop(self, record: RequestRecord, outcome: str) -> None:
        record.outcome = outcome
        self._verbose(record)
        self.close_connection = True
        try:
            if outcome == "reset":
                # Linger 0: close() sends RST instead of FIN. Close now: socketserver would
                # shut the write side down first, and that FIN would reach the client first.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.rfile.close()  # its reference would keep the descriptor open
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _hold(self, record: RequestRecord) -> None:
        """The black hole: keep the connection, answer nothing, until the client gives up."""
        record.outcome = "black-hole"
        self._verbose(record)
        self.close_connection = True
        stopping = self.server.emulator._stopping
        while not stopping.is_set():
            try:
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable and not self.connection.recv(65536):
                    return  # the client closed its end
            except (OSError, ValueError):
                return

    def _verbose(self, record: RequestRecord) -> None:
        if self.server.emulator.verbose:
            print(json.dumps(record.to_dict(), ensure_ascii=False), file=sys.stderr, flush=True)


def new_request_id() -> str:
    """A ``reqId``: a random UUID, as the services send."""
    return str(uuid.uuid4())


def now_ms() -> int:
    """A ``reqTimestamp``: Unix time in milliseconds."""
    return int(time.time() * 1000)


def object_body(request: Request, server: EmulatorServer) -> Mapping[str, Any] | Reply:
    """The request's JSON object body, or the 400 answer to give when it is not one."""
    if request.json_error is not None:
        return server.error(400, f"request body is not JSON: {request.json_error}")
    if not isinstance(request.json, Mapping):
        return server.error(400, "request body must be a JSON object")
    return request.json


__all__ = [
    "CODE_FIELDS",
    "ERROR_MESSAGES",
    "LM_STATES",
    "Behaviour",
    "CdnSettings",
    "CodeIdentity",
    "EmulatorServer",
    "LocalModuleSettings",
    "Reply",
    "Request",
    "RequestRecord",
    "Route",
    "Scenario",
    "ScenarioError",
    "TLSUnavailableError",
    "TspiotSettings",
    "identify",
    "new_request_id",
    "now_ms",
    "object_body",
    "offline_code",
    "online_code",
    "self_signed_certificate",
]
