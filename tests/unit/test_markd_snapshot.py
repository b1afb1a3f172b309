"""The fleet's own snapshot format (``markd``, ``.mbl``) on real LMDB stores: what it holds, how
its reader refuses a damaged or forged file, and that an export round-trips through it.

The files here are written line by line in the tests, from the format's description in
docs/store.md, not with the exporter: a test of the reader must not share its writer's reading
of the format.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from markd.cli import markctl
from markd.codes import gtin_check_digit
from markd.errors import StoreError
from markd.store import Store, fleet, importer
from markd.store.importer import (
    _Inflating,
    detect_format,
    import_snapshot,
)

KI = "0104670540176099215LpGKy"
OTHER_KI = "0104680029460908215jcmHzLmkdPML"
GTIN = "04680029460908"
GTIN_2 = "04670540176099"
#: Serials made of GS1 characters that need care in a text file (quotes, %, &, <, >, /).
ODD_KI = '010467054017609921"%&<>/x'


def markd_file(
    path: Path,
    attrs: list[list[str]],
    rows: list[str],
    *,
    end: int | None = None,
    compress: bool = False,
) -> Path:
    """A markd snapshot written by hand: the magic line, ``#attr`` lines numbered from 1, the
    rows as given, and ``#end`` with their count (or ``end``)."""
    lines = ["#markd-blocklist 1"]
    lines += [
        f"#attr\t{n}\t{json.dumps(pair, ensure_ascii=False)}"
        for n, pair in enumerate(attrs, start=1)
    ]
    lines += rows
    lines.append(f"#end\t{len(rows) if end is None else end}")
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def entries(store: Store) -> list[tuple[bytes, int, str, str]]:
    return list(store.iter_blocked())


def refusal(call, *args, **kwargs) -> StoreError:
    with pytest.raises(StoreError) as caught:
        call(*args, **kwargs)
    return caught.value


# ---------------------------------------------------------------------------------------------
# What a snapshot holds


def test_every_kind_of_key_with_its_own_since_and_reason(tmp_store: Store, tmp_path: Path) -> None:
    source = markd_file(
        tmp_path / "list.mbl",
        [["recall 114", "head office"], ["stolen", "police"]],
        [
            f"{KI}\t1700000000\t1",
            f"{ODD_KI}\t1700000001\t2",
            f"{OTHER_KI}\t4294967295\t2",
            f"{GTIN}\t0\t1",
            f"{GTIN_2}|SERIES-7/b\t1700000002\t1",
        ],
    )
    result = import_snapshot(tmp_store, source, version=7)
    assert (result.rows, result.skipped, result.version) == (5, 0, 7)
    assert result.stored == {"ki": 3, "gtin": 1, "series": 1}
    assert result.sorted_input is False  # the ODD_KI row sorts before KI
    assert sorted(entries(tmp_store)) == sorted(
        [
            (KI.encode(), 1700000000, "recall 114", "head office"),
            (ODD_KI.encode(), 1700000001, "stolen", "police"),
            (OTHER_KI.encode(), 4294967295, "stolen", "police"),
            (GTIN.encode(), 0, "recall 114", "head office"),
            (f"{GTIN_2}\x1fSERIES-7/b".encode(), 1700000002, "recall 114", "head office"),
        ]
    )
    assert tmp_store.lookup(f"01{GTIN_2}21anything", series="SERIES-7/b").blocked is not None
    assert tmp_store.lookup(f"01{GTIN_2}21anything", series="SERIES-7").blocked is None


def test_a_file_of_many_blocks_is_read_whole_and_in_order(tmp_path: Path) -> None:
    """About 9 MiB uncompressed: rows cross the reader's 512 KiB blocks and its chunks."""
    rows = [f"01{GTIN}21S{i:09d}\t{1_600_000_000 + i}\t{1 + i % 3}" for i in range(200_000)]
    source = markd_file(
        tmp_path / "big.mbl.gz",
        [["a", "x"], ["b", "y"], ["c", "z"]],
        rows,
        compress=True,
    )
    with Store(str(tmp_path / "store"), map_size_mb=64) as store:
        result = import_snapshot(store, source, chunk_rows=30_000, commit_rows=7_000)
        assert (result.rows, result.sorted_input) == (200_000, True)
        assert store.info().counts["ki"] == 200_000
        got = entries(store)
    assert [since for _, since, *_ in got] == [1_600_000_000 + i for i in range(200_000)]
    assert [reason for _, _, reason, _ in got[:4]] == ["a", "b", "c", "a"]


