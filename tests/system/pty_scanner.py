"""A stand-in serial scanner for the system test, run inside the container as its own service.

Usage: ``python3 pty_scanner.py LINK_DIR SOCKET NAME...``

For each NAME it opens a pseudo-terminal in raw mode, makes the slave side usable by any user
(markd runs as ``markd``) and links ``LINK_DIR/NAME`` to it, so markd's configuration can say
``serial://LINK_DIR/NAME``. It then listens on the Unix socket SOCKET: a client sends
``NAME<space>BYTES`` and the bytes are written to that pty's master side, exactly as a scanner
writes a code followed by its terminator. The reply is ``ok`` (or ``unknown NAME``).

A pty keeps the real serial path of markd in play (pyserial, termios, the reader thread)
while needing no hardware; the socket lets the test on the host drive it across the container
boundary. Runs with the system ``python3`` and the standard library only.
"""

from __future__ import annotations

import os
import socket
import sys
import tty


def main(argv: list[str]) -> int:
    link_dir, socket_path, *names = argv
    os.makedirs(link_dir, exist_ok=True)
    masters: dict[str, int] = {}
    for name in names:
        master, slave = os.openpty()
        tty.setraw(slave)  # no CR→LF translation, no echo: bytes arrive as sent
        path = os.ttyname(slave)
        os.chmod(path, 0o666)
        link = os.path.join(link_dir, name)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(path, link)
        masters[name] = master
        # The slave stays open here as well, so the pty lives while markd reopens it.
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    os.chmod(socket_path, 0o666)
    server.listen(4)
    print(f"ptys ready: {', '.join(names)}", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            name, _, payload = data.partition(b" ")
            master = masters.get(name.decode("ascii", "replace"))
            if master is None:
                conn.sendall(b"unknown " + name)
                continue
            os.write(master, payload)
            conn.sendall(b"ok")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
