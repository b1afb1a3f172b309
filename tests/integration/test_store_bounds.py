"""Bounded imports and downloads (issue 15, item 2): a gzip bomb holding one long line, a
fleet index claiming a huge file, a server sending more than the index says.

Each import runs as a real ``markctl`` child; its own peak RSS (``VmHWM`` as it exits,
tools/bench/peakrss.py) must stay within :data:`RSS_LIMIT_KIB` whatever the input.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from markd import samples
from markd.codes import gtin_check_digit, parse
from markd.emulators.static_http import StaticHTTPServer
from markd.errors import StoreError
from markd.store import Store, fleet
from markd.store.importer import MAX_DELTA_CHANGES, apply_delta, import_snapshot

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))
from peakrss import peak_command, read_peak_kib  # noqa: E402 - after its directory is on the path

#: The issue's bound for any import or sync: 300 MB.
RSS_LIMIT_KIB = 300 * 1000
#: The bomb: this many MiB of ``a`` with no newline (about 1 MB of gzip).
BOMB_MIB = 1024
CHILD_TIMEOUT = 60.0

GOOD_KI = "0104607001012344211234567"


def write_bomb(path: Path, head: bytes, tail: bytes, mib: int = BOMB_MIB) -> Path:
    """``head``, then ``mib`` MiB of ``a`` without a newline, then ``tail``, gzip-compressed.

    Streamed: one gzip member of 1 MiB is compressed once (about 1 kB) and repeated; a
    multi-member gzip file is one stream to every reader (RFC 1952, 2.2), so this is a 1 MB
    file that decompresses into one line of ``mib`` MiB, built without holding it.
    """
    member = gzip.compress(b"a" * (1 << 20), 9)
    with open(path, "wb") as out:
        out.write(gzip.compress(head))
        for _ in range(mib):
            out.write(member)
        out.write(gzip.compress(tail))
    return path


def run_measured(args: list[str], tmp_path: Path) -> tuple[int, str, str, int]:
    """Run ``args`` (``python -m MODULE …``) as a child; its exit code, stdout, stderr and
    its own peak RSS in KiB (tools/bench/peakrss.py: not its forking parent's pages)."""
    assert args[:2] == [sys.executable, "-m"], args
    out, err, peak = tmp_path / "child.out", tmp_path / "child.err", tmp_path / "child.peak"
    command, env = peak_command(args[2], args[3:], peak)
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        child = subprocess.run(
            command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env
        )
    return child.returncode, out.read_text(), err.read_text(), read_peak_kib(peak)


@pytest.fixture
def defaults(tmp_path: Path) -> Path:
    """A configuration file with every default, so /etc/markd never leaks into a test."""
    path = tmp_path / "markd.toml"
    path.write_text("")
    return path


def markctl(tmp_path: Path, config: Path, *args: str) -> tuple[int, str, str, int]:
    store = tmp_path / "store"
    return run_measured(
        [sys.executable, "-m", "markd.cli.markctl", "store", *args]
        + ["--store", str(store), "--config", str(config), "--json"],
        tmp_path,
    )


#: For each format: what comes before the long line (one good row, so the long one is line
#: 2 or 3) and after it.
BOMBS = {
    "text": (f"{GOOD_KI}\n".encode(), b"\n04607001012344\n", 2),
    "jsonl": (f'"{GOOD_KI}"\n'.encode(), b'\n"04607001012344"\n', 2),
    "csv": (f"ki\n{GOOD_KI}\n".encode(), b"\n0104607001012344210000001\n", 3),
}


@pytest.mark.parametrize("fmt", sorted(BOMBS))
def test_gzip_bomb_one_long_line_is_refused_by_store_import_with_bounded_memory(
    fmt: str, tmp_path: Path, defaults: Path
) -> None:
    head, tail, line = BOMBS[fmt]
    bomb = write_bomb(tmp_path / f"bomb.{fmt}.gz", head, tail)
    assert bomb.stat().st_size < 2 << 20

    code, _, err, rss = markctl(tmp_path, defaults, "import", str(bomb))

    assert code != 0
    assert f"{bomb}:{line}: line longer than 1 MiB" in err
    assert rss <= RSS_LIMIT_KIB, f"peak RSS {rss} KiB"


@pytest.mark.parametrize("fmt", sorted(BOMBS))
def test_gzip_bomb_one_long_line_is_skipped_unread_with_skip_bad(
    fmt: str, tmp_path: Path, defaults: Path
) -> None:
    head, tail, line = BOMBS[fmt]
    bomb = write_bomb(tmp_path / f"bomb.{fmt}.gz", head, tail, mib=256)

    code, out, err, rss = markctl(tmp_path, defaults, "import", str(bomb), "--skip-bad")

    assert code == 0, err
    result = json.loads(out)
    assert result["skipped"] == 1, result
    assert result["rows"] == 2
    assert any(f":{line}: line longer than 1 MiB" in p for p in result["problems"])
    assert rss <= RSS_LIMIT_KIB, f"peak RSS {rss} KiB"


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_rows_after_a_skipped_long_line_are_all_read(
    tmp_path: Path, fmt: str, compressed: bool
) -> None:
    """What follows a dropped line (here 3 MiB, then about 1 MB of rows, more than one read
    of the reader's buffer) reaches the reader whole, in order, with the right line numbers."""
    rows = kis(20_000)
    lines = (f"{json.dumps(ki) if fmt == 'jsonl' else ki}\n" for ki in rows)
    data = b'"x"\n' + b"z" * (3 << 20) + b"\n" + "".join(lines).encode()
    path = tmp_path / f"long.{fmt}{'.gz' if compressed else ''}"
    path.write_bytes(gzip.compress(data, 1) if compressed else data)

    with Store.open(str(tmp_path / "store"), map_size_mb=32) as store:
        result = import_snapshot(store, path, skip_bad=True)
        stored = [key.decode() for key, *_ in store.iter_blocked()]

    assert f"{path}:2: line longer than 1 MiB; skipped unread" in result.problems
    assert result.rows == len(rows)
    assert stored == sorted(rows)


def test_gzip_bomb_one_long_line_is_refused_by_store_delta_with_bounded_memory(
    tmp_path: Path, defaults: Path
) -> None:
    header = json.dumps({"format": "markd-delta", "version": 1, "previous": 0})
    change = json.dumps({"op": "add", "ki": GOOD_KI})
    bomb = write_bomb(tmp_path / "delta-1.jsonl.gz", f"{header}\n{change}\n".encode(), b"\n")

    code, _, err, rss = markctl(tmp_path, defaults, "delta", str(bomb))

    assert code != 0
    assert f"{bomb}:3: line longer than 1 MiB" in err
    assert rss <= RSS_LIMIT_KIB, f"peak RSS {rss} KiB"


def test_a_delta_too_big_to_hold_in_memory_is_refused_with_bounded_memory(
    tmp_path: Path, defaults: Path
) -> None:
    """A delta is applied in one transaction from memory: one change more than
    MAX_DELTA_CHANGES is refused, and reading up to there stays within the bound."""
    path = tmp_path / "delta-1.jsonl"
    row = json.dumps({"op": "add", "ki": GOOD_KI, "reason": "stolen", "source": "police"})
    with open(path, "w") as out:
        out.write(json.dumps({"format": "markd-delta", "version": 1, "previous": 0}) + "\n")
        out.writelines(f"{row}\n" for _ in range(MAX_DELTA_CHANGES + 1))

    code, _, err, rss = markctl(tmp_path, defaults, "delta", str(path))

    assert code != 0
    assert f"{path}:{MAX_DELTA_CHANGES + 2}: more than {MAX_DELTA_CHANGES:,} changes" in err
    assert rss <= RSS_LIMIT_KIB, f"peak RSS {rss} KiB"


def test_a_plain_one_line_file_is_refused_with_bounded_memory(
    tmp_path: Path, defaults: Path
) -> None:
    path = tmp_path / "one-line.jsonl"
    with open(path, "wb") as out:
        for _ in range(64):
            out.write(b"a" * (1 << 20))

    code, _, err, rss = markctl(tmp_path, defaults, "import", str(path))

    assert code != 0
    assert f"{path}:1: line longer than 1 MiB" in err
    assert rss <= RSS_LIMIT_KIB, f"peak RSS {rss} KiB"


def test_a_line_of_exactly_1_mib_is_still_read(tmp_path: Path, defaults: Path) -> None:
    """The limit is on length, not on a block boundary: a long-but-allowed line (a JSON row
    padded with spaces to 1 MiB, newline excluded) is parsed like any other."""
    row = json.dumps({"ki": GOOD_KI})
    path = tmp_path / "padded.jsonl"
    path.write_bytes((row + " " * ((1 << 20) - len(row))).encode() + b"\n")

    code, out, err, _ = markctl(tmp_path, defaults, "import", str(path))

    assert code == 0, err
    assert json.loads(out)["rows"] == 1


OTHER_KI = "0104607001012344210000001"


def write_spread_record(path: Path, fields: int) -> Path:
    """A CSV whose third record is ``fields`` quoted fields of ``a`` and a newline: every
    physical line is 5 bytes, the record runs over ``fields`` lines (about 44 kB of gzip for
    six million, which csv builds into a list of six million strings)."""
    piece = b'"a\n",' * 100_000
    with gzip.open(path, "wb", 9) as out:
        out.write(f"ki,reason\n{GOOD_KI},ok\n".encode())
        for _ in range(fields // 100_000):
            out.write(piece)
        out.write(f'"end"\n{OTHER_KI},ok\n'.encode())
    return path


@pytest.mark.parametrize("skip_bad", [False, True], ids=["strict", "skip-bad"])
def test_a_csv_record_spread_over_millions_of_lines_is_refused_with_bounded_memory(
    tmp_path: Path, defaults: Path, skip_bad: bool
) -> None:
    """No line is long, but the record is (467 MB peak RSS when csv was let build it): it is
    refused at the line it starts on, with ``--skip-bad`` too (csv cannot find the next
    record in what follows)."""
    path = write_spread_record(tmp_path / "spread.csv.gz", 6_000_000)

    code, _, err, rss = markctl(
        tmp_path, defaults, "import", str(path), *(["--skip-bad"] if skip_bad else [])
    )

    assert code != 0
    assert f"{path}:3: record longer than 1 MiB" in err
    assert rss <= RSS_LIMIT_KIB, f"peak RSS {rss} KiB"
    with Store.open(str(tmp_path / "store"), map_size_mb=8) as store:
        assert store.info().version == 0


def test_a_csv_record_of_a_few_lines_is_still_read_as_one_record(tmp_path: Path) -> None:
    """The bound is on a record's bytes, not its lines: a quoted reason over two lines is one
    record (refused for its newline, at the line csv ends it on), and the next is read."""
    path = tmp_path / "multiline.csv"
    path.write_text(f'ki,reason\n{GOOD_KI},"recalled:\nbatch 7"\n{OTHER_KI},ok\n')

    with Store.open(str(tmp_path / "store"), map_size_mb=8) as store:
        result = import_snapshot(store, path, skip_bad=True)
        assert store.lookup(OTHER_KI).blocked is not None

    assert result.rows == 1
    assert [p.split(": ")[0] for p in result.problems] == [f"{path}:3"]


#: For each format: a row blocking OTHER_KI padded to 2 MiB (its first MiB alone is a valid
#: row), between two good rows. CSV's row ends in CR, a record's end to csv (a field of 1 MiB
#: of spaces would be over csv's own field limit).
PADDED = {
    "text": (f"{GOOD_KI}\n", OTHER_KI, "\n04680029460908\n"),
    "jsonl": (f'"{GOOD_KI}"\n', json.dumps({"ki": OTHER_KI}), '\n"04680029460908"\n'),
    "csv": (f"ki\n{GOOD_KI}\n", f"{OTHER_KI}\r", "\n0104607001012344210000002\n"),
}


@pytest.mark.parametrize("fmt", sorted(PADDED))
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_the_first_mib_of_a_skipped_long_line_is_never_stored(
    tmp_path: Path, fmt: str, compressed: bool
) -> None:
    """With skip_bad a line over 1 MiB is dropped whole: a row that fits in its first MiB
    (then 2 MiB of spaces, which the parsers would strip) must not be read from it."""
    head, row, tail = PADDED[fmt]
    long_line = row + " " * (2 << 20)
    data = (head + long_line + tail).encode()
    path = tmp_path / f"padded.{fmt}{'.gz' if compressed else ''}"
    path.write_bytes(gzip.compress(data, 1) if compressed else data)
    line = head.count("\n") + 1

    with Store.open(str(tmp_path / "store"), map_size_mb=8) as store:
        result = import_snapshot(store, path, fmt=fmt, skip_bad=True)
        assert store.lookup(OTHER_KI).blocked is None
        assert store.lookup(GOOD_KI).blocked is not None

    assert result.rows == 2
    assert result.skipped == 1
    assert result.problems == [f"{path}:{line}: line longer than 1 MiB; skipped unread"]


def test_a_delta_with_a_long_change_line_is_refused_not_applied_in_part(tmp_path: Path) -> None:
    """A delta is never read with skip_bad: a change padded past 1 MiB refuses the delta."""
    header = json.dumps({"format": "markd-delta", "version": 1, "previous": 0})
    change = json.dumps({"op": "add", "ki": OTHER_KI}) + " " * (2 << 20)
    path = tmp_path / "delta-1.jsonl"
    path.write_text(f"{header}\n{change}\n")

    with Store.open(str(tmp_path / "store"), map_size_mb=8) as store:
        with pytest.raises(StoreError) as caught:
            apply_delta(store, path)
        assert store.lookup(OTHER_KI).blocked is None
        assert store.info().version == 0

    assert f"{path}:2: line longer than 1 MiB" in caught.value.message


# ---------------------------------------------------------------------------------------------
# Rows that each carry their own value

#: Rows of the CSV and JSONL files below: enough that the reader that held two chunks of
#: 500,000 (key, value) tuples at once went far over :data:`ROWS_RSS_LIMIT_KIB` (298 MiB peak
#: RSS for the CSV, 280 shuffled, 302 for the JSONL; a 10 M-row CSV export 317 MiB), few
#: enough for the suite (about 10 s an import).
MANY_ROWS = 1_000_000
#: A CSV or JSONL import's peak does not grow with its rows (one chunk at a time, small run
#: batches, a bounded merge), so a file of a million rows must stay as far under
#: :data:`RSS_LIMIT_KIB` as one of 10 M: 200 MB, where 1 M rows measure 120–155 MiB and 10 M
#: rows 137–157 MiB.
ROWS_RSS_LIMIT_KIB = 200 * 1000
#: (reason, source) pairs of an exported fleet list (tools/bench/store.py).
EXPORTED_ATTRS = (
    ("withdrawn from circulation", "fleet"),
    ("recall 2026-114", "head office"),
    ("expired", "fleet"),
    ("stolen batch", "security"),
)


#: GTINs of the rows below, with their check digits.
EXPORTED_GTINS = [
    body + str(gtin_check_digit(body)) for body in (f"0460{n:09d}" for n in range(1, 1001))
]


def exported_row(k: int, rows: int) -> tuple[str, str, str, int]:
    """Row ``k`` (in key order) of :func:`write_exported_rows`: КИ, reason, source, since."""
    per_gtin = -(-rows // len(EXPORTED_GTINS))
    reason, source = EXPORTED_ATTRS[k % len(EXPORTED_ATTRS)]
    ki = f"01{EXPORTED_GTINS[k // per_gtin]}21{k % per_gtin:013d}"
    return ki, reason, source, 1_735_689_600 + k * 7_919 % 31_536_000


def write_exported_rows(path: Path, rows: int, *, shuffled: bool = False) -> Path:
    """A file like ``markctl store export --format csv`` writes (``.csv.gz``), or its JSONL
    equal (``.jsonl.gz``): ``rows`` КИ of 1,000 GTINs, each blocked at its own second of a
    year with one of four (reason, source) pairs, so no two rows share a value.

    In key order, or ``shuffled``: line i then holds row (i × 7,919) mod ``rows``, every row
    once (7,919 is a prime), each chunk of lines strewn over all the keys; written without
    holding the rows.
    """
    jsonl = path.name.endswith(".jsonl.gz")
    with gzip.open(path, "wt", compresslevel=1, encoding="ascii", newline="") as out:
        if not jsonl:
            out.write("ki,gtin,series,reason,source,since\n")
        for start in range(0, rows, 100_000):
            lines = []
            for i in range(start, min(start + 100_000, rows)):
                ki, reason, source, since = exported_row(i * 7_919 % rows if shuffled else i, rows)
                if jsonl:
                    lines.append(
                        f'{{"ki": "{ki}", "reason": "{reason}", "source": "{source}", '
                        f'"since": {since}}}\n'
                    )
                else:
                    lines.append(f"{ki},,,{reason},{source},{since}\n")
            out.write("".join(lines))
    return path


@pytest.mark.parametrize(
    ("name", "shuffled"),
    [("rows.csv.gz", False), ("rows.csv.gz", True), ("rows.jsonl.gz", False)],
    ids=["csv", "csv-shuffled", "jsonl"],
)
def test_a_file_of_many_rows_each_with_its_own_since_and_reason_keeps_the_import_bounded(
    tmp_path: Path, defaults: Path, name: str, shuffled: bool
) -> None:
    """Each row's value is its own: the reader held every row as a (key, value) tuple, and two
    chunks of 500,000 of them at once (a 10 M-row CSV export measured 317 MiB peak RSS, over
    the 300 MB bound); shuffled, the merge held 50,000 rows of every run."""
    path = write_exported_rows(tmp_path / name, MANY_ROWS, shuffled=shuffled)

    code, out, err, rss = markctl(tmp_path, defaults, "import", str(path), "--progress", "none")

    assert code == 0, err
    assert json.loads(out)["rows"] == MANY_ROWS
    assert rss <= ROWS_RSS_LIMIT_KIB, f"peak RSS {rss} KiB"
    with Store.open(str(tmp_path / "store"), map_size_mb=8) as store:
        for k in (0, 1, MANY_ROWS // 2 + 1, MANY_ROWS - 1):
            ki, reason, source, since = exported_row(k, MANY_ROWS)
            blocked = store.lookup(ki).blocked
            assert blocked is not None, ki
            assert (blocked.reason, blocked.source, blocked.since) == (reason, source, since)


# ---------------------------------------------------------------------------------------------
# Fleet downloads


def kis(count: int) -> list[str]:
    """``count`` distinct КИ texts (GS1 form), a new list each call."""
    return list(generated_kis(count))


@functools.cache
def generated_kis(count: int) -> tuple[str, ...]:
    """Made once a run for each count (kis(20_000) generates and parses 60,000 codes: seconds,
    and four tests ask for it); a tuple, so no test can change another's rows."""
    found = {parse(code).ki for code in samples.batch(count * 3, seed=15)}
    return tuple(sorted(k for k in found if k.startswith("01"))[:count])


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A master's export (version 1, 2,000 КИ) in the directory the file server serves."""
    path = tmp_path / "www"
    path.mkdir()
    snapshot = tmp_path / "v1.txt"
    snapshot.write_text("".join(f"{ki}\n" for ki in kis(2000)))
    with Store.open(str(tmp_path / "master"), map_size_mb=8) as master:
        import_snapshot(master, snapshot, version=1)
        fleet.export(master, path)
    return path


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[Store]:
    with Store.open(str(tmp_path / "kiosk"), map_size_mb=8) as store:
        yield store


def rewrite_index(www: Path, name: str, **fields: Any) -> dict[str, Any]:
    """Change the index entry of ``name`` (an unsigned index: anyone could serve this)."""
    index = json.loads((www / "index.json").read_text())
    entries = [index["snapshot"], *index["deltas"]]
    entry = next(e for e in entries if e["file"] == name)
    entry.update(fields)
    (www / "index.json").write_text(json.dumps(index))
    return entry


def parts(store: Store) -> list[str]:
    return sorted(p.name for p in (Path(store.path) / "downloads").glob("*.part*"))


def refusal(store: Store, url: str, **kwargs: Any) -> StoreError:
    with pytest.raises(StoreError) as caught:
        fleet.sync(store, url, **kwargs)
    return caught.value


SNAPSHOT = "snapshot-1.mbl.gz"


def test_an_index_claiming_a_300_mb_file_is_refused_before_any_download(
    kiosk: Store, www: Path
) -> None:
    rewrite_index(www, SNAPSHOT, size=300_000_000)
    downloads = Path(kiosk.path) / "downloads"
    downloads.mkdir()
    (downloads / f"{SNAPSHOT}.part").write_bytes(b"left by an earlier run")

    with StaticHTTPServer(www) as server:
        error = refusal(kiosk, server.url, max_file_mb=1)
        fetched = server.requests_for(SNAPSHOT)

    assert error.reason == "download-too-large"
    assert f"{SNAPSHOT} from" in error.message and "300,000,000 bytes" in error.message
    assert "sync_max_file_mb" in error.message
    assert fetched == []
    assert parts(kiosk) == []
    assert kiosk.info().version == 0


def test_an_index_claiming_a_300_mb_file_under_the_limit_keeps_nothing(
    kiosk: Store, www: Path
) -> None:
    """Within the limit (1 GiB by default) the claim is asked for, found wrong, and nothing
    is kept (the issue saw such a file written and kept)."""
    size = (www / SNAPSHOT).stat().st_size
    rewrite_index(www, SNAPSHOT, size=300_000_000)

    with StaticHTTPServer(www) as server:
        error = refusal(kiosk, server.url)

    assert error.reason == "bad-download"
    assert f"the server has {size:,} bytes, the index says 300,000,000" in error.message
    assert parts(kiosk) == []
    assert kiosk.info().version == 0


def test_a_sync_that_would_fill_the_disk_is_refused_before_any_download(
    kiosk: Store, www: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = (www / SNAPSHOT).stat().st_size
    asked: list[Path] = []

    def nearly_full(directory: Path) -> int:
        asked.append(directory)
        return size - 1

    monkeypatch.setattr(fleet, "free_bytes", nearly_full)
    with StaticHTTPServer(www) as server:
        error = refusal(kiosk, server.url)
        fetched = server.requests_for(SNAPSHOT)

    assert error.reason == "store-disk-full"
    assert f"need {size:,} bytes" in error.message and f"has {size - 1:,} free" in error.message
    assert asked == [Path(kiosk.path) / "downloads"]
    assert fetched == []
    assert parts(kiosk) == []


@pytest.fixture
def tiny_disk(kiosk: Store) -> Iterator[Path]:
    """The kiosk's downloads directory on a tmpfs of 16 KiB: a disk that fills mid-download
    (mounting needs root, which the suite's containers have)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    downloads = Path(kiosk.path) / "downloads"
    downloads.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(downloads)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.strip()}")
    try:
        yield downloads
    finally:
        subprocess.run(["umount", "-l", str(downloads)], check=False)


def test_a_download_that_fills_the_disk_is_deleted_not_kept_for_resuming(
    kiosk: Store, www: Path, tiny_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free space was there when the sync checked it (something else took it since):
    the write fails with ENOSPC. A full disk is no cut connection: keeping the ``.part`` to
    resume would hold the space the kiosk needs, so it and its ETag are deleted."""
    size = (www / SNAPSHOT).stat().st_size
    assert size > 2 * 16 << 10
    monkeypatch.setattr(fleet, "free_bytes", lambda directory: 1 << 40)

    with StaticHTTPServer(www) as server:
        error = refusal(kiosk, server.url)

    assert error.reason == "store-disk-full"
    assert SNAPSHOT in error.message and "no space left on device" in error.message.lower()
    assert parts(kiosk) == []
    assert kiosk.info().version == 0


class _EndlessHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0 answers without Content-Length (the body ends when the connection does):
    ``index.json`` as it is, any other file followed by junk for as long as the client reads."""

    www: Path
    sent: dict[str, int]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        name = self.path.lstrip("/").split("?")[0]
        data = (self.www / name).read_bytes()
        self.send_response(200)
        self.end_headers()
        sent = 0
        try:
            self.wfile.write(data)
            sent += len(data)
            if name != "index.json":
                junk = b"x" * (1 << 16)
                while sent < 1 << 30:
                    self.wfile.write(junk)
                    sent += len(junk)
        except OSError:
            pass  # the client hung up: what the test wants
        finally:
            self.sent[name] = sent

    def log_message(self, *args: Any) -> None:
        pass


def test_a_server_sending_more_than_the_index_says_is_cut_off_and_the_part_deleted(
    kiosk: Store, www: Path
) -> None:
    size = (www / SNAPSHOT).stat().st_size
    sent: dict[str, int] = {}
    handler = type("Handler", (_EndlessHandler,), {"www": www, "sent": sent})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        error = refusal(kiosk, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    assert error.reason == "bad-download"
    assert f"got {size + 1:,} bytes" in error.message
    assert f"the index says {size:,} bytes" in error.message
    assert parts(kiosk) == []
    assert kiosk.info().version == 0
    assert sent[SNAPSHOT] < 64 << 20  # stopped, not read to the end of 1 GiB


def test_a_fleet_delta_gzip_bomb_is_refused_with_bounded_memory_and_deleted(
    kiosk: Store, www: Path, tmp_path: Path
) -> None:
    """The kiosk is at version 1; the master's delta 2 is a 1 MB gzip holding a 1 GiB line.
    The sync (a markctl child, as the daemon runs it) refuses it naming the line."""
    with StaticHTTPServer(www) as server:
        fleet.sync(kiosk, server.url)
        header = json.dumps({"format": "markd-delta", "version": 2, "previous": 1})
        bomb = write_bomb(www / "delta-2.jsonl", f"{header}\n".encode(), b"\n")
        index = json.loads((www / "index.json").read_text())
        digest = hashlib.sha256(bomb.read_bytes()).hexdigest()
        index["version"] = 2
        index["deltas"] = [
            {
                "version": 2,
                "previous": 1,
                "file": bomb.name,
                "size": bomb.stat().st_size,
                "sha256": digest,
            }
        ]
        (www / "index.json").write_text(json.dumps(index))
        config = tmp_path / "kiosk.toml"
        config.write_text("[store]\nsync_allow_unsigned = true\n")

        code, _, err, rss = run_measured(
            [sys.executable, "-m", "markd.cli.markctl", "store", "sync", server.url]
            + ["--store", kiosk.path, "--config", str(config), "--progress", "none"],
            tmp_path,
        )

    assert code != 0
    assert "delta-2.jsonl.part:2: line longer than 1 MiB" in err
    assert rss <= RSS_LIMIT_KIB, f"peak RSS {rss} KiB"
    assert parts(kiosk) == []
    assert kiosk.info().version == 1


def test_a_fleet_snapshot_gzip_bomb_is_refused_with_bounded_memory_and_deleted(
    kiosk: Store, www: Path, tmp_path: Path
) -> None:
    """An empty kiosk takes the snapshot: 1 MB of gzip (markd format) whose third line is
    1 GiB long."""
    bomb = write_bomb(www / SNAPSHOT, f"#markd-blocklist 1\n{GOOD_KI}\t1\t1\n".encode(), b"\n")
    rewrite_index(
        www,
        SNAPSHOT,
        size=bomb.stat().st_size,
        sha256=hashlib.sha256(bomb.read_bytes()).hexdigest(),
    )
    config = tmp_path / "kiosk.toml"
    config.write_text("[store]\nsync_allow_unsigned = true\n")

    with StaticHTTPServer(www) as server:
        code, _, err, rss = run_measured(
            [sys.executable, "-m", "markd.cli.markctl", "store", "sync", server.url]
            + ["--store", kiosk.path, "--config", str(config), "--progress", "none"],
            tmp_path,
        )

    assert code != 0
    assert f"{SNAPSHOT}.part:3: line longer than 1 MiB" in err
    assert rss <= RSS_LIMIT_KIB, f"peak RSS {rss} KiB"
    assert parts(kiosk) == []
    assert kiosk.info().version == 0


def test_a_deeply_nested_json_line_is_a_bad_row_not_a_traceback(
    tmp_path: Path, defaults: Path
) -> None:
    """A JSONL snapshot line of 200,000 '[' (Python's parser recurses on it): the row is
    refused with its line, the rest is imported, no traceback."""
    source = tmp_path / "nested.jsonl"
    source.write_text(f'"{GOOD_KI}"\n' + "[" * 200_000 + "\n", encoding="utf-8")

    code, out, err, _ = markctl(tmp_path, defaults, "import", str(source), "--skip-bad")

    assert "Traceback" not in err, err
    assert code == 0, err
    assert "nested.jsonl:2" in out + err


def test_a_delta_of_long_reasons_is_held_within_bounded_memory(
    tmp_path: Path, defaults: Path
) -> None:
    """400 changes, each a line just under the 1 MiB limit (a 1 MB reason): only the 200
    characters the store keeps of each reason are held, so the delta applies within the memory
    any import may take (1.2 GB peak RSS when every reason was held whole)."""
    header = json.dumps({"format": "markd-delta", "version": 1, "previous": 0})
    change = json.dumps({"op": "add", "ki": GOOD_KI, "reason": "a" * 1_000_000}).encode()
    member = gzip.compress(change + b"\n", 9)
    path = tmp_path / "delta-1.jsonl.gz"
    with open(path, "wb") as out:
        out.write(gzip.compress(f"{header}\n".encode()))
        for _ in range(400):
            out.write(member)
    assert path.stat().st_size < 2 << 20

    code, _, err, rss = markctl(tmp_path, defaults, "delta", str(path))

    assert code == 0, err
    assert rss <= RSS_LIMIT_KIB, f"peak RSS {rss} KiB"  # 1.2 GB when every reason was held
