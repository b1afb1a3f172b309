"""An emulated True API CDN host (domain.md §3): what markd's online client talks to.

Endpoints (all under ``/api/v4/true-api``, all with ``X-API-KEY``)::

    GET  /cdn/info          → {"code": 0, "description": "ok", "hosts": [{"host": URL}, …]}
    GET  /cdn/health/check  → {"code": 0, "description": "ok", "avgTimeMs": N}
    POST /codes/check       {"codes": [КМ, …], "fiscalDriveNumber": "…"}
                            → {"code": 0, "description": "ok", "codes": [{…}, …],
                               "reqId": UUID, "reqTimestamp": ms}

Endpoint names for the scenario's ``cdn.endpoints``: ``cdn/info``, ``cdn/health/check``,
``codes/check`` (and ``*``).

* ``X-API-KEY`` missing, or not the scenario's ``cdn.token`` when one is set → 401
  ``{"code": 401, "description": …}``; checked on every endpoint.
* ``codes/check`` answers one object per requested code, in the order sent (§3.5): ``cis``
  (the code as sent), ``valid``, ``printView`` (its КИ, by :func:`markd.codes.parse`),
  ``gtin``, ``groupIds``, ``found``, ``utilised``, ``verified``, ``realizable``,
  ``isBlocked``, ``sold``, ``mrp``, ``smp``, ``grayZone``, ``packageType``, ``errorCode``
  (+ ``message``), overridden per code by the scenario
  (:func:`~markd.emulators.scenario.online_code`).
  A body that is not a JSON object, an empty ``codes`` list, more than ``cdn.max_codes`` codes,
  or (with ``cdn.require_fiscal_drive_number``) no ``fiscalDriveNumber`` → 400.
* ``cdn/info`` lists ``cdn.hosts``, or this emulator's own URL. Start several emulators and
  point their host lists at each other to test failover
  (:func:`markd.emulators.testing.cdn_hosts`).

Faults (401, 429, 5xx with body code 5000, 203, malformed bodies, latency, dropped connections,
black holes) come from the scenario (:class:`~markd.emulators.scenario.Behaviour`).

In a test::

    with CrptCdnEmulator({"cdn": {"token": TOKEN}}) as cdn:
        cdn.set_code(WATER_KI, isBlocked=True)
        cdn.set_fault("codes/check", [{"status": 500, "code": 5000}, {}])
        ...
        assert cdn.last("codes/check").api_key == TOKEN

From a shell::

    python -m markd.emulators crpt_cdn --port 8081 --scenario scenario.toml [--tls]
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import ClassVar

from markd.emulators.scenario import (
    EmulatorServer,
    Reply,
    Request,
    Route,
    new_request_id,
    now_ms,
    object_body,
    online_code,
)

PREFIX = "/api/v4/true-api/"
_PATH = re.compile(r"/api/v4/true-api/(cdn/info|cdn/health/check|codes/check)/?")


class CrptCdnEmulator(EmulatorServer):
    """One True API CDN host on loopback, driven by a scenario's ``codes`` and ``cdn`` section.

    Constructor: ``CrptCdnEmulator(scenario=None, *, host="127.0.0.1", port=0, tls=False,
    admin=True, verbose=False)`` (see :class:`~markd.emulators.scenario.EmulatorServer`).
    """

    name: ClassVar[str] = "crpt_cdn"
    section: ClassVar[str] = "cdn"

    def set_hosts(self, urls: Sequence[str] | None) -> None:
        """The base URLs ``cdn/info`` lists (None: this emulator's own URL)."""
        self.configure(hosts=None if urls is None else list(urls))

    def route(self, method: str, path: str) -> Route | None:
        match = _PATH.fullmatch(path)
        if match is None:
            return None
        endpoint = match.group(1)
        if endpoint == "codes/check":
            return Route(endpoint, None, ("POST",), self._codes_check)
        handler = self._info if endpoint == "cdn/info" else self._health
        return Route(endpoint, None, ("GET",), handler)

    # -- endpoints ------------------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> Reply | None:
        """401 unless ``X-API-KEY`` is present (and is the configured token, if any)."""
        token = request.scenario.cdn.token
        sent = request.header("X-API-KEY")
        if not sent or (token is not None and sent != token):
            return self.error(401, "Токен авторизации не передан или недействителен")
        return None

    def _info(self, request: Request) -> Reply:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        hosts = request.scenario.cdn.hosts
        listed = list(hosts) if hosts is not None else [self.url]
        return Reply(200, {"code": 0, "description": "ok", "hosts": [{"host": h} for h in listed]})

    def _health(self, request: Request) -> Reply:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        average = request.scenario.cdn.avg_time_ms
        return Reply(200, {"code": 0, "description": "ok", "avgTimeMs": average})

    def _codes_check(self, request: Request) -> Reply:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        body = object_body(request, self)
        if isinstance(body, Reply):
            return body
        settings = request.scenario.cdn
        codes = body.get("codes")
        if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
            return self.error(400, "codes: ожидается непустой список строк")
        if len(codes) > settings.max_codes:
            return self.error(400, f"codes: не более {settings.max_codes} кодов в запросе")
        if settings.require_fiscal_drive_number and not body.get("fiscalDriveNumber"):
            return self.error(400, "fiscalDriveNumber: обязательное поле")
        answer = {
            "code": 0,
            "description": "ok",
            "codes": [online_code(request.scenario, self.section, code) for code in codes],
            "reqId": new_request_id(),
            "reqTimestamp": now_ms(),
        }
        return Reply(200, answer)


if __name__ == "__main__":
    from markd.emulators.__main__ import main

    sys.exit(main(["crpt_cdn", *sys.argv[1:]]))
