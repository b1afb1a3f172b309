"""A static file server on 127.0.0.1: stands in for the file server, CDN or object store that a
fleet of kiosks syncs its blocklist from (:mod:`markd.store.fleet`).

It serves the files under one directory, nothing else (no listings, no uploads), and speaks
the parts of HTTP/1.1 a sync relies on:

* ``GET`` and ``HEAD``; ``404`` for anything that is not a regular file under the directory
  (``..`` and symlinks out of it included);
* a strong ``ETag`` per file, derived from its sha256 (so a file rewritten with other content
  gets another ETag, whatever its size and time), and ``Last-Modified``;
* ``If-None-Match`` (a list of ETags or ``*``) → ``304 Not Modified``;
* ``Range: bytes=N-``, ``bytes=N-M`` and ``bytes=-N`` → ``206 Partial Content`` with
  ``Content-Range``; a range that is malformed or starts past the end → ``416`` with
  ``Content-Range: bytes */SIZE``; several ranges in one request → the whole file (``200``, as
  RFC 9110 allows); another unit than ``bytes`` is ignored;
* ``If-Range`` with an ETag: the range is served only when it is the file's current ETag,
  otherwise the whole file comes with ``200``. An HTTP date in ``If-Range`` never matches
  (the whole file again: always safe);
* optional HTTP Basic authentication (``auth=(user, password)``): ``401`` without it.

For tests it records and misbehaves on request:

* ``server.requests`` lists every request (:class:`RequestRecord`: method, path, status,
  ``Range``/``If-Range``/``If-None-Match``, whether ``Authorization`` came, body bytes sent);
  ``server.count(path)`` and ``server.requests_for(path)`` pick one file's;
* ``server.cut_after = {"snapshot-3.csv.gz": 10000}`` drops the connection after sending that
  many body bytes of that file, once (the entry is removed when used) — the way a mobile link
  fails in the middle of a download.

Paths in ``cut_after`` and in the request log are relative to the directory, without a leading
``/`` and without the query string (``x/index.json``).

In a test::

    with StaticHTTPServer(export_dir) as server:
        fleet.sync(store, server.url)
        assert server.count("index.json") == 1

From a shell (serves until Ctrl+C)::

    python -m markd.emulators.static_http DIR [--port N] [--auth USER:PASSWORD]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import hashlib
import re
import socket
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")
_CHUNK = 1 << 16
_TYPES = {".json": "application/json", ".jsonl": "application/x-ndjson", ".gz": "application/gzip"}


@dataclass
class RequestRecord:
    """One request as the server saw it. It is logged before the answer goes out and ``sent``
    is counted before each block is written, so a client that has its answer can rely on the
    log being complete."""

    method: str
    path: str
    status: int
    range: str | None = None
    if_range: str | None = None
    if_none_match: str | None = None
    authorized: bool = False  # an Authorization header was sent
    sent: int = 0  # body bytes sent (fewer than the file when cut)


class StaticHTTPServer:
    """Serve ``root`` on ``host:port`` (port 0: any free one) in a background thread.

    Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: tuple[str, str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        self.auth = auth
        self.verbose = verbose
        #: relative path → body bytes to send before dropping the connection (used once).
        self.cut_after: dict[str, int] = {}
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._etags: dict[tuple[str, int, int, int], str] = {}
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.static = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> StaticHTTPServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"static-http-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> StaticHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the log --------------------------------------------------------------------------------

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self.requests.append(entry)

    def requests_for(self, path: str) -> list[RequestRecord]:
        """The requests for ``path`` (relative, e.g. ``snapshot-3.csv.gz``), oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def count(self, path: str) -> int:
        """How many requests asked for ``path``."""
        return len(self.requests_for(path))

    def take_cut(self, path: str) -> int | None:
        with self._lock:
            return self.cut_after.pop(path, None)

    # -- files ----------------------------------------------------------------------------------

    def resolve(self, url_path: str) -> tuple[str, Path | None]:
        """The relative path of a request and the regular file it names (None: 404)."""
        relative = urllib.parse.unquote(url_path.split("?", 1)[0].split("#", 1)[0]).lstrip("/")
        parts = relative.split("/")
        if not relative or any(p in ("", ".", "..") for p in parts) or "\0" in relative:
            return relative, None
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return relative, None
        return relative, path

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "markd-static-http"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        if self.server.static.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        static: StaticHTTPServer = self.server.static
        relative, path = static.resolve(self.path)
        headers = self.headers
        authorized = headers.get("Authorization") is not None

        def record(status: int) -> RequestRecord:
            entry = RequestRecord(
                method=self.command,
                path=relative,
                status=status,
                range=headers.get("Range"),
                if_range=headers.get("If-Range"),
                if_none_match=headers.get("If-None-Match"),
                authorized=authorized,
            )
            static.record(entry)
            return entry

        if static.auth is not None and not self._authorized(static.auth):
            record(401)
            self._empty(401, {"WWW-Authenticate": 'Basic realm="markd export"'})
            return
        if path is None:
            record(404)
            self._empty(404)
            return
        size = path.stat().st_size
        etag = static.etag(path)
        common = {
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(path.stat().st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        if_none_match = headers.get("If-None-Match")
        if if_none_match is not None and _etag_listed(if_none_match, etag):
            record(304)
            self._empty(304, common)
            return
        first, last, status = 0, size - 1, 200
        range_header = headers.get("Range")
        if_range = headers.get("If-Range")
        if range_header is not None and (if_range is None or if_range.strip() == etag):
            wanted = _parse_range(range_header, size)
            if wanted == "unsatisfiable":
                record(416)
                self._empty(416, {**common, "Content-Range": f"bytes */{size}"})
                return
            if isinstance(wanted, tuple):
                first, last = wanted
                status = 206
                common["Content-Range"] = f"bytes {first}-{last}/{size}"
        length = max(0, last - first + 1)
        entry = record(status)
        self.send_response(status)
        for name, value in common.items():
            self.send_header(name, value)
        self.send_header("Content-Type", _TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if body:
            self._send_body(path, first, length, static.take_cut(relative), entry)

    def _send_body(
        self, path: Path, first: int, length: int, cut: int | None, entry: RequestRecord
    ) -> None:
        limit = length if cut is None else min(cut, length)
        try:
            with open(path, "rb") as f:
                f.seek(first)
                while entry.sent < limit:
                    block = f.read(min(_CHUNK, limit - entry.sent))
                    if not block:
                        break
                    entry.sent += len(block)
                    self.wfile.write(block)
            if cut is not None:
                # FIN after the bytes sent so far: the client reads them, then a short body.
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _authorized(self, auth: tuple[str, str]) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (user, password) == auth

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m markd.emulators.static_http",
        description="Serve a directory (e.g. a `markctl store export`) on 127.0.0.1 with "
        "ETags and ranges, like the file server a fleet syncs from.",
    )
    parser.add_argument("directory")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (0: any free one)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require HTTP Basic auth")
    args = parser.parse_args(argv)
    if not Path(args.directory).is_dir():
        parser.error(f"{args.directory} is not a directory")
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep:
            parser.error("--auth takes USER:PASSWORD")
        auth = (user, password)
    try:
        server = StaticHTTPServer(args.directory, port=args.port, auth=auth, verbose=True)
    except OSError as exc:
        print(f"static_http: cannot listen on port {args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"serving {server.root} at {server.url}/ (Ctrl+C to stop)", file=sys.stderr, flush=True)
    server.start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
