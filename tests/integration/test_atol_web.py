"""The ``atol-web`` backend over real HTTP against the ``atol_web`` emulator: the Web Requests
protocol (uuid, 409, polling), how transport failures map, and the emulator as a process whose
state survives SIGKILL."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from markd.codes import parse
from markd.emulators import testing as http
from markd.emulators.atol_web import AtolWebEmulator, load_scenario
from markd.emulators.scenario import ScenarioError
from markd.errors import FiscalTimeout, OutcomeUnknown, PrinterFault, PrinterUnavailable
from markd.fiscal import atol_protocol as proto
from markd.fiscal.atol import TaskOutcome, Transport
from markd.fiscal.base import PrinterSettings, new_op_id, open_printer
from markd.fiscal.model import MarkedItem, Position
from markd.receipts import Payment
from markd.testing import fiscal as testing

REQUESTS = "/api/v2/requests"


def wait_results(url: str, uuid: str, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        answer = http.http_request(url, "GET", f"{REQUESTS}/{uuid}")
        assert answer.status == 200
        results = answer.json["results"]
        if all(r["status"] in ("ready", "error", "interrupted") for r in results):
            return results
        assert time.monotonic() < deadline, results
        time.sleep(0.01)


def test_post_then_poll_by_uuid(tmp_path: Path) -> None:
    with AtolWebEmulator(state_dir=tmp_path) as server:
        posted = http.http_request(
            server.url,
            "POST",
            REQUESTS,
            json_body={"uuid": "r-1", "request": [{"type": "getShiftStatus"}, {"type": "x"}]},
        )
        results = wait_results(server.url, "r-1")
        again = http.http_request(
            server.url, "POST", REQUESTS, json_body={"uuid": "r-1", "request": [{"type": "y"}]}
        )
        missing = http.http_request(server.url, "GET", f"{REQUESTS}/nope")
        bad = http.http_request(server.url, "POST", REQUESTS, json_body={"request": []})

    assert posted.status == 201
    assert results[0]["status"] == "ready"
    assert results[0]["result"]["shiftStatus"]["state"] == "closed"
    assert results[1]["status"] == "error" and results[1]["errorCode"] == 11
    assert again.status == 409 and "error" in again.json
    assert missing.status == 404 and bad.status == 400


def test_client_waits_through_in_progress(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path) as (printer, server):
        server.latency_ms = 150
        started = time.monotonic()
        printer.ensure_shift(new_op_id())

        assert time.monotonic() - started >= 0.3  # status, then openShift, each ≥ 150 ms
        assert printer.status().shift_state == "opened"


def test_a_request_longer_than_the_timeout_is_a_timeout(tmp_path: Path) -> None:
    settings = PrinterSettings(timeout_s=0.3, validation_timeout_s=1, poll_interval_s=0.01)
    with testing.atol_web_printer(tmp_path, settings) as (printer, server):
        server.latency_ms = 2000
        with pytest.raises(FiscalTimeout):
            printer.status()


def test_no_server_is_printer_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once the probe is closed
    with open_printer(f"atol-web://127.0.0.1:{port}", testing.FAST) as printer:
        with pytest.raises(PrinterUnavailable) as err:
            printer.status()
    assert not isinstance(err.value, OutcomeUnknown)


def test_device_errors_map_to_reasons(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path) as (printer, server):
        server.kkt.set_faults(paper_out=True)
        with pytest.raises(PrinterFault) as paper:
            printer.open_shift(new_op_id())
        server.kkt.set_faults(paper_out=None, gone=True)
        with pytest.raises(PrinterUnavailable) as gone:
            printer.status()

    assert (paper.value.reason, paper.value.device_code) == ("paper-out", 44)
    assert gone.value.device_code == 2


def test_link_lost_during_the_receipt_is_an_unknown_outcome(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path) as (printer, server):
        printer.ensure_shift(new_op_id())
        km = testing.SHOES
        check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
        printer.open_receipt(new_op_id())
        printer.add_position(
            new_op_id(),
            Position("x", 100, mark=MarkedItem(km, parse(km).ki, 1, validation=check.validation)),
        )
        server.kkt.set_faults(gone_in_receipt="after")
        op = new_op_id()
        with pytest.raises(OutcomeUnknown):
            printer.close_receipt(op, [Payment(100)])
        server.kkt.set_faults(gone=None)
        finding, _ = printer.find_receipt(op)
        receipts = server.kkt.receipts()

    assert finding == "unknown"  # the answer was cut off: only the counter can tell
    assert len(receipts) == 1


#: Numbers no ККТ sends but a confused firmware, or something answering in its place, could:
#: "²" passes str.isdigit() and then fails int(); 5,000 digits exceed int()'s limit.
HOSTILE_INTEGERS = ["²", "٣", "9" * 5000, "1_000", 10**30, 2.5, True]
#: Counters (document, receipt, shift numbers) are never negative either.
HOSTILE_COUNTERS = [*HOSTILE_INTEGERS, -1, "-1"]


class TamperedAnswers:
    """A transport in front of the real one that overwrites the named fields wherever they
    appear in a task's result; everything else goes through untouched."""

    def __init__(self, inner: Transport, fields: Mapping[str, Any]) -> None:
        self.inner = inner
        self.fields = dict(fields)

    def run(
        self, op_id: str, tasks: list[dict[str, Any]], timeout_s: float, mutating: bool
    ) -> list[TaskOutcome]:
        return [self._tamper(o) for o in self.inner.run(op_id, tasks, timeout_s, mutating)]

    def lookup(self, op_id: str, timeout_s: float) -> list[TaskOutcome] | None:
        found = self.inner.lookup(op_id, timeout_s)
        return None if found is None else [self._tamper(o) for o in found]

    def cancel_receipt(self, op_id: str, timeout_s: float) -> list[TaskOutcome]:
        return self.inner.cancel_receipt(op_id, timeout_s)

    def cancel_leftover(self, op_id: str, timeout_s: float) -> None:
        self.inner.cancel_leftover(op_id, timeout_s)

    def close(self) -> None:
        self.inner.close()

    def _tamper(self, outcome: TaskOutcome) -> TaskOutcome:
        return replace(outcome, result=self._rewrite(outcome.result))

    def _rewrite(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: self.fields[k] if k in self.fields else self._rewrite(v)
                for k, v in value.items()
            }
        return value


