"""``markctl sell`` and ``markctl printer``: a commissioning sale through the configured check
chain and printer (the virtual ККТ here), its JSON and text output and exit status."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from markd.cli.markctl import main
from markd.codes import parse
from markd.emulators.virtual_kkt import VirtualKkt
from markd.fiscal.base import open_printer
from markd.fiscal.session import SaleSession
from markd.store import Store
from markd.testing import fiscal as testing

WATER_KI = parse(testing.WATER).ki
SHOES_KI = parse(testing.SHOES).ki


def write_config(tmp_path: Path, url: str | None = None) -> Path:
    url = url or f"emulator://{tmp_path / 'kkt'}"
    path = tmp_path / "markd.toml"
    path.write_text(
        f"[store]\npath = '{tmp_path / 'store'}'\nmap_size_mb = 8\n"
        f"[fiscal]\nurl = '{url}'\njournal = '{tmp_path / 'session.journal'}'\n"
        "validation_poll_ms = 20\ntimeout_ms = 2000\n",
        encoding="utf-8",
    )
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_sell_prints_verdicts_fn_results_and_the_receipt_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)

    code, report = run_json(
        capsys,
        "sell",
        "--config",
        str(config),
        "--json",
        "--price",
        "89.90",
        testing.WATER,
        testing.SHOES.replace("\x1d", "<GS>"),
    )

    assert code == 0 and report["sold_all"] is True
    water, shoes = report["units"]
    assert water["verdict"]["decision"] == "allow" and water["verdict"]["source"] == "none"
    assert water["fiscal"]["status"] == "added"
    assert water["fiscal"]["fn"]["tag2106"] == 12 and shoes["fiscal"]["fn"]["tag2106"] == 15
    receipt = report["receipt"]["receipt"]
    assert report["receipt"]["status"] == "closed" and report["receipt"]["store_ok"] is True
    assert receipt["kind"] == "sell" and receipt["total_kopecks"] == 17980
    assert [p["ki"] for p in receipt["positions"]] == [WATER_KI, SHOES_KI]
    assert receipt["positions"][1]["tags"] == {"2003": 1, "2102": 0, "2004": 3, "2106": 15}
    kkt = VirtualKkt(tmp_path / "kkt")
    assert kkt.receipts()[-1]["number"] == receipt["document_number"]
    assert "938p9E" not in json.dumps(report, ensure_ascii=False)  # no crypto tail printed


def test_sell_text_output_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    with Store.open(str(tmp_path / "store"), map_size_mb=8) as store:
        store.block(SHOES_KI, "test: recalled", source="test")

    code = main(["sell", "--config", str(config), testing.WATER, testing.SHOES, "hello"])
    out = capsys.readouterr().out

    assert code == 3  # some codes refused; the rest is on a receipt
    assert f"1. ALLOW {WATER_KI}" in out and "ККТ: accepted (oism-correct), 2004=0 2106=12" in out
    assert f"2. DENY {SHOES_KI}: blocked-locally" in out and "not sent to the ККТ" in out
    assert "3. DENY (not a code)" in out
    assert "receipt: sell document 3" in out and f"КИ {WATER_KI}" in out
    assert "store: sold journal updated" in out


def test_sold_units_are_refused_next_time_and_can_be_returned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert main(["sell", "--config", str(config), testing.WATER]) == 0
    capsys.readouterr()

    code, again = run_json(capsys, "sell", "--config", str(config), "--json", testing.WATER)
    assert code == 3 and again["units"][0]["verdict"]["reason"] == "sold-here"
    assert again["receipt"] is None

    code, back = run_json(
        capsys, "sell", "--config", str(config), "--json", "--return", testing.WATER
    )
    assert code == 0 and back["units"][0]["verdict"] is None
    assert back["receipt"]["receipt"]["kind"] == "return"
    assert back["receipt"]["receipt"]["positions"][0]["tags"]["2003"] == 3
    with Store.open(str(tmp_path / "store"), readonly=True) as store:
        assert store.lookup(parse(testing.WATER)).sold is None


def test_sell_with_the_printer_away_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, f"atol-web://127.0.0.1:{port}")

    code, report = run_json(capsys, "sell", "--config", str(config), "--json", testing.WATER)

    assert code == 1
    fiscal = report["units"][0]["fiscal"]
    assert (fiscal["status"], fiscal["reason"], fiscal["source"]) == (
        "refused",
        "printer-unavailable",
        "printer",
    )


def test_bad_configuration_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "markd.toml"
    config.write_text("[fiscal]\nurl = 'kkt://usb'\n", encoding="utf-8")

    assert main(["sell", "--config", str(config), testing.WATER]) == 2
    assert f"{config}:2: [fiscal] url: printer URL 'kkt://usb'" in capsys.readouterr().err


def test_printer_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    VirtualKkt(tmp_path / "kkt").set_faults(paper_out=True)

    code = main(["printer", "status", "--config", str(config)])
    text = capsys.readouterr().out
    code_json, report = run_json(capsys, "printer", "status", "--config", str(config), "--json")

    assert code == 0 and code_json == 0
    assert "paper        OUT" in text and "problems     paper-out" in text
    assert f"device       {report['status']['model']}\n" in text  # the model it reports
    assert report["status"]["shift_state"] == "closed"
    assert report["status"]["last_document_number"] == 1
    assert report["status"]["problems"] == ["paper-out"] and report["receipt_in_flight"] is None


def test_printer_status_when_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    VirtualKkt(tmp_path / "kkt").set_faults(gone=True)
    config = write_config(tmp_path)

    code, report = run_json(capsys, "printer", "status", "--config", str(config), "--json")

    assert code == 1 and report["error"]["reason"] == "printer-unavailable"


def test_printer_recover_drops_an_unpaid_receipt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)

    async def leave_one_open() -> None:
        with open_printer(f"emulator://{tmp_path / 'kkt'}", testing.FAST) as printer:
            session = SaleSession(printer, None, None, tmp_path / "session.journal")
            code = parse(testing.SHOES)
            await session.add(testing.allowed(code), code, 100, "Кроссовки")
            session.close_session()  # "crash": the receipt stays in flight

    asyncio.run(leave_one_open())
    assert main(["printer", "status", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "in flight    " in shown and "in flight    none" not in shown

    code, report = run_json(capsys, "printer", "recover", "--config", str(config), "--json")

    assert code == 0 and [a["action"] for a in report["actions"]] == ["cancelled"]
    assert VirtualKkt(tmp_path / "kkt").state()["accepted"] == []
    assert main(["printer", "recover", "--config", str(config)]) == 0
    assert "nothing to recover" in capsys.readouterr().out


def test_printer_status_shows_the_fiscal_health(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    device = VirtualKkt(tmp_path / "kkt")
    device.run("", [{"type": "openShift"}])
    device.set_faults(fn_days_left=20, unsent_age_days=5, shift_age_hours=23.5)

    code = main(["printer", "status", "--config", str(config)])
    text = capsys.readouterr().out
    code_json, report = run_json(capsys, "printer", "status", "--config", str(config), "--json")

    assert code == 0 and code_json == 0
    assert "days left)" in text and "ФН valid     until " in text
    assert "unsent docs  1, oldest " in text and " days)" in text
    assert "shift open   since " in text and "(23.5 h)" in text
    assert "health       fn-expiring, unsent-old, shift-long" in text
    assert report["health_warnings"] == ["fn-expiring", "unsent-old", "shift-long"]
    assert report["status"]["health"]["fn_days_left"] in (19, 20)
