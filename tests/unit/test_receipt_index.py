"""The receipt index: journal records folded into one summary per receipt, bounded, rebuilt
from the journal, and never in the sale's way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from markd.fiscal import receipt_index
from markd.fiscal.journal import SessionJournal
from markd.fiscal.receipt_index import ReceiptIndex, fold, view

DOCS = Path(__file__).resolve().parents[2] / "docs"
RID = "6b1d0c52-3f0e-4f4e-9a59-5b7f3a0c2d18"


def states(events: list[dict]) -> list[str | None]:
    entry = None
    seen = []
    for record in events:
        folded = fold(entry, {"receipt": RID, "at": "t", **record})
        if folded is not None:
            entry = folded
        seen.append(None if entry is None else entry["state"])
    return seen


def test_receipt_index_folds_a_receipts_life_into_its_state() -> None:
    assert states(
        [
            {"event": "open", "kind": "sell"},
            {"event": "unit-added", "unit": "u1", "ki": "x"},
            {"event": "paid", "total_kopecks": 100, "payments": []},
            {"event": "closing", "attempt": 1},
            {"event": "close-failed", "reason": "paper-out"},
            {"event": "needs-technician", "reason": "too-many-attempts"},
            {"event": "closing", "attempt": 2},
            {"event": "closed", "document_number": 7, "fiscal_sign": "123", "kind": "sell"},
            {"event": "cancelled", "reason": "late"},  # a registered receipt stays registered
            {"event": "needs-technician", "reason": "queue-blocked"},
        ]
    ) == [
        "open",
        "open",
        "closing",
        "closing",
        "closing",
        "unknown-needs-technician",
        "closing",
        "registered",
        "registered",
        "registered",
    ]
    assert states([{"event": "open"}, {"event": "cancelled", "reason": "x"}])[-1] == "cancelled"


def test_receipt_index_view_names_the_fiscal_document() -> None:
    entry = None
    for record in (
        {"event": "open", "kind": "return"},
        {"event": "closed", "document_number": 7, "fiscal_sign": "3522140977", "fn_number": "9"},
    ):
        entry = fold(entry, {"receipt": RID, "at": "2025-03-01T09:00:00Z", **record})
    assert entry is not None
    shown = view(entry)
    assert (shown["kind"], shown["state"], shown["reason"]) == (
        "return",
        "registered",
        "fiscalised",
    )
    assert (shown["document_number"], shown["fiscal_sign"]) == (7, "3522140977")


def test_receipt_index_is_updated_with_the_journal_and_rebuilt_from_it(tmp_path: Path) -> None:
    journal = SessionJournal(tmp_path / "session.journal")
    journal.append("open", RID, kind="sell")
    journal.append("close-requested", RID, key="k1")
    journal.append("paid", RID, total_kopecks=10, payments=[])
    assert journal.index.get(RID)["state"] == "closing"  # type: ignore[index]
    assert journal.index.receipt_of_key("k1") == RID
    assert journal.index.get("another") is None

    # An update lost (a power cut before it reached the disk): the journal has the record.
    journal.index.close()
    (tmp_path / "session.journal.index").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"session.journal.index{suffix}").unlink(missing_ok=True)
    again = SessionJournal(tmp_path / "session.journal")
    assert again.index.get(RID) is None
    again.sync_index(again.records())
    assert again.index.get(RID)["state"] == "closing"  # type: ignore[index]
    assert again.index.receipt_of_key("k1") == RID


def test_receipt_index_keeps_the_latest_receipts_and_their_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receipt_index, "MAX_RECEIPTS", 5)
    monkeypatch.setattr(receipt_index, "PRUNE_EVERY", 1)
    journal = SessionJournal(tmp_path / "session.journal")
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(12)]
    for number, rid in enumerate(ids):
        journal.append("open", rid, kind="sell")
        journal.append("close-requested", rid, key=f"key-{number}")
    kept = [rid for rid in ids if journal.index.get(rid) is not None]
    assert kept == ids[-5:]
    assert journal.index.receipt_of_key("key-0") is None
    assert journal.index.receipt_of_key("key-11") == ids[-1]


def test_receipt_index_that_cannot_be_written_never_stops_the_journal(tmp_path: Path) -> None:
    journal = SessionJournal(tmp_path / "session.journal")
    journal.index = ReceiptIndex(tmp_path)  # a directory: SQLite cannot open it
    record = journal.append("open", RID, kind="sell")
    assert record["event"] == "open" and journal.records()[-1]["receipt"] == RID
    assert journal.index.problem is not None


def test_receipt_index_view_is_what_the_openapi_schema_names() -> None:
    entry = fold(None, {"event": "open", "receipt": "r", "at": "t", "kind": "sell"})
    assert entry is not None
    sent = view(entry)
    document = json.loads((DOCS / "openapi.json").read_text(encoding="utf-8"))
    schema = document["components"]["schemas"]["ReceiptOutcome"]

    assert set(sent) == set(schema["properties"]) == set(schema["required"])
    assert schema["properties"]["state"]["enum"] == [
        "open",
        "closing",
        "registered",
        "cancelled",
        "unknown-needs-technician",
    ]


def test_receipt_index_keeps_receipts_the_journal_rotated_away(tmp_path: Path) -> None:
    """After a few rotations the first receipts are in neither journal file: the index still
    answers for it. An index lost then is rebuilt from the journal and ``<journal>.1``."""
    journal = SessionJournal(tmp_path / "session.journal")
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(3)]
    for rid in ids:
        journal.append("open", rid, kind="sell")
        journal.append("closed", rid, document_number=int(rid[-1]) + 1, fiscal_sign="77")
        assert journal.rotate_if_large(limit=1)
    on_disk = {r["receipt"] for r in journal.records()} | {
        r["receipt"] for r in SessionJournal._read(tmp_path / "session.journal.1")
    }
    assert ids[0] not in on_disk and ids[-1] in on_disk
    assert [journal.index.get(rid)["document"]["document_number"] for rid in ids] == [1, 2, 3]  # type: ignore[index]

    journal.index.close()
    for path in tmp_path.glob("session.journal.index*"):
        path.unlink()
    again = SessionJournal(tmp_path / "session.journal")
    again.sync_index(again.records())
    # Only what the two files hold comes back; the older ones went with the index (404).
    assert [again.index.get(rid) is None for rid in ids] == [rid not in on_disk for rid in ids]
    assert again.index.get(ids[-1])["state"] == "registered"  # type: ignore[index]


def test_receipt_index_sync_folds_an_answer_whose_receipt_was_rotated_away(
    tmp_path: Path,
) -> None:
    """A receipt's ``close-answered`` journaled after its other records went into
    ``<journal>.1``: the next start's sync adds the answer to the entry it has, and keeps the
    document, the total and the keys (rebuilding it from that one record would lose them)."""
    journal = SessionJournal(tmp_path / "session.journal")
    journal.append("open", RID, kind="sell")
    journal.append("close-requested", RID, key="k-1")
    journal.append("paid", RID, total_kopecks=8990, payments=[])
    journal.append("closed", RID, document_number=7, fiscal_sign="123", total_kopecks=8990)
    assert journal.rotate_if_large(limit=1)
    journal.append("close-answered", RID, answer={"receipt": {"id": RID}})
    registered = journal.index.get(RID)
    journal.index.close()

    again = SessionJournal(tmp_path / "session.journal")
    again.sync_index(again.records())
    entry = again.index.get(RID)

    assert entry is not None and registered is not None
    assert entry == registered
    assert view(entry)["state"] == "registered" and view(entry)["document_number"] == 7
    assert again.index.receipt_of_key("k-1") == RID


def test_receipt_index_rebuilt_anew_takes_the_answer_after_the_rotated_receipt(
    tmp_path: Path,
) -> None:
    """The same, with the index lost: ``<journal>.1`` brings the receipt back, the journal
    its answer."""
    journal = SessionJournal(tmp_path / "session.journal")
    journal.append("open", RID, kind="sell")
    journal.append("closed", RID, document_number=7, fiscal_sign="123", total_kopecks=8990)
    assert journal.rotate_if_large(limit=1)
    journal.append("close-answered", RID, answer={"receipt": {"id": RID}})
    journal.index.close()
    for path in tmp_path.glob("session.journal.index*"):
        path.unlink()

    again = SessionJournal(tmp_path / "session.journal")
    again.sync_index(again.records())
    entry = again.index.get(RID)

    assert entry is not None and entry["state"] == "registered"
    assert entry["answer"] == {"receipt": {"id": RID}}
    assert entry["document"]["document_number"] == 7
