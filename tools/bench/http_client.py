#!/usr/bin/env python3
"""HTTP client benchmark: what one request through :class:`markd.http.client.HTTPClient` costs.

Usage::

    tools/bench/http_client.py [--count N] [--wait-ms MS]

An asyncio server in the same process answers every keep-alive ``POST`` with a fixed JSON
body of the size of a CDN answer; the client sends the online client's headers and body.
Measured, each over N requests after a warm-up:

1. **a request**: the round trip of ``HTTPClient.request`` (``perf_counter``), less the time
   the server spent waiting on purpose (stamped by the server in the same process), p50 /
   p99; and the process's CPU time per request (client and server together);
2. **the same with the server waiting** ``--wait-ms`` before each answer (20 ms, as the CDN
   emulator of ``tools/bench/checks.py``): what the exchange costs when the client resumes
   after an idle wait, caches cold;
3. **h11 alone**: serialising the request and parsing the answer with no I/O.

Prints human lines, then as the final line one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import h11

from markd.http.client import HTTPClient

ANSWER = json.dumps(
    {
        "code": 0,
        "codes": [
            {
                "cis": "0104680029460908215jcmHzLmkdPML",
                "valid": True,
                "found": True,
                "realizable": True,
                "utilised": False,
                "verified": True,
                "isBlocked": False,
                "expireDate": "2030-01-01T00:00:00Z",
                "errorCode": 0,
                "groupIds": [3],
            }
        ],
        "reqId": "0f5b2c7e-1111-4222-8333-944445555666",
        "reqTimestamp": 1735000000000,
    }
).encode()
HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(ANSWER)
)
HEADERS = {"X-API-KEY": "0f5b2c7e-1111-4222-8333-944445555666", "X-ClientId": "9960440300000001"}
BODY = {"codes": ["0104680029460908215jcmHzLmkdPML\x1d938p9E"], "fiscalDriveNumber": "1"}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(ordered[len(ordered) // 2], 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
    }


class Stamps:
    """When the server had the request and when it wrote the answer (``perf_counter``)."""

    received = 0.0
    answered = 0.0


async def serve(wait_s: float) -> tuple[asyncio.Server, str, set[asyncio.Task[Any]]]:
    handlers: set[asyncio.Task[Any]] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                Stamps.received = time.perf_counter()
                if wait_s:
                    await asyncio.sleep(wait_s)
                Stamps.answered = time.perf_counter()
                writer.write(HEAD + ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/api/v4/true-api/codes/check", handlers


async def requests(count: int, wait_s: float) -> dict[str, Any]:
    server, url, handlers = await serve(wait_s)
    client = HTTPClient()
    try:
        for _ in range(max(count // 10, 10)):  # warm-up: a kept-alive connection, warm code
            await client.request(
                "POST", url, deadline=time.monotonic() + 5, headers=HEADERS, json_body=BODY
            )
        times: list[float] = []
        cpu = time.process_time()
        for _ in range(count):
            started = time.perf_counter()
            await client.request(
                "POST", url, deadline=time.monotonic() + 5, headers=HEADERS, json_body=BODY
            )
            ended = time.perf_counter()
            times.append(((ended - started) - (Stamps.answered - Stamps.received)) * 1e6)
        cpu_us = (time.process_time() - cpu) / count * 1e6
    finally:
        client.close()
        server.close()
        await asyncio.gather(*handlers)  # each sees the client's close and ends
        await server.wait_closed()
    return {"us": percentiles(times), "cpu_us_per_request": round(cpu_us, 1)}


def h11_alone(count: int) -> float:
    """Microseconds for h11 to write one request and read one answer (no I/O)."""
    body = json.dumps(BODY, separators=(",", ":")).encode()
    fields = [
        (b"Host", b"127.0.0.1:1"),
        (b"User-Agent", b"markd"),
        (b"Accept", b"application/json"),
        (b"Content-Type", b"application/json"),
        *((name.encode(), value.encode()) for name, value in HEADERS.items()),
        (b"Content-Length", str(len(body)).encode()),
    ]
    connection = h11.Connection(h11.CLIENT)
    started = time.perf_counter()
    for _ in range(count):
        connection.send(h11.Request(method="POST", target=b"/codes/check", headers=fields))
        connection.send(h11.Data(data=body))
        connection.send(h11.EndOfMessage())
        connection.receive_data(HEAD + ANSWER)
        while not isinstance(connection.next_event(), h11.EndOfMessage):
            pass
        connection.start_next_cycle()
    return (time.perf_counter() - started) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--wait-ms", type=float, default=20.0)
    args = parser.parse_args()
    result: dict[str, Any] = {"count": args.count, "h11": h11.__version__}
    result["request"] = asyncio.run(requests(args.count, 0.0))
    waited = max(args.count // 10, 100)
    result["wait_ms"] = args.wait_ms
    result["request_after_wait"] = asyncio.run(requests(waited, args.wait_ms / 1000))
    result["h11_alone_us"] = round(h11_alone(args.count * 5), 1)
    request, after = result["request"], result["request_after_wait"]
    print(
        f"request, keep-alive, loopback ({args.count}): p50 {request['us']['p50']} µs, "
        f"p99 {request['us']['p99']} µs; CPU {request['cpu_us_per_request']} µs a request"
    )
    print(
        f"same, the server waiting {args.wait_ms:g} ms ({waited}): p50 {after['us']['p50']} µs, "
        f"p99 {after['us']['p99']} µs besides the wait"
    )
    print(f"h11 alone (h11 {h11.__version__}): {result['h11_alone_us']} µs an exchange")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
