"""Clean text (issue 15, item 5): text from a blocklist, a delta or a price list never acts on a
technician's terminal or spreadsheet. Each test is named after the attack it stops."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pytest

from markd.catalog import load_catalog
from markd.cli import markctl
from markd.errors import ConfigError, StoreError
from markd.store import Store, fleet
from markd.store.importer import apply_delta, import_snapshot
from markd.text import (
    PrintableWriter,
    control_problem,
    csv_cell,
    csv_uncell,
    printable,
    printable_json,
)

KI = "0104670540176099215LpGKy"
#: Retitles an xterm, clears the screen and turns the text red: what a hostile reason holds.
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mOK"
#: The right-to-left override: "txt.exe" shows as "exe.txt" ("Trojan Source").
RLO = "\u202e"
#: The C1 CSI: some terminals read it as ESC [.
CSI = "\x9b"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\x7f")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = markctl.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_no_raw_control(text: str) -> None:
    assert not [c for c in RAW if c in text], repr(text)


def raw_store(path: Path, reason: str, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store holding a reason as an older markd (before these rules) could have stored it."""
    with monkeypatch.context() as patch:
        patch.setattr("markd.store.core.control_problem", lambda *_: None)
        with Store(str(path), map_size_mb=8) as store:
            store.block(KI, reason, source)


# --------------------------------------------------------------------------------------------
# The rules


@pytest.mark.parametrize(
    "bad",
    ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\u061c", "\u200e", "\u200f"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u2028", "\u2029"],
)
def test_every_control_character_is_refused_and_printed_escaped(bad: str) -> None:
    assert control_problem(f"ok{bad}", "reason") == (
        f"reason holds the control character U+{ord(bad):04X} at character 3; "
        "control characters are refused"
    )
    shown = printable(f"ok{bad}")
    assert bad not in shown and shown.startswith("ok\\")


def test_ordinary_text_passes_untouched() -> None:
    text = "Отзыв партии № 5 — «Роспотребнадзор» (GS1 ✓) 'x' \\n"
    assert control_problem(text) is None and printable(text) == text


def test_printable_escapes_are_readable() -> None:
    assert printable(ESCAPES) == "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mOK"
    assert printable(f"{RLO}exe.txt{CSI}") == "\\u{202e}exe.txt\\x9b"


def test_printable_json_is_the_same_json_with_nothing_raw() -> None:
    data = {"reason": ESCAPES + RLO + CSI + "\x7f", "name": "Вода"}
    text = printable_json(data)
    assert_no_raw_control(text)
    assert json.loads(text) == data and "Вода" in text


def test_the_terminal_guard_escapes_whatever_a_command_prints() -> None:
    sink = io.StringIO()
    guard = PrintableWriter(sink)
    print(f"reason: {ESCAPES}\nsecond line{RLO}", file=guard)
    guard.write_raw("\r[####] ")
    assert sink.getvalue() == (
        "reason: \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mOK\nsecond line\\u{202e}\n\r[####] "
    )


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1+2", "@SUM(A1)", "\t=1", "\r=1", "'quoted"])
def test_a_formula_cell_is_written_inert_and_read_back_exactly(cell: str) -> None:
    written = csv_cell(cell)
    assert isinstance(written, str) and written.startswith("'")
    assert csv_uncell(written) == cell


def test_plain_cells_and_numbers_are_written_as_they_are() -> None:
    assert csv_cell("recall") == "recall" and csv_cell(1700000000) == 1700000000


# --------------------------------------------------------------------------------------------
# Import


def test_escape_sequences_in_a_reason_are_refused_with_file_and_line(tmp_path: Path) -> None:
    snapshot = tmp_path / "list.csv"
    with snapshot.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ki", "reason", "source"])
        writer.writerow([KI, ESCAPES, "ЦРПТ"])
    with Store(str(tmp_path / "store"), map_size_mb=8) as store:
        with pytest.raises(StoreError) as refused:
            import_snapshot(store, snapshot)
        assert store.info().version == 0  # nothing changed
    assert f"{snapshot}:2: reason holds the control character U+001B at character 1" in str(
        refused.value
    )
    assert_no_raw_control(str(refused.value))


