"""Fleet sync through an HTTP proxy: the static file server behind the test proxy
(:mod:`markd.emulators.http_proxy`), real LMDB stores, real sockets.

What crosses the wire is asserted on both logs: the proxy's (which requests, whether its
credentials came and were right) and the file server's (what reached the origin).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import test_store_fleet as direct_sync
from test_store_fleet import KIS, content, store_error

from markd.emulators import server as emulator_server
from markd.emulators.http_proxy import HttpProxy
from markd.emulators.server import self_signed_certificate
from markd.emulators.static_http import StaticHTTPServer
from markd.proxy import ProxySettings
from markd.secrets import Secret
from markd.store import Store, fleet

# The direct-sync tests' fixtures, shared by name: the served directory, the file server on
# it, the master's store at version 1 and an empty kiosk store.
www = direct_sync.www
server = direct_sync.server
master = direct_sync.master
kiosk = direct_sync.kiosk

USER = "kiosk"
PASSWORD = "Fl33t-proxy_pw"
WRONG = "n0t-the-Password"


def settings(
    proxy: HttpProxy, password: str | None = None, no_proxy: tuple[str, ...] = ()
) -> ProxySettings:
    """Settings pointing at ``proxy``; the file server is on loopback, so the direct list is
    empty unless a test says otherwise."""
    credentials = Secret(f"{USER}:{password}", "test") if password is not None else None
    parsed = ProxySettings.parse(proxy.url, no_proxy=no_proxy, credentials=credentials, environ={})
    assert parsed is not None
    return parsed


@pytest.fixture
def proxy() -> Iterator[HttpProxy]:
    with HttpProxy(credentials=(USER, PASSWORD)) as running:
        yield running


class _HeaderRecordingHandler(emulator_server._Handler):
    """The file server's own handler (the emulators' one server), also keeping every
    request's header names."""

    seen: list[set[str]] = []

    def _dispatch(self) -> None:
        _HeaderRecordingHandler.seen.append({name.lower() for name in self.headers})
        super()._dispatch()


@pytest.fixture
def tls_server(
    www: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[StaticHTTPServer, str]]:
    """The file server over TLS with a self-signed certificate that urllib is told to trust
    (``SSL_CERT_FILE``, read by OpenSSL whenever a default context is made); (server, URL)."""
    cert, key = self_signed_certificate()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    srv = StaticHTTPServer(www, tls=True, certificate=(cert, key))
    _HeaderRecordingHandler.seen = []
    srv._httpd.RequestHandlerClass = _HeaderRecordingHandler
    with srv:
        yield srv, f"https://127.0.0.1:{srv.port}"


def test_a_sync_through_the_proxy_fetches_everything_through_it(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, proxy: HttpProxy
) -> None:
    fleet.export(master, www / "fleet")
    result = fleet.sync(kiosk, server.url + "/fleet", proxy=settings(proxy, PASSWORD))
    assert (result.action, result.after_version) == ("snapshot", 1)
    assert content(kiosk) == content(master) and kiosk.lookup(KIS[5]).blocked is not None
    assert [r.target for r in proxy.requests] == [
        f"{server.url}/fleet/index.json",
        f"{server.url}/fleet/snapshot-1.mbl.gz",
    ]
    assert all(
        (r.method, r.authorization_ok, r.outcome, r.status) == ("GET", True, "forwarded", 200)
        for r in proxy.requests
    )
    assert [r.path for r in server.requests] == ["fleet/index.json", "fleet/snapshot-1.mbl.gz"]
    # The next sync asks with the ETag, through the proxy, and is told nothing changed.
    again = fleet.sync(kiosk, server.url + "/fleet", proxy=settings(proxy, PASSWORD))
    last = proxy.last()
    assert again.action == "unchanged" and last is not None and last.status == 304


def test_https_goes_through_connect_with_the_credentials_on_the_connect_only(
    master: Store, kiosk: Store, www: Path, tls_server: tuple[StaticHTTPServer, str]
) -> None:
    srv, url = tls_server
    fleet.export(master, www)
    with HttpProxy(credentials=(USER, PASSWORD)) as proxy:
        result = fleet.sync(kiosk, url, proxy=settings(proxy, PASSWORD))
    assert (result.action, result.after_version) == ("snapshot", 1)
    assert content(kiosk) == content(master)
    # urllib opens one connection per request: one tunnel each.
    assert proxy.count("CONNECT") == proxy.count() == 2
    assert all(r.authorization_ok and r.outcome == "tunnel" for r in proxy.requests)
    assert [r.path for r in srv.requests] == ["index.json", "snapshot-1.mbl.gz"]
    # urllib moved Proxy-Authorization onto the CONNECT: nothing for the proxy inside TLS.
    assert len(_HeaderRecordingHandler.seen) == 2
    assert all(
        not any(n.startswith("proxy-") for n in names) for names in _HeaderRecordingHandler.seen
    )


