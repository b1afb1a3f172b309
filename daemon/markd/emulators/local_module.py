"""An emulated Local Module (ЛМ ЧЗ, domain.md §4): the offline check markd falls back to.

It speaks API v1 (LM 1.x) and v2 (LM 2.x), plain HTTP like the real one on port 5995::

    GET  /api/v{1,2}/status            → version, status (state), name, inst, inn, lastSync…
    POST /api/v{1,2}/init              {"token": "…"[, "clearSold": bool, "enableGreyList": bool]}
    POST /api/v1/cis/outCheck          {"cis_list": ["<КИ>", …]}       → bare answer
    GET  /api/v1/cis/outCheck?cis=<КИ> (and the deprecated /api/v1/cis/check?cis=)
    POST /api/v2/cis/outCheck          {"cis_list": [{"cis": "<КИ>", "pg": 13}, …]}
                                       → {"results": [answer]}
    POST /api/v2/cis/sell              {"cis_list": ["<КИ>", …]}
                                       → 201 {"results": [{"success": true, "cis": "<КИ>"}, …]}
    POST /api/v2/cis/return            same body → 200, same shape
    GET  /api/v2/cis/sold?skip=0&limit=100 (limit ≤ 1000) → {"total_count", "cis_list"}

where an answer is ``{"code": 0, "description": "ok", "reqId", "reqTimestamp", "inst",
"version", "codes": [{"cis", "isBlocked", "sold", "gtin", "mrp", "smp"}, …]}`` — an offline
answer carries nothing else per code (no found/verified/utilised/realizable/expireDate), unless
the scenario sets ``isGreyGtin``, ``errorCode`` or ``message`` for the code.

Endpoint names for the scenario's ``local_module.endpoints``: ``status``, ``init``,
``cis/outCheck``, ``cis/check``, ``cis/sell``, ``cis/return``, ``cis/sold``; prefix ``v1/`` or
``v2/`` for one API version only.

Behaviour, from the scenario's ``local_module`` section:

* HTTP Basic authentication with ``user``/``password`` (admin/admin, the installer's default)
  on every endpoint → 401 without it. ``X-ClientId`` (the ФН serial) is logged, not enforced.
* Only the versions in ``api_versions`` are served; the others, and an endpoint the version
  does not have (``/api/v1/cis/sell``), answer 404 — as an LM 1.x does, which is how a client
  detects the version.
* ``state`` other than ``ready`` → ``outCheck`` answers HTTP 400 ``{"errorCode": 4045,
  "description"}`` (``not_configured``, ``initialization``) or ``{"errorCode": 4050, …}``
  (``sync_error``), domain.md §4.6. ``status`` reports the state and ``requiresDownload``.
* Sold codes are kept in memory: ``/cis/sell`` adds, ``/cis/return`` removes, ``outCheck``
  then says ``sold: true`` (LM 2.x's local sold-codes database, §4.5). ``init`` with
  ``clearSold: true`` empties it. ``POST /init`` moves the state to ``state_after_init``.

In a test::

    with LocalModuleEmulator({"local_module": {"state": "sync_error"}}) as lm:
        ...                      # outCheck → 400, errorCode 4050
        lm.set_state("ready")
        lm.mark_sold(WATER_KI)   # or POST /api/v2/cis/sell

From a shell::

    python -m markd.emulators local_module --port 5995 --scenario scenario.toml
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from markd.emulators.scenario import LocalModuleSettings, Scenario, offline_code
from markd.emulators.server import (
    EmulatorServer,
    Reply,
    Request,
    Route,
    new_request_id,
    now_ms,
    object_body,
)

_PATH = re.compile(
    r"/api/v(\d+)/(status|init|cis/outCheck|cis/check|cis/sell|cis/return|cis/sold)/?"
)

#: (version, endpoint) → the methods it takes. Anything else under /api/vN/ is a 404.
_ENDPOINTS: dict[tuple[int, str], tuple[str, ...]] = {
    (1, "status"): ("GET",),
    (2, "status"): ("GET",),
    (1, "init"): ("POST",),
    (2, "init"): ("POST",),
    (1, "cis/outCheck"): ("POST", "GET"),
    (1, "cis/check"): ("GET",),
    (2, "cis/outCheck"): ("POST",),
    (2, "cis/sell"): ("POST",),
    (2, "cis/return"): ("POST",),
    (2, "cis/sold"): ("GET",),
}
_ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")

#: State → (errorCode, description) of a refused outCheck (domain.md §4.6).
STATE_ERRORS: dict[str, tuple[int, str]] = {
    "not_configured": (4045, "Локальный модуль не инициализирован"),
    "initialization": (4045, "Локальный модуль в процессе инициализации"),
    "sync_error": (4050, "Ошибка синхронизации локального модуля"),
}

#: Most codes one /cis/sold page returns (domain.md §4.5, unconfirmed).
SOLD_PAGE_LIMIT = 1000


class LocalModuleEmulator(EmulatorServer):
    """A Local Module on loopback, driven by a scenario's ``codes`` and ``local_module`` section.

    Constructor: ``LocalModuleEmulator(scenario=None, *, host="127.0.0.1", port=0, tls=False,
    admin=True, verbose=False)`` (see :class:`~markd.emulators.server.EmulatorServer`).
    ``token`` is the last token ``init`` received.
    """

    name: ClassVar[str] = "local_module"
    section: ClassVar[str] = "local_module"

    def __init__(
        self, scenario: Scenario | Mapping[str, Any] | str | Path | None = None, **options: Any
    ) -> None:
        super().__init__(scenario, **options)
        self._sold_lock = threading.Lock()
        self._sold: dict[str, int] = {}  # КИ → when sold (Unix ms), in selling order
        self.token: str | None = None

    # -- state for tests ------------------------------------------------------------------------

    def set_state(self, state: str) -> None:
        """``ready``, ``initialization``, ``not_configured`` or ``sync_error``."""
        self.configure(state=state)

    def sold_codes(self) -> list[str]:
        """The КИ in the sold-codes database, oldest sale first."""
        with self._sold_lock:
            return list(self._sold)

    def mark_sold(self, *kis: str) -> None:
        """Put КИ into the sold-codes database, as ``/cis/sell`` does."""
        self._sell(kis)

    def reset_state(self) -> None:
        with self._sold_lock:
            self._sold.clear()
        self.token = None

    def _sell(self, kis: Iterable[str]) -> None:
        at = now_ms()
        with self._sold_lock:
            for ki in kis:
                self._sold.pop(ki, None)
                self._sold[ki] = at

    def _is_sold(self, ki: str) -> bool:
        with self._sold_lock:
            return ki in self._sold

    # -- routing --------------------------------------------------------------------------------

    def route(self, method: str, path: str) -> Route | None:
        match = _PATH.fullmatch(path)
        if match is None:
            return None
        version, endpoint = int(match.group(1)), match.group(2)
        methods = _ENDPOINTS.get((version, endpoint))
        if methods is None:
            return Route(endpoint, version, _ANY_METHOD, self._not_found)
        handler = {
            "status": self._status,
            "init": self._init,
            "cis/outCheck": self._out_check,
            "cis/check": self._out_check,
            "cis/sell": self._sell_codes,
            "cis/return": self._return_codes,
            "cis/sold": self._sold_list,
        }[endpoint]
        return Route(endpoint, version, methods, self._guarded(handler))

    def _not_found(self, request: Request) -> Reply:
        return Reply(404, b"Not Found", content_type="text/plain")

    def _guarded(self, handler: Callable[[Request], Reply]) -> Callable[[Request], Reply]:
        """Wrap a handler: 404 for a version not served, 401 without the right credentials."""

        def guarded(request: Request) -> Reply:
            settings = request.scenario.local_module
            if request.version not in settings.api_versions:
                return self._not_found(request)
            if settings.user is not None and not _authorized(request, settings):
                reply = self.error(401, "Unauthorized")
                reply.headers["WWW-Authenticate"] = 'Basic realm="local module"'
                return reply
            return handler(request)

        return guarded

    # -- endpoints ------------------------------------------------------------------------------

    def _status(self, request: Request) -> Reply:
        settings = request.scenario.local_module
        if settings.last_sync is not None:
            last_sync = settings.last_sync
        else:
            last_sync = now_ms() - int(settings.last_sync_age_s * 1000)
        downloading = settings.state in ("not_configured", "initialization")

        def counts(total: int) -> dict[str, int]:
            local = total // 3 if downloading else total
            return {
                "localDocCount": local,
                "serverDocCount": total,
                "timeLag": now_ms() - last_sync,
            }

        body: dict[str, Any] = {
            "version": settings.version,
            "status": settings.state,
            "name": settings.name,
            "inst": settings.inst,
            "inn": settings.inn,
            "dbVersion": "1",
            "requiresDownload": downloading,
            "isGreyGtin": False,
            "lastUpdate": last_sync,
            "lastSync": last_sync,
            "serviceUrl": "https://rsapi.crpt.ru",
            "operationMode": settings.operation_mode,
            # The key of the replication counters is unconfirmed (domain.md §4.6).
            "replicationStatus": {
                "cis": counts(120000),
                "blocked_series": counts(300),
                "blocked_gtin": counts(900),
                "blocked_cis": counts(45000),
            },
        }
        body.update(settings.status_extra)
        return Reply(200, body)

    def _init(self, request: Request) -> Reply:
        body = object_body(request, self)
        if isinstance(body, Reply):
            return body
        token = body.get("token")
        if not isinstance(token, str) or not token:
            return self.error(400, "token: обязательное поле")
        self.token = token
        if body.get("clearSold") is True:
            with self._sold_lock:
                self._sold.clear()
        self.configure(state=request.scenario.local_module.state_after_init)
        return Reply(200, {"code": 0, "description": "ok"})

    def _out_check(self, request: Request) -> Reply:
        settings = request.scenario.local_module
        refused = STATE_ERRORS.get(settings.state)
        if refused is not None:
            error_code, description = refused
            return Reply(400, {"errorCode": error_code, "description": description})
        kis = self._requested_kis(request)
        if isinstance(kis, Reply):
            return kis
        answer = {
            "code": 0,
            "description": "ok",
            "reqId": new_request_id(),
            "reqTimestamp": now_ms(),
            "inst": settings.inst,
            "version": settings.version,
            "codes": [
                offline_code(request.scenario, self.section, ki, sold=self._is_sold(ki))
                for ki in kis
            ],
        }
        return Reply(200, answer if request.version == 1 else {"results": [answer]})

    def _requested_kis(self, request: Request) -> list[str] | Reply:
        """The КИ of an outCheck: v1 strings (body or ``?cis=``), v2 ``{"cis", "pg"}`` objects."""
        if request.method == "GET":
            kis = request.query.get("cis", [])
            return kis if kis and all(kis) else self.error(400, "cis: обязательный параметр")
        body = object_body(request, self)
        if isinstance(body, Reply):
            return body
        items = body.get("cis_list")
        if not isinstance(items, list) or not items:
            return self.error(400, "cis_list: ожидается непустой список")
        if request.version == 1:
            if all(isinstance(item, str) and item for item in items):
                return list(items)
            return self.error(400, "cis_list: в API v1 ожидаются строки КИ")
        kis = []
        for item in items:
            ok = (
                isinstance(item, Mapping)
                and isinstance(item.get("cis"), str)
                and item["cis"]
                and isinstance(item.get("pg", 0), int)
            )
            if not ok:
                return self.error(400, 'cis_list: в API v2 ожидаются объекты {"cis", "pg"}')
            kis.append(item["cis"])
        return kis

    def _sell_codes(self, request: Request) -> Reply:
        kis = self._cis_list(request)
        if isinstance(kis, Reply):
            return kis
        self._sell(kis)
        return Reply(201, {"results": [{"success": True, "cis": ki} for ki in kis]})

    def _return_codes(self, request: Request) -> Reply:
        kis = self._cis_list(request)
        if isinstance(kis, Reply):
            return kis
        with self._sold_lock:
            for ki in kis:
                self._sold.pop(ki, None)
        return Reply(200, {"results": [{"success": True, "cis": ki} for ki in kis]})

    def _cis_list(self, request: Request) -> list[str] | Reply:
        """The ``cis_list`` of a sell or return: a non-empty list of КИ strings."""
        body = object_body(request, self)
        if isinstance(body, Reply):
            return body
        items = body.get("cis_list")
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            return self.error(400, "cis_list: ожидается непустой список строк КИ")
        return list(items)

    def _sold_list(self, request: Request) -> Reply:
        try:
            skip = int(request.query.get("skip", ["0"])[0])
            limit = int(request.query.get("limit", ["100"])[0])
        except ValueError:
            return self.error(400, "skip, limit: ожидаются целые числа")
        if skip < 0 or not 1 <= limit <= SOLD_PAGE_LIMIT:
            return self.error(400, f"skip ≥ 0, 1 ≤ limit ≤ {SOLD_PAGE_LIMIT}")
        sold = self.sold_codes()
        return Reply(200, {"total_count": len(sold), "cis_list": sold[skip : skip + limit]})


def _authorized(request: Request, settings: LocalModuleSettings) -> bool:
    scheme, _, token = (request.header("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return (user, password) == (settings.user, settings.password)


if __name__ == "__main__":
    from markd.emulators.__main__ import main

    sys.exit(main(["local_module", *sys.argv[1:]]))
