"""An emulated ТС ПИоТ (domain.md §5), such as ESP's ESM on https://localhost:51401: the
certified module that checks codes for the cash software in mode ``tspiot``.

Endpoints (``N`` = 1, 2 or 3; only the versions in ``tspiot.versions`` are served, the others
answer 404 — which is how a client detects the version, probing v3, then v2, then v1)::

    GET|POST /api/vN/info          → {"tspiotId", "kktSerial", "fnSerial", "kktInn",
                                      "codesCheckTimeout", "lm": {"version", "status", …}}
    POST     /api/vN/codes/check   v1/v2: {"codes": ["<base64 КМ>", …], "client_info": {…}}
                                   v3:    {"codes": [{"cis": "<base64 КМ>", "pg": 13}, …], …}
        v2/v3 → {"codesResponse": [entry]}
        v1    → {"codesResponse": {"codesResponse": [entry]}}   (the protobuf double wrapping)

where ``entry`` is ``{"code": 0, "description": "ok", "codes": [{…}], "reqId", "reqTimestamp",
"isCheckedOffline"}`` plus ``inst`` and ``version`` when answered offline. The codes are base64
of the UTF-8 КМ with raw GS bytes; a code that is not base64 → 400.

Endpoint names for the scenario's ``tspiot.endpoints``: ``info``, ``codes/check`` (``v1/info``
… for one version; ``*``).

* Online per-code objects are those of the CDN (:func:`~markd.emulators.scenario.online_code`,
  ``cis`` being the decoded КМ). Offline ones (``isCheckedOffline: true``) carry what the LM
  gives (``cis``, ``isBlocked``, ``sold``, ``gtin``, ``mrp``, ``smp``) plus ``found: false``
  and ``ogvs: []``, as in a real offline answer (§5.4) — a client must not read that
  ``found: false`` as "not found".
* An answer is offline when a requested code is in ``offline_codes`` (by КИ or text), or for
  the first ``offline_first_checks`` checks after start (§5.6; :meth:`TspiotEmulator.reset_warmup`
  starts the count again).
* Protobuf-JSON quirks of the real service (§5.4), per scenario: ``string_timestamps``
  (``reqTimestamp`` as a JSON string), ``omit_defaults`` (fields at false, 0, "" or [] left
  out — ``code: 0`` and ``isCheckedOffline: false`` too), ``desctiption`` (the schema's
  misspelling of ``description``).
* Errors: ``{"error": {"errorCode", "errorDescription"}}`` (a scenario ``status``/``code``,
  a bad request, a wrong ``client_info.token`` when ``tspiot.token`` is set → 401).
  Emergency mode: ``{"emergency": true}`` → HTTP 203 ``{"code": 203, "message", "details": []}``.

The real service is HTTPS with a self-signed certificate: start with ``tls=True`` (``--tls``).

In a test::

    with TspiotEmulator({"tspiot": {"versions": [1], "string_timestamps": True}}, tls=True) as ts:
        ...
        assert ts.last("codes/check").json["client_info"]["name"] == "markd"

From a shell::

    python -m markd.emulators tspiot --port 51401 --tls --scenario scenario.toml
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from markd.emulators.scenario import (
    Scenario,
    TspiotSettings,
    identify,
    offline_code,
    online_code,
)
from markd.emulators.server import (
    EmulatorServer,
    Reply,
    Request,
    Route,
    new_request_id,
    now_ms,
    object_body,
)

_PATH = re.compile(r"/api/v(\d+)/(info|codes/check)/?")
_METHODS = {"info": ("GET", "POST"), "codes/check": ("POST",)}


class TspiotEmulator(EmulatorServer):
    """A ТС ПИоТ on loopback, driven by a scenario's ``codes`` and ``tspiot`` section.

    Constructor: ``TspiotEmulator(scenario=None, *, host="127.0.0.1", port=0, tls=False,
    admin=True, verbose=False)`` (see :class:`~markd.emulators.server.EmulatorServer`).
    ``checks_answered`` counts the checks answered since start or :meth:`reset_warmup`.
    """

    name: ClassVar[str] = "tspiot"
    section: ClassVar[str] = "tspiot"

    def __init__(
        self, scenario: Scenario | Mapping[str, Any] | str | Path | None = None, **options: Any
    ) -> None:
        super().__init__(scenario, **options)
        self._warmup_lock = threading.Lock()
        self.checks_answered = 0

    def reset_warmup(self) -> None:
        """Behave as just started: the next ``offline_first_checks`` checks come back offline."""
        with self._warmup_lock:
            self.checks_answered = 0

    def reset_state(self) -> None:
        self.reset_warmup()

    # -- routing --------------------------------------------------------------------------------

    def route(self, method: str, path: str) -> Route | None:
        match = _PATH.fullmatch(path)
        if match is None:
            return None
        version, endpoint = int(match.group(1)), match.group(2)
        handler = self._info if endpoint == "info" else self._codes_check
        return Route(endpoint, version, _METHODS[endpoint], self._versioned(handler))

    def _versioned(self, handler: Callable[[Request], Reply]) -> Callable[[Request], Reply]:
        def versioned(request: Request) -> Reply:
            if request.version not in request.scenario.tspiot.versions:
                return Reply(404, b"Not Found", content_type="text/plain")
            return handler(request)

        return versioned

    def error_body(self, status: int, code: int | None, description: str | None) -> Any:
        """``{"error": {"errorCode", "errorDescription"}}`` (domain.md §5.5)."""
        error_code = status if code is None else code
        return {"error": {"errorCode": error_code, "errorDescription": description or "Ошибка"}}

    # -- endpoints ------------------------------------------------------------------------------

    def _info(self, request: Request) -> Reply:
        settings = request.scenario.tspiot
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
        lm: dict[str, Any] = {
            "version": settings.lm_version,
            "status": "ready",
            "lastSync": now_ms() - 60_000,
            "token": "",
            "expDate": expires.strftime("%Y-%m-%dT00:00:00Z"),
            "ip": "127.0.0.1",
            "port": 5995,
            "login": "admin",
            "pass": "admin",
        }
        lm.update(settings.lm)
        body = {
            settings.id_key: settings.tspiot_id,
            "kktSerial": settings.kkt_serial,
            "fnSerial": settings.fn_serial,
            "kktInn": settings.kkt_inn,
            "codesCheckTimeout": settings.codes_check_timeout,
            "lm": lm,
        }
        return Reply(200, body)

    def _codes_check(self, request: Request) -> Reply:
        settings = request.scenario.tspiot
        body = object_body(request, self)
        if isinstance(body, Reply):
            return body
        client_info = body.get("client_info", {})
        if not isinstance(client_info, Mapping):
            return self.error(400, "client_info: ожидается объект")
        if settings.token is not None and client_info.get("token") != settings.token:
            return self.error(401, "Неверный ключ доступа ПМСР (client_info.token)")
        texts = _decode_codes(body.get("codes"), request.version or 1)
        if isinstance(texts, str):
            return self.error(400, texts)
        with self._warmup_lock:
            warming_up = self.checks_answered < settings.offline_first_checks
            self.checks_answered += 1
        offline = warming_up or any(_listed(text, settings) for text in texts)
        entry: dict[str, Any] = {
            "code": 0,
            "description": "ok",
            "codes": [self._code(request.scenario, text, offline) for text in texts],
            "reqId": new_request_id(),
            "reqTimestamp": now_ms(),
            "isCheckedOffline": offline,
        }
        if offline:
            entry["inst"] = settings.inst
            entry["version"] = settings.lm_version
        entry = _apply_quirks(entry, settings)
        if request.version == 1:
            return Reply(200, {"codesResponse": {"codesResponse": [entry]}})
        return Reply(200, {"codesResponse": [entry]})

    def _code(self, scenario: Scenario, text: str, offline: bool) -> dict[str, Any]:
        if not offline:
            return online_code(scenario, self.section, text)
        answer = offline_code(scenario, self.section, text)
        answer.setdefault("found", False)
        answer.setdefault("ogvs", [])
        return answer


def _decode_codes(codes: Any, version: int) -> list[str] | str:
    """The КМ texts of a request, or the reason it is refused."""
    if not isinstance(codes, list) or not codes:
        return "codes: ожидается непустой список"
    texts = []
    for item in codes:
        if version >= 3:
            if not isinstance(item, Mapping) or not isinstance(item.get("cis"), str):
                return 'codes: в API v3 ожидаются объекты {"cis": base64, "pg": число}'
            if not isinstance(item.get("pg", 0), int):
                return "codes: pg должен быть числом"
            encoded = item["cis"]
        elif isinstance(item, str):
            encoded = item
        else:
            return f"codes: в API v{version} ожидаются строки base64"
        try:
            texts.append(base64.b64decode(encoded, validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError):
            return "codes: код не в base64 (UTF-8)"
    return texts


def _listed(text: str, settings: TspiotSettings) -> bool:
    return text in settings.offline_codes or identify(text).ki in settings.offline_codes


def _is_default(value: Any) -> bool:
    """A protobuf default: false, 0, empty string, empty list."""
    if isinstance(value, bool):
        return value is False
    if isinstance(value, int | float):
        return value == 0
    return value == "" or value == [] or value == {}


def _apply_quirks(entry: dict[str, Any], settings: TspiotSettings) -> dict[str, Any]:
    if settings.string_timestamps:
        entry["reqTimestamp"] = str(entry["reqTimestamp"])
    if settings.omit_defaults:
        entry["codes"] = [
            {k: v for k, v in c.items() if not _is_default(v)} for c in entry["codes"]
        ]
        entry = {k: v for k, v in entry.items() if not _is_default(v)}
    if settings.desctiption and "description" in entry:
        entry = {("desctiption" if k == "description" else k): v for k, v in entry.items()}
    return entry


if __name__ == "__main__":
    from markd.emulators.__main__ import main

    sys.exit(main(["tspiot", *sys.argv[1:]]))