@pytest.mark.parametrize("password", [WRONG, None], ids=["wrong", "missing"])
def test_refused_proxy_credentials_fail_the_sync_naming_the_proxy(
    master: Store,
    kiosk: Store,
    www: Path,
    server: StaticHTTPServer,
    proxy: HttpProxy,
    password: str | None,
) -> None:
    fleet.export(master, www)
    error = store_error(fleet.sync, kiosk, server.url, proxy=settings(proxy, password))
    assert error.reason == "sync-failed"
    expected = "refused the credentials" if password else "wants credentials"
    assert f"proxy {proxy.endpoint} {expected} (HTTP 407)" in error.message
    assert f"sync from {server.url} failed: index.json" in error.message
    assert WRONG not in error.message and PASSWORD not in error.message
    assert server.requests == [] and kiosk.info().version == 0
    last = proxy.last()
    assert last is not None and last.outcome == "auth-required"


def test_refused_credentials_on_a_tunnel_fail_the_sync_naming_the_proxy(
    master: Store, kiosk: Store, www: Path, tls_server: tuple[StaticHTTPServer, str]
) -> None:
    srv, url = tls_server
    fleet.export(master, www)
    with HttpProxy(credentials=(USER, PASSWORD)) as proxy:
        error = store_error(fleet.sync, kiosk, url, proxy=settings(proxy, WRONG))
        assert f"proxy {proxy.endpoint} refused the credentials (HTTP 407)" in error.message
        assert proxy.count("CONNECT", outcome="auth-required") == 1
        proxy.connect_status = 502
        refused = store_error(fleet.sync, kiosk, url, proxy=settings(proxy, PASSWORD))
        assert f"proxy {proxy.endpoint} refused the tunnel (HTTP 502 Bad Gateway)" in (
            refused.message
        )
    assert error.reason == refused.reason == "sync-failed"
    assert WRONG not in error.message and srv.requests == []


def test_a_stopped_proxy_fails_the_sync_at_once(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer
) -> None:
    fleet.export(master, www)
    proxy = HttpProxy().start()
    proxy.close()
    started = time.monotonic()
    error = store_error(fleet.sync, kiosk, server.url, proxy=settings(proxy, PASSWORD), timeout=5)
    assert time.monotonic() - started < 1
    assert error.reason == "sync-failed"
    assert f"cannot connect to proxy {proxy.endpoint}: Connection refused" in error.message
    assert PASSWORD not in error.message and server.requests == []


def test_a_hanging_proxy_fails_the_sync_within_the_timeout(
    master: Store, kiosk: Store, www: Path, tls_server: tuple[StaticHTTPServer, str]
) -> None:
    srv, url = tls_server
    fleet.export(master, www)
    with HttpProxy() as proxy:
        proxy.hang = True
        started = time.monotonic()
        error = store_error(fleet.sync, kiosk, url, proxy=settings(proxy), timeout=0.3)
        assert time.monotonic() - started < 2
    assert f"proxy {proxy.endpoint} gave no answer within 0.3 s" in error.message


def test_no_proxy_setting_means_no_proxy_whatever_the_environment_says(
    master: Store,
    kiosk: Store,
    www: Path,
    server: StaticHTTPServer,
    proxy: HttpProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet.export(master, www)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "")
    result = fleet.sync(kiosk, server.url)
    assert result.after_version == 1 and proxy.requests == []


def test_the_direct_list_is_honoured(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, proxy: HttpProxy
) -> None:
    fleet.export(master, www)
    result = fleet.sync(kiosk, server.url, proxy=settings(proxy, PASSWORD, no_proxy=("127.0.0.1",)))
    assert result.after_version == 1 and proxy.requests == []
    assert all(not r.authorized for r in server.requests)


def test_header_recording_handler_is_the_file_servers_own() -> None:
    assert issubclass(_HeaderRecordingHandler, BaseHTTPRequestHandler)
    assert _HeaderRecordingHandler._dispatch is not emulator_server._Handler._dispatch


# -- the configuration: [store] sync_proxy, markctl store sync --proxy --------------------------


