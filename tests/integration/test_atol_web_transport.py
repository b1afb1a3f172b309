"""The ATOL Web Requests transport on markd.http: whether a request left decides whether a
receipt may have been printed, so "not sent" and "sent, no answer" are told apart here on
real sockets, against the ``atol_web`` emulator with its answers lost on the way.

* not sent (nothing listens, the server went away between two operations): the printer is
  unavailable, and no receipt can have been printed;
* sent, answer lost after the server queued it: markd asks for the request by its uuid and
  finds what the device did (the receipt printed, with its number);
* sent, answer lost before the server read it: markd asks, the server does not know the uuid,
  and only then is the printer called unavailable;
* sent, then the answers to the polls are lost: the outcome is unknown.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from markd.codes import parse
from markd.emulators.atol_web import AtolWebEmulator
from markd.emulators.scenario import Behaviour, Scenario
from markd.emulators.server import Reply, Request, Route
from markd.errors import OutcomeUnknown, PrinterUnavailable
from markd.fiscal.atol import WebRequestsTransport
from markd.fiscal.base import FiscalPrinter, new_op_id, open_printer
from markd.fiscal.model import MarkedItem, Position
from markd.receipts import Payment
from markd.testing import fiscal as testing

REQUESTS = "/api/v2/requests"


class LosingEmulator(AtolWebEmulator):
    """The ATOL web emulator whose answers can be lost.

    ``lose_post``: ``"queued"`` — a ``POST`` of a request is taken (queued for the device, or
    409 for a known uuid) and then the connection ends without an answer; ``"unread"`` — it
    ends before the server takes the request. ``lose_polls``: every ``GET`` of results ends
    without an answer."""

    lose_post: str | None = None
    lose_polls = False

    def route(self, method: str, path: str) -> Route | None:
        route = super().route(method, path)
        if route is None or route.endpoint != "requests" or self.lose_post != "queued":
            return route
        take = route.handler

        def taken_then_lost(request: Request) -> Reply:
            take(request)
            # An OSError out of a handler ends the connection without an answer.
            raise ConnectionAbortedError("test: the answer was lost on the way")

        return replace(route, handler=taken_then_lost)

    def _next_step(self, scenario: Scenario, route: Route) -> tuple[Behaviour, float]:
        if (route.endpoint == "requests" and self.lose_post == "unread") or (
            route.endpoint == "requests/result" and self.lose_polls
        ):
            return Behaviour(drop=True), 0.0
        return super()._next_step(scenario, route)


@pytest.fixture
def atol(tmp_path: Path) -> Iterator[tuple[FiscalPrinter, LosingEmulator]]:
    with LosingEmulator(state_dir=tmp_path) as server:
        printer = open_printer(f"atol-web://{server.host}:{server.port}", testing.FAST)
        try:
            yield printer, server
        finally:
            printer.close()


def posts(server: AtolWebEmulator) -> list[Any]:
    return [r for r in server.requests if r.method == "POST" and r.path == REQUESTS]


def polls(server: AtolWebEmulator, uuid: str) -> int:
    return sum(1 for r in server.requests if r.method == "GET" and r.path.endswith(f"/{uuid}"))


def open_with_one_unit(printer: FiscalPrinter) -> None:
    printer.ensure_shift(new_op_id())
    km = testing.SHOES
    check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
    printer.open_receipt(new_op_id())
    printer.add_position(
        new_op_id(),
        Position("x", 100, mark=MarkedItem(km, parse(km).ki, 1, validation=check.validation)),
    )


def test_operations_share_one_kept_alive_connection(
    atol: tuple[FiscalPrinter, LosingEmulator],
) -> None:
    printer, server = atol
    printer.ensure_shift(new_op_id())
    first = printer.status()
    second = printer.status()
    transport = printer.transport
    assert isinstance(transport, WebRequestsTransport) and transport._http is not None
    pooled = [c for pool in transport._http._client._idle.values() for c in pool]
    assert first.shift_state == second.shift_state == "opened"
    assert len(pooled) == 1 and pooled[0].used >= 4  # POST, polls, POST, polls …


def test_nothing_listening_is_not_sent_and_asks_nothing_more() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open_printer(f"atol-web://127.0.0.1:{port}", testing.FAST) as printer:
        with pytest.raises(PrinterUnavailable) as caught:
            printer.status()
    assert not isinstance(caught.value, OutcomeUnknown)
    assert "Connection refused" in str(caught.value)


def test_a_server_gone_between_operations_is_not_sent(tmp_path: Path) -> None:
    """The kept-alive connection of the last operation is dead and nothing listens any more:
    the next request never left, so nothing can have been printed."""
    with LosingEmulator(state_dir=tmp_path) as server:
        printer = open_printer(f"atol-web://{server.host}:{server.port}", testing.FAST)
        printer.ensure_shift(new_op_id())
    try:
        with pytest.raises(PrinterUnavailable) as caught:
            printer.open_receipt(new_op_id())
    finally:
        printer.close()
    assert not isinstance(caught.value, OutcomeUnknown)


def test_an_answer_lost_after_the_server_queued_the_receipt_is_found_by_its_uuid(
    atol: tuple[FiscalPrinter, LosingEmulator],
) -> None:
    printer, server = atol
    open_with_one_unit(printer)
    server.lose_post = "queued"
    op = new_op_id()
    result = printer.close_receipt(op, [Payment(100)])
    server.lose_post = None

    receipts = server.kkt.receipts()
    assert len(receipts) == 1 and result.document_number > 0
    closing = [r for r in posts(server) if r.json and r.json.get("uuid", "").startswith(op)]
    assert closing and polls(server, closing[-1].json["uuid"]) >= 1


def test_an_answer_lost_before_the_server_read_it_is_asked_for_then_unavailable(
    atol: tuple[FiscalPrinter, LosingEmulator],
) -> None:
    printer, server = atol
    printer.ensure_shift(new_op_id())
    server.lose_post = "unread"
    op = new_op_id()
    with pytest.raises(PrinterUnavailable, match="not queued") as caught:
        printer.open_receipt(op)
    server.lose_post = None
    assert not isinstance(caught.value, OutcomeUnknown)
    # It was sent as far as markd can tell, so markd asked for it before giving up.
    lost = [r for r in posts(server) if r.json and r.json.get("uuid", "").startswith(op)]
    assert lost and polls(server, lost[-1].json["uuid"]) >= 1
    assert server.kkt.receipts() == []


def test_answers_lost_while_polling_leave_the_outcome_unknown(
    atol: tuple[FiscalPrinter, LosingEmulator],
) -> None:
    printer, server = atol
    open_with_one_unit(printer)
    server.lose_polls = True
    with pytest.raises(OutcomeUnknown, match="lost while waiting"):
        printer.close_receipt(new_op_id(), [Payment(100)])
    server.lose_polls = False
    # The server's queue runs the request on its own: printed, only reconciliation can tell.
    # (On a loaded machine the queue may run it after markd stopped waiting.)
    deadline = time.monotonic() + 10
    while not server.kkt.receipts() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server.kkt.receipts()) == 1


def test_an_answer_with_a_5000_digit_length_counts_as_sent_without_an_answer() -> None:
    """A hostile ``Content-Length`` (h11 0.14, Debian 12's, raises a bare ValueError on it)
    is a broken answer to a request that left: markd asks for it by its uuid before calling
    the printer unavailable, as for any answer lost after sending."""
    hostile = b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    heads: list[bytes] = []
    done = threading.Event()

    def answer_all() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(5)
                with contextlib.suppress(OSError):
                    heads.append(connection.recv(65536).split(b"\r\n", 1)[0])
                    connection.sendall(hostile)

    thread = threading.Thread(target=answer_all, daemon=True)
    thread.start()
    url = f"atol-web://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with open_printer(url, testing.FAST) as printer:
            with pytest.raises(PrinterUnavailable) as caught:
                printer.status()
    finally:
        done.set()
        thread.join(5)
        listener.close()
    assert "malformed" in str(caught.value) or "not queued" in str(caught.value), caught.value
    assert heads[0].startswith(b"POST " + REQUESTS.encode())
    assert any(head.startswith(b"GET " + REQUESTS.encode()) for head in heads)  # asked by uuid