@pytest.mark.parametrize("value", HOSTILE_COUNTERS, ids=lambda v: repr(v)[:12])
def test_hostile_numbers_in_the_status_read_as_unknown(tmp_path: Path, value: Any) -> None:
    fields = ["number", "fiscalDocumentNumber", "fiscalReceiptNumber", "notSentCount"]
    with testing.atol_web_printer(tmp_path) as (printer, _server):
        printer.transport = TamperedAnswers(printer.transport, dict.fromkeys(fields, value))
        status = printer.status()

    assert (status.shift_number, status.last_document_number) == (0, 0)
    assert (status.last_receipt_number, status.unsent_documents) == (None, None)


@pytest.mark.parametrize("value", HOSTILE_COUNTERS, ids=lambda v: repr(v)[:12])
def test_a_receipt_without_a_readable_document_number_is_an_unknown_outcome(
    tmp_path: Path, value: Any
) -> None:
    with testing.atol_web_printer(tmp_path) as (printer, server):
        printer.ensure_shift(new_op_id())
        printer.open_receipt(new_op_id())
        printer.add_position(new_op_id(), Position("x", 100))
        printer.transport = TamperedAnswers(printer.transport, {"fiscalDocumentNumber": value})
        with pytest.raises(OutcomeUnknown, match="without a document number"):
            printer.close_receipt(new_op_id(), [Payment(100)])
        receipts = server.kkt.receipts()

    assert len(receipts) == 1  # printed: only reconciliation can tell it was


@pytest.mark.parametrize("value", HOSTILE_INTEGERS, ids=lambda v: repr(v)[:12])
def test_a_hostile_error_code_is_no_code(value: Any) -> None:
    outcome = TaskOutcome.from_json({"status": "error", "errorCode": value})
    assert outcome.error_code is None and not outcome.ok


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "12", True, None])
def test_a_sum_that_is_not_a_finite_number_is_a_value_error(value: Any) -> None:
    # Python's json reads Infinity; round(inf) raised OverflowError past the callers' except.
    with pytest.raises(ValueError):
        proto.kopecks(value)


def test_admin_endpoints(tmp_path: Path) -> None:
    with AtolWebEmulator(state_dir=tmp_path) as server:
        set_fault = http.http_request(
            server.url, "POST", "/_emulator/faults", json_body={"ism": "offline"}
        )
        state = http.http_request(server.url, "GET", "/_emulator/state").json
        bad = http.http_request(server.url, "POST", "/_emulator/faults", json_body={"x": 1})
        cleared = http.http_request(server.url, "DELETE", "/_emulator/faults")
        latency = http.http_request(
            server.url, "POST", "/_emulator/settings", json_body={"latency_ms": 5}
        )

        assert set_fault.status == 200 and state["faults"]["ism"] == "offline"
        assert bad.status == 400
        assert cleared.status == 200 and server.kkt.faults == {"ism": "online"}
        assert latency.status == 200 and server.latency_ms == 5
        assert "requests" not in state  # the request log is not the device's state


def test_scenario_is_checked() -> None:
    assert load_scenario({"faults": {"paper_out": True}, "latency_ms": 3}) == {
        "faults": {"paper_out": True},
        "latency_ms": 3,
    }
    with pytest.raises(ScenarioError, match="unknown keys"):
        load_scenario({"fautls": {}})
    with pytest.raises(ScenarioError, match="faults"):
        load_scenario({"faults": {"smoke": True}})


# -- the emulator as a process ------------------------------------------------------------------


def start_emulator(state_dir: Path, port: int = 0) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "markd.emulators", "atol_web", "--port", str(port)]
        + ["--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), process.stderr.read() if process.stderr else ""
    return process, url


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_emulator_process_keeps_its_state_across_sigkill(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    process, url = start_emulator(tmp_path / "kkt")
    processes.append(process)
    host_port = url.removeprefix("http://")
    with open_printer(f"atol-web://{host_port}", testing.FAST) as printer:
        printer.ensure_shift(new_op_id())
        km = testing.SHOES
        check = printer.check_code(new_op_id(), km, parse(km).ki, 1)
        printer.open_receipt(new_op_id())
        printer.add_position(
            new_op_id(),
            Position("x", 100, mark=MarkedItem(km, parse(km).ki, 1, validation=check.validation)),
        )
        op = new_op_id()
        first = printer.close_receipt(op, [Payment(100)])

    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    port = int(host_port.rsplit(":", 1)[1])
    restarted, url = start_emulator(tmp_path / "kkt", port)
    processes.append(restarted)

    with open_printer(f"atol-web://{url.removeprefix('http://')}", testing.FAST) as printer:
        status = printer.status()
        finding, found = printer.find_receipt(op)

    assert status.last_document_number == first.document_number
    assert status.shift_state == "opened"
    assert finding == "done" and found is not None
    assert found.document_number == first.document_number


def test_emulator_command_line_rejects_state_dir_for_others() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "markd.emulators", "crpt_cdn", "--state-dir", "/tmp/x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--state-dir is for atol_web" in result.stderr
