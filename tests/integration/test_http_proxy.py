"""markd.http.client through a real HTTP proxy on loopback: our test proxy
(:mod:`markd.emulators.http_proxy`) with its faults, then tinyproxy, a proxy shops really run.

Every exchange crosses real sockets: client → proxy → an origin server (plain HTTP, or TLS
with a self-signed certificate inside a CONNECT tunnel). The origin records what reached it,
so "the proxy's credentials never reach the target" is an assertion on the wire.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import WATER
from markd.checks.local_module import LocalModuleClient
from markd.checks.results import FAILURE_KINDS, SourceFailure
from markd.checks.tspiot import TspiotClient
from markd.codes import parse
from markd.emulators import testing
from markd.emulators.http_proxy import HttpProxy
from markd.emulators.server import self_signed_certificate
from markd.http.client import (
    PROXY_ERROR_KINDS,
    HTTPClient,
    HTTPError,
    HTTPTimeout,
    ProxyError,
    Response,
)
from markd.proxy import ProxySettings
from markd.secrets import Secret

USER = "kiosk"
PASSWORD = "Pr0xy-s3cret_pw"  # tinyproxy's configuration parser takes no ":" in a password
WRONG = "wr0ng-Guess_pw"
BUDGET_S = 3.0


def deadline(seconds: float = BUDGET_S) -> float:
    return time.monotonic() + seconds


# -- an origin that records what reached it ------------------------------------------------------


class Origin:
    """A loopback HTTP(S) server: ``/json`` answers with a Content-Length, ``/chunked`` in
    chunks, ``/eof`` with a body that ends when the connection closes."""

    def __init__(self, *, tls: bool = False) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.connections: set[int] = set()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                origin.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                origin.connections.add(id(self.connection))
                if self.path == "/chunked":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for piece in (b'{"chunked":', b" true}"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                body = b'{"path": "%s"}' % self.path.encode()
                self.send_response(200)
                if self.path == "/eof":
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls:
            cert, key = self_signed_certificate()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            # The handshake runs in the handler's thread, so a broken one never stalls accept.
            self.httpd.socket = context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tls_origin() -> Iterator[Origin]:
    server = Origin(tls=True)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy() -> Iterator[HttpProxy]:
    with HttpProxy() as server:
        yield server


@pytest.fixture
def auth_proxy() -> Iterator[HttpProxy]:
    with HttpProxy(credentials=(USER, PASSWORD)) as server:
        yield server


def through(url: str, *, password: str | None = None, no_proxy: tuple[str, ...] = ()) -> HTTPClient:
    """A client whose every request goes through the proxy at ``url`` (loopback included,
    unless ``no_proxy`` says otherwise)."""
    credentials = Secret(f"{USER}:{password}", "test") if password is not None else None
    settings = ProxySettings.parse(url, no_proxy=no_proxy, credentials=credentials, environ={})
    return HTTPClient(proxy=settings, allow_self_signed_loopback=True)


async def get(client: HTTPClient, url: str, seconds: float = BUDGET_S) -> Response:
    return await client.request("GET", url, deadline=deadline(seconds))


async def proxy_error(client: HTTPClient, url: str, seconds: float = BUDGET_S) -> ProxyError:
    try:
        with pytest.raises(ProxyError) as caught:
            await get(client, url, seconds)
    finally:
        client.close()
    assert PASSWORD not in str(caught.value) and WRONG not in str(caught.value)
    return caught.value


# -- our proxy: the happy paths -----------------------------------------------------------------


async def test_http_targets_go_in_absolute_form_on_one_kept_alive_connection(
    proxy: HttpProxy, origin: Origin
) -> None:
    client = through(proxy.url)
    try:
        answers = [await get(client, origin.url + f"/json?n={n}") for n in range(3)]
        chunked = [await get(client, origin.url + "/chunked") for _ in range(2)]
    finally:
        client.close()
    assert [a.json() for a in answers] == [{"path": f"/json?n={n}"} for n in range(3)]
    assert [a.reused for a in answers + chunked] == [False, True, True, True, True]
    assert [c.json() for c in chunked] == [{"chunked": True}] * 2
    records = proxy.requests
    assert [r.target for r in records[:3]] == [origin.url + f"/json?n={n}" for n in range(3)]
    assert {r.connection for r in records} == {1} and proxy.count("GET") == 5
    assert all(r.outcome == "forwarded" and r.status == 200 for r in records)
    # The origin got origin-form requests with the target's Host, and no proxy headers.
    assert [path for path, _ in origin.seen[:3]] == [f"/json?n={n}" for n in range(3)]
    assert origin.seen[0][1]["host"] == origin.url.removeprefix("http://")
    assert all("proxy-authorization" not in headers for _, headers in origin.seen)


async def test_an_answer_ending_at_close_is_relayed_and_the_next_request_still_works(
    proxy: HttpProxy, origin: Origin
) -> None:
    client = through(proxy.url)
    try:
        first = await get(client, origin.url + "/eof")
        second = await get(client, origin.url + "/json")
    finally:
        client.close()
    assert first.json() == {"path": "/eof"} and first.headers["connection"] == "close"
    assert second.json() == {"path": "/json"} and not second.reused
    assert [r.connection for r in proxy.requests] == [1, 2]


async def test_https_targets_go_through_one_connect_tunnel(
    proxy: HttpProxy, tls_origin: Origin
) -> None:
    client = through(proxy.url)
    try:
        answers = [await get(client, tls_origin.url + f"/json?n={n}") for n in range(3)]
    finally:
        client.close()
    assert [a.json() for a in answers] == [{"path": f"/json?n={n}"} for n in range(3)]
    assert [a.reused for a in answers] == [False, True, True]
    assert proxy.count() == proxy.count("CONNECT", outcome="tunnel") == 1
    tunnel = proxy.last()
    assert tunnel is not None and tunnel.target == tls_origin.url.removeprefix("https://")
    assert tunnel.bytes_up > 0 and tunnel.bytes_down > 0
    # Inside the tunnel: origin-form requests, our own Host, nothing for the proxy.
    assert [path for path, _ in tls_origin.seen] == [f"/json?n={n}" for n in range(3)]
    assert len(tls_origin.connections) == 1
    assert all("proxy-authorization" not in headers for _, headers in tls_origin.seen)


async def test_default_no_proxy_keeps_loopback_direct(
    proxy: HttpProxy, origin: Origin, tls_origin: Origin
) -> None:
    settings = ProxySettings.parse(proxy.url, environ={})
    client = HTTPClient(proxy=settings, allow_self_signed_loopback=True)
    try:
        assert (await get(client, origin.url + "/json")).status == 200
        assert (await get(client, tls_origin.url + "/json")).status == 200
        localhost = origin.url.replace("127.0.0.1", "localhost")
        assert (await get(client, localhost + "/json")).status == 200
    finally:
        client.close()
    assert proxy.requests == []
    # The same targets with an empty direct list: through the proxy.
    client = through(proxy.url)
    try:
        assert (await get(client, origin.url + "/json")).status == 200
        assert (await get(client, tls_origin.url + "/json")).status == 200
    finally:
        client.close()
    assert [r.method for r in proxy.requests] == ["GET", "CONNECT"]


# -- credentials ----------------------------------------------------------------------------------


async def test_right_credentials_pass_and_never_reach_the_target(
    auth_proxy: HttpProxy, origin: Origin, tls_origin: Origin
) -> None:
    client = through(auth_proxy.url, password=PASSWORD)
    try:
        assert (await get(client, origin.url + "/json")).json() == {"path": "/json"}
        assert (await get(client, origin.url + "/json")).reused
        assert (await get(client, tls_origin.url + "/json")).json() == {"path": "/json"}
    finally:
        client.close()
    assert [(r.method, r.authorization_ok) for r in auth_proxy.requests] == [
        ("GET", True),
        ("GET", True),
        ("CONNECT", True),
    ]
    for _, headers in origin.seen + tls_origin.seen:
        assert not any(name.startswith("proxy-") for name in headers)


@pytest.mark.parametrize("password", [WRONG, None], ids=["wrong", "missing"])
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_wrong_or_missing_credentials_are_proxy_auth(
    auth_proxy: HttpProxy, origin: Origin, tls_origin: Origin, scheme: str, password: str | None
) -> None:
    target = origin if scheme == "http" else tls_origin
    error = await proxy_error(through(auth_proxy.url, password=password), target.url + "/json")
    assert (error.kind, error.status, error.proxy) == ("proxy-auth", 407, str(auth_proxy.endpoint))
    assert str(auth_proxy.endpoint) in str(error) and "407" in str(error)
    expected = "refused the credentials" if password else "none are configured"
    assert expected in str(error)
    record = auth_proxy.last()
    assert record is not None and record.outcome == "auth-required"
    assert (record.authorization_sent, record.authorization_ok) == (password is not None, False)
    assert target.seen == []


# -- the proxy failing ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_stopped_proxy_is_unreachable_at_once(
    origin: Origin, tls_origin: Origin, scheme: str
) -> None:
    proxy = HttpProxy().start()
    proxy.close()
    target = origin if scheme == "http" else tls_origin
    started = time.monotonic()
    error = await proxy_error(through(proxy.url, password=PASSWORD), target.url + "/json")
    assert time.monotonic() - started < 0.5
    assert error.kind == "proxy-unreachable" and error.status is None
    assert f"cannot connect to proxy {proxy.endpoint}" in str(error)
    assert target.seen == []


async def test_a_hanging_proxy_costs_the_budget_and_no_more(
    proxy: HttpProxy, tls_origin: Origin, origin: Origin
) -> None:
    proxy.hang = True
    started = time.monotonic()
    error = await proxy_error(through(proxy.url), tls_origin.url + "/json", seconds=0.3)
    took = time.monotonic() - started
    assert error.kind == "proxy-timeout" and "did not answer CONNECT" in str(error)
    assert 0.28 <= took < 0.35
    # For an http:// target the request is relayed: a silent proxy looks like a silent
    # target, so it is the target's timeout (the message names the proxy).
    client = through(proxy.url)
    started = time.monotonic()
    try:
        with pytest.raises(HTTPTimeout) as caught:
            await get(client, origin.url + "/json", 0.3)
    finally:
        client.close()
    assert 0.28 <= time.monotonic() - started < 0.35
    assert not isinstance(caught.value, ProxyError) and caught.value.kind == "timeout"
    assert f"via proxy {proxy.endpoint}" in str(caught.value)
    assert proxy.count(outcome="hung") == 2


async def test_a_proxy_accepting_nothing_in_time_is_a_proxy_timeout() -> None:
    """A full accept queue (a proxy under load): the connection itself does not complete."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        # Fill the backlog so further SYNs go unanswered (Linux drops them).
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        error = await proxy_error(
            through(f"http://127.0.0.1:{port}"), "https://ismp.example:443/", seconds=0.3
        )
        assert error.kind == "proxy-timeout", error
        assert time.monotonic() - started < 0.35
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_tunnel_broken_after_200_is_a_proxy_error(
    proxy: HttpProxy, tls_origin: Origin
) -> None:
    proxy.break_tunnel = True
    error = await proxy_error(through(proxy.url), tls_origin.url + "/json")
    assert error.kind == "proxy-error" and "broken tunnel" in str(error)
    assert proxy.count("CONNECT", outcome="broken-tunnel") == 1


