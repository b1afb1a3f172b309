"""The True API CDN on loopback, split the way the real service is (domain.md §3.2).

The real CDN is two kinds of server, and a client that confuses them checks nothing:

* the **list service** at the base URL (``https://cdn.crpt.ru``, sandbox
  ``https://markirovka.sandbox.crptech.ru``) answers ``GET /api/v4/true-api/cdn/info`` and
  nothing a checking client needs: a ``codes/check`` sent there is not answered as a check;
* the **hosts** it lists (``https://cdnNN.crpt.ru``) answer ``codes/check`` and
  ``cdn/health/check``, and do not hand out the list.

Sources this emulator follows (read for facts, nothing copied): domain.md §3.2–§3.6 (CRPT's
own texts as quoted by public clients); the open-source FMU-API (GitHub ``shrayky/FMU-API``,
MIT): ``src/Infrastructure/TrueApiCdn/Workers/CdnLoaderWorker.cs`` fetches the list from the
fixed ``https://cdn.crpt.ru/api/v4/true-api/cdn/info`` and times each listed host's
``{host}/api/v4/true-api/cdn/health/check``; ``Services/TrueApiClientService.cs`` sends
``codes/check`` only to a listed host (``{cdn.Host}/api/v4/true-api/codes/check``) and reports
"no loaded CDN" when it has no list; ``Services/SimpleCdnService.cs`` keeps the list in a file
and treats it as stale after 7 hours. No public client sends a check to the base URL.

Endpoints (all under ``/api/v4/true-api``, all with ``X-API-KEY``)::

    list service  GET  /cdn/info          → {"code": 0, "description": "ok",
                                             "hosts": [{"host": URL}, …]}
    host          GET  /cdn/health/check  → {"code": 0, "description": "ok", "avgTimeMs": N}
    host          POST /codes/check       {"codes": [КМ, …], "fiscalDriveNumber": "…"}
                                          → {"code": 0, "description": "ok", "codes": [{…}, …],
                                             "reqId": UUID, "reqTimestamp": ms}

What each server does with the other's paths is the scenario's ``cdn.refusal_status`` (404 by
default: domain.md says only that the base does not answer a check; which status it gives is
unknown). Such a request is logged under its endpoint name, so a test can assert that the list
service was never asked for a check.

* ``X-API-KEY`` missing, or not the scenario's ``cdn.token`` when one is set → 401
  ``{"code": 401, "description": …}`` on every endpoint of both kinds.
* The admin endpoint (``/_emulator/…``) of any server changes the scenario of the whole CDN;
  each server keeps its own request log.
* ``cdn/info`` lists ``cdn.hosts`` when the scenario sets it (an empty list, a dead host…),
  else the hosts started with it (:class:`CrptCdn`).
* ``codes/check`` answers one object per requested code, in the order sent (§3.5): ``cis``
  (the code as sent), ``valid``, ``printView`` (its КИ), ``gtin``, ``groupIds``, ``found``,
  ``utilised``, ``verified``, ``realizable``, ``isBlocked``, ``sold``, ``mrp``, ``smp``,
  ``grayZone``, ``packageType``, ``errorCode`` (+ ``message``), overridden per code by the
  scenario (:func:`~markd.emulators.scenario.online_code`). A body that is not a JSON object,
  an empty ``codes`` list, more than ``cdn.max_codes`` codes, or (with
  ``cdn.require_fiscal_drive_number``) no ``fiscalDriveNumber`` → 400.

Faults of either kind (401, 429, 5xx with body code 5000, 203, malformed bodies, latency,
dropped connections, black holes) come from the scenario's ``cdn.endpoints``
(:class:`~markd.emulators.scenario.Behaviour`); ``cdn/info`` faults play on the list service,
``codes/check`` and ``cdn/health/check`` faults on the hosts. The list-service scenarios a
client must survive: the list empty (``cdn.hosts = []``), slow (``cdn/info`` latency), 401,
malformed, or naming a dead host (:meth:`CrptCdn.dead_url`).

In a test::

    with CrptCdn({"cdn": {"token": TOKEN}}, hosts=2) as cdn:   # the list service + 2 hosts
        client = OnlineClient(cdn.url, …)                      # configured with the base URL
        cdn.set_code(WATER_KI, isBlocked=True)                 # every server of this CDN
        cdn.hosts[0].set_fault("codes/check", black_hole=True) # one host
        cdn.set_fault("cdn/info", status=503)                  # the list service
        ...
        assert cdn.count("codes/check") == 1                   # summed over the hosts
        assert cdn.list_service.count("codes/check") == 0      # never asked for a check

From a shell (the list service on PORT, the hosts on free ports, named on stderr)::

    python -m markd.emulators crpt_cdn --port 8081 --hosts 2 --scenario scenario.toml [--tls]
"""

from __future__ import annotations

import re
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from markd.emulators.scenario import Scenario, online_code
from markd.emulators.server import (
    EmulatorServer,
    Reply,
    Request,
    RequestRecord,
    Route,
    new_request_id,
    now_ms,
    object_body,
    self_signed_certificate,
)

