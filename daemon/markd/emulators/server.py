"""The one HTTP server every emulator runs on.

Each emulator (the CDN, the Local Module, the ТС ПИоТ, the ATOL web server, the file server a
fleet syncs from) is a subclass that says which endpoints it has (:meth:`HTTPEmulator.route`)
and answers them; everything about being a server lives here, once:

* **listening and threads** — a :class:`~http.server.ThreadingHTTPServer` on 127.0.0.1 (port 0:
  any free one), one thread per connection, HTTP/1.1 keep-alive;
* **request bodies** — framed by h11, not by hand: the standard library's server reads the
  request line and headers but leaves the body to the handler, so the handler gives an
  ``h11.Connection`` in the server role a made-up head carrying only the request's own
  ``Content-Length`` or ``Transfer-Encoding``, then the bytes that follow, peeked from the
  connection's buffer and taken from it only once h11 has used them (what follows the body
  is the next request on the connection). A length or chunk framing h11 refuses, or a body
  cut short, is answered ``400``. Moving the whole server to h11 would mean rewriting the
  threads, TLS and keep-alive that ``http.server`` already gives; the body is the one part
  it leaves to its users;
* **one write per answer** — status line, headers and body in one ``send`` with
  ``TCP_NODELAY`` set: a header write followed by a body write costs ~40 ms per keep-alive
  request on loopback (Nagle's algorithm meeting delayed ACKs);
* **TLS** — ``tls=True`` with a self-signed certificate made once per process
  (:func:`self_signed_certificate`), or the ``certificate=(cert, key)`` pair given; the
  handshake runs in the connection's thread, so a client that stalls in it blocks no one;
* **the request log** — every request as a :class:`RequestRecord`, logged as soon as it is
  read and completed before its answer leaves;
* **the admin endpoint** (``/_emulator/…``, never logged, never faulted);
* **fault playback** — latency, error statuses, malformed bodies, dropped and reset
  connections, black holes (:class:`~markd.emulators.scenario.Behaviour`);
* **files** — :class:`StaticFiles` answers with the files under a directory (ETags,
  conditional and range requests, Basic auth), streamed in blocks rather than read whole.

:class:`HTTPEmulator` is the machinery; :class:`EmulatorServer` adds the scenario that drives
the check-service emulators (:mod:`markd.emulators.scenario`).
"""

from __future__ import annotations

import atexit
import base64
import binascii
import copy
import email.utils
import hashlib
import json
import re
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
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self

import h11

from markd.emulators.scenario import Behaviour, Scenario, ScenarioError
from markd.errors import MarkdError


class TLSUnavailableError(MarkdError, RuntimeError):
    """``tls=True`` was asked for but no certificate can be made (neither the ``cryptography``
    package nor the ``openssl`` command is available)."""

    reason = "tls-unavailable"


# --------------------------------------------------------------------------------------------
# TLS


