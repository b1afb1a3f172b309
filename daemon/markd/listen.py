"""The ``HOST:PORT`` form of a TCP listening address (``[api] listen``, ``[metrics] listen``),
the rule that keeps it on loopback, and the longest Unix socket path (``[api] socket``).

A foundation of its own because two layers read it: the configuration checks the keys when a
file is loaded (so ``markctl config check`` refuses what the daemon would), the control API
binds what they name. Only IP literals are taken (and ``localhost``, read as 127.0.0.1): a
name would need a resolver at start, and the API's loopback-only rule must be decided from
the address itself.
"""

from __future__ import annotations

import ipaddress
import os

FORM = "expected HOST:PORT with an IP address, e.g. 127.0.0.1:8391 or [::1]:8391"


def parse_listen(value: str) -> tuple[str, int]:
    """``value`` as ``(host, port)``: ``127.0.0.1:8391``, ``[::1]:8391``, or
    ``localhost:8391`` (meaning 127.0.0.1); port 0 takes any free port (tests).
    :class:`ValueError` naming the accepted form otherwise (the port is ASCII digits,
    at most 65535)."""
    host, sep, port_text = value.rpartition(":")
    if (
        not sep
        or not (port_text.isascii() and port_text.isdigit())
        or len(port_text) > 5
        or int(port_text) > 65535
    ):
        raise ValueError(f"{FORM}, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{FORM} (an IPv6 address goes in brackets), got {value!r}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{FORM}, got {value!r}") from None
    return host, int(port_text)


def remote_listen_problem(host: str, *, allow_remote: bool, section: str = "api") -> str | None:
    """Why the listener of ``[section]`` (``api`` or ``metrics``) may not listen on ``host``
    (None: it may). A bearer token sent to an address other than loopback crosses the network
    in clear text, so that takes ``allow_remote = true`` in the same section."""
    if allow_remote or ipaddress.ip_address(host).is_loopback:
        return None
    token = "API token" if section == "api" else f"{section} token"
    return (
        f"{host} is not a loopback address; the {token} would cross the network in clear "
        f"text. Use 127.0.0.1, or set [{section}] allow_remote = true."
    )


def listen_overlap(first: str, second: str) -> bool:
    """Whether two ``HOST:PORT`` listening addresses (both well formed) would take the same
    port: the same port on the same address, or on a wildcard and an address it covers
    (``0.0.0.0`` every IPv4 one; ``::`` every one, as Linux binds it for both families).
    Port 0 (any free port) overlaps nothing."""
    host_a, port_a = parse_listen(first)
    host_b, port_b = parse_listen(second)
    if port_a != port_b or port_a == 0:
        return False
    if host_a == host_b or "::" in (host_a, host_b):
        return True
    return "0.0.0.0" in (host_a, host_b) and ":" not in host_a + host_b


#: Longest path a Unix socket may be bound to (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH_BYTES = 107


def socket_path_problem(path: str) -> str | None:
    """Why a Unix socket cannot be bound at ``path`` whatever the system (None: it can)."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        return f"{path} is longer than a Unix socket path may be ({MAX_SOCKET_PATH_BYTES} bytes)"
    return None
