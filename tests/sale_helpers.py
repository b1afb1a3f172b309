"""Helpers for the sale-mode tests: a markd.toml with a printer on the virtual ККТ, a price
list and a control socket in one temporary directory, and a real :class:`Service` running it
(reloads read the same file again)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conftest import RecordingEventLog, wait_until
from markd import config as config_module
from markd.emulators.virtual_kkt import VirtualKkt
from markd.fiscal.journal import SessionJournal
from markd.service import Service

#: The kiosk's price list: water and kefir are listed, the shoes are not (no price).
CATALOG = (
    "gtin;name;price\n"
    "# drinks\n"
    "04680029460908;Вода питьевая 0,5 л;89,90\n"
    "4670540176099;Кефир 1 л;99.00\n"
)
WATER_PRICE = 8990


def write_sale_config(
    directory: Path,
    *,
    mode: str,
    scanners: dict[str, str],
    catalog: str | None = CATALOG,
    extra: str = "",
    fiscal_extra: str = "",
    printer_url: str | None = None,
) -> Path:
    """``directory/markd.toml``: store, socket, ``[fiscal]`` on ``emulator://directory/kkt``
    (or ``printer_url``), ``[sale] mode``, the price list (None: none) and the scanners;
    ``extra`` is appended."""
    fiscal_url = printer_url or f"emulator://{directory / 'kkt'}"
    catalog_line = ""
    if catalog is not None:
        (directory / "catalog.csv").write_text(catalog, encoding="utf-8")
        catalog_line = f'catalog = "{directory / "catalog.csv"}"\n'
    text = (
        '[log]\ntarget = "stderr"\nlevel = "debug"\n\n'
        f'[store]\npath = "{directory / "store"}"\nmap_size_mb = 8\n\n'
        f'[api]\nsocket = "{directory / "control.sock"}"\n\n'
        f'[fiscal]\nurl = "{fiscal_url}"\n'
        f'journal = "{directory / "fiscal" / "session.journal"}"\n'
        f"validation_poll_ms = 20\n{fiscal_extra}\n"
        f'[sale]\nmode = "{mode}"\n{catalog_line}\n'
    )
    for name, url in scanners.items():
        text += f'[scanners.{name}]\nurl = "{url}"\n\n'
    path = directory / "markd.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path


def kkt(directory: Path) -> VirtualKkt:
    """The virtual ККТ the configuration's printer drives (its state is on disk)."""
    return VirtualKkt(directory / "kkt")


def journal(directory: Path) -> SessionJournal:
    return SessionJournal(directory / "fiscal" / "session.journal")


def events(log: RecordingEventLog, kind: str) -> list[dict[str, Any]]:
    return [fields for k, _, fields in log.events if k == kind]


async def wait_for_units(log: RecordingEventLog, count: int, timeout: float = 8.0) -> None:
    """Until ``count`` unit outcomes (added or refused) were published."""
    await wait_until(
        lambda: log.count("sale-unit") + log.count("sale-refused") >= count,
        timeout,
        f"{count} sale outcomes",
    )


@contextlib.asynccontextmanager
async def running(config_file: Path, event_log: RecordingEventLog) -> AsyncIterator[Service]:
    """A started :class:`Service` on ``config_file`` (reloads read it again), stopped on exit
    unless the test stopped it (``service.stop_event.set()`` then awaiting ``service.task``)."""
    service = Service(
        config_module.load(config_file),
        event_log=event_log,
        config_loader=lambda: config_module.load(config_file),
    )
    service.reload_status_path = None
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    ready = asyncio.create_task(service.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=8, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
    assert ready in done, "the service did not start within 8 s"
    service.stop_event = stop  # type: ignore[attr-defined]
    service.task = task  # type: ignore[attr-defined]
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