def test_rows_out_of_order_and_repeated_are_still_stored_once(
    tmp_store: Store, tmp_path: Path
) -> None:
    source = markd_file(
        tmp_path / "list.mbl",
        [["r", "s"]],
        [f"{OTHER_KI}\t5\t1", f"{KI}\t6\t1", f"{OTHER_KI}\t7\t1"],
    )
    result = import_snapshot(tmp_store, source)
    assert result.sorted_input is False and result.stored["ki"] == 2
    assert {key: since for key, since, *_ in entries(tmp_store)} == {
        KI.encode(): 6,
        OTHER_KI.encode(): 7,  # the later row wins
    }


# ---------------------------------------------------------------------------------------------
# Refused whole: a file that is not the one that was written


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"ki\n" + KI.encode() + b"\n", "list.mbl:1: not a markd snapshot"),
        (b"#markd-blocklist 2\n#end\t0\n", "format version '2'; this markd reads version 1"),
        (
            b'#markd-blocklist 1\n#attr\t1\t["a","b"]\n' + KI.encode() + b"\t1\t1\n",
            "list.mbl:4: no #end line: the file is cut short",
        ),
        (
            b'#markd-blocklist 1\n#attr\t1\t["a","b"]\n' + KI.encode() + b"\t1\t1\n#end\t2\n",
            "list.mbl:4: #end says 2 rows but the file holds 1",
        ),
        (
            b'#markd-blocklist 1\n#attr\t1\t["a","b"]\n' + KI.encode() + b"\t1\t1\n#end\tmany\n",
            "list.mbl:4: the #end line is #end<TAB>ROWS",
        ),
    ],
    ids=["not-markd", "newer-version", "cut-short", "count-differs", "bad-end"],
)
@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_damaged_or_foreign_file_is_refused_and_nothing_changes(
    tmp_store: Store, tmp_path: Path, content: bytes, expected: str, skip_bad: bool
) -> None:
    import_snapshot(tmp_store, markd_file(tmp_path / "first.mbl", [["a", "b"]], [f"{KI}\t1\t1"]))
    before = entries(tmp_store)
    source = tmp_path / "list.mbl"
    source.write_bytes(content)
    error = refusal(import_snapshot, tmp_store, source, skip_bad=skip_bad, allow_empty=True)
    assert error.reason == "bad-file" and expected in error.message
    assert "nothing changed" in error.message
    assert entries(tmp_store) == before and tmp_store.info().version == 1


def test_a_row_after_end_is_refused(tmp_store: Store, tmp_path: Path) -> None:
    """Rows appended after ``#end`` (two files glued, or a forged tail) are not taken."""
    rows = [f"01{GTIN}21S{i:09d}\t1\t1" for i in range(120_000)]
    body = markd_file(tmp_path / "a.mbl", [["a", "b"]], rows).read_bytes()
    source = tmp_path / "list.mbl"
    source.write_bytes(body + f"{KI}\t1\t1\n".encode())
    error = refusal(import_snapshot, tmp_store, source, skip_bad=True)
    assert "a line after #end" in error.message and f"list.mbl:{len(rows) + 4}" in error.message
    assert tmp_store.info().version == 0


