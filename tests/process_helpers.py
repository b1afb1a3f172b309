"""Helpers for tests that run the real ``markd`` executable as a child process."""

from __future__ import annotations

import queue
import socket
import sys
import threading
from pathlib import Path

import pytest


def markd_command() -> list[str]:
    """The installed ``markd`` script of this venv, else ``python -m markd.cli.markd``."""
    script = Path(sys.executable).parent / "markd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "markd.cli.markd"]


class LineReader:
    """Collects a pipe's lines in a thread so the test can wait for one with a timeout."""

    def __init__(self, pipe: object) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """The first line from now on that contains ``text``; fail after ``timeout`` seconds."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line containing {text!r}; got: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def rest(self) -> list[str]:
        """Every line seen so far, including those not waited for yet."""
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return self.seen


def receive_until(sock: socket.socket, state: str) -> list[str]:
    """Read notify datagrams until one carries ``state``; return all lines seen."""
    lines: list[str] = []
    while state not in lines:
        lines += sock.recv(4096).decode().split("\n")
    return lines
