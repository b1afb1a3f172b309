"""markd.store on real LMDB files: lookups, sold journal, cache, freshness, import, deltas."""

from __future__ import annotations

import csv
import doctest
import gzip
import json
import random
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import lmdb
import pytest

import markd.store
from markd import samples
from markd.codes import GS1_CHARSET_82, MarkingCode, gtin_check_digit, parse
from markd.errors import StoreError
from markd.store import Store, importer
from markd.store.importer import apply_delta, import_snapshot

KI = "0104670540176099215LpGKy"
CODE = f"{KI}\x1d93dGVz"
OTHER_KI = "0104680029460908215jcmHzLmkdPML"
PACK = "00000046233219!SX-RqRADpU7Cev"


def kis(count: int, seed: int = 1) -> list[str]:
    """Distinct КИ texts (GS1 form) from synthetic codes."""
    out = {parse(km).ki for km in samples.batch(count * 2, seed=seed)}
    return sorted(k for k in out if k.startswith("01"))[:count]


def many_kis(count: int) -> list[str]:
    """``count`` distinct КИ texts of the GS1 form, as :func:`kis` gives, built straight from
    their parts (kis(60_000) generates and parses twice as many whole codes: seconds). Each
    has a GTIN of its own with its check digit, and a serial of a length the sample shapes use,
    from their alphabet."""
    rng = random.Random(1)
    lengths = (13, 13, 13, 6, 7, 7)  # gs1-91-92, gs1-91-92-88, water, milk, beer, tobacco-block
    out = []
    for i in range(count):
        body = f"0460{i:09d}"
        serial = "".join(rng.choices(GS1_CHARSET_82, k=lengths[i % 6]))
        out.append(f"01{body}{gtin_check_digit(body)}21{serial}")
    return sorted(out)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_module_example_runs() -> None:
    assert doctest.testmod(markd.store).failed == 0


# ---------------------------------------------------------------------------------------------
# lookups


def test_block_by_ki_found_by_code_and_by_either_ki_form(tmp_store: Store) -> None:
    assert tmp_store.lookup(CODE).blocked is None
    tmp_store.block(KI, "recalled")
    for query in (KI, CODE, parse(CODE)):
        entry = tmp_store.lookup(query).blocked
        assert entry is not None
        assert (entry.kind, entry.reason, entry.source) == ("ki", "recalled", "manual")
    assert tmp_store.lookup(OTHER_KI).blocked is None
    assert tmp_store.info().manual == 1
    assert tmp_store.info().version == 0  # a hand-made block is not a blocklist version


def test_tobacco_pack_and_gs1_forms_share_one_key(tmp_store: Store) -> None:
    tmp_store.block("00000046233219!SX-RqR", "stolen")
    assert tmp_store.lookup(PACK).blocked.reason == "stolen"
    assert tmp_store.lookup("010000004623321921!SX-RqR").blocked is not None


def test_gtin_block_covers_every_serial(tmp_store: Store) -> None:
    tmp_store.block("4670540176099", "ban on the product")  # EAN-13, padded to GTIN-14
    entry = tmp_store.lookup(CODE).blocked
    assert (entry.kind, entry.key) == ("gtin", "04670540176099")
    assert tmp_store.lookup(OTHER_KI).blocked is None


def test_series_block_needs_the_series(tmp_store: Store) -> None:
    tmp_store.block("04670540176099", "bad batch", series="B-17")
    assert tmp_store.lookup(CODE).blocked is None
    assert tmp_store.lookup(CODE, series="B-17").blocked.kind == "series"
    code_with_batch = parse(f"{KI}\x1d93dGVz\x1d10B-17")
    assert tmp_store.lookup(code_with_batch).blocked.reason == "bad batch"


def test_ki_wins_over_gtin(tmp_store: Store) -> None:
    tmp_store.block("04670540176099", "gtin ban")
    tmp_store.block(KI, "this unit")
    assert tmp_store.lookup(CODE).blocked.reason == "this unit"


def test_unblock(tmp_store: Store) -> None:
    tmp_store.block(KI, "x")
    assert tmp_store.unblock(KI) is True
    assert tmp_store.unblock(KI) is False
    assert tmp_store.lookup(KI).blocked is None
    assert tmp_store.info().manual == 0


