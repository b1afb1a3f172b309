"""``GET /metrics`` of a real daemon while its devices go wrong (issue 17): the virtual ККТ's
shift runs past its 24 hours and its oldest unsent document ages, the Local Module emulator
falls out of sync and comes back. markd notices by its own polls (``[fiscal]
health_interval_s``, the Local Module's status poller), and the scrape a Prometheus server
would take shows it (docs/metrics.md).

Each test keeps scraping in a task of its own, as a Prometheus server does, and waits with
:func:`conftest.wait_until` for the series to move; nothing here asks a device itself."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api_helpers import Conversation, api_config, running
from conftest import RecordingEventLog, wait_until
from markd.checks.local_module import LocalModuleClient
from markd.config import LocalModuleConfig
from markd.emulators.testing import local_module
from markd.receipts import OpenReceipt
from metrics_helpers import Samples, samples
from sale_helpers import kkt, write_sale_config
from sale_helpers import running as running_sale

DAY_S = 86400.0
#: ``unsent_oldest_days`` comes rounded to 0.01 day (markd.fiscal.atol._health): 864 s.
DAY_ROUNDING_S = 0.01 * DAY_S
#: How often the scraping task scrapes: far more often than a Prometheus server, so a test
#: waits for markd's poll, not for the scrape after it.
SCRAPE_EVERY_S = 0.05


@dataclasses.dataclass
class Scrapes:
    """The latest ``GET /metrics`` on a control socket, scraped again and again."""

    socket: str
    latest: Samples = dataclasses.field(default_factory=dict)
    count: int = 0

    def value(self, name: str, **labels: str) -> float | None:
        return self.latest.get((name, tuple(sorted(labels.items()))))

    async def run(self) -> None:
        while True:
            conversation = await Conversation.unix(self.socket)
            try:
                answer = await conversation.request("GET", "/metrics")
            finally:
                conversation.close()
            assert answer.status == 200, answer.body
            self.latest = samples(answer.body.decode())
            self.count += 1
            await asyncio.sleep(SCRAPE_EVERY_S)


@contextlib.asynccontextmanager
async def scraping(socket: str) -> AsyncIterator[Scrapes]:
    """:class:`Scrapes` running until the block ends (a failed scrape fails the test)."""
    scrapes = Scrapes(socket)
    task = asyncio.create_task(scrapes.run())
    try:
        await wait_until(lambda: scrapes.count > 0 or task.done(), what="the first scrape")
        yield scrapes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def near(found: float | None, expected: float, within: float) -> bool:
    return found is not None and abs(found - expected) <= within


async def test_the_shift_and_unsent_series_follow_the_kkt_faults(
    tmp_path: Path, event_log: RecordingEventLog
) -> None:
    """A shift opened by a receipt, then on the ККТ: the shift 30 hours old (expired) and the
    oldest unsent document 3, then 10 days old (none is unsent before), then both faults
    gone. The desk reads the device every second on its own (no sale), and each scrape
    follows."""
    config = write_sale_config(
        tmp_path,
        mode="attendant",
        scanners={},
        catalog=None,
        fiscal_extra="health_interval_s = 1",
    )
    device = kkt(tmp_path)
    async with (
        running_sale(config, event_log) as service,
        scraping(str(tmp_path / "control.sock")) as scrapes,
    ):
        desk = service.receipts
        assert desk is not None
        assert scrapes.value("markd_fiscal_shift_open") == 0
        assert scrapes.value("markd_fiscal_shift_age_seconds") is None  # no shift, no age
        await desk.open(OpenReceipt())  # opens the shift
        await desk.cancel()
        await wait_until(
            lambda: scrapes.value("markd_fiscal_shift_open") == 1, what="the shift open"
        )
        fresh_shift = scrapes.value("markd_fiscal_shift_age_seconds")
        assert fresh_shift is not None and 0 <= fresh_shift < 600
        assert scrapes.value("markd_fiscal_shift_expired") == 0
        # Nothing unsent (no receipt was closed): a count of 0 and no age of a document.
        assert scrapes.value("markd_fiscal_unsent_documents") == 0
        assert scrapes.value("markd_fiscal_oldest_unsent_age_seconds") is None

        device.set_faults(shift_age_hours=30, unsent_age_days=3)
        await wait_until(
            lambda: scrapes.value("markd_fiscal_shift_expired") == 1,
            what="the shift expired in a scrape",
        )
        expired = dict(scrapes.latest)
        await wait_until(
            lambda: near(
                scrapes.value("markd_fiscal_oldest_unsent_age_seconds"), 3 * DAY_S, DAY_ROUNDING_S
            ),
            what="the oldest unsent document 3 days old in a scrape",
        )

        device.set_faults(unsent_age_days=10)
        await wait_until(
            lambda: near(
                scrapes.value("markd_fiscal_oldest_unsent_age_seconds"),
                10 * DAY_S,
                DAY_ROUNDING_S,
            ),
            what="the oldest unsent document 10 days old in a scrape",
        )

        device.set_faults(shift_age_hours=None, unsent_age_days=None)
        await wait_until(
            lambda: (
                scrapes.value("markd_fiscal_shift_expired") == 0
                and scrapes.value("markd_fiscal_unsent_documents") == 0
            ),
            what="the shift and the unsent documents back as they are",
        )
        mended = dict(scrapes.latest)

    def of(found: Samples, name: str) -> float | None:
        return found.get((name, ()))

    shift_age = of(expired, "markd_fiscal_shift_age_seconds")
    assert shift_age is not None and shift_age > 24 * 3600
    assert near(shift_age, 30 * 3600, 60)
    assert of(expired, "markd_fiscal_shift_open") == 1  # an expired shift is still open
    assert of(expired, "markd_fiscal_unsent_documents") == 1
    mended_age = of(mended, "markd_fiscal_shift_age_seconds")
    assert mended_age is not None and mended_age < 600
    assert of(mended, "markd_fiscal_shift_open") == 1
    assert of(mended, "markd_fiscal_oldest_unsent_age_seconds") is None
    assert of(mended, "markd_printer_up") == 1


async def test_the_local_module_state_follows_its_sync_error_and_back(
    store_path: str, tmp_path: Path, event_log: RecordingEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mode direct with the Local Module emulator: ready, then ``sync_error`` (code 4050 on
    checks), then ready again. markd's own status poller sees each state; the one-hot
    ``markd_local_module_state`` and ``markd_source_up{source="lm"}`` follow."""
    # markd polls the module every 10 s, as FMU-API does (markd.checks.local_module), and no
    # key changes that; here the same poller runs every 0.2 s so the test takes a second.
    monkeypatch.setattr(
        LocalModuleClient,
        "run_status_poller",
        functools.partialmethod(LocalModuleClient.run_status_poller, 0.2),
    )
    (tmp_path / "pw").write_text("admin\n")
    with local_module({"local_module": {"state": "ready"}}) as lm:
        base = api_config(store_path, {})
        check = dataclasses.replace(
            base.check,
            mode="direct",
            local_module=LocalModuleConfig(url=lm.url, password_file=str(tmp_path / "pw")),
        )
        config = dataclasses.replace(base, check=check)
        async with running(config, event_log), scraping(config.api.socket) as scrapes:

            def state(name: str) -> float | None:
                return scrapes.value("markd_local_module_state", state=name)

            await wait_until(lambda: state("ready") == 1, what="the module ready in a scrape")
            assert state("sync_error") == 0
            assert scrapes.value("markd_source_up", source="lm") == 1
            polls = lm.count("status")

            lm.set_state("sync_error")
            await wait_until(
                lambda: state("sync_error") == 1, what="the module in sync_error in a scrape"
            )
            out_of_sync = dict(scrapes.latest)
            assert lm.count("status") > polls  # markd asked: nothing here polled for it

            lm.set_state("ready")
            await wait_until(lambda: state("ready") == 1, what="the module ready again")
            back = dict(scrapes.latest)

    def one_hot(found: Samples) -> dict[str, float]:
        return {
            dict(labels)["state"]: v
            for (name, labels), v in found.items()
            if name == "markd_local_module_state"
        }

    assert one_hot(out_of_sync) == {
        "ready": 0,
        "initialization": 0,
        "not_configured": 0,
        "sync_error": 1,
        "unreachable": 0,
        "other": 0,
    }
    assert out_of_sync[("markd_source_up", (("source", "lm"),))] == 0
    assert one_hot(back)["sync_error"] == 0 and sum(one_hot(back).values()) == 1
    assert back[("markd_source_up", (("source", "lm"),))] == 1
