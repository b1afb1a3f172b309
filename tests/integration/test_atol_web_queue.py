"""The Web Requests queue as it is (issue 13, item 2): statuses incl. ``blocked``, both
published error shapes, and idempotency read from what the server answers — through the real
``atol-web`` shim over HTTP to the ``atol_web`` emulator."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from markd.cli.markctl import main
from markd.codes import parse
from markd.errors import PrinterFault
from markd.fiscal.base import PrinterSettings, QueueBlocked, new_op_id, open_printer
from markd.fiscal.model import IndustryTags, MarkedItem, Position
from markd.fiscal.session import SaleOptions, SaleSession
from markd.receipts import Payment
from markd.testing import fiscal as testing

SHOES = parse(testing.SHOES)


def test_a_blocked_request_is_unknown_at_once_and_stops_new_tasks(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
        printer.ensure_shift(new_op_id())
        documents = len(server.kkt.documents())
        server.block_next = "before"
        started = time.monotonic()

        with pytest.raises(QueueBlocked) as err:
            printer.close_shift(new_op_id())
        assert time.monotonic() - started < printer.settings.timeout_s / 2  # not polled out
        assert err.value.reason == "queue-blocked"

        posted = len(server.requests)
        with pytest.raises(QueueBlocked):
            printer.status()  # nothing new is sent while the queue is blocked
        assert [r for r in server.requests[posted:] if r.method == "POST"] == []
        assert len(server.kkt.documents()) == documents

        server.unblock()  # a technician resolved it: it never ran (canceled)
        assert printer.status().shift_state == "opened"


async def test_a_sale_blocked_after_it_ran_is_found_once_resolved(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
        session = SaleSession(printer, None, None, tmp_path / "j", None, SaleOptions())
        await session.add(testing.allowed(SHOES), SHOES, 100, "Кроссовки")
        server.block_next, server.block_task = "after", "sell"  # made; result unknown

        pending = await session.close()
        assert (pending.status, pending.reason) == ("pending", "queue-blocked")

        server.unblock()
        report = await session.recover()
        session.close_session()

    assert [o.status for o in report.outcomes] == ["closed"]
    assert len(server.kkt.receipts()) == 1


def test_errors_in_the_object_shape_are_read(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
        server.error_shape = "object"
        server.kkt.set_faults(paper_out=True)

        with pytest.raises(PrinterFault) as err:
            printer.open_shift(new_op_id())

    assert (err.value.reason, err.value.device_code) == ("paper-out", 44)


@pytest.mark.parametrize("repost_status", [200, 400, 409])
def test_a_reposted_uuid_rests_on_what_the_server_holds(tmp_path: Path, repost_status: int) -> None:
    with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
        server.repost_status = repost_status
        printer.ensure_shift(new_op_id())
        check = printer.check_code(new_op_id(), testing.SHOES, SHOES.ki, 1)
        position = Position(
            "Кроссовки",
            100,
            mark=MarkedItem(
                testing.SHOES,
                SHOES.ki,
                1,
                industry=IndustryTags(tag1265="UUID=u&Time=1"),
                validation=check.validation,
            ),
        )
        printer.open_receipt(new_op_id())
        printer.add_position(new_op_id(), position)
        op = new_op_id()
        first = printer.close_receipt(op, [Payment(100)])
        printer.restore_receipt("sell", [position])

        second = printer.close_receipt(op, [Payment(100)])  # posted again after a "crash"

    assert second.document_number == first.document_number
    assert len(server.kkt.receipts()) == 1


def test_another_process_sees_its_request_wait_behind_a_blocked_one(tmp_path: Path) -> None:
    """``markctl printer status`` is a process of its own: it does not know the blocked uuid,
    but its request never leaves ``wait``, which it reports as ``queue-blocked``."""
    with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
        server.block_next = "before"
        with pytest.raises(QueueBlocked):
            printer.status()
        settings = PrinterSettings(timeout_s=0.5, validation_timeout_s=1, poll_interval_s=0.02)
        with open_printer(printer.url.text, settings) as other:
            with pytest.raises(QueueBlocked) as err:
                other.status()

    assert "waits in the queue" in err.value.message


class _Relay:
    """A TCP relay on loopback between the printer and the web server; :meth:`cut` closes
    it (connections refused), :meth:`restore` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
            listener.close()
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_a_block_is_kept_when_the_server_cannot_be_asked_again(tmp_path: Path) -> None:
    """The re-poll of the blocked request fails for another reason (the server unreachable):
    its state is still unknown, so the queue stays blocked and nothing new is sent; once the
    server answers and the request is resolved, tasks flow again."""
    with testing.atol_web_printer(tmp_path / "kkt") as (_, server):
        relay = _Relay((server.host, server.port))
        try:
            with open_printer(f"atol-web://127.0.0.1:{relay.port}", testing.FAST) as printer:
                printer.ensure_shift(new_op_id())
                server.block_next = "before"
                with pytest.raises(QueueBlocked):
                    printer.close_shift(new_op_id())

                relay.cut()
                with pytest.raises(QueueBlocked) as err:
                    printer.status()  # the blocked request cannot be asked: still blocked
                assert "could not be read again" in err.value.message

                relay.restore()
                posted = len(server.requests)
                with pytest.raises(QueueBlocked):
                    printer.status()  # reachable again, the request still blocked
                assert [r for r in server.requests[posted:] if r.method == "POST"] == []

                server.unblock()
                assert printer.status().shift_state == "opened"
        finally:
            relay.cut()


def test_markctl_printer_status_names_a_blocked_queue_and_the_next_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with testing.atol_web_printer(tmp_path / "kkt") as (printer, server):
        server.block_next = "before"
        with pytest.raises(QueueBlocked):
            printer.status()
        config = tmp_path / "markd.toml"
        config.write_text(
            f"[store]\npath = '{tmp_path / 'store'}'\nmap_size_mb = 8\n"
            f"[fiscal]\nurl = 'atol-web://127.0.0.1:{server.port}'\n"
            f"journal = '{tmp_path / 'session.journal'}'\ntimeout_ms = 1000\n",
            encoding="utf-8",
        )

        code = main(["printer", "status", "--config", str(config)])
        text = capsys.readouterr().out
        code_json = main(["printer", "status", "--config", str(config), "--json"])
        report = json.loads(capsys.readouterr().out)

    assert code == code_json == 1
    assert report["queue_blocked"] is True and report["error"]["reason"] == "queue-blocked"
    # Its own request only waited: blocked ahead of it, or merely slow — it says both.
    assert "is blocked or has not finished in time" in report["error"]["message"]
    line = next(line for line in text.splitlines() if line.startswith("QUEUE "))
    assert "BLOCKED" in line and f"http://127.0.0.1:{server.port}" in line
    assert "markctl printer recover" in line and "running longer than" in line


def test_markctl_printer_status_says_nothing_of_a_queue_that_moves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with testing.atol_web_printer(tmp_path / "kkt") as (_, server):
        config = tmp_path / "markd.toml"
        config.write_text(
            f"[store]\npath = '{tmp_path / 'store'}'\nmap_size_mb = 8\n"
            f"[fiscal]\nurl = 'atol-web://127.0.0.1:{server.port}'\n"
            f"journal = '{tmp_path / 'session.journal'}'\n",
            encoding="utf-8",
        )
        code = main(["printer", "status", "--config", str(config), "--json"])
        report = json.loads(capsys.readouterr().out)

    assert code == 0 and report["queue_blocked"] is False
