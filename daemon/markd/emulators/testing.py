"""Helpers for tests (markd's own and an integrator's) that talk to the emulators over real
sockets: context managers that start an emulator on a free loopback port and always stop it,
a pool for pytest fixtures, and a small ``http.client`` wrapper.

As pytest fixtures::

    from markd.emulators import testing

    @pytest.fixture
    def cdn():
        with testing.crpt_cdn({"cdn": {"token": TOKEN}}) as server:   # list service + 1 host
            yield server                                                # server.url: the base

    @pytest.fixture
    def emulators():
        with testing.EmulatorPool() as pool:   # every emulator started is stopped at teardown
            yield pool

    def test_failover(emulators):
        cdn = emulators.crpt_cdn(hosts=3)
        cdn.hosts[0].set_fault("codes/check", black_hole=True)
        ...

This module imports nothing from pytest, so it works under any runner.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markd.emulators.crpt_cdn import CrptCdn
from markd.emulators.local_module import LocalModuleEmulator
from markd.emulators.scenario import Scenario
from markd.emulators.server import EmulatorServer
from markd.emulators.shtrih import ShtrihKkt, ShtrihServer
from markd.emulators.tspiot import TspiotEmulator

ScenarioLike = Scenario | Mapping[str, Any] | str | Path | None


@contextmanager
def crpt_cdn(scenario: ScenarioLike = None, **options: Any) -> Iterator[CrptCdn]:
    """A running :class:`CrptCdn` — its list service and ``hosts`` hosts (default 1), each on a
    free port (``options``: ``hosts``, ``tls``, ``host``…)."""
    with CrptCdn(scenario, **options) as server:
        yield server


@contextmanager
def local_module(scenario: ScenarioLike = None, **options: Any) -> Iterator[LocalModuleEmulator]:
    """A running :class:`LocalModuleEmulator` on a free port."""
    with LocalModuleEmulator(scenario, **options) as server:
        yield server


@contextmanager
def tspiot(scenario: ScenarioLike = None, **options: Any) -> Iterator[TspiotEmulator]:
    """A running :class:`TspiotEmulator` on a free port (pass ``tls=True`` for HTTPS)."""
    with TspiotEmulator(scenario, **options) as server:
        yield server


@contextmanager
def shtrih(state_dir: str | Path, transport: str = "pty", **options: Any) -> Iterator[ShtrihServer]:
    """A virtual Shtrih-M ККТ (its state in ``state_dir``) served on a new pty
    (``transport="pty"``: ``server.pty_path``) or on a free loopback TCP port (``"tcp"``:
    ``server.host``, ``server.port``); its device is ``server.kkt``. ``options`` go to
    :class:`~markd.emulators.shtrih.ShtrihServer` (``byte_timeout``, ``ack_timeout``)."""
    if transport not in ("pty", "tcp"):
        raise ValueError("transport is pty or tcp")
    with ShtrihServer(ShtrihKkt(state_dir), **options) as server:
        if transport == "pty":
            server.start_pty()
        else:
            server.start_tcp()
        yield server


class EmulatorPool:
    """Starts emulators on free ports and stops all of them on :meth:`close` (or at the end of
    a ``with`` block), even when a test fails half-way."""

    def __init__(self) -> None:
        self._stack = ExitStack()

    def start(self, server: EmulatorServer | CrptCdn) -> Any:
        """Start ``server`` and stop it with the pool; returns it."""
        return self._stack.enter_context(server)

    def crpt_cdn(self, scenario: ScenarioLike = None, **options: Any) -> CrptCdn:
        """A CDN: the list service and ``hosts`` listed hosts (default 1)."""
        server: CrptCdn = self.start(CrptCdn(scenario, **options))
        return server

    def local_module(self, scenario: ScenarioLike = None, **options: Any) -> LocalModuleEmulator:
        server: LocalModuleEmulator = self.start(LocalModuleEmulator(scenario, **options))
        return server

    def tspiot(self, scenario: ScenarioLike = None, **options: Any) -> TspiotEmulator:
        server: TspiotEmulator = self.start(TspiotEmulator(scenario, **options))
        return server

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> EmulatorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# A minimal client


@dataclass
class HttpAnswer:
    """An answer as :func:`http_request` read it."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


def insecure_tls_context() -> ssl.SSLContext:
    """A client context that accepts any certificate — for a loopback service with a
    self-signed one, as the ТС ПИоТ has."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def pinned_tls_context(certificate: str | Path) -> ssl.SSLContext:
    """A client context trusting exactly ``certificate`` (an emulator's
    :attr:`~markd.emulators.server.EmulatorServer.certificate_path`), hostname checked."""
    return ssl.create_default_context(cafile=str(certificate))


def connect(
    url: str, *, timeout: float = 5.0, context: ssl.SSLContext | None = None
) -> http.client.HTTPConnection:
    """A keep-alive connection to ``url``'s host (HTTPS: ``context``, or any certificate)."""
    split = urllib.parse.urlsplit(url)
    if split.hostname is None:
        raise ValueError(f"no host in {url!r}")
    if split.scheme == "https":
        return http.client.HTTPSConnection(
            split.hostname, split.port, timeout=timeout, context=context or insecure_tls_context()
        )
    return http.client.HTTPConnection(split.hostname, split.port, timeout=timeout)


def http_request(
    url: str,
    method: str = "GET",
    path: str = "/",
    *,
    json_body: Any = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    context: ssl.SSLContext | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> HttpAnswer:
    """One request to ``url`` + ``path``; a new connection unless ``connection`` is given
    (then it is reused, keep-alive). Transport errors propagate (``RemoteDisconnected``,
    ``TimeoutError``, ``ConnectionResetError``)."""
    sent_headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        sent_headers.setdefault("Content-Type", "application/json")
    own = connection is None
    conn = connection or connect(url, timeout=timeout, context=context)
    try:
        conn.request(method, path, body=body, headers=sent_headers)
        response = conn.getresponse()
        return HttpAnswer(response.status, dict(response.getheaders()), response.read())
    finally:
        if own:
            conn.close()


def basic_auth(user: str = "admin", password: str = "admin") -> dict[str, str]:
    """The ``Authorization`` header of HTTP Basic auth (the Local Module's admin/admin)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def encode_code(km: str) -> str:
    """A КМ as the ТС ПИоТ takes it: base64 of its UTF-8 bytes, raw GS included."""
    return base64.b64encode(km.encode("utf-8")).decode("ascii")


def decode_codes(codes: Sequence[Any]) -> list[str]:
    """The КМ of a logged ТС ПИоТ request's ``codes`` (v1/v2 strings or v3 objects)."""
    return [
        base64.b64decode(c["cis"] if isinstance(c, Mapping) else c).decode("utf-8") for c in codes
    ]


__all__ = [
    "EmulatorPool",
    "HttpAnswer",
    "basic_auth",
    "connect",
    "crpt_cdn",
    "decode_codes",
    "encode_code",
    "http_request",
    "insecure_tls_context",
    "local_module",
    "pinned_tls_context",
    "shtrih",
    "tspiot",
]
