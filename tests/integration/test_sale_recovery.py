"""Recovery: ``markctl sell`` is SIGKILLed at every step of a receipt (``MARKD_FISCAL_KILL_AT``,
the kill points of :mod:`markd.testing.killpoints`, installed by the tests' sitecustomize),
then run again with the same codes. Whatever the step, the ККТ ends with exactly one receipt
holding both units, the store's sold journal has both with that receipt, nothing is left open
on the device, and the session journal has no receipt in flight.

The ККТ is the virtual one: in the killed process itself (``emulator://``: a kill inside the
device, mid-receipt, is a power cut of the ККТ too), or behind the ``atol_web`` emulator in the
test process (``atol-web://``: the device outlives markd, and the request's uuid tells what
became of a receipt whose answer markd never read), or the Shtrih emulator on a pty in the
test process (``shtrih://``: protocol 1 keeps no request table, so only the document counter
tells; the kill points include each command of the receipt and the moment the ККТ took the
close but markd had not read its answer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from markd.codes import parse
from markd.emulators.atol_web import AtolWebEmulator
from markd.emulators.shtrih import ShtrihKkt, ShtrihServer
from markd.emulators.virtual_kkt import VirtualKkt
from markd.fiscal.journal import SessionJournal
from markd.store import Store
from markd.testing import fiscal as testing
from markd.testing.killpoints import KILL_ENV, STEPS
from process_helpers import with_test_hooks

CODES = (testing.SHOES, testing.WATER)
KIS = sorted(parse(c).ki for c in CODES)
#: Steps after which the payment is committed: the first run's receipt must be finished.
COMMITTED = {
    "paid",
    "closing",
    "sent-sell",
    "kkt-receipt-open",
    "shtrih-position",
    "shtrih-bound",
    "sent-close",
    "printed",
    "closed",
    "stored",
}


def markctl() -> list[str]:
    return [sys.executable, "-m", "markd.cli.markctl"]


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "markd.toml"
    path.write_text(
        f"[store]\npath = '{tmp_path / 'store'}'\nmap_size_mb = 8\n"
        f"[fiscal]\nurl = '{url}'\njournal = '{tmp_path / 'fiscal' / 'session.journal'}'\n"
        "validation_poll_ms = 20\n",
        encoding="utf-8",
    )
    return path


def sell(config: Path, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at is not None:
        env[KILL_ENV] = kill_at
    return subprocess.run(
        [*markctl(), "sell", "--config", str(config), "--json", "--price", "10", *CODES],
        capture_output=True,
        text=True,
        timeout=60,
        env=with_test_hooks(env),
    )


def check_one_receipt(tmp_path: Path, kkt: VirtualKkt) -> dict[str, Any]:
    receipts = kkt.receipts()
    assert len(receipts) == 1, [r["number"] for r in receipts]
    receipt = receipts[0]
    assert sorted(p["ki"] for p in receipt["positions"]) == KIS
    state = kkt.state()
    assert state["receipt"] is None and state["validation"] is None and state["accepted"] == []
    with Store.open(str(tmp_path / "store"), readonly=True) as store:
        for code in CODES:
            sold = store.lookup(parse(code)).sold
            assert sold is not None and sold.receipt.endswith(f"/{receipt['number']}")
    journal = SessionJournal(tmp_path / "fiscal" / "session.journal")
    for records in journal.by_receipt().values():
        events = {r["event"] for r in records}
        assert events & {"closed", "cancelled"}, events
    assert not journal.codes_path.exists()
    return receipt


#: Steps only a backend of its own reaches.
SHTRIH_ONLY = {"shtrih-position", "shtrih-bound", "sent-close"}
#: Steps markctl sell never reaches: a close with an Idempotency-Key comes through the API
#: (tests/integration/test_receipt_outcomes_process.py).
API_ONLY = {"close-asked"}
EMULATOR_STEPS = [
    step for step in STEPS if step != "sent-sell" and step not in SHTRIH_ONLY | API_ONLY
]
SHTRIH_STEPS = [step for step in STEPS if step != "sent-sell" and step not in API_ONLY]


@pytest.mark.parametrize("step", EMULATOR_STEPS)
def test_killed_at_each_step_in_process_kkt(tmp_path: Path, step: str) -> None:
    config = write_config(tmp_path, f"emulator://{tmp_path / 'kkt'}")

    killed = sell(config, step)
    assert killed.returncode == -9, killed.stderr

    again = sell(config)
    assert again.returncode in (0, 3), again.stderr
    report = json.loads(again.stdout)
    check_one_receipt(tmp_path, VirtualKkt(tmp_path / "kkt"))
    actions = [a["action"] for a in report["recovery"]["actions"]]
    if step in COMMITTED:
        # The first run's receipt was finished by recovery; the units are now sold here.
        assert actions in (["resumed-closed"], ["follow-up"], []), actions
        assert report["receipt"] is None
        assert {u["verdict"]["reason"] for u in report["units"]} == {"sold-here"}
    else:
        # Nothing was paid: the first receipt was dropped and the second run sold the units.
        assert actions == ["cancelled"]
        assert report["receipt"]["status"] == "closed" and again.returncode == 0


@pytest.mark.parametrize("step", ["added", "closing", "sent-sell", "printed"])
def test_killed_at_each_step_web_kkt(tmp_path: Path, step: str) -> None:
    with AtolWebEmulator(state_dir=tmp_path / "kkt") as server:
        config = write_config(tmp_path, f"atol-web://127.0.0.1:{server.port}")

        killed = sell(config, step)
        assert killed.returncode == -9, killed.stderr
        again = sell(config)
        assert again.returncode in (0, 3), again.stderr

        check_one_receipt(tmp_path, server.kkt)
    report = json.loads(again.stdout)
    if step in COMMITTED:
        assert report["receipt"] is None  # found (by uuid or counter), not sold twice
    else:
        assert report["receipt"]["status"] == "closed"


def check_one_shtrih_receipt(tmp_path: Path, kkt: ShtrihKkt) -> dict[str, Any]:
    """As :func:`check_one_receipt`, on the Shtrih emulator's state: one receipt with both
    units, nothing open on the device, no check waiting, no accepted code left over."""
    receipts = kkt.receipts()
    assert len(receipts) == 1, [r["number"] for r in receipts]
    receipt = receipts[0]
    assert sorted(p["ki"] for p in receipt["positions"]) == KIS
    assert all(p["tags"]["2106"] & 0b1100 == 0b1100 for p in receipt["positions"])  # ОИСМ: ok
    state = kkt.state()
    assert state["receipt"] is None and state["check"] is None and state["accepted"] == []
    with Store.open(str(tmp_path / "store"), readonly=True) as store:
        for code in CODES:
            sold = store.lookup(parse(code)).sold
            assert sold is not None and sold.receipt.endswith(f"/{receipt['number']}")
    journal = SessionJournal(tmp_path / "fiscal" / "session.journal")
    for records in journal.by_receipt().values():
        assert {r["event"] for r in records} & {"closed", "cancelled"}
    assert not journal.codes_path.exists()
    return receipt


@pytest.mark.parametrize("query", ["", "?open_first=0"], ids=["open-first", "check-first"])
@pytest.mark.parametrize("step", SHTRIH_STEPS)
def test_killed_at_each_step_shtrih_kkt(tmp_path: Path, step: str, query: str) -> None:
    kkt = ShtrihKkt(tmp_path / "kkt")
    with ShtrihServer(kkt) as server:
        config = write_config(tmp_path, f"shtrih://{server.start_pty()}{query}")

        killed = sell(config, step)
        assert killed.returncode == -9, killed.stderr
        again = sell(config)
        assert again.returncode in (0, 3), again.stderr

        check_one_shtrih_receipt(tmp_path, kkt)
    report = json.loads(again.stdout)
    actions = [a["action"] for a in report["recovery"]["actions"]]
    # Opened ahead (open_first), the receipt is on the device before anything is paid.
    committed = step in COMMITTED and not (not query and step == "kkt-receipt-open")
    if committed:
        assert report["receipt"] is None, actions  # found by the counter, or registered anew
        journal = SessionJournal(tmp_path / "fiscal" / "session.journal")
        found = [r.get("action") for r in journal.records() if r["event"] == "recovery"]
        if step in ("sent-close", "printed"):
            # The ККТ registered it before markd died: the document counter tells.
            assert "found-by-document-number" in found, found
        elif step in ("kkt-receipt-open", "shtrih-position", "shtrih-bound"):
            # A receipt left open on the device: cancelled, the units checked and sold anew.
            assert "cancelled-open-receipt" in found and "no-receipt" in found, found
        assert {u["verdict"]["reason"] for u in report["units"]} == {"sold-here"}
    else:
        if step == "kkt-receipt-open":
            # Opened ahead (the vendor's order), killed inside the device's 0x8D: the journal
            # had no receipt yet, nothing to recover; the next sale's opening cancelled the
            # leftover (check_one_shtrih_receipt: nothing open, one receipt).
            assert actions == []
        else:
            assert actions == ["cancelled"]
        assert report["receipt"]["status"] == "closed" and again.returncode == 0


def test_a_document_someone_else_made_is_not_taken_for_the_receipt(tmp_path: Path) -> None:
    """The counter moved after the close attempt, but the ФН's document is a shift report
    another client printed: recovery reads it back (FF0A), sees no receipt of this kind and
    total, and registers the receipt anew — the units are not marked sold on no receipt."""
    kkt = ShtrihKkt(tmp_path / "kkt")
    with ShtrihServer(kkt) as server:
        # The receipt opened at close (open_first=0): nothing is open on the ККТ when the
        # other client prints its report.
        config = write_config(tmp_path, f"shtrih://{server.start_pty()}?open_first=0")
        killed = sell(config, "closing")  # the attempt journaled, the ККТ not asked
        assert killed.returncode == -9, killed.stderr
        before = kkt.state()["document_number"]
        z_report = kkt.execute(bytes([0x41]) + (30).to_bytes(4, "little"))  # another client
        assert z_report.body[:2] == b"\x41\x00" and kkt.state()["document_number"] == before + 1

        again = sell(config)

        assert again.returncode in (0, 3), again.stderr
        receipt = check_one_shtrih_receipt(tmp_path, kkt)
    assert receipt["number"] > before + 1
    journal = SessionJournal(tmp_path / "fiscal" / "session.journal")
    actions = [r.get("action") for r in journal.records() if r["event"] == "recovery"]
    assert "documents-not-this-receipt" in actions and "found-by-document-number" not in actions


RETURN_KILLS = [
    *(("?open_first=0", step) for step in ("kkt-receipt-open", "shtrih-bound")),
    *(("", step) for step in ("shtrih-bound", "sent-close", "printed")),
]


@pytest.mark.parametrize(("query", "step"), RETURN_KILLS)
def test_a_return_killed_on_a_shtrih_kkt_is_registered_once(
    tmp_path: Path, query: str, step: str
) -> None:
    """A return receipt reads back as a return (FF0A operation 2): recovery finds it by the
    document counter when the ККТ registered it, registers it anew when it did not — never
    twice. (Opened ahead, the vendor's order, a return killed at ``kkt-receipt-open`` is not
    paid yet: the sale's kill test covers that step.)"""
    kkt = ShtrihKkt(tmp_path / "kkt")
    with ShtrihServer(kkt) as server:
        config = write_config(tmp_path, f"shtrih://{server.start_pty()}{query}")
        assert sell(config).returncode == 0
        env = with_test_hooks({**os.environ, KILL_ENV: step})
        command = [*markctl(), "sell", "--config", str(config), "--json", "--return"]
        killed = subprocess.run(
            [*command, "--price", "10", *CODES], capture_output=True, text=True, timeout=60, env=env
        )
        assert killed.returncode == -9, killed.stderr
        recovered = subprocess.run(
            [*markctl(), "printer", "recover", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=with_test_hooks({k: v for k, v in os.environ.items() if k != KILL_ENV}),
        )
        assert recovered.returncode == 0, recovered.stderr

        returns = [r for r in kkt.receipts() if r["type"] == "sellReturn"]
        assert len(returns) == 1, [r["number"] for r in kkt.receipts()]
        assert sorted(p["ki"] for p in returns[0]["positions"]) == KIS
        assert all(p["tags"]["2003"] == 3 for p in returns[0]["positions"])
        assert kkt.state()["receipt"] is None
    journal = SessionJournal(tmp_path / "fiscal" / "session.journal")
    actions = [r.get("action") for r in journal.records() if r["event"] == "recovery"]
    if step in ("sent-close", "printed"):
        assert "found-by-document-number" in actions, actions
    else:
        assert "no-receipt" in actions, actions
    with Store.open(str(tmp_path / "store"), readonly=True) as store:
        for code in CODES:
            assert store.lookup(parse(code)).sold is None  # returned