def test_sold_journal_and_return(tmp_store: Store) -> None:
    tmp_store.mark_sold(parse(CODE), "receipt-7", at=1_763_700_000)
    found = tmp_store.lookup(KI)
    assert found.sold.receipt == "receipt-7" and found.sold.at == 1_763_700_000
    assert found.deny_reason == "sold-here"
    tmp_store.mark_returned(KI)
    assert tmp_store.lookup(KI).sold is None
    assert tmp_store.lookup(KI).deny_reason is None


def test_a_batch_of_cached_verdicts_lets_others_run_between_units(tmp_path: Path) -> None:
    kis = [KI[:-3] + f"{n:03d}" for n in range(3)]
    called: list[int] = []
    with Store.open(str(tmp_path / "s"), verdict_ttl_s=3600) as store:
        store.mark_sold(kis[1], "r1", at=1_000_000)  # a unit with a record of its own
        store.cache_verdicts(
            [(ki, {"sold": False, "n": n}) for n, ki in enumerate(kis)],
            at=1_000_000,
            between=lambda: called.append(len(called)),
        )
        assert called == [0, 1]  # between the three units, not before or after
        for n, ki in enumerate(kis):
            assert store.lookup(ki, now=1_000_001).cached.facts == {"sold": False, "n": n}
        assert store.lookup(kis[1]).sold is not None  # its record kept


def test_verdict_cache_ttl_and_purge(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s"), verdict_ttl_s=3600) as store:
        facts = {"isBlocked": False, "sold": False, "expireDate": "2027-01-01", "mrp": 0}
        store.cache_verdict(KI, facts, at=1_000_000)
        store.mark_sold(KI, "r1", at=1_000_100)
        fresh = store.lookup(KI, now=1_000_000 + 3599).cached
        assert fresh.facts == facts and fresh.fresh
        assert not store.lookup(KI, now=1_000_000 + 3601).cached.fresh
        assert store.purge_cache(now=1_000_000 + 3601) == 1
        found = store.lookup(KI)
        assert found.cached is None and found.sold is not None  # the sale stays


def test_freshness(tmp_store: Store, tmp_path: Path) -> None:
    assert tmp_store.lookup(KI).stale  # no blocklist ever loaded: never fresh
    assert tmp_store.lookup(KI).blocklist_age_s is None
    result = import_snapshot(tmp_store, write_lines(tmp_path / "b.txt", [KI]))
    info = tmp_store.info()
    assert result.version == 1 and info.synced_at is not None
    assert not tmp_store.lookup(OTHER_KI, now=info.synced_at + 3600).stale
    late = tmp_store.lookup(KI, now=info.synced_at + 73 * 3600)
    assert late.stale and late.blocked is not None  # stale, but still denies what it knows


# ---------------------------------------------------------------------------------------------
# snapshot import


@pytest.mark.parametrize(
    ("chunk_rows", "fan_in"),
    [(100_000, 64), (97, 64), (97, 4)],  # one chunk; runs and a merge; runs merged in passes
)
def test_import_unsorted_text_equals_sorted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int, fan_in: int
) -> None:
    monkeypatch.setattr(importer._Runs, "_FAN_IN", fan_in)
    rows = kis(1500)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    shuffled.append(rows[0])  # a duplicate is stored once
    with Store.open(str(tmp_path / "a")) as a, Store.open(str(tmp_path / "b")) as b:
        ra = import_snapshot(a, write_lines(tmp_path / "s.txt", rows), chunk_rows=chunk_rows)
        rb = import_snapshot(b, write_lines(tmp_path / "u.txt", shuffled), chunk_rows=chunk_rows)
        assert ra.sorted_input and not rb.sorted_input
        assert ra.stored == rb.stored == {"ki": 1500, "gtin": 0, "series": 0}
        assert [k for k, *_ in a.iter_blocked()] == [k for k, *_ in b.iter_blocked()]
        for ki in rows[::50]:
            assert b.lookup(ki).blocked is not None


