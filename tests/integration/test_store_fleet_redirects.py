"""Fleet sync through redirects, as CDNs and object stores send them: followed with the
request's own headers, the URL's credentials only to the origin they were given for.

A small redirecting server stands in front of the export: ``/moved/…`` redirects to
``/fleet/…`` on itself (the same origin: credentials go along), ``/elsewhere/…`` to the static
file emulator on another port (another origin: they do not), ``/loop/…`` to itself forever and
``/ftp/…`` to an ``ftp://`` URL. Both servers log what reached them.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import test_store_fleet as direct_sync
from test_store_fleet import content, store_error

from markd.emulators.static_http import StaticHTTPServer
from markd.store import Store, fleet

www = direct_sync.www
server = direct_sync.server
master = direct_sync.master
kiosk = direct_sync.kiosk

USER = "kiosk"
PASSWORD = "R3direct-Secret_pw"
TOKEN = "t0ken-Secret"


class Redirector:
    """Redirects as described in the module docstring and serves ``/fleet/<file>`` from
    ``root`` itself; ``seen`` holds (path, Authorization header or None) per request."""

    def __init__(self, root: Path, elsewhere: str) -> None:
        self.seen: list[tuple[str, str | None]] = []
        redirector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                redirector.seen.append((self.path, self.headers.get("Authorization")))
                path, _, query = self.path.partition("?")
                first, _, rest = path.lstrip("/").partition("/")
                if first == "fleet":
                    self._file(root / rest)
                    return
                location = {
                    "moved": f"/fleet/{rest}",  # relative: the same origin
                    "elsewhere": f"{elsewhere}/{rest}",
                    "loop": self.path,
                    "ftp": f"ftp://{USER}:{PASSWORD}@127.0.0.1/{rest}",
                }.get(first)
                if location is None:
                    self._answer(404, b"")
                    return
                self._answer(302 if first != "moved" else 301, b"", location)

            def _file(self, path: Path) -> None:
                if not path.is_file():
                    self._answer(404, b"")
                    return
                self._answer(200, path.read_bytes())

            def _answer(self, status: int, body: bytes, location: str | None = None) -> None:
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def redirector(www: Path, server: StaticHTTPServer) -> Iterator[Redirector]:
    running = Redirector(www, server.url)
    try:
        yield running
    finally:
        running.close()


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://{USER}:{PASSWORD}@", 1) + f"?token={TOKEN}"


BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def test_a_redirect_on_the_same_origin_keeps_the_credentials(
    master: Store, kiosk: Store, www: Path, redirector: Redirector
) -> None:
    fleet.export(master, www)
    result = fleet.sync(kiosk, with_credentials(redirector.url + "/moved"))
    assert (result.action, result.after_version) == ("snapshot", 1)
    assert result.url == redirector.url + "/moved"
    assert content(kiosk) == content(master)
    paths = [path for path, _ in redirector.seen]
    assert paths == [
        f"/moved/index.json?token={TOKEN}",
        "/fleet/index.json",
        f"/moved/{result_file(www)}?token={TOKEN}",
        f"/fleet/{result_file(www)}",
    ]
    assert all(authorization == BASIC for _, authorization in redirector.seen)


def result_file(www: Path) -> str:
    return next(p.name for p in www.iterdir() if p.name.startswith("snapshot-"))


def test_a_redirect_to_another_origin_drops_the_credentials(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, redirector: Redirector
) -> None:
    fleet.export(master, www)
    result = fleet.sync(kiosk, with_credentials(redirector.url + "/elsewhere"))
    assert (result.action, result.after_version) == ("snapshot", 1)
    assert content(kiosk) == content(master)
    # The first hop had them; the file server on the other port never did.
    assert all(authorization == BASIC for _, authorization in redirector.seen)
    assert [r.path for r in server.requests] == ["index.json", result_file(www)]
    assert not any(r.authorized for r in server.requests)


def test_conditional_requests_follow_the_redirect(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, redirector: Redirector
) -> None:
    fleet.export(master, www)
    fleet.sync(kiosk, redirector.url + "/elsewhere")
    again = fleet.sync(kiosk, redirector.url + "/elsewhere")
    assert again.action == "unchanged"
    last = server.requests[-1]
    assert (last.path, last.status) == ("index.json", 304) and last.if_none_match


@pytest.mark.parametrize(
    ("where", "expected"),
    [("loop", "more than 10 redirects"), ("ftp", "not an http(s) URL")],
)
def test_bad_redirects_fail_the_sync_without_secrets(
    kiosk: Store, redirector: Redirector, where: str, expected: str
) -> None:
    error = store_error(fleet.sync, kiosk, with_credentials(f"{redirector.url}/{where}"))
    assert error.reason == "sync-failed" and expected in error.message
    assert f"sync from {redirector.url}/{where} failed: index.json" in error.message
    assert PASSWORD not in error.message and TOKEN not in error.message
    assert kiosk.info().version == 0
