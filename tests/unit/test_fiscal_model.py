"""Tag bits, the accept/decline rule and the session journal's file handling."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from markd.fiscal.journal import SessionJournal
from markd.fiscal.model import (
    IndustryTags,
    MarkedItem,
    MarkValidation,
    Position,
    inn_problem,
    judge_validation,
)


def test_tag_bits_follow_the_ffd_table() -> None:
    full = MarkValidation(
        "ki",
        fn_checked=True,
        fn_result=True,
        ready=True,
        oism_checked=True,
        oism_status_correct=True,
    )
    offline = MarkValidation("ki", fn_checked=True, fn_result=True, ready=True, offline=True)
    unchecked = MarkValidation("ki", ready=True, oism_checked=True, oism_status_correct=True)

    assert (full.tag2004, full.tag2106) == (3, 15)
    assert (offline.tag2004, offline.tag2106) == (3, 19)
    assert (unchecked.tag2004, unchecked.tag2106) == (0, 12)
    assert full.item_info_check_result() == {
        "imcCheckFlag": True,
        "imcCheckResult": True,
        "imcStatusInfo": True,
        "imcEstimatedStatusCorrect": True,
        "ecrStandAloneFlag": False,
    }
    # A negative ФН check never shows as positive, whatever else is set.
    assert MarkValidation("ki", fn_checked=True, fn_result=False).tag2004 == 1


@pytest.mark.parametrize(
    ("fields", "policy", "expected"),
    [
        (
            {"fn_checked": True, "fn_result": False, "ready": True},
            "accept",
            (False, "fn-crypto-invalid"),
        ),
        ({"ready": False}, "accept", (False, "fn-validation-timeout")),
        ({"ready": True, "offline": True}, "decline", (True, "fn-offline")),
        (
            {"ready": True, "oism_checked": True, "oism_status_correct": True},
            "decline",
            (True, "oism-correct"),
        ),
        (
            {"ready": True, "oism_checked": True, "item_status": "itemSaleStopped"},
            "accept",
            (False, "oism-sale-stopped"),
        ),
        ({"ready": True, "oism_checked": True}, "accept", (False, "oism-status-incorrect")),
        ({"ready": True, "request_sent": True}, "accept", (True, "oism-no-answer")),
        ({"ready": True, "request_sent": True}, "decline", (False, "oism-no-answer")),
    ],
)
def test_judge_validation(fields: dict, policy: str, expected: tuple[bool, str]) -> None:
    assert judge_validation(MarkValidation("ki", **fields), policy) == expected


def test_industry_tags_and_positions_are_checked() -> None:
    assert IndustryTags().problems() == []
    assert IndustryTags().atol_date == "2022.03.26"
    bad = IndustryTags(tag1262="0300", tag1263="2022-03-26", tag1264="", tag1265="x" * 257)
    assert len(bad.problems()) == 4
    two_marked = Position("x", 100, quantity=2, mark=MarkedItem("km", "ki", 1))
    assert "a marked unit is one piece per position" in two_marked.problems()
    assert Position("", -1, tax="vat18").problems() == [
        "a position needs a name",
        "a price cannot be negative, got -1 kopecks",
        "unknown tax type 'vat18'; one of none, vat0, vat5, vat7, vat10, vat20, vat22, "
        "vat105, vat107, vat110, vat120, vat122",
    ]


def test_position_record_holds_the_ki_not_the_code() -> None:
    position = Position(
        "x", 100, mark=MarkedItem("01046800294609082151\x1d93SeCr", "0104680029460908215", 1)
    )

    text = json.dumps(position.record())

    assert "0104680029460908215" in text and "SeCr" not in text
    assert "SeCr" not in repr(position)


def test_journal_survives_a_torn_line_and_keeps_codes_private(tmp_path: Path) -> None:
    journal = SessionJournal(tmp_path / "deep" / "session.journal")
    journal.append("open", "r1", kind="sell")
    with open(journal.path, "ab") as file:
        file.write(b'{"event": "unit-add')  # killed mid-write
    journal.append("cancelled", "r1")  # starts on a line of its own after the torn bytes

    journal.put_code("r1", "u1", "CODE-1")
    journal.put_code("r1", "u2", "CODE-2")

    assert [r["event"] for r in journal.records()] == ["open", "cancelled"]
    assert journal.codes("r1") == {"u1": "CODE-1", "u2": "CODE-2"}
    assert journal.codes("r2") == {}
    assert stat.S_IMODE(os.stat(journal.codes_path).st_mode) == 0o600
    journal.put_code("r2", "u1", "CODE-3")  # another receipt replaces the file
    assert journal.codes("r1") == {} and journal.codes("r2") == {"u1": "CODE-3"}
    journal.drop_codes()
    assert not journal.codes_path.exists()


def test_journal_rotates_only_when_large(tmp_path: Path) -> None:
    journal = SessionJournal(tmp_path / "session.journal")
    journal.append("open", "r1")

    assert journal.rotate_if_large(limit=10_000) is False
    assert journal.rotate_if_large(limit=10) is True
    assert journal.records() == []
    assert (tmp_path / "session.journal.1").exists()


def test_inn_check_digits_follow_the_fns_rule() -> None:
    # An organisation's ИНН (10 digits, one check digit) and a person's (12, two).
    assert inn_problem("7707083893") is None
    assert inn_problem("500100732259") is None
    assert inn_problem("7707083894") == "wrong check digit in ИНН 7707083894"
    assert inn_problem("500100732269") == "wrong check digit in ИНН 500100732269"  # 11th
    assert inn_problem("500100732258") == "wrong check digit in ИНН 500100732258"  # 12th
    assert inn_problem("77070838") == "an ИНН here is 10 or 12 digits, got '77070838'"
    assert inn_problem("7707083893", (12,)) == "an ИНН here is 12 digits, got '7707083893'"
    assert inn_problem("٧٧٠٧٠٨٣٨٩٣") is not None  # digits, but not ASCII ones