def test_a_row_after_an_end_line_that_closes_a_block_is_refused(
    tmp_store: Store, tmp_path: Path
) -> None:
    """The reader takes 512 KiB at a time after the first line: here ``#end`` is the very last
    line of the first block, and the forged row is all the second block holds."""
    block = 512 << 10
    rows = [f"01{GTIN}21S{i:09d}\t1\t1" for i in range(15_000)]  # 33 bytes a line
    end = f"#end\t{len(rows)}\n"
    pad = block - 33 * len(rows) - len(end) - len('#attr\t1\t["a","b"]\n')
    assert pad > 0
    head = f'#markd-blocklist 1\n#attr\t1\t["a","b{"x" * pad}"]\n'
    body = head + "".join(f"{row}\n" for row in rows) + end
    assert len(body.encode()) - len("#markd-blocklist 1\n") == block
    source = tmp_path / "list.mbl"
    source.write_text(body + f"{KI}\t1\t1\n")
    error = refusal(import_snapshot, tmp_store, source, skip_bad=True)
    assert f"list.mbl:{len(rows) + 4}: a line after #end" in error.message
    assert tmp_store.info().version == 0


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda data: data[: len(data) // 2], "damaged gzip data"),
        (lambda data: data[:20] + bytes([data[20] ^ 0xFF]) + data[21:], "damaged gzip data"),
        (lambda data: data + b"not gzip at all", "damaged gzip data"),
    ],
    ids=["cut", "flipped-byte", "trailing-garbage"],
)
def test_damaged_gzip_is_a_bad_file(tmp_store: Store, tmp_path: Path, mangle, expected) -> None:
    rows = [f"01{GTIN}21S{i:09d}\t1\t1" for i in range(20_000)]
    data = markd_file(tmp_path / "a.mbl.gz", [["a", "b"]], rows, compress=True).read_bytes()
    source = tmp_path / "list.mbl.gz"
    source.write_bytes(mangle(data))
    error = refusal(import_snapshot, tmp_store, source)
    assert error.reason == "bad-file" and expected in error.message, error.message
    assert tmp_store.info().version == 0


def test_gzip_members_are_read_one_after_the_other(tmp_store: Store, tmp_path: Path) -> None:
    whole = markd_file(tmp_path / "a.mbl", [["a", "b"]], [f"{KI}\t1\t1", f"{OTHER_KI}\t2\t1"])
    data = whole.read_bytes()
    cut = data.index(OTHER_KI.encode())
    source = tmp_path / "list.mbl.gz"
    source.write_bytes(gzip.compress(data[:cut]) + gzip.compress(data[cut:]) + b"\0" * 16)
    assert import_snapshot(tmp_store, source).stored["ki"] == 2


def test_the_inflating_thread_stops_when_the_reader_closes_early(tmp_path: Path) -> None:
    """A reader that gives up (a refused header) must not leave a thread inflating the rest."""
    source = tmp_path / "big.gz"
    source.write_bytes(gzip.compress(b"x" * (64 << 20), compresslevel=1))
    with open(source, "rb") as raw:
        stream = _Inflating(raw)
        assert len(stream.read(10)) == 10
        stream.close()
        assert not stream._thread.is_alive()


def test_more_attrs_than_the_limit_are_refused(tmp_store: Store, tmp_path: Path) -> None:
    attrs = [[f"reason {i}", "s"] for i in range(70_000)]
    source = markd_file(tmp_path / "list.mbl", attrs, [f"{KI}\t1\t1"])
    error = refusal(import_snapshot, tmp_store, source)
    assert error.reason == "bad-file"
    assert "list.mbl:65537: more than 65,536 distinct" in error.message
    assert tmp_store.info().version == 0


# ---------------------------------------------------------------------------------------------
# Bad rows: named by their line; refused, or skipped and counted


BAD_ROWS = {
    f"{KI}\t1\t9": "attr 9 has no #attr line before the rows",
    f"{OTHER_KI}\t4294967296\t1": "since 4294967296 is out of range",
    "0104670540176098215LpGKy\t1\t1": "GTIN 04670540176098 has a wrong check digit",
    f"{KI[:-3]}\x1d93abcd\t1\t1": "is not a row KEY<TAB>SINCE<TAB>ATTR",
    '#attr\t2\t["late","x"]': "#attr lines come before every row",
    f"{GTIN} \t1\t1": "is not a row",
}


def test_bad_rows_are_named_by_line_and_refuse_the_file(tmp_store: Store, tmp_path: Path) -> None:
    good = [f"01{GTIN}21OK{i}\t1\t1" for i in range(3)]
    source = markd_file(tmp_path / "list.mbl", [["a", "b"]], good + list(BAD_ROWS))
    error = refusal(import_snapshot, tmp_store, source)
    assert error.reason == "bad-rows" and "6 bad row(s)" in error.message
    for line, expected in enumerate(BAD_ROWS.values(), start=3 + len(good)):
        assert f"list.mbl:{line}: " in error.message and expected in error.message
    assert "abcd" not in error.message  # a crypto tail is never quoted
    assert tmp_store.info().version == 0


