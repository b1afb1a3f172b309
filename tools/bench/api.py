#!/usr/bin/env python3
"""Control API benchmark: the time the API's HTTP layer adds to a request on the Unix socket.

Usage::

    tools/bench/api.py [--count N] [--warmup W]

A :class:`markd.api.ControlServer` serves on a Unix socket in a temporary directory, in front
of a stub service that answers at once (a fixed verdict, a fixed status), so what is timed is
the server: reading and framing the request, dispatch, the JSON answer, the write. The client
is a separate process (``--client``) so that it does not share the interpreter lock with the
server; it speaks HTTP/1.1 on a raw socket and times each round trip with
``time.perf_counter``:

1. ``GET /v1/status`` on one kept-alive connection (a kiosk screen polling);
2. ``POST /v1/check`` with a code, on one kept-alive connection;
3. ``GET /v1/status`` on a new connection each time (``markctl status``).

Prints one line per case (p50, p99, mean in microseconds), then one JSON object with the
figures. The stub implements both what the API reads of the service today
(``status_snapshot()``) and what an older server read directly (``scanners``, ``chain``,
``store`` …), so the same script compares two commits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

WATER = "0104680029460908215jcmHzLmkdPML\x1d938p9E"


class StubService:
    """Answers the API at once: a fixed allow verdict, a small status."""

    def __init__(self, mode: str) -> None:
        from markd.events import EventHub

        self.events = EventHub()
        self.receipts = None
        self.ready = asyncio.Event()
        self.ready.set()
        # What a server that assembled the status itself read.
        self.config = SimpleNamespace(check=SimpleNamespace(mode=mode))
        self.scanners: dict[str, Any] = {}
        self.store = None
        self.chain = None

    async def submit(self, data: bytes, scanner: str, *, price_kopecks: int | None = None) -> Any:
        from markd.checks.verdict import Verdict

        return Verdict("allow", "allowed", "Продажа разрешена", "store", scanner)

    async def reload(self) -> Any:
        return SimpleNamespace(ok=True, message="reloaded", generation=1)

    def status_snapshot(self) -> dict[str, Any]:
        return {
            "service": {"state": "ready", "version": "bench", "pid": os.getpid(), "mode": "x"},
            "scanners": {},
            "sources": {},
            "store": None,
            "printer": None,
        }


async def serve(socket_path: str, count: int, warmup: int) -> dict[str, Any]:
    from markd.api import ControlServer
    from markd.config import ApiConfig

    server = ControlServer(StubService("store-only"), ApiConfig(socket=socket_path))
    server.start()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            socket_path,
            "--count",
            str(count),
            "--warmup",
            str(warmup),
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"the client failed with status {process.returncode}")
        return json.loads(out)
    finally:
        await server.close()


# -- the client (its own process) -------------------------------------------------------------


class RawClient:
    """HTTP/1.1 on a raw Unix socket: requests written whole, answers read by Content-Length."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = self._connect()
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.path)
        return sock

    def round_trip(self, request: bytes) -> int:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return status

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def request_bytes(method: str, target: str, body: bytes = b"", close: bool = False) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
    if method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def timed(run: Any, count: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(ordered[len(ordered) // 2], 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "mean_us": round(statistics.fmean(ordered), 1),
    }


def client(path: str, count: int, warmup: int) -> dict[str, Any]:
    status = request_bytes("GET", "/v1/status")
    check = request_bytes("POST", "/v1/check", json.dumps({"code": WATER}).encode())
    once = request_bytes("GET", "/v1/status", close=True)
    kept = RawClient(path)

    def keep_status() -> None:
        assert kept.round_trip(status) == 200

    def keep_check() -> None:
        assert kept.round_trip(check) == 200

    def new_connection() -> None:
        fresh = RawClient(path)
        try:
            assert fresh.round_trip(once) == 200
        finally:
            fresh.close()

    figures = {
        "status_keep_alive": summary(timed(keep_status, count, warmup)),
        "check_keep_alive": summary(timed(keep_check, count, warmup)),
        "status_new_connection": summary(timed(new_connection, count, warmup)),
    }
    kept.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--client", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(client(args.client, args.count, args.warmup)))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemon"))
    with tempfile.TemporaryDirectory(prefix="markd-bench-api-") as directory:
        figures = asyncio.run(serve(str(Path(directory) / "control.sock"), args.count, args.warmup))
    for name, figure in figures.items():
        print(
            f"{name:24} p50 {figure['p50_us']:8.1f} µs   p99 {figure['p99_us']:8.1f} µs   "
            f"mean {figure['mean_us']:8.1f} µs"
        )
    print(json.dumps({"count": args.count, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
