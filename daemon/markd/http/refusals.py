"""What h11 raises when it refuses bytes from a peer, for every h11 user in markd.

h11 documents :class:`h11.RemoteProtocolError` as its answer to a peer that broke HTTP, but
h11 0.14 (Debian 12's ``python3-h11``; ``setup.cfg`` allows h11 >= 0.14) converts a
``Content-Length`` with ``int()`` before it checks the value's length, and since Python 3.11
``int()`` refuses more than 4,300 digits with a bare ValueError: a hostile
``Content-Length`` of 5,000 digits escapes as ValueError from ``next_event()``. h11 0.16
checks the length first and raises RemoteProtocolError. Fuzzing both versions (huge and
non-ASCII numbers in ``Content-Length``, status codes and versions, chunk sizes such as
``ffffffffffffffffffff``, non-ASCII and NUL bytes in header names and values, heads cut at
every byte) found no other exception type.

So every caller of ``next_event()`` catches :data:`H11_REFUSALS` and gives both the answer
it gives a malformed message: the HTTP client a
:class:`~markd.http.errors.HTTPProtocolError`, the control API server a 400, markctl's client
its typed error. A leaf module: importing it loads h11 and nothing of markd.
"""

from __future__ import annotations

import h11

#: Catch these around ``h11.Connection.next_event()``: the peer's bytes were refused.
H11_REFUSALS: tuple[type[Exception], ...] = (h11.RemoteProtocolError, ValueError)


def refusal_text(exc: Exception) -> str:
    """What h11 said about the refused bytes, cut before it quotes them (they are the peer's
    own and may hold a credential). ValueError is h11 0.14's ``int()`` of a ``Content-Length``
    past Python's digit limit; its text describes Python, so it is named for what it is."""
    if not isinstance(exc, h11.RemoteProtocolError):
        return "bad Content-Length"
    return str(exc).split(": bytearray(", 1)[0].split(": b'", 1)[0]


__all__ = ["H11_REFUSALS", "refusal_text"]