def test_skip_bad_keeps_the_good_rows(tmp_store: Store, tmp_path: Path) -> None:
    good = [f"01{GTIN}21OK{i}\t1\t1" for i in range(3)]
    source = markd_file(tmp_path / "list.mbl", [["a", "b"]], good + list(BAD_ROWS))
    result = import_snapshot(tmp_store, source, skip_bad=True)
    assert (result.stored["ki"], result.skipped) == (3, len(BAD_ROWS))


@pytest.mark.parametrize(
    ("attr_line", "expected"),
    [
        ('#attr\t1\t["bad\\u001b[31m","s"]', "control character"),
        ('#attr\t1\t{"reason":"r"}', "must be a JSON [reason, source]"),
        ("#attr\t1\tnot json", "not JSON"),
        ('#attr\t01\t["r","s"]', "#attr<TAB>NUMBER<TAB>JSON"),
    ],
    ids=["escape-sequence", "object", "not-json", "leading-zero"],
)
def test_a_bad_attr_line_is_named_and_its_rows_are_bad(
    tmp_store: Store, tmp_path: Path, attr_line: str, expected: str
) -> None:
    source = tmp_path / "list.mbl"
    source.write_text(f"#markd-blocklist 1\n{attr_line}\n{KI}\t1\t1\n#end\t1\n")
    error = refusal(import_snapshot, tmp_store, source)
    assert "list.mbl:2: " in error.message and expected in error.message
    assert "list.mbl:3: attr 1 has no #attr line" in error.message


def test_a_reason_is_kept_to_200_characters(tmp_store: Store, tmp_path: Path) -> None:
    source = markd_file(tmp_path / "list.mbl", [["r" * 5000, "s" * 300]], [f"{KI}\t1\t1"])
    import_snapshot(tmp_store, source)
    [(_, _, reason, source_text)] = entries(tmp_store)
    assert (len(reason), len(source_text)) == (200, 200)


# ---------------------------------------------------------------------------------------------
# Export and sync


@pytest.fixture
def master(tmp_path: Path) -> Store:
    """A master store with every kind of key, several reasons and times (loaded from CSV)."""
    source = tmp_path / "master.csv"
    source.write_text(
        "ki,gtin,series,reason,source,since\n"
        f"{KI},,,recall,head office,1700000000\n"
        f'{ODD_KI},,,"quoted, ""reason""",police,1700000100\n'
        f"{OTHER_KI},,,=FORMULA(),sheet,0\n"
        f",{GTIN},,whole GTIN,fleet,4000000000\n"
        f",{GTIN_2},B-7/x,series,fleet,1\n"
    )
    with Store(str(tmp_path / "master"), map_size_mb=8) as store:
        import_snapshot(store, source, version=4)
        yield store


def test_export_round_trips_through_the_markd_format(master: Store, tmp_path: Path) -> None:
    """Every kind of key, quotes and a formula in reasons, times from 0 to past 2038."""
    index = fleet.export(master, tmp_path / "www")
    assert index["snapshot"]["file"] == "snapshot-4.mbl.gz"
    assert detect_format(tmp_path / "www" / index["snapshot"]["file"]) == "markd"
    with Store(str(tmp_path / "kiosk"), map_size_mb=8) as kiosk:
        result = import_snapshot(kiosk, tmp_path / "www" / index["snapshot"]["file"])
        assert result.rows == index["snapshot"]["rows"] == sum(master.info().counts.values())
        assert entries(kiosk) == entries(master)


def test_markd_and_csv_exports_give_the_same_store(master: Store, tmp_path: Path) -> None:
    markd_index = fleet.export(master, tmp_path / "markd")
    csv_index = fleet.export(master, tmp_path / "csv", fmt="csv")
    assert csv_index["snapshot"]["file"] == "snapshot-4.csv.gz"
    stores = []
    for name, index in (("markd", markd_index), ("csv", csv_index)):
        with Store(str(tmp_path / f"kiosk-{name}"), map_size_mb=8) as kiosk:
            import_snapshot(kiosk, tmp_path / name / index["snapshot"]["file"])
            stores.append(entries(kiosk))
    assert stores[0] == stores[1] == entries(master)


def test_an_unknown_export_format_is_refused_before_writing(master: Store, tmp_path: Path) -> None:
    error = refusal(fleet.export, master, tmp_path / "www", fmt="xml")
    assert error.reason == "export-failed" and "markd, csv" in error.message
    assert not (tmp_path / "www").exists()


