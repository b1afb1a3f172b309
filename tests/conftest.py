"""Shared fixtures: a temporary store, a pty pair standing in for a serial scanner, a
recording event log, and a guard that fails any test leaving a virtual scanner open.

``async def`` tests run in a fresh event loop each (``asyncio.run``), with a time limit, so
no asyncio plugin is needed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import shutil
import socket
import tempfile
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from markd.scanners import open_virtual_names
from markd.store import Store
from markd.systemd import EventLog

# `markctl config check` run as root judges each file a key names as the service's user would
# (markd.config.access) when that account exists. The tests keep such files in root-only
# temporary directories, so a host with markd installed would see problems another host does
# not; tests about that judgement name their own user.
os.environ.setdefault("MARKD_SERVICE_USER", "markd-tests-no-such-user")

GS = "\x1d"

#: Codes with valid GTIN check digits, one per shape (made up, no real product).
WATER = f"0104680029460908215jcmHzLmkdPML{GS}938p9E"
WATER_KI = "0104680029460908215jcmHzLmkdPML"
DAIRY = f"0104670540176099215LpGKy{GS}93dGVz"
DAIRY_KI = "0104670540176099215LpGKy"
SHOES = (
    f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92dGVzdHNpZ25hdHVyZWZvcm1hcmtkZGVtb3Rlc3Rz+/A="
)
SHOES_KI = "0104607809596237215<(q!mLp*jIb3"
TOBACCO_PACK = "00000046233219!SX-RqRADpU7Cev"
TOBACCO_PACK_KI = "00000046233219!SX-RqR"
AMBIGUOUS_LOST_GS = "0104650117240408211234593abcd93Zjqw"


#: Longest an ``async def`` test may run before it fails (they take well under a second).
ASYNC_TEST_TIMEOUT = 15.0


def pytest_addoption(parser: pytest.Parser) -> None:
    """Hardware-in-loop: run the device contract suites against real devices as well."""
    group = parser.getgroup("markd hardware-in-loop")
    group.addoption(
        "--hil-scanner",
        action="append",
        default=[],
        metavar="URL",
        help="also run the scanner contract tests against this scanner URL (repeatable)",
    )
    group.addoption(
        "--hil-printer",
        action="append",
        default=[],
        metavar="URL",
        help="also run the fiscal printer contract tests against this printer URL (repeatable)",
    )


@pytest.fixture
def hil_scanner_urls(request: pytest.FixtureRequest) -> list[str]:
    """Scanner URLs given with ``--hil-scanner`` (empty without hardware)."""
    return list(request.config.getoption("--hil-scanner"))


@pytest.fixture
def hil_printer_urls(request: pytest.FixtureRequest) -> list[str]:
    """Printer URLs given with ``--hil-printer`` (empty without hardware)."""
    return list(request.config.getoption("--hil-printer"))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run coroutine test functions to completion in their own event loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    marker = pyfuncitem.get_closest_marker("async_timeout")
    timeout = float(marker.args[0]) if marker is not None else ASYNC_TEST_TIMEOUT
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout))
    return True


@pytest.fixture(autouse=True)
def _isolated_from_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never talk to a real service manager or journal, even when run under systemd."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)


@pytest.fixture(autouse=True)
def _no_virtual_scanner_left_open() -> Iterator[None]:
    """Like python-can's virtual bus check: a scanner left open is a leaked thread and device."""
    before = set(open_virtual_names())
    yield
    leaked = set(open_virtual_names()) - before
    assert not leaked, f"test left virtual scanner(s) open: {sorted(leaked)}"


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def tmp_store(store_path: str) -> Iterator[Store]:
    """A real LMDB store in a temporary directory, closed after the test."""
    with Store.open(store_path, map_size_mb=8) as store:
        yield store


@dataclass
class PtyPair:
    """A pseudo-terminal: tests write scanner bytes to ``master``; markd opens ``path``."""

    master: int
    slave: int
    path: str

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close_master(self) -> None:
        """Make the "device" vanish: the slave side then reads EIO, like an unplugged port."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def open_pty() -> PtyPair:
    master, slave = os.openpty()
    # Raw mode at once: in cooked mode the tty would turn CR into LF (ICRNL) and echo.
    tty.setraw(slave)
    return PtyPair(master, slave, os.ttyname(slave))


@pytest.fixture
def pty_pair() -> Iterator[PtyPair]:
    pair = open_pty()
    try:
        yield pair
    finally:
        pair.close_master()
        os.close(pair.slave)


class RecordingEventLog(EventLog):
    """An :class:`EventLog` that keeps every event (kind, message, fields) for assertions."""

    def __init__(self) -> None:
        import io

        super().__init__(target="stderr", stream=io.StringIO(), level="debug")
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def event(
        self, kind: str, message: str, *, priority: str | int = "info", **fields: Any
    ) -> None:
        self.events.append((kind, message, fields))
        super().event(kind, message, priority=priority, **fields)

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]

    def count(self, kind: str) -> int:
        return self.kinds().count(kind)

    @property
    def text(self) -> str:
        return self.stream.getvalue()  # type: ignore[attr-defined]


@pytest.fixture
def event_log() -> RecordingEventLog:
    return RecordingEventLog()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` on the event loop until it holds; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def in_ci(environ: dict[str, str] | None = None) -> bool:
    """True on a CI runner: ``CI=true``, as GitHub Actions and GitLab CI set it."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() in ("true", "1", "yes")


def required_tool(name: str, package: str) -> str:
    """The path of an external tool a test runs (``promtool``, ``prometheus``).

    Missing on a developer's machine, the test is skipped with the Debian package to install.
    Missing in CI, the test fails: ``make test`` installs the package there, so a skip would
    hide the test for good instead of saying the runner is not what we think it is."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package '{package}')"
    if in_ci():
        pytest.fail(f"{reason}; CI=true, where make test installs it")
    pytest.skip(reason)


def make_config(store_path: str, scanners: dict[str, str], **log: str) -> Any:
    """A real :class:`markd.config.Config` with a temporary store and the given scanner URLs."""
    from markd.config import ScannerConfig, default_config

    base = default_config()
    return dataclasses.replace(
        base,
        store=dataclasses.replace(base.store, path=store_path, map_size_mb=8),
        log=dataclasses.replace(base.log, target="stderr", **log),
        scanners={name: ScannerConfig(url=url) for name, url in scanners.items()},
        # The control socket beside the store: never the real daemon's /run/markd.
        api=dataclasses.replace(
            base.api, socket=os.path.join(os.path.dirname(store_path), "control.sock")
        ),
    )


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket: (socket, path)."""
    path = str(tmp_path / "notify.sock")
    if len(path) > 100:  # sun_path holds 108 bytes; deep pytest temp dirs can exceed it
        path = os.path.join(tempfile.mkdtemp(prefix="markd-"), "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        yield sock, path
    finally:
        sock.close()
