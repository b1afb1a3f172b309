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

A pty or a loopback socket carries bytes at once, where a serial line takes 10 bit times a
byte (start, 8 data, stop: 86.8 µs at 115200 baud). ``baudrate`` (None by default: no pacing)
makes the device keep to a line of that speed: what it writes goes out byte by byte, each when
its last bit would have arrived, and what the host wrote is acted on only when it would have
arrived as well (the device sleeps ``len(data) * 10 / baudrate`` after reading it). An exchange
then costs what it costs on a real line, for benchmarks (``tools/bench/shtrih.py``); on TCP the
same pacing stands for a serial-to-Ethernet bridge in front of the ККТ.
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
from collections.abc import Callable
from types import TracebackType

from markd.emulators.shtrih.device import ShtrihKkt
from markd.emulators.shtrih.link import Link


class ShtrihServer:
    """Serves ``kkt`` on a pty (:meth:`start_pty`) and/or TCP (:meth:`start_tcp`)."""

    def __init__(
        self,
        kkt: ShtrihKkt,
        *,
        byte_timeout: float = 0.2,
        ack_timeout: float = 1.0,
        baudrate: int | None = None,
    ) -> None:
        if baudrate is not None and baudrate <= 0:
            raise ValueError("baudrate is a positive number of bits a second, or None")
        self.kkt = kkt
        self.byte_timeout = byte_timeout
        self.ack_timeout = ack_timeout
        self.baudrate = baudrate
        #: Seconds one byte takes on the line (10 bits: start, 8 data, stop); 0: no pacing.
        self.byte_time = 10 / baudrate if baudrate else 0.0
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
            now = self._arrive(data, now)
            reply = link.receive(data, now)
            if reply:
                with contextlib.suppress(OSError):
                    self._send(lambda chunk: os.write(master, chunk), reply)

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
                now = self._arrive(data, now)
                reply = link.receive(data, now)
                if reply:
                    try:
                        self._send(client.sendall, reply)
                    except OSError:
                        client.close()
                        client = None
                        link.reset()
        finally:
            if client is not None:
                client.close()

    # -- common ---------------------------------------------------------------------------

    def _arrive(self, data: bytes, now: float) -> float:
        """With pacing, wait until the host's ``data`` would have come over the line (it
        started when it was read); returns the time then."""
        if not self.byte_time:
            return now
        time.sleep(len(data) * self.byte_time)
        return time.monotonic()

    def _send(self, write: Callable[[bytes], object], data: bytes) -> None:
        """Write ``data``; with pacing, each byte only once the line would have carried it
        (several at a time when a sleep overshoots, so the whole takes the line's time)."""
        if not self.byte_time:
            write(data)
            return
        started = time.perf_counter()
        sent = 0
        while sent < len(data):
            due = min(len(data), int((time.perf_counter() - started) / self.byte_time))
            if due > sent:
                write(data[sent:due])
                sent = due
            else:
                time.sleep(max(0.0, started + (sent + 1) * self.byte_time - time.perf_counter()))

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
