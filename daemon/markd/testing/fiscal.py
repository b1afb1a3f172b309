"""Helpers for tests (markd's own and an integrator's) of the fiscal side: printers backed by
the virtual ККТ — in process, or behind the ``atol_web`` emulator on a loopback port — or by
the Shtrih emulator on a pty or a TCP port, and
verdicts for made-up codes. Nothing here is a mock: every printer is a real backend talking to
a real (emulated) device.

::

    from markd.testing import fiscal

    with fiscal.atol_web_printer() as (printer, server):
        server.kkt.set_faults(paper_out=True)
        ...

This module imports nothing from pytest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from markd.checks.verdict import Verdict
from markd.codes import GS, MarkingCode
from markd.emulators.atol_web import AtolWebEmulator
from markd.emulators.shtrih import ShtrihKkt, ShtrihServer
from markd.fiscal.base import FiscalPrinter, PrinterSettings, open_printer

#: Made-up codes (valid structure and GTIN check digits, no real product), raw GS included.
WATER = f"0104680029460908215jcmHzLmkdPML{GS}938p9E"
SHOES = (
    f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92dGVzdHNpZ25hdHVyZWZvcm1hcmtkZGVtb3Rlc3Rz+/A="
)
DAIRY = f"0104670540176099215LpGKy{GS}93dGVz"
TOBACCO_PACK = "00000046233219!SX-RqRADpU7Cev"

#: Short timings so tests do not wait on the emulator's "device".
FAST = PrinterSettings(timeout_s=10.0, validation_timeout_s=2.0, poll_interval_s=0.01)


def allowed(code: MarkingCode, *, offline: bool = False) -> Verdict:
    """An ``allow`` verdict for ``code`` as the online check (or the Local Module) gives it,
    with a tag 1265 value."""
    tag1265 = "UUID=2b6f1c1e-8a4d-4b7e-9e6a-0c1d2e3f4a5b&Time=1735000000000"
    if offline:
        tag1265 += "&Inst=6f1c3a52-4f6e-4a8e-9d1b-0c2d5e7f9a10&Ver=2.6.0"
    return Verdict(
        decision="allow",
        reason="lm-not-blocked" if offline else "online-ok",
        message_ru="Разрешено",
        source="lm" if offline else "cdn",
        scanner="test",
        ki=code.ki,
        shape=code.shape,
        tag1265=tag1265,
        checked=True,
    )


def denied(code: MarkingCode, reason: str = "blocked-online") -> Verdict:
    return Verdict(
        decision="deny",
        reason=reason,
        message_ru="Продажа запрещена",
        source="cdn",
        scanner="test",
        ki=code.ki,
        shape=code.shape,
        checked=True,
    )


@contextmanager
def emulator_printer(
    state_dir: str | Path | None = None, settings: PrinterSettings = FAST, query: str = ""
) -> Iterator[FiscalPrinter]:
    """An ``emulator://`` printer on ``state_dir`` (None: a temporary directory); its
    :class:`~markd.emulators.virtual_kkt.VirtualKkt` is ``printer.kkt``."""
    with _directory(state_dir) as directory:
        printer = open_printer(f"emulator://{directory}{query}", settings)
        try:
            yield printer
        finally:
            printer.close()


@contextmanager
def atol_web_printer(
    state_dir: str | Path | None = None,
    settings: PrinterSettings = FAST,
    query: str = "",
    **server_options: Any,
) -> Iterator[tuple[FiscalPrinter, AtolWebEmulator]]:
    """An ``atol-web://`` printer talking HTTP to an :class:`AtolWebEmulator` on a free
    loopback port (``query``: the URL's options, e.g. ``?deviceID=kkt2``); yields ``(printer,
    server)`` (the default device is ``server.kkt``)."""
    with (
        _directory(state_dir) as directory,
        AtolWebEmulator(state_dir=directory, **server_options) as server,
    ):
        printer = open_printer(f"atol-web://{server.host}:{server.port}{query}", settings)
        try:
            yield printer, server
        finally:
            printer.close()


@contextmanager
def shtrih_printer(
    state_dir: str | Path | None = None,
    settings: PrinterSettings = FAST,
    transport: str = "pty",
    query: str = "",
) -> Iterator[tuple[FiscalPrinter, ShtrihKkt]]:
    """A ``shtrih://`` printer speaking protocol 1 to the Shtrih emulator, over a pty
    (``transport="pty"``: ``shtrih:///dev/pts/N``) or a loopback TCP port (``"tcp"``:
    ``shtrih://127.0.0.1:PORT``); yields ``(printer, kkt)`` — the emulated device, for its
    faults and documents."""
    if transport not in ("pty", "tcp"):
        raise ValueError("transport is pty or tcp")
    with _directory(state_dir) as directory:
        kkt = ShtrihKkt(directory)
        server = ShtrihServer(kkt)
        try:
            if transport == "pty":
                url = f"shtrih://{server.start_pty()}"
            else:
                url = f"shtrih://127.0.0.1:{server.start_tcp()}"
            sep = "&" if "?" in url else "?"
            printer = open_printer(url + (sep + query.lstrip("?&") if query else ""), settings)
            try:
                yield printer, kkt
            finally:
                printer.close()
        finally:
            server.stop()


@contextmanager
def _directory(path: str | Path | None) -> Iterator[str]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield str(Path(path).resolve())
        return
    with tempfile.TemporaryDirectory(prefix="markd-kkt-") as tmp:
        yield tmp
