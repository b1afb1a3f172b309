"""The real ``markd`` process in kiosk mode, as systemd runs it: a pty for the scanner, the
virtual ККТ on disk, the control socket. SIGTERM with a receipt open ends it cleanly (exit 0)
and the next start settles that receipt; then a sale goes through as usual."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from conftest import WATER, WATER_KI, PtyPair
from markd.api.client import ControlClient
from process_helpers import LineReader, markd_command
from sale_helpers import journal, kkt, write_sale_config


def wait_ready(sock: socket.socket) -> None:
    lines: list[str] = []
    while "READY=1" not in lines:
        lines += sock.recv(4096).decode().split("\n")


def start(config: Path, notify_path: str) -> tuple[subprocess.Popen[str], LineReader]:
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen(
        [*markd_command(), "--config", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, LineReader(proc.stderr)


def test_kiosk_markd_stopped_with_a_receipt_open_exits_0_and_the_restart_settles_it(
    tmp_path: Path, pty_pair: PtyPair, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, notify_path = notify_socket
    config = write_sale_config(
        tmp_path,
        mode="kiosk",
        scanners={"front": f"serial://{pty_pair.path}?baudrate=9600&terminator=cr"},
    )
    proc, stderr = start(config, notify_path)
    try:
        wait_ready(sock)
        stderr.wait_for("scanner-present", timeout=20)
        pty_pair.write(WATER.encode() + b"\r")
        added = stderr.wait_for("sale-unit:", timeout=20)
        assert WATER_KI in added and "scanner=front" in added
        receipt = ControlClient(str(tmp_path / "control.sock")).request("GET", "/v1/receipt")
        rid = receipt["receipt"]["id"]

        proc.send_signal(signal.SIGTERM)
        parked = stderr.wait_for("action=parked", timeout=20)
        assert rid in parked and "paid=false" in parked
        assert proc.wait(timeout=20) == 0, stderr.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "938p9E" not in "\n".join(stderr.rest())  # the crypto tail never reaches a log
    assert "parked" in [r["event"] for r in journal(tmp_path).by_receipt()[rid]]

    proc, stderr = start(config, notify_path)
    try:
        wait_ready(sock)
        recovered = stderr.wait_for("fiscal-recovery:", timeout=20)
        assert rid in recovered and "status=cancelled" in recovered
        client = ControlClient(str(tmp_path / "control.sock"))
        assert client.request("GET", "/v1/receipt") == {"receipt": None}
        stderr.wait_for("scanner-present", timeout=20)
        pty_pair.write(WATER.encode() + b"\r")
        stderr.wait_for("sale-unit:", timeout=20)
        closed = client.request("POST", "/v1/receipt/close")
        assert closed["receipt"]["status"] == "closed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, stderr.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    documents = kkt(tmp_path).receipts()
    assert len(documents) == 1 and [p["ki"] for p in documents[0]["positions"]] == [WATER_KI]
    assert closed["receipt"]["document"]["document_number"] == documents[0]["number"]
    events = [r["event"] for r in journal(tmp_path).by_receipt()[rid]]
    assert "cancelled" in events and "closed" not in events
