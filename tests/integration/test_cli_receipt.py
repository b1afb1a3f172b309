"""``markctl receipt show|open|add|close|cancel`` against the real daemon (attendant mode, the
virtual ККТ behind ``emulator://``, the control API on its Unix socket): what a technician
types instead of curl on the socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from conftest import DAIRY, DAIRY_KI, GS, WATER, WATER_KI, RecordingEventLog
from markd.cli import markctl
from markd.store import Store
from sale_helpers import kkt, running, write_sale_config


async def markctl_main(*args: str) -> int:
    return await asyncio.to_thread(markctl.main, list(args))


def attendant(tmp_path: Path) -> str:
    return str(
        write_sale_config(
            tmp_path, mode="attendant", scanners={"till": "virtual://cli-receipt"}, catalog=None
        )
    )


async def test_cli_receipt_open_add_show_close_prints_one_receipt(
    tmp_path: Path, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = attendant(tmp_path)
    async with running(Path(config), event_log):
        empty = await markctl_main("receipt", "show", "--config", config)
        empty_out = capsys.readouterr().out
        opened = await markctl_main("receipt", "open", "--config", config)
        opened_out = capsys.readouterr().out
        added = await markctl_main(
            "receipt",
            "add",
            WATER.replace(GS, "<GS>"),
            "--price",
            "89,90",
            "--name",
            "Вода",
            "--config",
            config,
        )
        added_out = capsys.readouterr().out
        shown = await markctl_main("receipt", "show", "--config", config, "--json")
        shown_json = json.loads(capsys.readouterr().out)
        shown_text = await markctl_main("receipt", "show", "--config", config)
        shown_out = capsys.readouterr().out
        closed = await markctl_main("receipt", "close", "--payment", "cash", "--config", config)
        closed_out = capsys.readouterr().out
        after = await markctl_main("receipt", "show", "--socket", str(tmp_path / "control.sock"))
        after_out = capsys.readouterr().out

    assert (empty, opened, added, shown, shown_text, closed, after) == (0,) * 7
    assert empty_out == "no receipt open\n"
    assert ": sell, open, 0 units, total 0.00 RUB" in opened_out
    assert added_out.startswith(f"ALLOW {WATER_KI}: ")
    assert f"1. Вода 89.90 × 1 = 89.90 RUB, КИ {WATER_KI}" in added_out
    # --json is the API's answer as is.
    receipt = shown_json["receipt"]
    assert receipt["state"] == "open" and receipt["total_kopecks"] == 8990
    assert [u["ki"] for u in receipt["units"]] == [WATER_KI]
    assert "total 89.90 RUB" in shown_out and f"КИ {WATER_KI}" in shown_out
    documents = kkt(tmp_path).receipts()
    assert len(documents) == 1 and [p["ki"] for p in documents[0]["positions"]] == [WATER_KI]
    assert "closed" in closed_out and f"document {documents[0]['number']}" in closed_out
    assert "paid cash 89.90 RUB" in closed_out
    assert after_out == "no receipt open\n"
    # Never the code's crypto tail on the screen.
    for out in (added_out, shown_out, closed_out):
        assert WATER.split(GS)[-1] not in out


async def test_cli_receipt_cancel_drops_the_open_receipt(
    tmp_path: Path, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = attendant(tmp_path)
    async with running(Path(config), event_log):
        added = await markctl_main(
            "receipt", "add", WATER, "--price", "1", "--config", config, "--json"
        )
        added_json = json.loads(capsys.readouterr().out)
        cancelled = await markctl_main("receipt", "cancel", "--config", config)
        cancelled_out = capsys.readouterr().out
        again = await markctl_main("receipt", "cancel", "--config", config)
        again_err = capsys.readouterr().err

    assert added == 0 and added_json["receipt"]["kind"] == "sell"
    assert added_json["verdict"]["decision"] == "allow"
    assert cancelled == 0 and "cancelled" in cancelled_out
    assert again == 1 and "markctl: receipt-not-open: " in again_err
    assert kkt(tmp_path).receipts() == [] and kkt(tmp_path).state()["accepted"] == []


async def test_cli_receipt_refusals_exit_1_with_the_daemons_reason(
    tmp_path: Path, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = attendant(tmp_path)
    with Store.open(str(tmp_path / "store"), map_size_mb=8) as store:
        store.block(DAIRY_KI, "recalled batch", source="head office")
    async with running(Path(config), event_log):
        nothing_open = await markctl_main("receipt", "close", "--config", config)
        nothing_open_err = capsys.readouterr().err
        blocked = await markctl_main("receipt", "add", DAIRY, "--price", "99", "--config", config)
        blocked_io = capsys.readouterr()
        blocked_json = await markctl_main(
            "receipt", "add", DAIRY, "--price", "99", "--config", config, "--json"
        )
        blocked_json_out = json.loads(capsys.readouterr().out)
        await markctl_main("receipt", "add", WATER, "--price", "89.90", "--config", config)
        capsys.readouterr()
        underpaid = await markctl_main(
            "receipt", "close", "--payment", "cash:1", "--config", config
        )
        underpaid_err = capsys.readouterr().err
        bad_price = await markctl_main("receipt", "add", WATER, "--price", "1.005")
        bad_price_err = capsys.readouterr().err
        await markctl_main("receipt", "cancel", "--config", config)
        capsys.readouterr()

    assert nothing_open == 1 and "markctl: receipt-not-open: " in nothing_open_err
    assert blocked == 1 and blocked_io.out == ""
    assert "markctl: code-not-allowed: " in blocked_io.err
    assert blocked_json == 1
    assert blocked_json_out["error"]["reason"] == "code-not-allowed"
    assert underpaid == 1 and "markctl: underpaid: " in underpaid_err
    assert bad_price == 2 and "--price" in bad_price_err
    assert kkt(tmp_path).receipts() == []


def test_cli_receipt_without_a_daemon_names_the_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    socket_path = str(tmp_path / "none.sock")
    for action in (["show"], ["open"], ["add", WATER, "--price", "1"], ["close"], ["cancel"]):
        assert markctl.main(["receipt", *action, "--socket", socket_path]) == 1
        err = capsys.readouterr().err
        assert err == (
            f"markctl: daemon-not-running: markd is not running (no daemon at {socket_path})\n"
        )


async def test_cli_receipt_show_id_tells_what_became_of_a_receipt(
    tmp_path: Path, event_log: RecordingEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    config = attendant(tmp_path)
    async with running(Path(config), event_log):
        await markctl_main("receipt", "add", WATER, "--price", "89.90", "--config", config)
        capsys.readouterr()
        await markctl_main("receipt", "show", "--config", config, "--json")
        rid = json.loads(capsys.readouterr().out)["receipt"]["id"]
        await markctl_main("receipt", "close", "--config", config)
        capsys.readouterr()
        shown = await markctl_main("receipt", "show", rid, "--config", config)
        shown_out = capsys.readouterr().out
        as_json = await markctl_main("receipt", "show", rid, "--config", config, "--json")
        shown_json = json.loads(capsys.readouterr().out)
        unknown = await markctl_main(
            "receipt", "show", "3f2b8c1e-5d4a-4e7b-9c2d-1a0b3c4d5e6f", "--config", config
        )
        unknown_err = capsys.readouterr().err
        malformed = await markctl_main("receipt", "show", "../status", "--config", config)
        malformed_err = capsys.readouterr().err

    (document,) = kkt(tmp_path).receipts()
    assert (shown, as_json) == (0, 0)
    assert shown_out == (
        f"receipt {rid}: sell, registered (fiscalised), total 89.90 RUB, "
        f"document {document['number']}, fiscal sign {document['fiscal_sign']}, "
        f"{document['datetime']}\n"
    )
    assert shown_json["receipt"]["fiscal_sign"] == document["fiscal_sign"]
    assert unknown == 1 and "markctl: receipt-not-found: " in unknown_err
    assert malformed == 1 and "markctl: bad-receipt-id: " in malformed_err