def test_a_bidi_override_in_a_source_is_refused_in_jsonl_and_skipped_with_skip_bad(
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "list.jsonl"
    good = {"ki": KI, "reason": "recall", "source": "ЦРПТ"}
    bad = {"gtin": "04680029460908", "reason": "recall", "source": f"{RLO}evil"}
    snapshot.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with Store(str(tmp_path / "store"), map_size_mb=8) as store:
        with pytest.raises(StoreError):
            import_snapshot(store, snapshot)
        result = import_snapshot(store, snapshot, skip_bad=True)
        assert (result.rows, result.skipped) == (1, 1)
        assert result.problems == [
            f"{snapshot}:2: source holds the control character U+202E at character 1; "
            "control characters are refused"
        ]


def test_a_c1_control_in_a_delta_is_refused_before_anything_changes(tmp_path: Path) -> None:
    delta = tmp_path / "delta-2.jsonl"
    header = {"format": "markd-delta", "version": 2, "previous": 1}
    change = {"op": "add", "ki": KI, "reason": f"recall{CSI}2J"}
    delta.write_text(json.dumps(header) + "\n" + json.dumps(change) + "\n", encoding="utf-8")
    with Store(str(tmp_path / "store"), map_size_mb=8) as store:
        with pytest.raises(StoreError) as refused:
            apply_delta(store, delta)
        assert store.lookup(KI).blocked is None
    assert f"{delta}:2: reason holds the control character U+009B" in str(refused.value)


def test_a_control_character_in_a_delta_header_source_is_refused(tmp_path: Path) -> None:
    delta = tmp_path / "delta-2.jsonl"
    header = {"format": "markd-delta", "version": 2, "previous": 1, "source": "\x1b[2J"}
    delta.write_text(json.dumps(header) + "\n", encoding="utf-8")
    with Store(str(tmp_path / "store"), map_size_mb=8) as store:
        with pytest.raises(StoreError, match=r"delta-2\.jsonl:1: source holds the control"):
            apply_delta(store, delta)


def test_a_reason_typed_by_hand_with_escapes_is_refused(tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "store")
    status, out, err = run(capsys, "store", "block", KI, "--reason", ESCAPES, "--store", store)
    assert status == 2 and "reason holds the control character U+001B" in err
    assert_no_raw_control(out + err)


def test_a_file_name_with_escapes_becomes_a_printable_source(tmp_path: Path) -> None:
    snapshot = tmp_path / "list\x1b[2J.txt"
    snapshot.write_text(f"{KI}\n", encoding="utf-8")
    with Store(str(tmp_path / "store"), map_size_mb=8) as store:
        import_snapshot(store, snapshot)
        assert store.lookup(KI).blocked.source == "list\\x1b[2J.txt"  # type: ignore[union-attr]


def test_escape_sequences_in_a_catalog_name_are_refused_with_file_and_line(
    tmp_path: Path,
) -> None:
    catalog = tmp_path / "prices.csv"
    catalog.write_text("4680029460908;Вода\x1b[2J\x1b[31m;89.90\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_catalog(catalog)
    assert refused.value.problems == [
        f"{catalog}:1: name holds the control character U+001B at character 5; "
        "control characters are refused"
    ]


# --------------------------------------------------------------------------------------------
# Export


def test_a_formula_in_a_reason_is_exported_inert(tmp_path: Path) -> None:
    formulas = {
        '=HYPERLINK("http://evil/","click")': "+cmd|' /C calc'!A0",
        "-2+3": "@SUM(1+1)",
    }
    snapshot = tmp_path / "list.csv"
    gtins = ["04680029460908", "04670540176099"]
    with snapshot.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["gtin", "reason", "source"])
        for gtin, (reason, source) in zip(gtins, formulas.items(), strict=True):
            writer.writerow([gtin, reason, source])
    with Store(str(tmp_path / "master"), map_size_mb=8) as master:
        import_snapshot(master, snapshot, version=3)
        index = fleet.export(master, tmp_path / "www", fmt="csv")

    exported = gzip.decompress((tmp_path / "www" / index["snapshot"]["file"]).read_bytes())
    rows = list(csv.reader(io.StringIO(exported.decode("utf-8"))))
    text_cells = [cell for row in rows[1:] for cell in row[3:5]]
    assert len(text_cells) == 4
    # No cell a spreadsheet would run: each starts with the apostrophe that marks text.
    assert all(cell.startswith("'") for cell in text_cells), text_cells
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)

    # And a kiosk importing the export gets exactly the master's text back.
    with Store(str(tmp_path / "kiosk"), map_size_mb=8) as kiosk:
        import_snapshot(kiosk, tmp_path / "www" / index["snapshot"]["file"], fmt="csv")
        for gtin, (reason, source) in zip(gtins, formulas.items(), strict=True):
            blocked = kiosk.lookup(gtin).blocked
            assert blocked is not None and (blocked.reason, blocked.source) == (reason, source)


