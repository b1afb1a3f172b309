"""Serving the virtual Shtrih-M ККТ: on a pseudo-terminal (what a USB-CDC or serial ККТ looks
like to a client) and on a loopback TCP port (an Ethernet model), each in a background thread.

::

    with ShtrihServer(ShtrihKkt(state_dir)) as server:
        path = server.start_pty()          # e.g. /dev/pts/7: open it as the serial port
        port = server.start_tcp()          # shtrih://127.0.0.1:PORT
        ...
    # stop() (or leaving the block) closes the pty, the socket and the threads

The pty is raw (no echo, no line editing). The server keeps its own descriptor of the slave
side open, so a client that closes and opens the port again finds the device still there.
TCP serves one client at a time: a new connection replaces the old one (as a ККТ's single
Ethernet channel does); a kept answer survives the reconnection.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import termios
import threading
import time
import tty
from types import TracebackType

from markd.emulators.shtrih.device import ShtrihKkt
from markd.emulators.shtrih.link import Link


class ShtrihServer:
    """Serves ``kkt`` on a pty (:meth:`start_pty`) and/or TCP (:meth:`start_tcp`)."""

    def __init__(
        self, kkt: ShtrihKkt, *, byte_timeout: float = 0.2, ack_timeout: float = 1.0
    ) -> None:
        self.kkt = kkt
        self.byte_timeout = byte_timeout
        self.ack_timeout = ack_timeout
        self.pty_path: str | None = None
        self.host: str | None = None
        self.port: int | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fds: list[int] = []
        self._sockets: list[socket.socket] = []
        self._wake_r, self._wake_w = os.pipe()

    def _link(self) -> Link:
        return Link(self.kkt, byte_timeout=self.byte_timeout, ack_timeout=self.ack_timeout)

    # -- pty ------------------------------------------------------------------------------

    def start_pty(self) -> str:
        """Serve on a new pty; returns the path of its slave side (the "serial port")."""
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)
        self._fds += [master, slave]
        self.pty_path = os.ttyname(slave)
        self._spawn(self._serve_pty, master, name="shtrih-pty")
        return self.pty_path

    def _serve_pty(self, master: int) -> None:
        link = self._link()
        while not self._stop.is_set():
            readable = self._wait([master], link)
            if self._stop.is_set():
                return
            now = time.monotonic()
            if master not in readable:
                link.poll(now)
                continue
            try:
                data = os.read(master, 4096)
            except OSError:
                time.sleep(0.01)  # no one on the slave side just now
                continue
            reply = link.receive(data, now)
            if reply:
                with contextlib.suppress(OSError):
                    os.write(master, reply)

    # -- tcp ------------------------------------------------------------------------------

    def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on TCP ``host:port`` (0: a free port); returns the port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
            listener.listen(4)
        except OSError:
            listener.close()
            raise
        self._sockets.append(listener)
        self.host, self.port = host, listener.getsockname()[1]
        self._spawn(self._serve_tcp, listener, name="shtrih-tcp")
        return self.port

    def _serve_tcp(self, listener: socket.socket) -> None:
        link = self._link()
        client: socket.socket | None = None
        try:
            while not self._stop.is_set():
                watched = [listener.fileno()] + ([client.fileno()] if client else [])
                readable = self._wait(watched, link)
                if self._stop.is_set():
                    return
                now = time.monotonic()
                if listener.fileno() in readable:
                    fresh, _ = listener.accept()
                    if client is not None:
                        client.close()  # the new connection replaces the old one
                    client = fresh
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    link.reset()
                    continue
                if client is None or client.fileno() not in readable:
                    link.poll(now)
                    continue
                try:
                    data = client.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    client.close()
                    client = None
                    link.reset()
                    continue
                reply = link.receive(data, now)
                if reply:
                    try:
                        client.sendall(reply)
                    except OSError:
                        client.close()
                        client = None
                        link.reset()
        finally:
            if client is not None:
                client.close()

    # -- common ---------------------------------------------------------------------------

    def _wait(self, fds: list[int], link: Link) -> list[int]:
        deadline = link.next_deadline()
        timeout = 0.5 if deadline is None else max(0.0, deadline - time.monotonic()) + 0.001
        try:
            readable, _, _ = select.select([*fds, self._wake_r], [], [], timeout)
        except (OSError, ValueError):
            self._stop.wait(0.01)
            return []
        return readable

    def _spawn(self, target: object, *args: object, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        """Stop serving and release the pty, the sockets and the threads."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    close = stop

    def __enter__(self) -> ShtrihServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