def _sync_config(tmp_path: Path, proxy_line: str, *, sync_proxy: str | None = None) -> Path:
    """A markd.toml whose kiosk store is ``tmp_path/kiosk-cli`` and whose [check.online] has
    ``proxy_line`` (the CDN itself is never asked here)."""
    (tmp_path / "token").write_text("0f5b2c7e-1111-4222-8333-944445555666\n")
    (tmp_path / "proxy-auth").write_text(f"{USER}:{PASSWORD}\n")
    text = f"[store]\npath = '{tmp_path / 'kiosk-cli'}'\nsync_allow_unsigned = true\n"
    if sync_proxy is not None:
        text += f"sync_proxy = '{sync_proxy}'\n"
    text += (
        "[check]\nmode = 'direct'\n[check.online]\n"
        f"token_file = '{tmp_path / 'token'}'\n{proxy_line}"
        f"proxy_auth_file = '{tmp_path / 'proxy-auth'}'\nno_proxy = []\n"
    )
    path = tmp_path / "markd.toml"
    path.write_text(text)
    return path


def _markctl_sync(config: Path, url: str, *extra: str) -> int:
    from markd.cli import markctl

    return markctl.main(["store", "sync", url, "--config", str(config), "--json", *extra])


def test_markctl_store_sync_follows_the_online_proxy_by_default(
    tmp_path: Path, master: Store, www: Path, server: StaticHTTPServer, proxy: HttpProxy, capsys
) -> None:
    fleet.export(master, www)
    config = _sync_config(tmp_path, f"proxy = '{proxy.url}'\n")
    assert _markctl_sync(config, server.url) == 0, capsys.readouterr().err
    assert proxy.count() >= 2 and all(r.authorization_ok for r in proxy.requests)
    # --proxy direct bypasses it for one run.
    proxy.clear()
    capsys.readouterr()
    assert _markctl_sync(config, server.url, "--proxy", "direct") == 0
    assert proxy.count() == 0


def test_sync_proxy_direct_in_the_configuration(
    tmp_path: Path, master: Store, www: Path, server: StaticHTTPServer, proxy: HttpProxy, capsys
) -> None:
    fleet.export(master, www)
    config = _sync_config(tmp_path, f"proxy = '{proxy.url}'\n", sync_proxy="direct")
    assert _markctl_sync(config, server.url) == 0, capsys.readouterr().err
    assert proxy.count() == 0


def test_markctl_store_sync_names_the_refusing_proxy(
    tmp_path: Path, master: Store, www: Path, server: StaticHTTPServer, capsys
) -> None:
    fleet.export(master, www)
    with HttpProxy(credentials=(USER, WRONG)) as strict:
        config = _sync_config(tmp_path, f"proxy = '{strict.url}'\n")
        assert _markctl_sync(config, server.url) == 1
    err = capsys.readouterr()
    text = err.out + err.err
    assert "407" in text and f"127.0.0.1:{strict.port}" in text
    assert PASSWORD not in text


def test_a_bad_proxy_option_or_key_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    config = _sync_config(tmp_path, "proxy = 'http://kiosk:Hunter2@10.0.0.1:3128'\n")
    from markd.cli import markctl

    assert markctl.main(["config", "check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "[check.online] proxy" in err and "Hunter2" not in err
    good = _sync_config(tmp_path, "proxy = 'http://10.0.0.1:3128'\n")
    assert _markctl_sync(good, "http://127.0.0.1:1/x", "--proxy", "socks5://10.0.0.1:1080") == 2
    assert "--proxy" in capsys.readouterr().err


def test_an_unsigned_sync_is_not_led_from_https_to_plain_http_by_a_redirect(
    master: Store,
    kiosk: Store,
    www: Path,
    server: StaticHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without keys an https:// sync trusts TLS alone: a redirect to plain http:// (where
    anyone on the path could rewrite the list) is refused unless unsigned syncs are allowed."""
    import http.server
    import ssl
    import threading

    fleet.export(master, www / "fleet")
    cert, key = self_signed_certificate()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    target = server.url + "/fleet"

    class Downgrade(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(302)
            self.send_header("Location", target + self.path.removeprefix("/fleet"))
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Downgrade)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}/fleet"
        with pytest.raises(fleet.StoreError) as err:
            fleet.sync(kiosk, url, allow_unsigned=False)
        assert err.value.reason == "unsigned-sync" and "plain http://" in err.value.message
        assert kiosk.info().version == 0  # nothing changed

        result = fleet.sync(kiosk, url, allow_unsigned=True)  # the risk accepted
        assert result.after_version == 1 and content(kiosk) == content(master)
    finally:
        httpd.shutdown()
        httpd.server_close()