PREFIX = "/api/v4/true-api/"
_PATH = re.compile(r"/api/v4/true-api/(cdn/info|cdn/health/check|codes/check)/?")
_METHODS = {"cdn/info": ("GET",), "cdn/health/check": ("GET",), "codes/check": ("POST",)}

ScenarioLike = Scenario | Mapping[str, Any] | str | Path | None


class _CdnServer(EmulatorServer):
    """What both kinds share: the token check, the refusal of the other kind's paths, and an
    admin endpoint whose scenario changes reach every server of the same CDN."""

    section: ClassVar[str] = "cdn"
    #: The endpoints this kind serves; the others are refused with ``cdn.refusal_status``.
    serves: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, scenario: ScenarioLike = None, **options: Any) -> None:
        super().__init__(scenario, **options)
        #: The servers of the same CDN (set by :class:`CrptCdn`), this one included.
        self.group: list[_CdnServer] = [self]

    def _admin(self, method: str, path: str, body: bytes) -> Reply:
        reply = super()._admin(method, path, body)
        if path == "/_emulator/scenario" and method in ("POST", "PATCH") and reply.status == 200:
            for peer in self.group:
                if peer is not self:
                    peer._replace(self.scenario, restart_faults=method == "POST")
        elif path == "/_emulator/reset" and method == "POST" and reply.status == 200:
            for peer in self.group:
                if peer is not self:
                    peer._admin(method, path, body)  # each one's own log and faults
        return reply

    def route(self, method: str, path: str) -> Route | None:
        match = _PATH.fullmatch(path)
        if match is None:
            return None
        endpoint = match.group(1)
        if endpoint not in self.serves:
            return Route(endpoint, None, _METHODS[endpoint], self._refuse)
        return Route(endpoint, None, _METHODS[endpoint], self._handler(endpoint))

    def _handler(self, endpoint: str) -> Callable[[Request], Reply]:
        raise NotImplementedError

    def _refuse(self, request: Request) -> Reply:
        status = request.scenario.cdn.refusal_status
        return self.error(status, f"{request.path}: not served here")

    def _unauthorized(self, request: Request) -> Reply | None:
        """401 unless ``X-API-KEY`` is present (and is the configured token, if any)."""
        token = request.scenario.cdn.token
        sent = request.header("X-API-KEY")
        if not sent or (token is not None and sent != token):
            return self.error(401, "Токен авторизации не передан или недействителен")
        return None


class CrptCdnListService(_CdnServer):
    """The list service at the CDN's base URL: ``cdn/info`` only.

    ``cdn/info`` lists the scenario's ``cdn.hosts``, or when that is unset :attr:`listed`
    (the hosts a :class:`CrptCdn` started with it). Constructor as
    :class:`~markd.emulators.server.EmulatorServer`.
    """

    name: ClassVar[str] = "crpt_cdn_list"
    serves: ClassVar[frozenset[str]] = frozenset({"cdn/info"})

    def __init__(self, scenario: ScenarioLike = None, **options: Any) -> None:
        super().__init__(scenario, **options)
        #: The host URLs listed when the scenario names none.
        self.listed: list[str] = []

    def _handler(self, endpoint: str) -> Callable[[Request], Reply]:
        return self._info

    def _info(self, request: Request) -> Reply:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        hosts = request.scenario.cdn.hosts
        listed = list(hosts) if hosts is not None else list(self.listed)
        return Reply(200, {"code": 0, "description": "ok", "hosts": [{"host": h} for h in listed]})


class CrptCdnHost(_CdnServer):
    """One listed CDN host: ``codes/check`` and ``cdn/health/check``. Constructor as
    :class:`~markd.emulators.server.EmulatorServer`."""

    name: ClassVar[str] = "crpt_cdn_host"
    serves: ClassVar[frozenset[str]] = frozenset({"codes/check", "cdn/health/check"})

    def _handler(self, endpoint: str) -> Callable[[Request], Reply]:
        return self._codes_check if endpoint == "codes/check" else self._health

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