def test_an_index_names_the_snapshot_format_by_the_file_name() -> None:
    """``.mbl``/``.mbl.gz`` is the markd format; any other name is CSV, as every index before
    the markd format (and other makers' exporters) meant."""
    index = {
        "format": "markd-store-index",
        "version": 1,
        "generated_at": 1,
        "snapshot": {"version": 1, "file": "snapshot-1.txt", "size": 1, "sha256": "0" * 64},
    }
    for name, fmt in (
        ("snapshot-1.mbl.gz", "markd"),
        ("snapshot-1.MBL", "markd"),
        ("snapshot-1.csv.gz", "csv"),
        ("list-2026-12-01.gz", "csv"),
    ):
        index["snapshot"]["file"] = name
        assert fleet.parse_index(json.dumps(index).encode())["snapshot"]["format"] == fmt


def test_a_file_without_a_telling_name_is_sniffed(tmp_path: Path) -> None:
    source = markd_file(tmp_path / "download", [["a", "b"]], [f"{KI}\t1\t1"], compress=True)
    assert detect_format(source) == "markd"
    (tmp_path / "plain").write_text(f"{KI}\n")
    assert detect_format(tmp_path / "plain") == "text"


def test_markctl_exports_either_format_and_imports_markd_by_its_name(
    master: Store, tmp_path: Path, capsys
) -> None:
    master.close()
    store = str(tmp_path / "master")
    status = markctl.main(["store", "export", "--to", str(tmp_path / "a"), "--store", store])
    assert status == 0 and "snapshot-4.mbl.gz" in capsys.readouterr().out
    status = markctl.main(
        ["store", "export", "--to", str(tmp_path / "b"), "--format", "csv", "--store", store]
    )
    assert status == 0 and "snapshot-4.csv.gz" in capsys.readouterr().out
    kiosk = str(tmp_path / "kiosk")
    status = markctl.main(
        ["store", "import", str(tmp_path / "a" / "snapshot-4.mbl.gz"), "--store", kiosk, "--json"]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status == 0 and result["rows"] == 5 and result["version"] == 1


def test_the_export_of_a_large_list_is_one_consistent_read(tmp_path: Path) -> None:
    """Two reads (the attrs, then the rows) of a list of 100,000 entries agree, and the file
    imports back to the same count."""
    rows = [f"01{GTIN}21S{i:09d}\t{i}\t{1 + i % 2}" for i in range(100_000)]
    source = markd_file(tmp_path / "big.mbl", [["a", "x"], ["b", "y"]], rows)
    with Store(str(tmp_path / "m"), map_size_mb=64) as store:
        import_snapshot(store, source)
        index = fleet.export(store, tmp_path / "www")
    lines = zlib.decompress((tmp_path / "www" / index["snapshot"]["file"]).read_bytes(), 31)
    text = lines.decode().splitlines()
    assert text[-1] == "#end\t100000" and len(text) == 1 + 2 + 100_000 + 1
    assert sum(line.startswith("#attr\t") for line in text) == 2


def test_markctl_import_help_names_the_markd_format() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "markd.cli.markctl", "store", "import", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "markd" in out and ".mbl" in out


# ---------------------------------------------------------------------------------------------
# Attacks found in review: each crafted file is refused or bounded, never a traceback


def test_an_unsorted_snapshot_is_sorted_in_few_runs_not_one_a_block(
    tmp_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows in reverse order: a run file a block (about 11,000 rows) would leave thousands of
    files open, and as many batches in memory, at the merge of a large list."""
    runs: list[int] = []
    real_add = importer._Runs.add

    def counting_add(self: importer._Runs, chunk: importer._Chunk) -> None:
        runs.append(len(chunk))
        real_add(self, chunk)

    monkeypatch.setattr(importer._Runs, "add", counting_add)
    rows = [f"01{GTIN}21S{i:09d}\t{i}\t1" for i in reversed(range(90_000))]
    source = markd_file(tmp_path / "list.mbl", [["a", "b"]], rows)
    result = import_snapshot(tmp_store, source, chunk_rows=80_000)  # runs of 40,000 rows
    assert (result.rows, result.sorted_input, result.stored["ki"]) == (90_000, False, 90_000)
    assert len(runs) == 3 and sum(runs) == 90_000  # not one run a block
    got = entries(tmp_store)
    assert [since for _, since, *_ in got] == list(range(90_000))


def test_attr_lines_beyond_the_limit_are_refused_even_when_they_repeat_one_pair(
    tmp_store: Store, tmp_path: Path
) -> None:
    """Millions of #attr lines naming one (reason, source) would grow the number map without
    end: distinct pairs are not what is counted."""
    attrs = [["same", "pair"]] * 70_000
    source = markd_file(tmp_path / "list.mbl.gz", attrs, [f"{KI}\t1\t1"], compress=True)
    error = refusal(import_snapshot, tmp_store, source, skip_bad=True)
    assert error.reason == "bad-file" and "list.mbl.gz:65538: more than 65,536 #attr" in (
        error.message
    )


def test_a_gtin_a_row_keeps_the_check_digit_memory_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """250,000 distinct GTINs: the reader remembers check digits for at most about its limit
    (here lowered to 5,000) plus one block's worth, not one entry a row."""
    monkeypatch.setattr(importer, "_MAX_GTINS_KEPT", 5_000)
    largest = 0
    real_quick = importer._MarkdBlocks._quick

    def watching_quick(self: importer._MarkdBlocks, block: bytes):  # noqa: ANN202
        nonlocal largest
        result = real_quick(self, block)
        largest = max(largest, len(self.valid_gtins))
        return result

    monkeypatch.setattr(importer._MarkdBlocks, "_quick", watching_quick)
    gtins = set()
    body = 460_000_000_000
    while len(gtins) < 250_000:
        head = f"0{body:012d}"
        gtins.add(head + str(gtin_check_digit(head)))
        body += 7
    rows = [f"{gtin}\t1\t1" for gtin in sorted(gtins)]
    source = markd_file(tmp_path / "list.mbl", [["a", "b"]], rows)
    with Store(str(tmp_path / "s"), map_size_mb=64) as store:
        import_snapshot(store, source)
        assert store.info().counts["gtin"] == len(rows)
    assert 0 < largest < 5_000 + 25_000


@pytest.mark.parametrize(
    ("attr_json", "expected"),
    [
        ('["\\ud800x","hq"]', "lone surrogate U+D800"),
        ("[" * 200_000, "nested too deeply"),
    ],
    ids=["lone-surrogate", "deep-nesting"],
)
def test_a_crafted_attr_is_a_named_bad_row_not_a_traceback(
    tmp_store: Store, tmp_path: Path, attr_json: str, expected: str
) -> None:
    source = tmp_path / "list.mbl"
    source.write_text(f"#markd-blocklist 1\n#attr\t1\t{attr_json}\n{KI}\t1\t1\n#end\t1\n")
    error = refusal(import_snapshot, tmp_store, source)
    assert error.reason == "bad-rows" and "list.mbl:2: #attr 1: " in error.message
    assert expected in error.message
    result = import_snapshot(tmp_store, source, skip_bad=True, allow_empty=True)
    assert result.skipped == 2 and tmp_store.info().counts["ki"] == 0


@pytest.mark.parametrize("stand_in", ["<GS>", "<gs>", "<FNC1>"])
def test_a_written_out_gs_never_stores_a_crypto_tail_as_a_key(
    tmp_store: Store, tmp_path: Path, stand_in: str
) -> None:
    source = markd_file(
        tmp_path / "list.mbl", [["a", "b"]], [f"{KI}{stand_in}93Zz9x\t1\t1", f"{OTHER_KI}\t1\t1"]
    )
    error = refusal(import_snapshot, tmp_store, source)
    assert "list.mbl:3: " in error.message and "written-out GS" in error.message
    assert "Zz9x" not in error.message
    import_snapshot(tmp_store, source, skip_bad=True)
    assert [key for key, *_ in entries(tmp_store)] == [OTHER_KI.encode()]


def test_a_skipped_long_line_counts_once(tmp_store: Store, tmp_path: Path) -> None:
    source = tmp_path / "list.mbl"
    long_line = "x" * (2 << 20)
    source.write_text(
        f'#markd-blocklist 1\n#attr\t1\t["a","b"]\n{KI}\t1\t1\n{long_line}\n{OTHER_KI}\t1\t1\n'
        "#end\t3\n"
    )
    result = import_snapshot(tmp_store, source, skip_bad=True)
    assert (result.skipped, result.stored["ki"]) == (1, 2)
    assert result.problems == [f"{source}:4: line longer than 1 MiB; skipped unread"]
