"""A static file server on 127.0.0.1: stands in for the file server, CDN or object store that a
fleet of kiosks syncs its blocklist from (:mod:`markd.store.fleet`).

It serves the files under one directory, nothing else (no listings, no uploads), with what
:class:`~markd.emulators.server.StaticFiles` speaks: ``GET`` and ``HEAD``, strong ETags and
``If-None-Match`` (304), ``Range`` and ``If-Range`` (206, 416), and optional HTTP Basic
authentication (``auth=(user, password)``: 401 without it). It runs on the emulators' one
server (:mod:`markd.emulators.server`), so it also has their TLS (``tls=True``,
``certificate=(cert, key)``), keep-alive and request log; its admin endpoint is off unless
``admin=True`` (a file may well be called ``_emulator/…``).

For tests it records and misbehaves on request:

* ``server.requests`` lists every request (:class:`~markd.emulators.server.RequestRecord`:
  method, path, status, ``range``/``if_range``/``if_none_match``, ``authorized`` (whether
  ``Authorization`` came), ``sent`` (body bytes sent)); ``server.count(path)`` and
  ``server.requests_for(path)`` pick one file's;
* ``server.cut_after = {"snapshot-3.mbl.gz": 10000}`` drops the connection after sending that
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
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from markd.emulators.server import HTTPEmulator, Route, StaticFiles


class StaticHTTPServer(HTTPEmulator):
    """Serve ``root`` on ``host:port`` (port 0: any free one) in a background thread.

    Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    name: ClassVar[str] = "static_http"

    def __init__(
        self,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: tuple[str, str] | None = None,
        tls: bool = False,
        certificate: tuple[Path, Path] | None = None,
        admin: bool = False,
        verbose: bool = False,
    ) -> None:
        self.files = StaticFiles(root, auth=auth)
        super().__init__(
            host=host, port=port, tls=tls, admin=admin, verbose=verbose, certificate=certificate
        )

    @property
    def root(self) -> Path:
        return self.files.root

    @property
    def auth(self) -> tuple[str, str] | None:
        return self.files.auth

    @property
    def cut_after(self) -> dict[str, int]:
        """Relative path → body bytes to send before dropping the connection (used once)."""
        return self.files.cut_after

    @cut_after.setter
    def cut_after(self, cuts: dict[str, int]) -> None:
        self.files.cut_after = dict(cuts)

    def route(self, method: str, path: str) -> Route:
        # Every path is a route named after the file it asks for, so the log can be read per
        # file; one that names no file is answered 404 by StaticFiles.
        return Route(StaticFiles.relative(path), None, ("GET", "HEAD"), self.files.answer)

    def log_path(self, path: str) -> str:
        return StaticFiles.relative(path)

    def reset_state(self) -> None:
        self.files.cut_after.clear()


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