@pytest.mark.parametrize("status", [502, 403, 504])
async def test_a_refused_tunnel_keeps_its_status(
    proxy: HttpProxy, tls_origin: Origin, status: int
) -> None:
    proxy.connect_status = status
    error = await proxy_error(through(proxy.url), tls_origin.url + "/json")
    assert (error.kind, error.status) == ("proxy-error", status)
    assert f"HTTP {status}" in str(error) and str(proxy.endpoint) in str(error)


async def test_latency_is_spent_inside_the_budget(proxy: HttpProxy, tls_origin: Origin) -> None:
    proxy.latency_ms = 150
    client = through(proxy.url)
    try:
        started = time.monotonic()
        assert (await get(client, tls_origin.url + "/json")).status == 200
        assert time.monotonic() - started >= 0.15
    finally:
        client.close()
    client = through(proxy.url)
    error = await proxy_error(client, tls_origin.url + "/json", seconds=0.1)
    assert error.kind == "proxy-timeout"


async def test_a_target_tls_failure_inside_a_good_tunnel_stays_the_targets(
    proxy: HttpProxy, tls_origin: Origin
) -> None:
    settings = ProxySettings.parse(proxy.url, no_proxy=(), environ={})
    client = HTTPClient(proxy=settings)  # the self-signed certificate is not accepted
    try:
        with pytest.raises(HTTPError) as caught:
            await get(client, tls_origin.url + "/json")
    finally:
        client.close()
    assert not isinstance(caught.value, ProxyError)
    assert caught.value.kind == "unreachable" and "TLS with 127.0.0.1" in str(caught.value)
    assert proxy.count("CONNECT", outcome="tunnel") == 1