# --------------------------------------------------------------------------------------------
# markctl


def test_escape_sequences_in_a_reason_never_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    raw_store(store, ESCAPES + CSI, f"{RLO}gro", monkeypatch)

    status, out, err = run(capsys, "store", "lookup", KI, "--store", str(store))
    assert status == 0
    assert_no_raw_control(out + err)
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mOK\\x9b (source \\u{202e}gro" in out

    status, out, err = run(capsys, "store", "lookup", KI, "--store", str(store), "--json")
    assert status == 0
    assert_no_raw_control(out + err)
    blocked = json.loads(out)["blocked"]
    assert (blocked["reason"], blocked["source"]) == (ESCAPES + CSI, f"{RLO}gro")


def test_escape_sequences_in_an_argument_echoed_back_never_reach_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (
        ["parse", f"0104670540176099{ESCAPES}"],
        ["parse", "--json", ESCAPES],
        ["parse", f"{ESCAPES}{RLO}"],
    ):
        status, out, err = run(capsys, *argv)
        assert status == 2 and (out + err).strip()
        assert_no_raw_control(out + err)


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


def test_escape_sequences_in_a_scanned_code_are_escaped_on_a_terminal(tmp_path: Path) -> None:
    from markd.cli import cmd_scan

    capture = tmp_path / "serial.bin"
    capture.write_bytes(f"{KI}\x1d93\x1b[2J{CSI}\r".encode())
    args = markctl.build_parser().parse_args(["decode", "--serial", str(capture)])
    terminal, pipe = _Terminal(), io.BytesIO()
    assert cmd_scan.run_decode(args, stdout=terminal, stderr=io.StringIO()) == 0
    assert cmd_scan.run_decode(args, stdout=pipe, stderr=io.StringIO()) == 0
    assert terminal.getvalue() == f"{KI}\\u001d93\\u001b[2J\\x9b\n".encode()
    assert pipe.getvalue() == f"{KI}\x1d93\x1b[2J{CSI}\n".encode()  # a pipe gets the code


def test_a_lone_surrogate_in_a_jsonl_row_or_a_delta_is_a_bad_row_not_a_traceback(
    tmp_path: Path,
) -> None:
    """JSON's ``\\ud800`` escape decodes to half a UTF-16 pair: no character, and not even
    writable as UTF-8, so storing it would fail at the commit (it did: UnicodeEncodeError)."""
    ki = "0104670540176099215LpGKy"
    rows = tmp_path / "list.jsonl"
    rows.write_text(json.dumps({"ki": ki, "reason": "x\ud800"}) + "\n")
    delta = tmp_path / "delta.jsonl"
    delta.write_text(
        json.dumps({"format": "markd-delta", "version": 2, "previous": 1})
        + "\n"
        + json.dumps({"op": "add", "ki": ki, "source": "\udfff"})
        + "\n"
    )
    with Store(str(tmp_path / "s"), map_size_mb=8) as store:
        with pytest.raises(StoreError) as caught:
            import_snapshot(store, rows)
        assert "list.jsonl:1: " in caught.value.message
        assert "lone surrogate U+D800" in caught.value.message
        import_snapshot(store, rows, skip_bad=True, allow_empty=True)
        with pytest.raises(StoreError) as caught:
            apply_delta(store, delta)
        assert "lone surrogate U+DFFF" in caught.value.message
        assert store.info().version == 1
    assert printable("a\ud800b") == "a\\u{d800}b"
    assert "\\ud800" in printable_json({"reason": "\ud800"})
