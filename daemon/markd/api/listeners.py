"""The control API's listening sockets: the Unix socket (mode 0660, group ``markd``), the
optional TCP one and the optional metrics listener. Binding only; what is spoken on them is
:mod:`markd.api.server`'s job.

``[api] listen`` and ``[metrics] listen`` are read by :func:`parse_listen`, which
configuration checking uses too, so a typo fails ``markctl config check`` with the same
message the daemon would give.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat
from pathlib import Path

from markd.errors import ConfigError, MarkdError
from markd.listen import parse_listen, remote_listen_problem, socket_path_problem

log = logging.getLogger("markd.api")

#: Pending connections the kernel holds for each listener.
BACKLOG = 64


class ControlApiError(MarkdError):
    """The control API cannot start (the socket is in use, a path or port cannot be bound)."""

    reason = "api-unavailable"


def tcp_address(listen: str, *, allow_remote: bool, section: str = "api") -> tuple[str, int] | None:
    """Where ``listen`` of ``[section]`` (``api`` or ``metrics``) asks for TCP (None: no
    TCP). A non-loopback address without ``allow_remote`` is a
    :class:`~markd.errors.ConfigError`: the bearer token would cross the network in clear
    text."""
    if not listen:
        return None
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"[{section}] listen: {exc}") from None
    problem = remote_listen_problem(host, allow_remote=allow_remote, section=section)
    if problem is not None:
        raise ConfigError(f"[{section}] listen: {problem}")
    return host, port


def bind_unix(path: Path, group: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening, non-blocking socket at ``path`` with mode 0660 and ``group`` (when that
    group exists), and the ``(st_dev, st_ino)`` of its file, by which :func:`unlink_if_ours`
    knows it later."""
    problem = socket_path_problem(str(path))
    if problem is not None:
        raise ControlApiError(f"[api] socket: {problem}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlApiError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
    _refuse_live_socket(path)
    # Bind under a temporary name, set mode and group, then rename into place: the socket
    # is never reachable at its public path with looser permissions.
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        sock.bind(str(temporary))
        os.chmod(temporary, 0o660)
        _set_group(temporary, group)
        sock.listen(BACKLOG)
        os.replace(temporary, path)
        info = path.stat()
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise ControlApiError(f"cannot create {path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock, (info.st_dev, info.st_ino)


def _refuse_live_socket(path: Path) -> None:
    """A socket file left by a crashed daemon is replaced; one a live daemon answers on, or a
    file that is not a socket, stops start-up."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlApiError(f"[api] socket: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return  # nobody listens: stale
    finally:
        probe.close()
    raise ControlApiError(
        f"[api] socket: {path} is in use (another markd running?)", "api-socket-in-use"
    )


def _set_group(path: Path, name: str) -> None:
    if not name:
        return
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        return  # no such group on this system (a development machine): keep the default
    try:
        if os.stat(path).st_gid == gid:
            # Under systemd (Group=markd) the socket is created with it already; the unit's
            # system call filter refuses chown(), so it is not even attempted.
            return
        os.chown(path, -1, gid)
    except OSError as exc:
        log.warning("control API: cannot give %s to group %s: %s", path, name, exc.strerror or exc)


def bind_tcp(host: str, port: int, listen: str, *, key: str = "[api] listen") -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (``listen`` as configured at
    ``key``, for the error message)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise ControlApiError(f"{key}: cannot listen on {listen}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def unlink_if_ours(path: Path, inode: tuple[int, int]) -> None:
    """Remove the socket file, but only if it is still the one we bound (a newer daemon's
    stays)."""
    with contextlib.suppress(OSError):
        info = path.lstat()
        if (info.st_dev, info.st_ino) == inode:
            path.unlink()


def address_text(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