# -- proxies that answer CONNECT badly -----------------------------------------------------------


class RawProxy:
    """Answers every connection with fixed bytes (after reading the request head), then
    closes: a broken or hostile proxy."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self.answer)
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize(
    ("answer", "kind", "text"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "proxy-error", "not HTTP"),
        (b"HTTP/1.1 200 Connection established\r\nX-Half: ", "proxy-error", "cut short"),
        (b"HTTP/1.1 2", "proxy-error", "cut short"),
        (b"", "proxy-unreachable", "without answering"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n", "proxy-error", "larger"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 407 Who\r\n\r\n", "proxy-auth", "407"),
    ],
    ids=["garbage", "truncated-headers", "truncated-status", "silent-close", "huge-head", "1xx"],
)
async def test_bad_answers_to_connect(answer: bytes, kind: str, text: str) -> None:
    async with RawProxy(answer) as url:
        error = await proxy_error(through(url), "https://127.0.0.1:9/x")
    assert error.kind == kind and text in str(error)


def test_every_proxy_error_kind_is_a_failure_kind() -> None:
    assert set(PROXY_ERROR_KINDS) <= set(FAILURE_KINDS)


# -- the check clients map the proxy's failures --------------------------------------------------


async def test_the_tspiot_client_reports_proxy_failures_by_kind(auth_proxy: HttpProxy) -> None:
    with testing.tspiot({"tspiot": {"versions": [3]}}, tls=True) as server:
        for password, kind in ((WRONG, "proxy-auth"), (PASSWORD, None)):
            settings = ProxySettings.parse(
                auth_proxy.url,
                no_proxy=(),
                credentials=Secret(f"{USER}:{password}", "test"),
                environ={},
            )
            client = TspiotClient(
                server.url,
                client_id="kiosk-7",
                token=Secret("token-value", "test"),
                allow_self_signed=True,
                proxy=settings,
            )
            try:
                result = await client.check(parse(WATER), deadline())
            finally:
                client.close()
            if kind is None:
                assert not isinstance(result, SourceFailure), result
            else:
                assert isinstance(result, SourceFailure)
                assert result.kind == kind and WRONG not in result.detail
    assert auth_proxy.count("CONNECT") >= 2


async def test_the_local_module_client_reports_a_stopped_proxy() -> None:
    proxy = HttpProxy().start()
    proxy.close()
    settings = ProxySettings.parse(proxy.url, no_proxy=(), environ={})
    with testing.local_module() as server:
        client = LocalModuleClient(
            server.url,
            user="admin",
            password=Secret("admin", "test"),
            fn_serial="7380440700000001",
            proxy=settings,
        )
        try:
            result = await client.check(parse(WATER), deadline())
        finally:
            client.close()
        assert isinstance(result, SourceFailure) and result.kind == "proxy-unreachable"
        assert server.requests == []
        # Under the default direct list the loopback module is asked directly.
        direct = LocalModuleClient(
            server.url,
            user="admin",
            password=Secret("admin", "test"),
            fn_serial="7380440700000001",
            proxy=ProxySettings.parse(proxy.url, environ={}),
        )
        try:
            result = await direct.check(parse(WATER), deadline())
        finally:
            direct.close()
        assert not isinstance(result, SourceFailure), result


# -- tinyproxy ----------------------------------------------------------------------------------

TINYPROXY = shutil.which("tinyproxy")
needs_tinyproxy = pytest.mark.skipif(
    TINYPROXY is None,
    reason="tinyproxy is not installed (Debian package 'tinyproxy'; a root tools/bootstrap.sh "
    "installs it)",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Tinyproxy:
    """tinyproxy in the foreground on a free loopback port, with Basic authentication.

    No ``ConnectPort`` line: tinyproxy.conf(5) says CONNECT is then allowed to every port,
    which the emulators' random ports need.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        assert TINYPROXY is not None
        # The port is free when probed but could be taken before tinyproxy binds it: then
        # tinyproxy exits at once and another port is tried.
        for _ in range(5):
            self.port = _free_port()
            config = self.directory / "tinyproxy.conf"
            config.write_text(
                f"Port {self.port}\n"
                "Listen 127.0.0.1\n"
                "Allow 127.0.0.1\n"
                f"BasicAuth {USER} {PASSWORD}\n"
                "Timeout 30\n"
                "MaxClients 32\n"
                "LogLevel Info\n"
                f'LogFile "{self.directory / "tinyproxy.log"}"\n'
            )
            with open(self.directory / "tinyproxy.stderr", "wb") as stderr:
                self.process = subprocess.Popen(
                    [TINYPROXY, "-d", "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,  # its own process group: killed whole at teardown
                )
            if self._wait_listening(timeout=5.0):
                return self
            self.stop()
        raise RuntimeError(f"tinyproxy did not start: {self.log()}")

    def _wait_listening(self, timeout: float) -> bool:
        assert self.process is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.01)
                continue
            return True
        return False

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None

    def log(self) -> str:
        parts = []
        for name in ("tinyproxy.stderr", "tinyproxy.log"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    if TINYPROXY is None:
        pytest.skip("tinyproxy is not installed")
    proxy = Tinyproxy(tmp_path).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@needs_tinyproxy
async def test_tinyproxy_relays_http_targets(tinyproxy: Tinyproxy, origin: Origin) -> None:
    client = through(tinyproxy.url, password=PASSWORD)
    try:
        answers = [await get(client, origin.url + f"/json?n={n}") for n in range(3)]
        chunked = await get(client, origin.url + "/chunked")
    finally:
        client.close()
    assert [a.json() for a in answers] == [{"path": f"/json?n={n}"} for n in range(3)]
    assert chunked.json() == {"chunked": True}
    assert [path for path, _ in origin.seen] == [f"/json?n={n}" for n in range(3)] + ["/chunked"]
    assert all("proxy-authorization" not in headers for _, headers in origin.seen)
    assert all("tinyproxy" in headers.get("via", "") for _, headers in origin.seen)


@needs_tinyproxy
async def test_tinyproxy_tunnels_https_targets(tinyproxy: Tinyproxy, tls_origin: Origin) -> None:
    client = through(tinyproxy.url, password=PASSWORD)
    try:
        answers = [await get(client, tls_origin.url + f"/json?n={n}") for n in range(3)]
    finally:
        client.close()
    assert [a.json() for a in answers] == [{"path": f"/json?n={n}"} for n in range(3)]
    assert [a.reused for a in answers] == [False, True, True]
    assert len(tls_origin.connections) == 1


@needs_tinyproxy
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_tinyproxy_407_is_proxy_auth(
    tinyproxy: Tinyproxy, origin: Origin, tls_origin: Origin, scheme: str
) -> None:
    target = origin if scheme == "http" else tls_origin
    error = await proxy_error(through(tinyproxy.url), target.url + "/json")
    assert (error.kind, error.status) == ("proxy-auth", 407)
    assert f"127.0.0.1:{tinyproxy.port}" in str(error) and "none are configured" in str(error)
    assert target.seen == []


@needs_tinyproxy
async def test_tinyproxy_wrong_credentials_on_a_tunnel_are_proxy_auth(
    tinyproxy: Tinyproxy, tls_origin: Origin
) -> None:
    """tinyproxy up to 1.11 answers wrong credentials with 401, not 407 (its issue #532); a
    401 to CONNECT can only be the proxy's, so it is proxy-auth all the same."""
    error = await proxy_error(through(tinyproxy.url, password=WRONG), tls_origin.url + "/json")
    assert error.kind == "proxy-auth" and error.status in (401, 407)
    assert "refused the credentials" in str(error)
    assert tls_origin.seen == []


@needs_tinyproxy
async def test_tinyproxy_wrong_credentials_on_an_http_target(
    tinyproxy: Tinyproxy, origin: Origin
) -> None:
    """Through a plain-HTTP proxy a 401 cannot be told from the target's own 401, so a
    tinyproxy that answers 401 (up to 1.11, issue #532) gives a 401 answer, not an error;
    a fixed tinyproxy gives 407 and proxy-auth. Either way the target never saw the request."""
    client = through(tinyproxy.url, password=WRONG)
    try:
        response = await get(client, origin.url + "/json")
    except ProxyError as exc:
        assert (exc.kind, exc.status) == ("proxy-auth", 407) and WRONG not in str(exc)
    else:
        assert response.status == 401
        assert "tinyproxy" in response.headers.get("server", "")
    finally:
        client.close()
    assert origin.seen == []


def test_tinyproxy_fixture_stops_what_it_started(tmp_path: Path) -> None:
    if TINYPROXY is None:
        pytest.skip("tinyproxy is not installed")
    proxy = Tinyproxy(tmp_path).start()
    process = proxy.process
    assert process is not None
    proxy.stop()
    assert process.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5).close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "outcome"),
    [
        (
            b"POST http://x/ HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000,
            400,
            "bad-request",
        ),
        (b"POST http://x/ HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999", 413, "too-large"),
        (b"POST http://x/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked", 501, "bad-request"),
        (b"GET http://x/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (20 << 10), 431, "too-large"),
        (b"GET http://x/ HTTP/1.1\r\nno colon", 400, "bad-request"),
    ],
    ids=["length-5000-digits", "body-too-large", "chunked", "head-too-large", "malformed"],
)
def test_requests_the_proxy_cannot_take_are_refused_and_closed(
    proxy: HttpProxy, request_bytes: bytes, status: int, outcome: str
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request_bytes + b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert b"\r\nConnection: close\r\n" in answer
    assert proxy.last() is not None and proxy.last().outcome == outcome