@pytest.mark.parametrize("fan_in", [64, 3])  # one merge; runs merged in passes first
def test_import_unsorted_csv_with_own_values_equals_sorted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fan_in: int
) -> None:
    """Rows that each carry their own since and reason, in 30 chunks of 50 (runs of pairs):
    merged in one go or, past the fan-in, in passes, every row keeps its own value."""
    monkeypatch.setattr(importer._Runs, "_FAN_IN", fan_in)
    rng = random.Random(5)
    rows = [(ki, rng.choice("abcd"), rng.randrange(1 << 31)) for ki in kis(1500)]
    shuffled = rows[:]
    rng.shuffle(shuffled)

    def write(path: Path, lines: list[tuple[str, str, int]]) -> Path:
        with open(path, "w", newline="") as out:
            csv.writer(out).writerows([("ki", "reason", "since"), *lines])  # quotes a "," КИ
        return path

    with Store.open(str(tmp_path / "a")) as a, Store.open(str(tmp_path / "b")) as b:
        ra = import_snapshot(a, write(tmp_path / "s.csv", rows), chunk_rows=100)
        rb = import_snapshot(b, write(tmp_path / "u.csv", shuffled), chunk_rows=100)
        assert ra.sorted_input and not rb.sorted_input
        assert ra.stored == rb.stored == {"ki": 1500, "gtin": 0, "series": 0}
        stored = [(k.decode(), reason, since) for k, since, reason, _ in b.iter_blocked()]
        assert stored == [(k.decode(), r, t) for k, t, r, _ in a.iter_blocked()] == rows


def test_sorted_input_whose_order_breaks_late_is_still_complete(tmp_path: Path) -> None:
    rows = kis(600)
    late_break = rows[100:] + rows[:100]  # sorted for 500 rows, then smaller keys
    with Store.open(str(tmp_path / "s")) as store:
        result = import_snapshot(store, write_lines(tmp_path / "x.txt", late_break), chunk_rows=50)
        assert not result.sorted_input
        assert result.stored["ki"] == 600
        assert sum(1 for _ in store.iter_blocked()) == 600


def test_import_replaces_the_whole_set_and_bumps_version(tmp_store: Store, tmp_path: Path) -> None:
    first, second = kis(300, seed=1), kis(300, seed=2)
    import_snapshot(tmp_store, write_lines(tmp_path / "1.txt", first))
    tmp_store.block(OTHER_KI, "by hand, before the second snapshot")
    result = import_snapshot(tmp_store, write_lines(tmp_path / "2.txt", second))
    assert result.version == 2
    assert tmp_store.lookup(second[0]).blocked is not None
    assert tmp_store.lookup(first[0]).blocked is None or first[0] in second
    assert tmp_store.info().counts["ki"] == 300
    # The snapshot replaced the fleet list; what a technician blocked here stays.
    assert tmp_store.lookup(OTHER_KI).blocked.source == "manual"
    assert OTHER_KI.encode() not in {k for k, *_ in tmp_store.iter_blocked()}


def test_text_format_mixes_ki_gtin_comments_and_full_codes(
    tmp_store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "list.txt"
    path.write_text(f"# recalls\n\n{KI}\r\n4680029460908\n{PACK}\n{CODE}\n")
    result = import_snapshot(tmp_store, path)
    assert result.stored == {"ki": 2, "gtin": 1, "series": 0}  # CODE repeats KI
    assert tmp_store.lookup(OTHER_KI).blocked.kind == "gtin"


def test_csv_with_reasons_sources_times_and_series(tmp_store: Store, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "ki,gtin,series,reason,source,since\n"
        f"{KI},,,stolen,police,2025-06-01T00:00:00Z\n"
        ",04680029460908,L-9,bad batch,RPN,1700000000\n"
        ",04607809596237,,,,\n"
    )
    import_snapshot(tmp_store, path, source="head office")
    entry = tmp_store.lookup(KI).blocked
    assert (entry.reason, entry.source, entry.since) == ("stolen", "police", 1748736000)
    series = tmp_store.lookup(OTHER_KI, series="L-9").blocked
    assert (series.kind, series.reason, series.since) == ("series", "bad batch", 1700000000)
    gtin = tmp_store.lookup("0104607809596237215<(q!mLp*jIb3").blocked
    assert (gtin.reason, gtin.source) == ("blocklist", "head office")


def test_jsonl_and_gzip(tmp_store: Store, tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl.gz"
    lines = [json.dumps({"ki": KI, "reason": "recalled"}), json.dumps("04680029460908")]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    result = import_snapshot(tmp_store, path)
    assert result.stored == {"ki": 1, "gtin": 1, "series": 0}
    assert tmp_store.lookup(KI).blocked.reason == "recalled"


def test_bad_rows_reject_the_file_and_change_nothing(tmp_store: Store, tmp_path: Path) -> None:
    import_snapshot(tmp_store, write_lines(tmp_path / "good.txt", [KI]))
    bad = write_lines(tmp_path / "bad.txt", [OTHER_KI, "hello", "04680029460907", PACK])
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, bad)
    assert err.value.reason == "bad-rows"
    assert f"{bad}:2:" in err.value.message and f"{bad}:3:" in err.value.message
    assert "check digit" in err.value.message
    assert tmp_store.info().version == 1
    assert tmp_store.lookup(KI).blocked is not None
    assert tmp_store.lookup(OTHER_KI).blocked is None


def test_skip_bad_rows_counts_them(tmp_store: Store, tmp_path: Path) -> None:
    bad = write_lines(tmp_path / "bad.txt", [OTHER_KI, "hello", KI])
    result = import_snapshot(tmp_store, bad, skip_bad=True)
    assert result.skipped == 1 and result.stored["ki"] == 2
    assert result.problems == [f"{bad}:2: 'hello' is not a КИ or GTIN (not-a-marking-code)"]


def test_csv_errors_name_line_and_header(tmp_store: Store, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(f"ki,colour\n{KI},red\n")
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, path)
    assert f"{path}:1:" in err.value.message and "colour" in err.value.message
    path.write_text(f"ki,since\n{KI},yesterday\n{KI},1\n{KI}\n")
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, path)
    assert f"{path}:2: since 'yesterday'" in err.value.message
    assert f"{path}:4: 1 columns" in err.value.message