_CERTIFICATE_LOCK = threading.Lock()
#: The most a request body read asks of the connection's buffer at a time.
_BODY_READ = 1 << 16
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
    any latency or fault, and ``status``/``outcome`` are filled in before the answer goes out
    (``sent`` before each block of it): a client that has its answer can rely on the log being
    complete.

    ``outcome``: ``pending`` (latency running, or a black hole), ``answered``, ``malformed``,
    ``dropped``, ``reset``, ``black-hole``, ``cut`` (a file's body cut short on purpose).
    """

    time: float  # Unix seconds when the request was read
    method: str
    path: str  # without the query string (the file server: relative to its directory)
    query: dict[str, list[str]]
    headers: dict[str, str]  # as sent (names in their original case)
    body: bytes
    json: Any = None  # the parsed body (None: empty or not JSON)
    endpoint: str | None = None  # "codes/check", "cis/outCheck", a file…; None: unknown path
    version: int | None = None  # API version from the path (Local Module, ТС ПИоТ)
    status: int | None = None
    outcome: str = "pending"
    sent: int = 0  # body bytes sent (fewer than the answer's when cut or dropped)

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
    def authorized(self) -> bool:
        """An ``Authorization`` header came (right or wrong)."""
        return self.authorization is not None

    @property
    def client_id(self) -> str | None:
        return self.header("X-ClientId")

    @property
    def range(self) -> str | None:
        return self.header("Range")

    @property
    def if_range(self) -> str | None:
        return self.header("If-Range")

    @property
    def if_none_match(self) -> str | None:
        return self.header("If-None-Match")

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
            "sent": self.sent,
        }
        if self.json is not None:
            data["json"] = self.json
        elif self.body:
            data["body"] = self.body.decode("utf-8", "replace")
        return data


# --------------------------------------------------------------------------------------------
# Requests, answers, routes


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
    scenario: Scenario  # the check services' scenario (an empty one for other emulators)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(frozen=True)
class FilePart:
    """A byte range of a file as the body of an answer: sent in blocks, not read whole, and
    cut short after ``cut_after`` bytes when that is set (the way a mobile link fails in the
    middle of a download)."""

    path: Path
    first: int
    length: int
    cut_after: int | None = None


@dataclass
class Reply:
    """An answer: a JSON value, raw bytes or a :class:`FilePart`, with its status and extra
    headers (``content_type`` None: no ``Content-Type``, for answers without a body)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json; charset=utf-8"

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if self.body is None or isinstance(self.body, FilePart):
            return b""
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()

    @property
    def length(self) -> int:
        """The body's length, the ``Content-Length`` of the answer."""
        if isinstance(self.body, FilePart):
            return self.body.length
        return len(self.encode())


@dataclass(frozen=True)
class Route:
    """An endpoint matched by path: its name, the API version in the path, the methods it
    takes and the handler that answers it."""

    endpoint: str
    version: int | None
    methods: tuple[str, ...]
    handler: Callable[[Request], Reply]


def new_request_id() -> str:
    """A ``reqId``: a random UUID, as the services send."""
    return str(uuid.uuid4())


def now_ms() -> int:
    """A ``reqTimestamp``: Unix time in milliseconds."""
    return int(time.time() * 1000)


def object_body(request: Request, server: HTTPEmulator) -> Mapping[str, Any] | Reply:
    """The request's JSON object body, or the 400 answer to give when it is not one."""
    if request.json_error is not None:
        return server.error(400, f"request body is not JSON: {request.json_error}")
    if not isinstance(request.json, Mapping):
        return server.error(400, "request body must be a JSON object")
    return request.json


# --------------------------------------------------------------------------------------------
# The machinery

#: The scenario of emulators that are not driven by one (every request carries a scenario).
_NO_SCENARIO = Scenario()


class HTTPEmulator:
    """Base of every emulator: serves ``route()``'d endpoints on ``host:port`` (port 0: any
    free one) from a background thread and logs every request.

    Use as a context manager, or :meth:`start` and :meth:`close`. Subclasses set ``name`` and
    implement :meth:`route` (and may override :meth:`log_path`, :meth:`error_body`,
    :meth:`emergency_body`, :meth:`reset_state` and :meth:`_admin`).

    ``tls=True`` serves HTTPS with a self-signed certificate (:func:`self_signed_certificate`;
    its path is :attr:`certificate_path`, for clients that pin it), or with ``certificate``
    (a ``(certificate, key)`` pair of PEM files) when given. ``admin=True`` serves the admin
    endpoint, which is never logged and never faulted:

    * ``GET /_emulator/requests`` → the request log; ``DELETE`` clears it;
    * ``POST /_emulator/reset`` → clears the log and what the emulated service accumulated
      (:meth:`reset_state`);

    and whatever a subclass adds. ``verbose=True`` prints each request as one JSON line on
    stderr.
    """

    name: ClassVar[str] = "emulator"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        admin: bool = True,
        verbose: bool = False,
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        self._lock = threading.Condition(threading.RLock())
        self._requests: list[RequestRecord] = []
        #: Keep about this many of the latest request records (None: every one). A long run
        #: (the soak benchmark's million checks) would otherwise grow the emulator's heap
        #: without end, and its full garbage collections with it: pauses of 100–500 ms that
        #: show up as a slow check service in the client's figures.
        self.history: int | None = None
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

    @property
    def connections_accepted(self) -> int:
        """Connections this server has taken since it started."""
        return self._httpd.accepted

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
        version only; a file's path for the file server), oldest first."""
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
            if self.history is not None and len(self._requests) > 2 * self.history:
                del self._requests[: -self.history]  # in halves: amortised, not per request
            self._lock.notify_all()

    # -- what subclasses provide ----------------------------------------------------------------

    def route(self, method: str, path: str) -> Route | None:
        """The endpoint serving ``path`` (None: 404)."""
        raise NotImplementedError

    def log_path(self, path: str) -> str:
        """The path a request is logged under (the file server logs paths relative to its
        directory)."""
        return path

    def error_body(self, status: int, code: int | None, description: str | None) -> Any:
        """The body of an error answer (overridden by the ТС ПИоТ and the ATOL web server)."""
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

    def _snapshot(self) -> Scenario:
        """The scenario one request is answered from, start to end."""
        return _NO_SCENARIO

    def _next_step(self, scenario: Scenario, route: Route) -> tuple[Behaviour, float]:
        """How this request to ``route`` behaves, and its latency in ms (no faults here)."""
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
        """Answer an admin request (``/_emulator/…``); subclasses add their own paths and
        pass the others on."""
        try:
            payload = json.loads(body) if body else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return Reply(400, {"error": f"body is not JSON: {exc}"})
        try:
            reply = self._admin_request(method, path, payload)
        except (ValueError, TypeError) as exc:  # a bad scenario or fault: the old one stays
            return Reply(400, {"error": str(exc)})
        return reply or Reply(404, {"error": f"no admin endpoint {method} {path}"})

    def _admin_request(self, method: str, path: str, payload: Any) -> Reply | None:
        """The admin answer for ``path`` (None: no such endpoint)."""
        if path == "/_emulator/requests":
            if method == "GET":
                return Reply(200, [r.to_dict() for r in self.requests])
            if method == "DELETE":
                self.clear_requests()
                return Reply(200, {"ok": True})
            return Reply(405, {"error": f"{method} not allowed on {path}"})
        if path == "/_emulator/reset":
            if method == "POST":
                self.clear_requests()
                self.reset_state()
                return Reply(200, {"ok": True})
            return Reply(405, {"error": f"{method} not allowed on {path}"})
        return None


class EmulatorServer(HTTPEmulator):
    """An emulator of a check service, driven by a :class:`~markd.emulators.scenario.Scenario`
    (its ``section``): what it answers, and how each endpoint misbehaves.

    Besides the :class:`HTTPEmulator` options it takes the scenario (a dict, a
    :class:`Scenario`, a ``.json``/``.toml`` path, or None for the defaults). Its admin
    endpoint also serves the scenario:

    * ``GET /_emulator/scenario`` → the scenario; ``POST`` replaces it, ``PATCH`` merges into it
      (:meth:`Scenario.merged`); both answer ``{"ok": true}`` or 400 ``{"error": …}``;
    * ``POST /_emulator/reset`` also restarts the fault sequences (and clears the Local
      Module's sold codes, the ТС ПИоТ's warm-up).
    """

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
        self._scenario = Scenario.coerce(scenario)
        self._steps_taken: dict[str, int] = {}
        super().__init__(
            host=host, port=port, tls=tls, admin=admin, verbose=verbose, certificate=certificate
        )

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

    # -- playing a request ----------------------------------------------------------------------

    def _snapshot(self) -> Scenario:
        return self.scenario

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

    def _admin_request(self, method: str, path: str, payload: Any) -> Reply | None:
        if path == "/_emulator/scenario":
            if method == "GET":
                return Reply(200, self.scenario.to_dict())
            if method == "POST":
                self.set_scenario(_object(payload, "scenario"))
                return Reply(200, {"ok": True})
            if method == "PATCH":
                self.patch_scenario(_object(payload, "patch"))
                return Reply(200, {"ok": True})
            return Reply(405, {"error": f"{method} not allowed on {path}"})
        reply = super()._admin_request(method, path, payload)
        if path == "/_emulator/reset" and reply is not None and reply.status == 200:
            with self._lock:
                self._steps_taken.clear()
        return reply


def _object(payload: Any, what: str) -> Mapping[str, Any]:
    # Checked here: a string would be taken for a file path, None for the defaults.
    if not isinstance(payload, Mapping):
        raise ScenarioError(f"{what}: expected a table/object, got {type(payload).__name__}")
    return payload


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


# --------------------------------------------------------------------------------------------
# Files


_RANGE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")
_FILE_TYPES = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".gz": "application/gzip",
}


