"""The ``HOST:PORT`` form of a TCP listening address (``[api] listen``).

A foundation of its own because two layers read it: the configuration checks the key when a
file is loaded, the control API binds what it names. Only IP literals are taken (and
``localhost``, read as 127.0.0.1): a name would need a resolver at start, and the API's
loopback-only rule must be decided from the address itself.
"""

from __future__ import annotations

import ipaddress

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