def test_version_may_not_go_back_unless_forced(tmp_store: Store, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "l.txt", [KI])
    import_snapshot(tmp_store, path, version=10)
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, path, version=9)
    assert err.value.reason == "stale-snapshot"
    assert import_snapshot(tmp_store, path, version=9, force=True).version == 9


def test_map_grows_during_import(tmp_path: Path) -> None:
    rows = many_kis(60_000)
    with Store.open(str(tmp_path / "s"), map_size_mb=1) as store:
        import_snapshot(store, write_lines(tmp_path / "l.txt", rows), chunk_rows=5000)
        assert store.info().counts["ki"] == 60_000
        assert store.stats()["map_size_bytes"] > 1 << 20


def test_missing_and_unreadable_files(tmp_store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, tmp_path / "nope.txt")
    assert "nope.txt" in err.value.message
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"x" * (5 << 20))
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, huge)
    assert "longer than 1 MiB" in err.value.message


# ---------------------------------------------------------------------------------------------
# deltas


def delta_file(path: Path, version: int, changes: list[tuple[str, str]], previous=None) -> Path:
    header = {"format": "markd-delta", "version": version}
    if previous is not None:
        header["previous"] = previous
    lines = [json.dumps(header)] + [json.dumps({"op": op, "ki": ki}) for op, ki in changes]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_deltas_apply_in_order_only(tmp_store: Store, tmp_path: Path) -> None:
    import_snapshot(tmp_store, write_lines(tmp_path / "l.txt", [KI]))  # version 1
    result = apply_delta(
        tmp_store, delta_file(tmp_path / "d2", 2, [("add", OTHER_KI), ("remove", KI)])
    )
    assert (result.version, result.added, result.removed) == (2, 1, 1)
    assert tmp_store.lookup(OTHER_KI).blocked is not None and tmp_store.lookup(KI).blocked is None
    with pytest.raises(StoreError) as err:
        apply_delta(tmp_store, delta_file(tmp_path / "d2b", 2, [("add", KI)]))
    assert err.value.reason == "duplicate-delta"
    with pytest.raises(StoreError) as err:
        apply_delta(tmp_store, delta_file(tmp_path / "d4", 4, [("add", KI)]))
    assert err.value.reason == "out-of-order-delta" and "3" in err.value.message
    assert tmp_store.info().version == 2
    assert [d["version"] for d in tmp_store.deltas()] == [2]


