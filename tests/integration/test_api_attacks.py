"""Attacks on the control API by a local user who can reach its TCP port but not its Unix
socket: each test runs one, and a probe over the Unix socket (the kiosk screen, ``markctl``)
must keep being served meanwhile, its p99 latency within :data:`PROBE_P99_S` (or, on a machine
busy with other work, :data:`PROBE_P99_RATIO` times its own p99 without the attack).

Before markd kept connection slots per listener, 64 tokenless TCP connections, or a slow-loris,
took every slot and the Unix socket answered ``503 busy`` to all 396 requests of a kiosk
screen and ``markctl`` (issue 15). The attackers run in a thread of their own with blocking
sockets, as another process would, so the probe's latencies are the server's, not the
attackers' own work on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api_helpers import Conversation, api_config, running
from conftest import RecordingEventLog, wait_until
from markd.api import server

TOKEN = "attack-test-token-5c1d"
#: The probe's p99 latency allowed during an attack: a person at the screen notices nothing.
PROBE_P99_S = 0.050
#: On a machine busy with other work every latency grows, the attack's or not: the bound is
#: then this many times the probe's own p99 without an attack, measured in the same test.
PROBE_P99_RATIO = 8.0


#: The attacks run about 2 s each on a quiet machine; a busy one slows every probe request, and
#: the p99 bound (not the clock of the whole test) is what judges the server.
pytestmark = pytest.mark.async_timeout(60)


def probe_bound(quiet: list[float]) -> float:
    """The p99 a probe may have during an attack: :data:`PROBE_P99_S`, or
    :data:`PROBE_P99_RATIO` times the p99 of ``quiet`` (the probe before the attack) when the
    machine is that slow."""
    return max(PROBE_P99_S, PROBE_P99_RATIO * p99(quiet))


#: Probe requests made during each attack, one at a time, each on a new connection (as
#: markctl does).
PROBE_REQUESTS = 150
#: Pause between two probe requests: the attack runs for about PROBE_REQUESTS × this.
PROBE_PAUSE_S = 0.01
#: Probe requests without an attack, for the bound on a busy machine (:func:`probe_bound`).
QUIET_REQUESTS = 50


def tcp_config(store_path: str, tmp_path: Path, name: str) -> Any:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    return api_config(
        store_path,
        {"v": f"virtual://{name}"},
        listen="127.0.0.1:0",
        token_file=str(token_file),
    )


async def probe(socket_path: str, requests: int = PROBE_REQUESTS) -> list[float]:
    """Latencies (s) of ``requests`` ``GET /v1/status`` over the Unix socket, each on a new
    connection; any answer but 200 fails the test."""
    latencies = []
    loop = asyncio.get_running_loop()
    for _ in range(requests):
        began = loop.time()
        conversation = await Conversation.unix(socket_path)
        answer = await conversation.request("GET", "/v1/status")
        latencies.append(loop.time() - began)
        conversation.close()
        assert answer.status == 200, answer.body
        await asyncio.sleep(PROBE_PAUSE_S)
    return latencies


def open_connections(service: Any) -> int:
    """The API's open connections, as ``GET /v1/status`` reports them."""
    return service.api.status()["api"]["connections"]


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]