class CrptCdn:
    """A whole CDN: the list service plus ``hosts`` listed hosts, each its own server on its
    own port, sharing one scenario. :attr:`url` is the base URL a client is configured with.

    Scenario changes (:meth:`set_code`, :meth:`configure`, :meth:`patch_scenario`,
    :meth:`set_scenario`, :meth:`clear_faults`) reach every server. :meth:`set_fault` plays
    ``cdn/info`` on the list service and the hosts' endpoints on every host (one host:
    ``cdn.hosts[i].set_fault(…)``). The request log methods read the server that serves the
    endpoint (every host, merged in time order, for the hosts' endpoints).
    """

    name: ClassVar[str] = "crpt_cdn"

    def __init__(
        self,
        scenario: ScenarioLike = None,
        *,
        hosts: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        admin: bool = True,
        verbose: bool = False,
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        if hosts < 1:
            raise ValueError("a CDN needs at least one host")
        options = {"host": host, "tls": tls, "admin": admin, "verbose": verbose}
        if tls:
            # One certificate for every server of this CDN: a client trusts one file.
            options["certificate"] = certificate or self_signed_certificate()
        shared = Scenario.coerce(scenario)
        self.list_service = CrptCdnListService(shared, port=port, **options)
        self.hosts: list[CrptCdnHost] = []
        try:
            for _ in range(hosts):
                self.hosts.append(CrptCdnHost(shared, port=0, **options))
        except BaseException:
            self._close_all()
            raise
        self.list_service.listed = [h.url for h in self.hosts]
        group: list[_CdnServer] = [self.list_service, *self.hosts]
        for server in group:
            server.group = group

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def servers(self) -> list[EmulatorServer]:
        return [self.list_service, *self.hosts]

    @property
    def url(self) -> str:
        """The base URL: the list service."""
        return self.list_service.url

    @property
    def host(self) -> CrptCdnHost:
        """The first listed host."""
        return self.hosts[0]

    @property
    def tls(self) -> bool:
        return self.list_service.tls

    @property
    def certificate_path(self) -> Path | None:
        return self.list_service.certificate_path

    def start(self) -> Self:
        for server in self.servers:
            server.start()
        return self

    def close(self) -> None:
        self._close_all()

    def _close_all(self) -> None:
        for server in [self.list_service, *self.hosts]:
            server.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """One line per server, for a shell user."""
        lines = [f"list service {self.url} (cdn/info)"]
        lines += [f"host {h.url} (codes/check, cdn/health/check)" for h in self.hosts]
        return "\n".join(lines)

    @staticmethod
    def dead_url(host: str = "127.0.0.1") -> str:
        """A URL on ``host`` where nothing listens (connections are refused): list it to test a
        dead host."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        return f"http://{host}:{port}"

    # -- the scenario ---------------------------------------------------------------------------

    @property
    def scenario(self) -> Scenario:
        return self.list_service.scenario

    def set_scenario(self, scenario: ScenarioLike) -> None:
        shared = Scenario.coerce(scenario)
        for server in self.servers:
            server.set_scenario(shared)

    def patch_scenario(self, patch: Mapping[str, Any]) -> None:
        for server in self.servers:
            server.patch_scenario(patch)

    def configure(self, **settings: Any) -> None:
        """Change the ``cdn`` section of every server: ``cdn.configure(token="…")``."""
        for server in self.servers:
            server.configure(**settings)

    def set_hosts(self, urls: Sequence[str] | None) -> None:
        """The URLs ``cdn/info`` lists (None: the hosts started with this CDN)."""
        self.list_service.configure(hosts=None if urls is None else list(urls))

    def set_code(self, key: str, **fields: Any) -> None:
        for server in self.servers:
            server.set_code(key, **fields)

    def set_fault(self, endpoint: str, steps: Any = None, **behaviour: Any) -> None:
        """``cdn/info`` on the list service, ``*`` on every server, others on every host."""
        for server in self._serving(endpoint, all_for_star=True):
            server.set_fault(endpoint, steps, **behaviour)

    def clear_faults(self) -> None:
        for server in self.servers:
            server.clear_faults()

    def reset_state(self) -> None:
        for server in self.servers:
            server.reset_state()

    # -- the request log ------------------------------------------------------------------------

    def _serving(self, endpoint: str | None, *, all_for_star: bool = False) -> list[Any]:
        if endpoint == "cdn/info":
            return [self.list_service]
        if endpoint is None or (endpoint == "*" and all_for_star):
            return self.servers
        return list(self.hosts)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request to any server of this CDN, oldest first."""
        return self._merged(None)

    def _merged(self, endpoint: str | None) -> list[RequestRecord]:
        found: list[RequestRecord] = []
        for server in self._serving(endpoint):
            found += server.requests if endpoint is None else server.requests_for(endpoint)
        return sorted(found, key=lambda record: record.time)

    def requests_for(self, endpoint: str) -> list[RequestRecord]:
        """The requests to ``endpoint`` on the servers that serve it."""
        return self._merged(endpoint)

    def count(self, endpoint: str | None = None) -> int:
        return len(self._merged(endpoint))

    def last(self, endpoint: str | None = None) -> RequestRecord:
        """The latest request (to ``endpoint``); IndexError when there is none."""
        return self._merged(endpoint)[-1]

    def clear_requests(self) -> None:
        for server in self.servers:
            server.clear_requests()

    def wait_for_requests(
        self, count: int, endpoint: str | None = None, timeout: float = 5.0
    ) -> list[RequestRecord]:
        """Block until at least ``count`` requests (to ``endpoint``) are logged on the servers
        that serve it; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._merged(endpoint)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name}: {len(found)} of {count} requests to "
                    f"{endpoint or 'any endpoint'} after {timeout} s"
                )
            time.sleep(0.005)


if __name__ == "__main__":
    from markd.emulators.__main__ import main

    sys.exit(main(["crpt_cdn", *sys.argv[1:]]))