def test_bad_delta_row_names_the_line_and_changes_nothing(tmp_store: Store, tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.write_text(
        json.dumps({"format": "markd-delta", "version": 1})
        + "\n"
        + json.dumps({"op": "add", "ki": KI})
        + "\n"
        + json.dumps({"op": "explode", "ki": KI})
        + "\n"
    )
    with pytest.raises(StoreError) as err:
        apply_delta(tmp_store, path)
    assert f"{path}:3:" in err.value.message
    assert tmp_store.info().version == 0 and tmp_store.lookup(KI).blocked is None


def test_delta_history_is_bounded_and_a_snapshot_clears_it(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s"), delta_history=2) as store:
        for version in range(1, 5):
            apply_delta(store, delta_file(tmp_path / f"d{version}", version, [("add", KI)]))
        assert [d["version"] for d in store.deltas()] == [3, 4]
        import_snapshot(store, write_lines(tmp_path / "l.txt", [KI]))
        assert store.deltas() == []


# ---------------------------------------------------------------------------------------------
# processes, errors


def test_another_process_reading_sees_a_committed_write(tmp_store: Store, store_path: str) -> None:
    reader = textwrap.dedent(
        f"""
        import sys
        from markd.store import Store, importer
        with Store.open({store_path!r}, readonly=True) as store:
            print("before", store.lookup({KI!r}).blocked is not None, flush=True)
            sys.stdin.readline()
            entry = store.lookup({KI!r}).blocked
            print("after", entry.reason if entry else None, flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", reader], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "before False"
    tmp_store.block(KI, "recalled")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "after recalled"
    assert proc.wait(timeout=10) == 0


def test_readonly_store_refuses_writes(tmp_store: Store, store_path: str) -> None:
    tmp_store.close()
    with Store.open(store_path, readonly=True) as store, pytest.raises(StoreError) as err:
        store.block(KI, "x")
    assert err.value.reason == "store-readonly" and store_path in err.value.message


def test_readonly_open_of_a_missing_store_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        Store.open(str(tmp_path / "nowhere"), readonly=True)
    assert str(tmp_path / "nowhere") in err.value.message and err.value.reason == "store-missing"


def test_unopenable_path_is_a_store_error_naming_the_path(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(StoreError) as err:
        Store.open(str(not_a_dir / "store"))
    assert str(not_a_dir) in err.value.message and err.value.__cause__ is not None


def test_corrupt_entry_fails_closed(tmp_store: Store, store_path: str) -> None:
    tmp_store.block(KI, "x")
    tmp_store.close()
    with lmdb.open(store_path, max_dbs=16) as env:
        db = env.open_db(b"manual")
        with env.begin(write=True) as txn:
            txn.put(KI.encode(), b"junk", db=db)
    with Store.open(store_path) as store, pytest.raises(StoreError) as err:
        store.lookup(KI)
    assert err.value.reason == "store-corrupt"


def test_bad_keys_and_closed_store(tmp_store: Store) -> None:
    with pytest.raises(StoreError) as err:
        tmp_store.lookup("")
    assert err.value.reason == "bad-key"
    with pytest.raises(StoreError):
        tmp_store.block("x" * 600, "no such key")
    tmp_store.close()
    tmp_store.close()  # idempotent
    with pytest.raises(StoreError) as err:
        tmp_store.lookup(KI)
    assert err.value.reason == "store-closed"
    assert "closed" in repr(tmp_store)


def test_value_layout_is_the_documented_struct(tmp_store: Store, store_path: str) -> None:
    tmp_store.block(KI, "recalled", source="police")
    tmp_store.close()
    with lmdb.open(store_path, max_dbs=16, readonly=True) as env:
        with env.begin() as txn:
            raw = txn.get(KI.encode(), db=env.open_db(b"manual", txn=txn))
            since, attr = struct.unpack("<II", raw)
            pair = txn.get(struct.pack(">I", attr), db=env.open_db(b"attrs", txn=txn))
    assert json.loads(pair) == ["recalled", "police"] and since > 1_700_000_000


def test_sales_written_by_another_process_are_seen(tmp_store: Store, store_path: str) -> None:
    """The lookup skips the units read for keys it does not know; writes from elsewhere
    (here another process recording a sale and a return) must still be seen at once."""
    assert tmp_store.lookup(KI).sold is None  # the key set is loaded now, empty
    writer = "from markd.store import Store\nimport sys\n" + (
        f"with Store.open({store_path!r}) as s:\n    getattr(s, sys.argv[1])(*sys.argv[2:])\n"
    )
    subprocess.run([sys.executable, "-c", writer, "mark_sold", KI, "r-9"], check=True)
    assert tmp_store.lookup(KI).sold.receipt == "r-9"
    subprocess.run([sys.executable, "-c", writer, "mark_returned", KI], check=True)
    assert tmp_store.lookup(KI).sold is None
    tmp_store.mark_sold(KI, "own")  # our own write updates the set without a re-read
    assert tmp_store.lookup(KI).sold.receipt == "own"


def test_a_sale_and_a_return_elsewhere_between_two_lookups_are_both_seen(
    tmp_store: Store, store_path: str
) -> None:
    tmp_store.mark_sold(OTHER_KI, "r-1")
    assert tmp_store.lookup(KI).sold is None and tmp_store.lookup(OTHER_KI).sold is not None
    script = (
        "from markd.store import Store\n"
        f"with Store.open({store_path!r}) as s:\n"
        f"    s.mark_sold({KI!r}, 'r-2')\n"
        f"    s.mark_returned({OTHER_KI!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)  # same count of units after
    assert tmp_store.lookup(KI).sold.receipt == "r-2"
    assert tmp_store.lookup(OTHER_KI).sold is None


def test_lookup_by_gtin_text_and_by_full_code_text_with_a_batch(tmp_store: Store, tmp_path) -> None:
    path = tmp_path / "l.csv"
    path.write_text("gtin,series\n04670540176099,LOT1\n04680029460908,\n")
    import_snapshot(tmp_store, path)
    assert tmp_store.lookup("4680029460908").blocked.kind == "gtin"
    assert tmp_store.lookup("04670540176099").blocked is None  # only a series of it is blocked
    found = tmp_store.lookup(f"{KI}<GS>10LOT1<GS>93dGVz").blocked
    assert (found.kind, found.key) == ("series", "04670540176099 LOT1")


def test_empty_snapshot_is_refused_unless_allowed(tmp_store: Store, tmp_path: Path) -> None:
    import_snapshot(tmp_store, write_lines(tmp_path / "l.txt", [KI]))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing today\n")
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, empty)
    assert err.value.reason == "empty-snapshot"
    assert "--allow-empty" in err.value.message  # the way out is named
    assert tmp_store.lookup(KI).blocked is not None and tmp_store.info().version == 1
    assert import_snapshot(tmp_store, empty, allow_empty=True).stored["ki"] == 0
    assert tmp_store.lookup(KI).blocked is None


def test_gs_tokens_never_make_a_key_and_errors_never_quote_a_tail(
    tmp_store: Store, tmp_path: Path
) -> None:
    # A full code written with <GS>: its КИ is stored, never the text with the crypto tail.
    path = write_lines(tmp_path / "l.txt", [f"{KI}<GS>93dGVz", OTHER_KI])
    import_snapshot(tmp_store, path)
    assert tmp_store.lookup(KI).blocked is not None
    assert all(b"dGVz" not in k for k, *_ in tmp_store.iter_blocked())
    bad = write_lines(tmp_path / "bad.txt", ["0104670540176099215LpGKy\x1d91EE06\x1d92SECRET"])
    bad.write_text(bad.read_text().replace("0104670540176099", "0104670540176098"))
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, bad)
    assert "SECRET" not in err.value.message and "EE06" not in err.value.message


@pytest.mark.parametrize(
    "content",
    [b"\x1f\x8b\x08\x00garbage", gzip.compress(f"{KI}\n".encode() * 1000)[:-30]],
)
def test_damaged_gzip_is_a_bad_file_naming_it(tmp_store: Store, tmp_path: Path, content) -> None:
    path = tmp_path / "l.txt.gz"
    path.write_bytes(content)
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, path)
    assert err.value.reason == "bad-file" and str(path) in err.value.message


@pytest.mark.parametrize("since", ["Infinity", "1e400", '"9' + "9" * 5000 + '"', "-5"])
def test_impossible_times_are_bad_rows(tmp_store: Store, tmp_path: Path, since: str) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text(f'{{"ki": "{KI}", "since": {since}}}\n')
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, path)
    assert err.value.reason == "bad-rows" and f"{path}:1: since" in err.value.message


def test_versions_outside_64_bits_are_refused(tmp_store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        import_snapshot(tmp_store, write_lines(tmp_path / "l.txt", [KI]), version=1 << 64)
    assert err.value.reason == "bad-version"
    with pytest.raises(StoreError) as err:
        apply_delta(tmp_store, delta_file(tmp_path / "d", 1 << 64, [("add", KI)]))
    assert err.value.reason == "bad-file"


# ---------------------------------------------------------------------------------------------
# lookups across processes, forks and closes (the lookup keeps nothing open between calls)

NOW = 1_763_700_000.0


def build_store(path: Path, tmp_path: Path, seed: int) -> tuple[list[MarkingCode], list[str]]:
    """A store with КИ and GTIN blocks, sold units and cached verdicts; the codes to ask."""
    rng = random.Random(seed)
    codes = [parse(km) for km in samples.batch(600, seed=seed)]
    codes = [code for code in codes if code.ki.startswith("01")]
    blocked = rng.sample(codes, len(codes) // 3)
    gtins = sorted({code.gtin for code in rng.sample(codes, 5)})
    lines = [code.ki for code in blocked] + gtins
    snapshot = tmp_path / f"snapshot-{seed}.txt"
    snapshot.write_text("".join(f"{line}\n" for line in lines))
    with Store.open(str(path)) as store:
        import_snapshot(store, snapshot)
        for code in rng.sample(codes, 40):
            store.mark_sold(code, f"r-{rng.randrange(1000)}", at=int(NOW) - 60)
        for code in rng.sample(codes, 40):
            facts = {"isBlocked": rng.random() < 0.2, "sold": False}
            store.cache_verdict(code.ki, facts, at=NOW - rng.choice([10, 90_000]))
    return codes, gtins


def write_delta(path: Path, version: int, ki: str) -> None:
    header = {"format": "markd-delta", "version": version, "previous": version - 1}
    path.write_text(json.dumps(header) + "\n" + json.dumps({"op": "add", "ki": ki}) + "\n")


def test_a_commit_by_another_process_is_seen_at_the_next_lookup(tmp_path: Path) -> None:
    path = tmp_path / "store"
    codes, _ = build_store(path, tmp_path, 5)
    target = codes[0]
    with Store.open(str(path)) as store:
        before = store.lookup(target, now=NOW)
        store.lookup(target, now=NOW)
        delta = tmp_path / "delta.json"
        write_delta(delta, store.info().version + 1, target.ki)
        # The delta is applied by a separate process, as `markctl store delta` would.
        script = (
            "import sys; from markd.store import Store; from markd.store.importer import "
            "apply_delta; s = Store.open(sys.argv[1]); apply_delta(s, sys.argv[2]); s.close()"
        )
        subprocess.run([sys.executable, "-c", script, str(path), str(delta)], check=True)
        after = store.lookup(target, now=NOW)
    if before.blocked is None:
        assert after.blocked is not None and after.blocked.kind == "ki"
    assert after.blocklist_version == before.blocklist_version + 1


def test_apply_delta_in_process_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "store"
    codes, _ = build_store(path, tmp_path, 6)
    with Store.open(str(path)) as store:
        free = [code for code in codes if store.lookup(code, now=NOW).blocked is None]
        delta = tmp_path / "delta.json"
        write_delta(delta, store.info().version + 1, free[0].ki)
        apply_delta(store, delta)
        assert store.lookup(free[0], now=NOW).blocked is not None
        store.mark_sold(free[1], "r-9", at=int(NOW))
        assert store.lookup(free[1], now=NOW).sold is not None


def test_lookup_after_close_is_a_store_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "store"
    codes, _ = build_store(path, tmp_path, 7)
    store = Store.open(str(path), readonly=True)
    store.lookup(codes[0], now=NOW)
    store.close()
    with pytest.raises(StoreError):
        store.lookup(codes[0], now=NOW)


def test_an_int_now_gives_a_float_age(tmp_path: Path) -> None:
    path = tmp_path / "store"
    codes, _ = build_store(path, tmp_path, 8)
    free = [code for code in codes if code.extra == {} or not code.extra]
    with Store.open(str(path), readonly=True) as store:
        answers = [store.lookup(code, now=int(NOW)) for code in free[:20]]
    assert [type(a.blocklist_age_s) for a in answers] == [float] * len(answers)


def test_a_failed_open_is_a_store_error(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    lmdb.open(str(plain)).close()  # an LMDB environment, but not a markd store
    with pytest.raises(StoreError, match="not a markd store"):
        Store.open(str(plain), readonly=True)


def test_a_reader_slot_ended_elsewhere_costs_a_retry_not_a_lookup(tmp_store: Store) -> None:
    """py-lmdb 1.x renews a cached reader on begin; when its slot was ended by another
    process (a forked child's exit), the begin fails with BadRslotError once."""
    tmp_store.block(KI, "recalled")
    env = tmp_store._env

    class EndedSlotOnce:
        failed = False

        def begin(self, **kwargs: object) -> lmdb.Transaction:
            if not self.failed:
                self.failed = True
                raise lmdb.BadRslotError("mdb_txn_renew", -30783)
            return env.begin(**kwargs)

    tmp_store._env = EndedSlotOnce()  # type: ignore[assignment]
    try:
        assert tmp_store.lookup(KI).blocked is not None
        assert tmp_store._env.failed  # type: ignore[attr-defined]
    finally:
        tmp_store._env = env


def test_close_waits_for_a_write_in_another_thread(tmp_store: Store, store_path: str) -> None:
    """The check chain caches verdicts from a thread of its own: a close() meanwhile (a test's
    teardown, a reload) must wait for that write, never free the environment under it."""
    started, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def slow_write(txn: lmdb.Transaction) -> None:
        txn.put(b"slow", b"1", db=tmp_store._dbs[b"meta"])
        started.set()
        release.wait(5)

    def writer() -> None:
        try:
            tmp_store._write(slow_write, "writing slowly")
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    tmp_store.close()  # returns once the write has committed
    thread.join(5)
    assert failures == [] and not thread.is_alive()
    with pytest.raises(StoreError) as err:
        tmp_store.mark_sold(KI, "r-1")
    assert err.value.reason == "store-closed"
    with Store.open(store_path, readonly=True) as again, again._begin() as txn:
        assert txn.get(b"slow", db=again._dbs[b"meta"]) == b"1"


CHILD_SCRIPTS = {
    # A forked child finds the store closed, and neither its close() nor its exit disturbs the
    # parent: the parent's reader slots are as they were and its next lookup answers.
    "fork": """
import os, sys
from markd.codes import MarkingCode, parse
from markd.errors import StoreError
from markd.store import Store, importer
store = Store.open(sys.argv[1])
code = parse(sys.argv[2])
store.lookup(code); store.lookup(code)
def mine():
    lines = store._env.readers().splitlines()[1:]
    return [l for l in lines if l.split()[0] == str(os.getpid())]
before = mine()
for how in ("close", "exit"):
    pid = os.fork()
    if pid == 0:
        try:
            store.lookup(code)
            print("child-answered")
        except StoreError as exc:
            print("child", exc.reason)
        if how == "close":
            store.close()
            os._exit(0)
        sys.exit(0)  # a normal exit: the child's interpreter frees what it inherited
    os.waitpid(pid, 0)
    if how == "close":
        print("slots-kept", mine() == before)
    print("parent", store.lookup(code).blocked is not None)
""",
    # A garbage collection inside a lookup that closes the store must not crash the process.
    "gc": """
import gc, sys
from markd.codes import MarkingCode, parse
from markd.errors import StoreError
from markd.store import Store, importer
store = Store.open(sys.argv[1])
code = parse(sys.argv[3])
store.lookup(code); store.lookup(code)
armed = [True]
def close_in_gc(phase, info):
    if armed[0] and phase == "start":
        armed[0] = False
        store.close()
gc.callbacks.append(close_in_gc)
gc.set_threshold(1)
try:
    result = store.lookup(code, now=1.0)
except StoreError:
    result = None
gc.set_threshold(700)
print("survived", result is None or result.blocked is not None)
""",
}


@pytest.mark.parametrize("case", sorted(CHILD_SCRIPTS))
def test_lookups_survive_fork_and_reentry(case: str, tmp_path: Path) -> None:
    path = tmp_path / "store"
    codes, _ = build_store(path, tmp_path, 9)
    with Store.open(str(path), readonly=True) as store:
        blocked = [c for c in codes if store.lookup(c, now=NOW).blocked is not None]
    code = blocked[0] if case == "fork" else codes[0]
    result = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPTS[case], str(path), code.km, blocked[0].km],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    if case == "fork":
        assert result.stdout.split() == [
            "child", "store-closed", "slots-kept", "True", "parent", "True",
            "child", "store-closed", "parent", "True",
        ]  # fmt: skip
    else:
        assert result.stdout.split() == ["survived", "True"]


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_csv_that_stops_being_utf8_is_refused_not_cut_short(
    tmp_store: Store, tmp_path: Path, skip_bad: bool
) -> None:
    """A byte that is not UTF-8 on line 1502 of 2000: the decoder cannot find its feet again,
    so skipping on would import the first rows only and call it a success."""
    rows = [f"01{'04670540176099'}21S{i:09d}" for i in range(2000)]
    data = ("ki\n" + "".join(f"{row}\n" for row in rows)).encode()
    at = data.index(rows[1500].encode())
    source = tmp_path / "list.csv"
    source.write_bytes(data[:at] + b"\xff" + data[at:])
    with pytest.raises(StoreError) as caught:
        import_snapshot(tmp_store, source, skip_bad=skip_bad)
    assert caught.value.reason == "bad-file" and "not UTF-8" in caught.value.message
    assert "nothing changed" in caught.value.message and tmp_store.info().version == 0
