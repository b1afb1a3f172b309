"""Scenarios for the check-service emulators: what they answer and how they misbehave.

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

The emulators that play a scenario run on :class:`markd.emulators.server.EmulatorServer`,
which swaps in a new scenario between requests when a test (or the admin endpoint) changes it.
"""

from __future__ import annotations

import copy
import json
import tomllib
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from markd import validation
from markd.codes import GS, parse
from markd.errors import CodeError, MarkdError
from markd.validation import ANY, BOOLEAN, INTEGER, JSON, NUMBER, STRING, TABLE, Kind, array_of


class ScenarioError(MarkdError, ValueError):
    """A scenario file or dict is malformed; the message names the offending key."""

    reason = "bad-scenario"


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


__all__ = [
    "CODE_FIELDS",
    "ERROR_MESSAGES",
    "LM_STATES",
    "Behaviour",
    "CdnSettings",
    "CodeIdentity",
    "LocalModuleSettings",
    "Scenario",
    "ScenarioError",
    "TspiotSettings",
    "identify",
    "offline_code",
    "online_code",
]
