"""One Local Module client per daemon: the check chain asks it and the sale desk reports sold
units to it, with the same ``[check.local_module]`` settings (its proxy included); a reload
replaces it in both places and closes the old one. The real daemon in kiosk mode, the Local
Module emulator behind the test proxy, the virtual ККТ."""

from __future__ import annotations

from pathlib import Path

from conftest import DAIRY, DAIRY_KI, WATER, WATER_KI, RecordingEventLog, wait_until
from markd.checks.local_module import LocalModuleClient
from markd.emulators.http_proxy import HttpProxy
from markd.emulators.local_module import LocalModuleEmulator
from markd.emulators.testing import local_module
from markd.receipts import Payment
from markd.scanners import get_virtual
from markd.service import Service
from sale_helpers import WATER_PRICE, events, running, wait_for_units, write_sale_config

#: The kefir's price in the kiosk's price list (DAIRY's GTIN).
KEFIR_PRICE = 9900


def lm_through_proxy(directory: Path, lm: LocalModuleEmulator, proxy: HttpProxy) -> str:
    """Mode direct with the Local Module alone, reached through ``proxy`` (``no_proxy``
    emptied, so that even a module on loopback goes through it)."""
    (directory / "pw").write_text("admin\n")
    return (
        '[check]\nmode = "direct"\n\n'
        f'[check.local_module]\nurl = "{lm.url}"\npassword_file = "{directory / "pw"}"\n'
        f'proxy = "{proxy.url}"\nno_proxy = []\n'
    )


def proxied(proxy: HttpProxy, endpoint: str) -> int:
    return sum(1 for r in proxy.requests if r.target.endswith(endpoint))


async def sell(service: Service, log: RecordingEventLog, code: str, price: int) -> None:
    """Scan ``code`` on the kiosk and close the receipt with its price."""
    units_before = log.count("sale-unit") + log.count("sale-refused")
    get_virtual("shared-lm").scan(code)
    await wait_for_units(log, units_before + 1)
    assert service.receipts is not None
    await service.receipts.close((Payment(price, "electronically"),))


async def test_checks_and_sale_reports_share_one_client_and_a_reload_replaces_it(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    with local_module() as lm, HttpProxy() as proxy:
        config = write_sale_config(
            tmp_path,
            mode="kiosk",
            scanners={"front": "virtual://shared-lm"},
            extra=lm_through_proxy(tmp_path, lm, proxy),
        )
        async with running(config, event_log) as service:
            assert service.chain is not None and service.sale_desk is not None
            first = service.chain.local_module
            assert isinstance(first, LocalModuleClient)
            assert service.sale_desk.session.lm_client is first

            await sell(service, event_log, WATER, WATER_PRICE)
            # The check and the sale report both went through [check.local_module]'s proxy.
            assert proxied(proxy, "/cis/outCheck") == 1
            await wait_until(lambda: proxied(proxy, "/cis/sell") == 1, what="the sale report")
            assert lm.count("cis/sell") == 1

            result = await service.reload()
            assert result.ok, result.message
            second = service.chain.local_module
            assert isinstance(second, LocalModuleClient) and second is not first
            assert service.sale_desk.session.lm_client is second
            # The old client was closed: its status poller no longer runs.
            assert first._poller is None

            # The next sale is checked and reported on the new client, through the proxy.
            await sell(service, event_log, DAIRY, KEFIR_PRICE)
            await wait_until(lambda: proxied(proxy, "/cis/sell") == 2, what="the second report")
            assert proxied(proxy, "/cis/outCheck") == 2
    assert [e.get("ki") for e in events(event_log, "sale-unit")] == [WATER_KI, DAIRY_KI]
    reported = [r.json["cis_list"] for r in lm.requests_for("cis/sell")]
    assert reported == [[WATER_KI], [DAIRY_KI]]