class StaticFiles:
    """The regular files under ``root`` as answers, with the parts of HTTP/1.1 a download that
    resumes and revalidates relies on:

    * ``GET`` and ``HEAD``; ``404`` for anything that is not a regular file under the
      directory (``..`` and symlinks out of it included);
    * a strong ``ETag`` per file, derived from its sha256 (so a file rewritten with other
      content gets another ETag, whatever its size and time), and ``Last-Modified``;
    * ``If-None-Match`` (a list of ETags or ``*``) → ``304 Not Modified``;
    * ``Range: bytes=N-``, ``bytes=N-M`` and ``bytes=-N`` → ``206 Partial Content`` with
      ``Content-Range``; a range that is malformed or starts past the end → ``416`` with
      ``Content-Range: bytes */SIZE``; several ranges in one request → the whole file (``200``,
      as RFC 9110 allows); another unit than ``bytes`` is ignored;
    * ``If-Range`` with an ETag: the range is served only when it is the file's current ETag,
      otherwise the whole file comes with ``200``. An HTTP date in ``If-Range`` never matches
      (the whole file again: always safe);
    * optional HTTP Basic authentication (``auth=(user, password)``): ``401`` without it.

    ``cut_after`` maps a relative path to the body bytes to send before the connection is
    dropped, once (the entry goes when used).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        auth: tuple[str, str] | None = None,
        realm: str = "markd export",
    ) -> None:
        self.root = Path(root).resolve()
        self.auth = auth
        self.realm = realm
        #: relative path → body bytes to send before dropping the connection (used once).
        self.cut_after: dict[str, int] = {}
        self._lock = threading.Lock()
        self._etags: dict[tuple[str, int, int, int], str] = {}

    @staticmethod
    def relative(url_path: str) -> str:
        """The path of a request relative to the directory (no leading ``/``, unquoted)."""
        return urllib.parse.unquote(url_path).lstrip("/")

    def resolve(self, relative: str) -> Path | None:
        """The regular file ``relative`` names under the directory (None: 404)."""
        parts = relative.split("/")
        if not relative or any(p in ("", ".", "..") for p in parts) or "\0" in relative:
            return None
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def etag(self, path: Path) -> str:
        """The strong ETag of ``path``: its sha256 (cached while size, mtime and inode stay)."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            found = self._etags.get(key)
        if found is None:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            found = f'"{digest.hexdigest()[:32]}"'
            with self._lock:
                self._etags[key] = found
        return found

    def take_cut(self, relative: str) -> int | None:
        with self._lock:
            return self.cut_after.pop(relative, None)

    def answer(self, request: Request) -> Reply:
        """The answer to a ``GET`` or ``HEAD`` of ``request.path``."""
        if self.auth is not None and not self._authorized(request.header("Authorization")):
            return _empty(401, {"WWW-Authenticate": f'Basic realm="{self.realm}"'})
        relative = self.relative(request.path)
        path = self.resolve(relative)
        if path is None:
            return _empty(404)
        stat = path.stat()
        size = stat.st_size
        etag = self.etag(path)
        headers = {
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        if_none_match = request.header("If-None-Match")
        if if_none_match is not None and _etag_listed(if_none_match, etag):
            return _empty(304, headers)
        first, last, status = 0, size - 1, 200
        range_header = request.header("Range")
        if_range = request.header("If-Range")
        if range_header is not None and (if_range is None or if_range.strip() == etag):
            wanted = _parse_range(range_header, size)
            if wanted == "unsatisfiable":
                return _empty(416, {**headers, "Content-Range": f"bytes */{size}"})
            if isinstance(wanted, tuple):
                first, last = wanted
                status = 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        # Only a body that is sent uses up a cut: a HEAD or a 304 leaves it for the next GET.
        cut = self.take_cut(relative) if request.method == "GET" else None
        part = FilePart(path, first, max(0, last - first + 1), cut)
        content_type = _FILE_TYPES.get(path.suffix, "application/octet-stream")
        return Reply(status, part, headers, content_type)

    def _authorized(self, header: str | None) -> bool:
        assert self.auth is not None
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (user, password) == self.auth


def _empty(status: int, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, None, dict(headers or {}), content_type=None)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """``(first, last)`` of a ``bytes=`` range; ``"unsatisfiable"``; or None to ignore it."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None  # several ranges: the whole file is a valid answer
    match = _RANGE.fullmatch(spec)
    if match is None or match.group(0).strip() == "-":
        return "unsatisfiable"
    first_text, last_text = match.groups()
    if not first_text:  # suffix: the last N bytes
        count = int(last_text)
        if count == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - count), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if first >= size or last < first:
        return "unsatisfiable"
    return first, min(last, size - 1)


def _etag_listed(header: str, etag: str) -> bool:
    """``If-None-Match``: weak comparison against a list of ETags or ``*``."""
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(item.strip().removeprefix("W/") == wanted for item in header.split(","))


# --------------------------------------------------------------------------------------------
# Sockets and threads


#: A file body goes out in blocks of this size.
_FILE_BLOCK = 1 << 16


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection; connections are tracked so :meth:`close_connections` can end
    keep-alive and black-holed ones (the stock server would wait for them forever)."""

    daemon_threads = True
    block_on_close = False
    #: Pending connections the kernel holds (socketserver's default is 5). The real services
    #: take many connections at once; with 5, twenty tills checking at once through markd
    #: (tools/bench/mark_unit.py) had SYNs dropped and retried a second later.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: HTTPEmulator) -> None:
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        #: Connections taken since the start (a client that keeps its connections alive
        #: opens few).
        self.accepted = 0
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
            self.accepted += 1
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
        """The request's body, framed by h11 (see "request bodies" in the module docstring);
        ValueError when h11 refuses its framing or the body is cut short."""
        framing = self.headers.get("Transfer-Encoding")
        if framing is None:
            framing_line = f"Content-Length: {self.headers.get('Content-Length') or 0}"
        else:
            framing_line = f"Transfer-Encoding: {framing}"
        body = h11.Connection(h11.SERVER)
        body.receive_data(f"POST / HTTP/1.1\r\nHost: x\r\n{framing_line}\r\n\r\n".encode("latin-1"))
        parts: list[bytes] = []
        fed = 0  # bytes peeked from rfile and given to h11, not yet taken from rfile
        while True:
            try:
                event = body.next_event()
            except (h11.RemoteProtocolError, ValueError) as exc:  # ValueError: h11 0.14
                raise ValueError(f"bad body framing: {type(exc).__name__}") from None
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                # What h11 did not use is the start of the next request: it stays in rfile.
                self.rfile.read(fed - len(body.trailing_data[0]))
                return b"".join(parts)
            elif event is h11.NEED_DATA:
                # h11 holds every byte it was given, so those may now leave rfile.
                self.rfile.read(fed)
                peeked = self.rfile.peek(_BODY_READ)  # type: ignore[attr-defined]
                fed = len(peeked)
                body.receive_data(peeked)  # empty at the end of the stream: a cut body

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
            path=emulator.log_path(path),
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
        scenario = emulator._snapshot()  # one snapshot answers the whole request
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
        part = reply.body if isinstance(reply.body, FilePart) else None
        if part is not None and part.cut_after is not None and self.command != "HEAD":
            record.outcome = "cut"
        self._verbose(record)
        self._send(reply, record)

    def _send(self, reply: Reply, record: RequestRecord | None = None) -> None:
        """Status line, headers and body in one write: with TCP_NODELAY, one segment. A file
        body follows in blocks, its first block in that same write."""
        payload = reply.encode()
        length = reply.length
        lines = [
            f"HTTP/1.1 {reply.status} {_phrase(reply.status)}",
            f"Server: markd-emulator-{self.server.emulator.name}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
        ]
        if length or reply.status not in (204, 304):
            if reply.content_type is not None:
                lines.append(f"Content-Type: {reply.content_type}")
            lines.append(f"Content-Length: {length}")
        lines.extend(f"{name}: {value}" for name, value in reply.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        part = reply.body if isinstance(reply.body, FilePart) else None
        if self.command == "HEAD":
            payload, part = b"", None
        try:
            if part is not None:
                self._send_file(head, part, record)
                return
            if record is not None:
                record.sent = len(payload)
            self.wfile.write(head + payload)
        except OSError:
            self.close_connection = True

    def _send_file(self, head: bytes, part: FilePart, record: RequestRecord | None) -> None:
        limit = part.length if part.cut_after is None else min(part.cut_after, part.length)
        with open(part.path, "rb") as source:
            source.seek(part.first)
            block = source.read(min(_FILE_BLOCK, limit))
            sent = len(block)
            if record is not None:
                record.sent = sent  # counted before the write: the log is never behind
            self.wfile.write(head + block)
            while sent < limit:
                block = source.read(min(_FILE_BLOCK, limit - sent))
                if not block:
                    break
                sent += len(block)
                if record is not None:
                    record.sent = sent
                self.wfile.write(block)
        if part.cut_after is not None:
            # FIN after the bytes sent so far: the client reads them, then a short body.
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
        elif sent < part.length:
            self.close_connection = True  # the file shrank: the next answer would be garbled

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


__all__ = [
    "EmulatorServer",
    "FilePart",
    "HTTPEmulator",
    "Reply",
    "Request",
    "RequestRecord",
    "Route",
    "StaticFiles",
    "TLSUnavailableError",
    "new_request_id",
    "now_ms",
    "object_body",
    "self_signed_certificate",
]
