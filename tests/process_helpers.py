"""Helpers for tests that run the real ``markd`` executable as a child process."""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

#: The tests' ``sitecustomize``: a child with this directory on its ``PYTHONPATH`` installs the
#: test hooks its environment names (kill points, the SIGUSR2 hang; markd.testing.hooks).
SITE_HOOKS = Path(__file__).resolve().with_name("sitehooks")


def with_test_hooks(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a child process that installs markd's test hooks at start: the tests'
    ``sitecustomize`` first on its ``PYTHONPATH`` (the hooks themselves are chosen by the
    variables in ``env``: ``MARKD_FISCAL_KILL_AT``, ``MARKD_TEST_HOOKS``)."""
    paths = [str(SITE_HOOKS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


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
