"""The customer screen's files, served at ``/screen/`` on the TCP listener (``[api] screen``).

Only the files of :data:`SCREEN_FILES` exist here: a request's path is looked up in that table
and never joined to a directory, so no path a client sends can reach another file. The files
come from the package (:mod:`markd.screen`), read once. They hold nothing secret — no token,
no session — and are served without credentials; the page authenticates its API requests
itself (``docs/api.md``, "The customer screen").

Each answer carries a strict ``Content-Security-Policy``: scripts, styles and connections to
markd's own origin only (``connect-src 'self'`` covers the page's WebSocket to the same host
and port), no inline script, no frames, no forms, no other site. With ``nosniff`` (on every
answer of the API) a browser takes each file only as the type it is sent with.
"""

from __future__ import annotations

import functools
from importlib import resources

from markd.api.messages import HTTPRefusal, Response

#: Path → (file in :mod:`markd.screen`, its ``Content-Type``). Nothing else is served.
SCREEN_FILES = {
    "/screen/": ("index.html", "text/html; charset=utf-8"),
    "/screen/screen.css": ("screen.css", "text/css; charset=utf-8"),
    "/screen/screen.js": ("screen.js", "text/javascript; charset=utf-8"),
}
#: The policy of every file: markd's own origin, nothing inline, nothing else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The files change only with the package: a browser may keep them, but asks again each time
#: (an upgrade of markd shows at the next load).
CACHE_CONTROL = "no-cache"


def is_screen_path(path: str) -> bool:
    """Whether ``path`` is under ``/screen`` (answered here, found or not)."""
    return path == "/screen" or path.startswith("/screen/")


def screen_response(method: str, path: str) -> Response:
    """The answer to ``method path`` under ``/screen``: the file, a redirect from ``/screen``
    to ``/screen/``, or a refusal (404 for any other path, 405 for a method but GET)."""
    if path == "/screen":
        return Response(308, b"", {"Location": "/screen/"})
    if path not in SCREEN_FILES:
        raise HTTPRefusal(404, "not-found", f"no such file: {path[:200]}")
    if method != "GET":
        raise HTTPRefusal(405, "method-not-allowed", f"{path} takes GET", headers={"Allow": "GET"})
    name, content_type = SCREEN_FILES[path]
    return Response(
        200,
        _read(name),
        {
            "Content-Type": content_type,
            "Cache-Control": CACHE_CONTROL,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        },
    )


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("markd.screen").joinpath(name).read_bytes()
