"""The real ``markd`` process killed with SIGKILL in the middle of a close
(``MARKD_FISCAL_KILL_AT``, as a power cut): after the restart, ``GET /v1/receipts/{id}`` tells
the receipt's true outcome, and the close asked again with its ``Idempotency-Key`` gets it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import WATER, WATER_KI
from process_helpers import LineReader, markd_command, with_test_hooks
from sale_helpers import kkt, write_sale_config

WATER_ITEM = {"code": WATER, "name": "Вода 0,5 л", "price_kopecks": 8990}
KEY = "kiosk-3/0117"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.unix_path)
        self.sock = sock


def call(
    directory: Path, method: str, target: str, body: Any = None, key: str | None = None
) -> tuple[int, Any]:
    connection = UnixConnection(str(directory / "control.sock"))
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    payload = b"" if body is None else json.dumps(body).encode()
    try:
        connection.request(
            method, target, body=payload if method == "POST" else None, headers=headers
        )
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def start(config: Path, notify_path: str, kill_at: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    env.pop("JOURNAL_STREAM", None)
    if kill_at is not None:
        env = with_test_hooks({**env, "MARKD_FISCAL_KILL_AT": kill_at})
    return subprocess.Popen(
        [*markd_command(), "--config", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(sock: socket.socket) -> None:
    lines: list[str] = []
    while "READY=1" not in lines:
        lines += sock.recv(4096).decode().split("\n")


@pytest.mark.parametrize(
    ("kill_at", "state", "reason"),
    [
        # The key journaled, nothing paid yet: recovery cancels the receipt.
        ("close-asked", "cancelled", "interrupted-before-payment"),
        # The close journaled, the ККТ not asked yet: recovery registers it anew.
        ("closing", "registered", "fiscalised"),
        # Fiscalised, the journal does not know: recovery finds it by its request id.
        ("printed", "registered", "recovered"),
    ],
)
def test_receipt_outcome_after_markd_is_killed_during_the_close(
    tmp_path: Path, notify_socket: tuple[socket.socket, str], kill_at: str, state: str, reason: str
) -> None:
    sock, notify_path = notify_socket
    config = write_sale_config(tmp_path, mode="attendant", scanners={}, catalog=None)
    proc = start(config, notify_path, kill_at)
    stderr = LineReader(proc.stderr)
    try:
        wait_ready(sock)
        status, opened = call(tmp_path, "POST", "/v1/receipt", {})
        rid = opened["receipt"]["id"]
        assert call(tmp_path, "POST", "/v1/receipt/items", WATER_ITEM)[0] == 200
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            call(tmp_path, "POST", "/v1/receipt/close", {"receipt": rid}, key=KEY)
        assert proc.wait(timeout=20) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    proc = start(config, notify_path)
    stderr = LineReader(proc.stderr)
    try:
        wait_ready(sock)
        status, seen = call(tmp_path, "GET", f"/v1/receipts/{rid}")
        first = call(tmp_path, "POST", "/v1/receipt/close", key=KEY)
        again = call(tmp_path, "POST", "/v1/receipt/close", {"receipt": rid}, key=KEY)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert status == 200, seen
    receipt = seen["receipt"]
    assert (receipt["state"], receipt["reason"]) == (state, reason)
    assert again == first
    assert "938p9E" not in "\n".join(stderr.rest())  # the crypto tail never reaches a log
    if state == "cancelled":
        assert kkt(tmp_path).receipts() == []  # nothing printed, nothing paid
        assert first[0] == 409 and first[1]["error"] == "receipt-cancelled", first
        assert rid in first[1]["message"] and reason in first[1]["message"]
        return
    (document,) = kkt(tmp_path).receipts()  # once: not lost, not twice
    assert [p["ki"] for p in document["positions"]] == [WATER_KI]
    assert receipt["document_number"] == document["number"]
    assert receipt["fiscal_sign"] == document["fiscal_sign"]
    assert first[0] == 200, first
    assert first[1]["receipt"]["id"] == rid
    assert first[1]["receipt"]["document"]["document_number"] == document["number"]