class Attacker(threading.Thread):
    """Runs ``attack(stop)`` in a thread until :meth:`end`; an exception in it is kept and
    raised by :meth:`end`."""

    def __init__(self, attack: Callable[[threading.Event], None]) -> None:
        super().__init__(daemon=True, name="attacker")
        self.attack = attack
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.attack(self.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test by end()
            self.error = exc

    async def end(self) -> None:
        self.stop.set()
        await asyncio.to_thread(self.join, 10)
        assert not self.is_alive(), "the attacker did not stop"
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def closing_all(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


#: Loopback addresses the attacks come from, as from as many peers (Linux routes all of
#: 127.0.0.0/8 to lo): spread over them, a flood stays within MAX_CONNECTIONS_PER_PEER from
#: each, and it is the listener's own limit that it meets.
PEERS = [f"127.0.0.{n}" for n in range(2, 18)]


def connect(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to ``address`` from the loopback address ``source``."""
    sock = socket.create_connection(address, timeout=5, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes (b"" if it closed first)."""
    received = b""
    with contextlib.suppress(ConnectionError, TimeoutError):
        while chunk := sock.recv(4096):
            received += chunk
    return received


# --------------------------------------------------------------------------------------------
# The attacks


async def test_api_a_tcp_connection_flood_leaves_the_unix_socket_served(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """100 idle TCP connections from 16 peers (more than every slot the API had in all): those
    past the TCP listener's own limit get 503 at once, and the Unix socket's slots are
    untouched."""
    config = tcp_config(store_path, tmp_path, "attack-flood")
    flood = 100
    busy: list[bytes] = []
    opened = threading.Event()

    async with running(config, event_log) as service:
        assert service.api is not None and service.api.tcp_address is not None
        address = service.api.tcp_address

        def attack(stop: threading.Event) -> None:
            sources = (PEERS[n % len(PEERS)] for n in range(flood))
            with closing_all([connect(address, source) for source in sources]) as sockets:
                opened.set()
                # Those over the limit were answered 503 and closed; the others stay silent.
                for sock in sockets:
                    sock.settimeout(0.05)
                    with contextlib.suppress(TimeoutError):
                        busy.append(sock.recv(4096))
                stop.wait()

        attacker = Attacker(attack)
        attacker.start()
        await asyncio.to_thread(opened.wait, 10)
        await wait_until(lambda: open_connections(service) >= server.MAX_CONNECTIONS["tcp"])
        latencies = await probe(config.api.socket)
        await attacker.end()
        quiet = await probe(config.api.socket, QUIET_REQUESTS)

    refused = [answer for answer in busy if answer]
    assert len(refused) == flood - server.MAX_CONNECTIONS["tcp"]
    assert all(answer.startswith(b"HTTP/1.1 503 ") and b'"busy"' in answer for answer in refused)
    print(f"probe p99 during a flood of {flood} TCP connections: {p99(latencies) * 1000:.1f} ms")
    assert p99(latencies) <= probe_bound(quiet)


async def test_api_a_slow_loris_on_tcp_leaves_the_unix_socket_served_and_is_cut_off(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 TCP connections from 16 peers, each trickling its head, a byte every 50 ms: the
    Unix socket is served throughout, and each trickler is closed, unanswered, at the head
    deadline."""
    monkeypatch.setattr(server, "HEAD_TIMEOUT_S", 1.0)
    config = tcp_config(store_path, tmp_path, "attack-loris")
    tricklers = 64
    closed_after: list[float] = []  # when each unanswered trickler was closed
    busy: list[bytes] = []  # the answers of those past the TCP listener's limit

    async with running(config, event_log) as service:
        assert service.api is not None and service.api.tcp_address is not None
        address = service.api.tcp_address

        def attack(stop: threading.Event) -> None:
            sources = (PEERS[n % len(PEERS)] for n in range(tricklers))
            with closing_all([connect(address, source) for source in sources]) as sockets:
                began = time.monotonic()
                for sock in sockets:
                    sock.sendall(b"GET /v1/status HTTP/1.1\r\n")
                    sock.setblocking(False)
                received = {sock: b"" for sock in sockets}
                while received and not stop.is_set():
                    for sock in list(received):
                        try:
                            chunk = sock.recv(4096)
                        except BlockingIOError:
                            # Still open, nothing said: trickle on.
                            with contextlib.suppress(BlockingIOError, ConnectionError):
                                sock.send(b"X")
                            continue
                        except ConnectionError:
                            chunk = b""
                        if chunk:
                            received[sock] += chunk
                            continue
                        answer = received.pop(sock)
                        if answer:
                            busy.append(answer)
                        else:
                            closed_after.append(time.monotonic() - began)
                    stop.wait(0.05)

        attacker = Attacker(attack)
        attacker.start()
        await wait_until(lambda: open_connections(service) >= server.MAX_CONNECTIONS["tcp"])
        latencies = await probe(config.api.socket)  # about 1.5 s: past the head deadline
        await wait_until(lambda: len(closed_after) + len(busy) == tricklers, timeout=5)
        await attacker.end()
        quiet = await probe(config.api.socket, QUIET_REQUESTS)

    print(f"probe p99 during a slow-loris of {tricklers}: {p99(latencies) * 1000:.1f} ms")
    assert p99(latencies) <= probe_bound(quiet)
    # Those past the TCP limit were answered 503 at once; the others cut off, unanswered,
    # at the 1 s head deadline.
    assert len(busy) == tricklers - server.MAX_CONNECTIONS["tcp"]
    assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in busy)
    assert len(closed_after) == server.MAX_CONNECTIONS["tcp"]
    assert all(0.5 <= after <= 2.0 for after in closed_after), closed_after


async def test_api_one_tcp_peer_holding_slow_requests_leaves_other_tcp_peers_served(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """One peer (127.0.0.2) opens as many connections as the TCP listener has slots, each
    holding its slot with a head that never ends (cut off only at the 10 s head deadline).
    Those past MAX_CONNECTIONS_PER_PEER get 503 busy at once, naming the address; another TCP
    peer (127.0.0.3, with the token) and the Unix socket are served throughout. Before the
    per-peer limit, the one peer held all 32 slots and every other TCP client got 503."""
    config = tcp_config(store_path, tmp_path, "attack-one-peer")
    hog = server.MAX_CONNECTIONS["tcp"]
    held = server.MAX_CONNECTIONS_PER_PEER
    answers: list[bytes] = []  # what each closed connection of the hog was told
    opened = threading.Event()

    async with running(config, event_log) as service:
        assert service.api is not None and service.api.tcp_address is not None
        address = service.api.tcp_address

        def attack(stop: threading.Event) -> None:
            with closing_all([connect(address, "127.0.0.2") for _ in range(hog)]) as sockets:
                for sock in sockets:
                    sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # and no more
                    sock.setblocking(False)
                opened.set()
                received = {sock: b"" for sock in sockets}
                while not stop.is_set():
                    for sock in list(received):
                        try:
                            chunk = sock.recv(4096)
                        except BlockingIOError:
                            continue  # still holding its slot
                        except ConnectionError:
                            chunk = b""
                        if chunk:
                            received[sock] += chunk
                        else:
                            answers.append(received.pop(sock))
                    stop.wait(0.01)

        attacker = Attacker(attack)
        attacker.start()
        await asyncio.to_thread(opened.wait, 10)
        # Either the hog's connections past its limit were refused, or (without the limit)
        # it holds every slot of the listener.
        await wait_until(
            lambda: len(answers) >= hog - held or open_connections(service) >= hog,
            what="the hog's connections to be held or refused",
        )
        others: list[int | str] = []  # the other peer's answers (or how they failed)
        for _ in range(20):
            reader, writer = await asyncio.open_connection(*address, local_addr=("127.0.0.3", 0))
            conversation = Conversation(reader, writer)
            try:
                answer = await conversation.request(
                    "GET", "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                others.append(answer.status)
            except ConnectionError as exc:  # a 503 and a close can come before the request
                others.append(type(exc).__name__)
            finally:
                conversation.close()
        latencies = await probe(config.api.socket)
        await attacker.end()
        quiet = await probe(config.api.socket, QUIET_REQUESTS)

    assert others == [200] * 20
    assert len(answers) == hog - held
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:40]
        assert b'"busy"' in answer and b"from 127.0.0.2" in answer
    print(f"probe p99 while one TCP peer held {held} slots: {p99(latencies) * 1000:.1f} ms")
    assert p99(latencies) <= probe_bound(quiet)


#: The tokenless clients, run as a process of their own (busy, they would compete with the
#: server for the GIL as threads of the test's, measuring Python rather than markd): CLIENTS
#: threads, each connecting, sending two requests without a token, pipelined, meaning to keep
#: its connection, reading what comes until the server closes, pausing PAUSE_S, and again.
#: They run until stdin closes, then print what they got as JSON. Against markd before issue
#: 15 each connection stayed open after its 401s, and 64 of them held every slot.
TOKENLESS_CLIENTS = r"""
import json, socket, sys, threading, time
host, port, clients, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
request = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
stop = threading.Event()
counts = {"refused": 0, "other_answers": 0, "second_answers": 0, "requests": 0}
lock = threading.Lock()
started = threading.Barrier(clients + 1)

def client():
    started.wait()
    while not stop.is_set():
        sock = socket.create_connection((host, port), timeout=5)
        sock.sendall(request + request)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except OSError:
            pass
        sock.close()
        with lock:
            counts["requests"] += 1
            counts["refused"] += b" 401 " in received
            # (none at all: the server's close met the unread second request, and the reset
            # took the answer with it)
            # 503 busy: more than the TCP listener's slots were open at that moment
            counts["other_answers"] += bool(received) and received[9:12] not in (b"401", b"503")
            counts["second_answers"] += received.count(b"HTTP/1.1 ") > 1
        stop.wait(pause)

threads = [threading.Thread(target=client) for _ in range(clients)]
for thread in threads:
    thread.start()
started.wait()
while counts["requests"] < clients:
    time.sleep(0.01)
print("attacking", flush=True)
sys.stdin.read()
stop.set()
for thread in threads:
    thread.join()
print(json.dumps(counts), flush=True)
"""
#: Pause of each tokenless client between two connections. Without it the clients keep the
#: server's core busy (some 5,000 refusals a second here) and the probe's p99 measures a local
#: process taking the CPU, which any process can do without the API. With it, about 1,000
#: tokenless requests a second still come, from 64 clients.
PAUSE_S = 0.05


async def test_api_tokenless_keep_alive_requests_leave_the_unix_socket_served(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """64 TCP connections asking again and again without a token, meaning to keep their
    connections (and slots) with keep-alive: every 401 closes its connection, and the Unix
    socket is served throughout."""
    config = tcp_config(store_path, tmp_path, "attack-tokenless")
    clients = 64

    async with running(config, event_log) as service:
        assert service.api is not None and service.api.tcp_address is not None
        host, port = service.api.tcp_address
        quiet = await probe(config.api.socket, QUIET_REQUESTS)
        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            TOKENLESS_CLIENTS,
            host,
            str(port),
            str(clients),
            str(PAUSE_S),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert attacker.stdin is not None and attacker.stdout is not None
            assert await asyncio.wait_for(attacker.stdout.readline(), 10) == b"attacking\n"
            latencies = await probe(config.api.socket)
            attacker.stdin.close()
            result = json.loads(await asyncio.wait_for(attacker.stdout.readline(), 10))
            await asyncio.wait_for(attacker.wait(), 10)
        finally:
            if attacker.returncode is None:
                attacker.kill()
                await attacker.wait()

    assert result["refused"] >= 2 * clients and result["other_answers"] == 0
    assert result["second_answers"] == 0
    refused = result["refused"]
    print(f"probe p99 during {refused} tokenless requests: {p99(latencies) * 1000:.1f} ms")
    # 64 clients asking as fast as the server answers each 401 share its one event loop with
    # the probe: its p99 sits at 30-50 ms on this machine, so this test allows twice the
    # bound of the others (the socket still answers every request 200, asserted above).
    assert p99(latencies) <= 2 * probe_bound(quiet)
