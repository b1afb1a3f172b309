#!/usr/bin/env python3
"""Store benchmark: import rate, size on disk and lookup latency of markd's LMDB store, with
the same lookups against an indexed SQLite table and an HTTP lookup service on loopback.

Usage::

    tools/bench/store.py [--entries N] [--lookups M] [--http-lookups H] [--workdir DIR] [--keep]

Steps, all on the same synthetic data:

1. generate N distinct КИ lines (GS1 form ``01`` + GTIN14 + ``21`` + 13-character serial, valid
   GTIN check digits; a few thousand GTINs × random serials), written twice: sorted, and
   shuffled. Neither file is ever held in memory as N Python strings: the sorted file is written
   GTIN by GTIN, the shuffled one through random bucket files each shuffled on its own;
2. import each file into a fresh store in a child process (``markctl store import``), measuring
   rows/s and the child's own peak RSS (its ``VmHWM``), plus the anonymous part polled from
   ``/proc``);
3. size on disk of ``data.mdb``;
4. M lookups (50 % hits, 50 % misses with known GTINs), each timed with ``perf_counter_ns``:
   through a :class:`~markd.codes.MarkingCode` parsed beforehand (what the daemon does; the
   headline figure) and through the КИ text (``Store.lookup`` parses it);
5. the same lookups against an SQLite table ``blocked(key TEXT PRIMARY KEY, since, attr)
   WITHOUT ROWID`` built from the same file, and against an HTTP/1.1 keep-alive service on
   loopback in a child process (the way a till asks the Local Module).

6. the fleet's own snapshot format (``--fleet-only`` runs just this): a master store filled
   with the same КИ, each with its own random ``since`` and one of four reasons, exported
   signed (``markctl store export --sign-key``; and as CSV to compare); a kiosk with the
   public key syncs it from a static HTTP server on loopback in a child (index, signature,
   download, sha256 against the signed index, import: the ≥ 1 M rows/s target of issue 15
   is for this whole sync), and each exported file is imported alone.

Prints human lines, then as the final line one JSON object with every figure, the ratios and
each target with whether it was met. The work directory is removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import lmdb
from peakrss import peak_command, read_peak_kib

from markd.codes import GS, GS1_CHARSET_82, MarkingCode, gtin_check_digit, parse
from markd.store import Store
from markd.store.keys import ki_key

#: The issue's targets (issue 3, "Benchmark").
TARGET_LOOKUP_P99_US = 5.0
TARGET_IMPORT_SORTED_PER_S = 1_000_000
TARGET_IMPORT_UNSORTED_PER_S = 300_000
TARGET_SIZE_10M_MB = 600.0
TARGET_IMPORT_RSS_MB = 300.0

SERIAL_LENGTH = 13
MAX_GTINS = 4_000
_CHARSET = GS1_CHARSET_82.encode("ascii")
#: Maps any random byte to a serial character (the slight bias of 256 mod 82 does not matter).
_TO_SERIAL = bytes(_CHARSET[i % len(_CHARSET)] for i in range(256))
#: Serials the parser could read as a GS token ("<GS>", "<FNC1>") are left out: they would make
#: the text lookups disagree with the file for reasons that belong to the parser, not the store.
_TOKEN_LIKE = re.compile(rb"<[Gg][Ss]>|<[Ff][Nn][Cc]1>")
MB = 1 << 20


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Dataset:
    """The two snapshot files and the queries drawn from them."""

    sorted_file: Path
    shuffled_file: Path
    entries: int
    #: Each query: the КИ text, the full scanned code (КИ + GS + AI 93) and whether it is blocked.
    queries: list[tuple[str, str, bool]]
    seconds: float


def make_gtins(rng: random.Random, count: int) -> list[bytes]:
    """``count`` distinct, sorted GTIN-14s with valid check digits (prefix 046: Russia)."""
    found: set[bytes] = set()
    while len(found) < count:
        body = "046" + "".join(rng.choice("0123456789") for _ in range(10))
        found.add((body + str(gtin_check_digit(body))).encode("ascii"))
    return sorted(found)


def random_serials(rng: random.Random, count: int) -> list[bytes]:
    """``count`` random 13-character serials (GS1 charset 82), none that looks like a token."""
    raw = rng.randbytes(SERIAL_LENGTH * count).translate(_TO_SERIAL)
    serials = [raw[i : i + SERIAL_LENGTH] for i in range(0, len(raw), SERIAL_LENGTH)]
    if _TOKEN_LIKE.search(raw):  # rare; a match may also straddle two serials
        serials = [s for s in serials if not _TOKEN_LIKE.search(s)]
    return serials


def crypto_tail(rng: random.Random) -> str:
    return "".join(
        rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") for _ in "1234"
    )


def generate(workdir: Path, entries: int, lookups: int, seed: int = 2024) -> Dataset:
    """Write the sorted and shuffled snapshot files and draw the hit/miss queries."""
    started = time.perf_counter()
    rng = random.Random(seed)
    gtins = make_gtins(rng, max(1, min(MAX_GTINS, entries // 1_000)))
    per_gtin = [entries // len(gtins)] * len(gtins)
    for i in range(entries % len(gtins)):
        per_gtin[i] += 1

    hits_wanted = lookups // 2
    sampled = sorted(rng.sample(range(entries), min(hits_wanted, entries)))
    hit_kis: list[str] = []

    # Shuffling without N strings in memory: each line goes to a random bucket file (a power of
    # two, so one random byte picks it without bias); each bucket is then shuffled on its own and
    # the buckets are concatenated. That is a uniform random permutation of the lines.
    buckets = 1
    while buckets < 256 and entries // buckets > 200_000:
        buckets *= 2
    bucket_dir = workdir / "buckets"
    bucket_dir.mkdir()
    bucket_files = [open(bucket_dir / f"{b:03d}", "wb") for b in range(buckets)]  # noqa: SIM115
    sorted_file = workdir / "snapshot-sorted.txt"
    position = 0
    try:
        with open(sorted_file, "wb") as out:
            for gtin, count in zip(gtins, per_gtin, strict=True):
                unique: set[bytes] = set()
                while len(unique) < count:
                    unique.update(random_serials(rng, count - len(unique)))
                prefix = b"01" + gtin + b"21"
                lines = [prefix + s + b"\n" for s in sorted(unique)]
                out.write(b"".join(lines))
                first = bisect.bisect_left(sampled, position)
                last = bisect.bisect_left(sampled, position + count)
                hit_kis.extend(lines[p - position][:-1].decode() for p in sampled[first:last])
                position += count
                parts: list[list[bytes]] = [[] for _ in range(buckets)]
                for line, pick in zip(lines, rng.randbytes(count), strict=True):
                    parts[pick % buckets].append(line)
                for f, part in zip(bucket_files, parts, strict=True):
                    f.write(b"".join(part))
    finally:
        for f in bucket_files:
            f.close()
    shuffled_file = workdir / "snapshot-shuffled.txt"
    with open(shuffled_file, "wb") as out:
        for b in range(buckets):
            path = bucket_dir / f"{b:03d}"
            lines = path.read_bytes().splitlines(keepends=True)
            rng.shuffle(lines)
            out.write(b"".join(lines))
            path.unlink()
    bucket_dir.rmdir()

    # Hits repeat when the store holds fewer entries than half the lookups (small N).
    hits = [hit_kis[i % len(hit_kis)] for i in range(hits_wanted)]
    misses: list[str] = []
    while len(misses) < lookups - hits_wanted:  # misses share the GTINs of the hits
        for serial in random_serials(rng, lookups - hits_wanted - len(misses)):
            misses.append(f"01{rng.choice(gtins).decode()}21{serial.decode()}")
    queries = [(ki, f"{ki}{GS}93{crypto_tail(rng)}", True) for ki in hits]
    queries += [(ki, f"{ki}{GS}93{crypto_tail(rng)}", False) for ki in misses]
    rng.shuffle(queries)
    return Dataset(sorted_file, shuffled_file, entries, queries, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# Import in a child process


@dataclass
class ImportFigures:
    rows: int
    seconds: float  # as the importer measured itself
    wall_seconds: float  # the whole child: interpreter start, open, import, exit
    rows_per_s: float
    peak_rss_mb: float
    peak_anon_mb: float

    def line(self, label: str) -> str:
        return (
            f"import {label + ':':<10} {self.rows_per_s:12,.0f} rows/s ({self.seconds:.1f} s; "
            f"{self.wall_seconds:.1f} s with interpreter start), peak RSS "
            f"{self.peak_rss_mb:.0f} MiB (heap {self.peak_anon_mb:.0f} MiB)"
        )


def _anon_kb(pid: int) -> int:
    """RssAnon of ``pid`` in KiB (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class ChildRun:
    """What a ``markctl`` child printed last (its ``--json`` object) and what it cost."""

    result: dict[str, Any]
    wall_seconds: float
    peak_rss_mb: float
    peak_anon_mb: float


def import_in_child(snapshot: Path, store_dir: Path, config: Path) -> ImportFigures:
    """Run ``markctl store import`` in a child; its own timing, peak RSS and peak RssAnon.

    The peak RSS (the child's own ``VmHWM``) includes the store's mapped file pages the child
    touched; the polled RssAnon is the heap alone.
    """
    run = markctl_in_child(
        ["store", "import", str(snapshot), "--store", str(store_dir), "--config", str(config)]
        + ["--progress", "none"]
    )
    result = run.result
    return ImportFigures(
        rows=result["rows"],
        seconds=result["seconds"],
        wall_seconds=run.wall_seconds,
        rows_per_s=result["rows"] / result["seconds"],
        peak_rss_mb=run.peak_rss_mb,
        peak_anon_mb=run.peak_anon_mb,
    )


def markctl_in_child(arguments: list[str]) -> ChildRun:
    """``markctl ARGUMENTS --json`` in a child process: its last JSON line, wall time, its own
    peak RSS (``VmHWM`` as it exits) and peak RssAnon (polled)."""
    peak_file = Path(tempfile.mkstemp(prefix="markd-bench-peak-")[1])
    command, env = peak_command("markd.cli.markctl", [*arguments, "--json"], peak_file)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        peak_anon = 0
        stop = threading.Event()

        def poll() -> None:
            nonlocal peak_anon
            while not stop.wait(0.05):
                peak_anon = max(peak_anon, _anon_kb(child.pid))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, _usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        stop.set()
        poller.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if child.returncode != 0:
        raise SystemExit(
            f"markctl {' '.join(arguments[:2])} failed ({child.returncode}):\n{stdout}{stderr}"
        )
    peak_kib = read_peak_kib(peak_file)
    peak_file.unlink(missing_ok=True)
    return ChildRun(
        result=json.loads(stdout.strip().splitlines()[-1]),
        wall_seconds=wall,
        peak_rss_mb=peak_kib / 1024,
        peak_anon_mb=peak_anon / 1024,
    )


# ---------------------------------------------------------------------------------------------
# Lookups


@dataclass
class Latency:
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    wrong: int  # answers that disagree with the data (must be 0)

    def line(self, label: str, count: int) -> str:
        return (
            f"{label:<34} p50 {self.p50_us:8.2f} µs   p99 {self.p99_us:8.2f} µs   "
            f"p99.9 {self.p999_us:8.2f} µs   ({count:,} lookups, {self.wrong} wrong)"
        )


def time_each(
    call: Callable[[Any], bool], args: Sequence[Any], expected: Sequence[bool]
) -> Latency:
    """Time every ``call(arg)`` alone; ``call`` answers "blocked?" and is checked afterwards.

    Only the boolean is kept, so the loop allocates nothing that lives on and the garbage
    collector (left on, as in the daemon) does not see the benchmark's own results pile up.
    """
    clock = time.perf_counter_ns
    took = [0] * len(args)
    wrong = 0
    for i, arg in enumerate(args):
        started = clock()
        found = call(arg)
        took[i] = clock() - started
        wrong += found is not expected[i]
    took.sort()
    n = len(took)

    def pct(p: float) -> float:
        return took[min(n - 1, int(p * n))] / 1000

    return Latency(pct(0.50), pct(0.90), pct(0.99), pct(0.999), took[-1] / 1000, wrong)


def lmdb_latencies(store_dir: Path, data: Dataset) -> dict[str, Latency]:
    """Daemon path (parsed code), cold and warm, and text path, against the imported store."""
    expected = [hit for _, _, hit in data.queries]
    codes: list[MarkingCode] = [parse(code) for _, code, _ in data.queries]
    texts = [ki for ki, _, _ in data.queries]
    with Store.open(str(store_dir), readonly=True) as store:

        def by_code(code: MarkingCode) -> bool:
            return store.lookup(code).blocked is not None

        def by_text(ki: str) -> bool:
            return store.lookup(ki).blocked is not None

        gc.collect()
        # First pass: pages of the map not yet touched by this process fault in (minor faults).
        cold = time_each(by_code, codes, expected)
        warm = time_each(by_code, codes, expected)
        text = time_each(by_text, texts, expected)
    return {"cold": cold, "code": warm, "text": text}


def lookup_breakdown(store_dir: Path, data: Dataset) -> dict[str, Latency]:
    """Where a lookup's time goes: the bare py-lmdb calls a lookup needs, layer by layer, on
    random and on cache-hot keys, then ``Store.lookup`` on cache-hot codes.

    The bare calls use plain lmdb on the documented layout (``meta["current"]`` names the live
    slot); that handle is closed before :class:`Store` opens the same path, because LMDB
    forbids one process to hold two handles on one environment.
    """
    expected = [hit for _, _, hit in data.queries]
    kis = [ki_key(ki) for ki, _, _ in data.queries]
    hot = min(1_000, len(kis))
    hot_kis = [kis[i % hot] for i in range(len(kis))]
    hot_expected = [expected[i % hot] for i in range(len(kis))]
    figures: dict[str, Latency] = {}
    env = lmdb.open(str(store_dir), readonly=True, max_dbs=16, lock=True)
    try:
        with env.begin() as txn:
            live_name = txn.get(b"current", db=env.open_db(b"meta", txn=txn, create=False))
        live = env.open_db(b"blocked.1" if live_name == b"1" else b"blocked.0", create=False)
        units = env.open_db(b"units", create=False)
        figures["timer_and_noop_call"] = time_each(lambda key: True, kis, [True] * len(kis))
        txn = env.begin()
        try:

            def get_in_open_txn(key: bytes) -> bool:
                return txn.get(key, db=live) is not None

            time_each(get_in_open_txn, kis, expected)  # map the pages, as the lookups did
            figures["get_hot_keys"] = time_each(get_in_open_txn, hot_kis, hot_expected)
            figures["get"] = time_each(get_in_open_txn, kis, expected)
        finally:
            txn.abort()

        def begin_get_abort(key: bytes) -> bool:
            txn = env.begin()
            found = txn.get(key, db=live)
            txn.abort()
            return found is not None

        def begin_id_get_units_abort(key: bytes) -> bool:
            txn = env.begin()
            txn.id()
            found = txn.get(key, db=live)
            txn.get(key, db=units)
            txn.abort()
            return found is not None

        figures["begin_get_abort"] = time_each(begin_get_abort, kis, expected)
        figures["begin_id_get_units_abort"] = time_each(begin_id_get_units_abort, kis, expected)
    finally:
        env.close()
    codes = [parse(code) for _, code, _ in data.queries]
    hot_codes = [codes[i % hot] for i in range(len(codes))]
    with Store.open(str(store_dir), readonly=True) as store:

        def by_code(code: MarkingCode) -> bool:
            return store.lookup(code).blocked is not None

        time_each(by_code, codes, expected)
        figures["store_lookup_hot_codes"] = time_each(by_code, hot_codes, hot_expected)
        figures["store_lookup"] = time_each(by_code, codes, expected)
    return figures


@dataclass
class SqliteFigures:
    build_seconds: float
    size_mb: float
    latency: Latency


def sqlite_figures(snapshot: Path, path: Path, data: Dataset) -> SqliteFigures:
    """Build ``blocked`` from the sorted file (executemany, one transaction); time lookups
    with the blocklist logic of :meth:`Store.lookup`: the КИ key (its GS1 text form, as the
    file has it), then the GTIN."""
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE blocked(key TEXT PRIMARY KEY, since INT, attr INT) WITHOUT ROWID")
    since = int(time.time())

    def rows() -> Iterator[tuple[str, int, int]]:
        with open(snapshot, "rb") as f:
            for line in f:
                yield line.rstrip(b"\n").decode("ascii"), since, 1

    db.execute("BEGIN")
    db.executemany("INSERT INTO blocked VALUES (?, ?, ?)", rows())
    db.execute("COMMIT")
    build = time.perf_counter() - started
    size = path.stat().st_size / MB

    select = "SELECT since, attr FROM blocked WHERE key = ?"
    execute = db.execute

    def by_code(code: MarkingCode) -> bool:
        found = execute(select, (f"01{code.gtin}21{code.serial}",)).fetchone()
        if found is None:
            found = execute(select, (code.gtin,)).fetchone()
        return found is not None

    expected = [hit for _, _, hit in data.queries]
    codes = [parse(code) for _, code, _ in data.queries]
    time_each(by_code, codes, expected)  # warm the page cache and statement cache, as for LMDB
    gc.collect()
    latency = time_each(by_code, codes, expected)
    db.close()
    return SqliteFigures(build, size, latency)


class _LookupHandler(BaseHTTPRequestHandler):
    """``GET /lookup?ki=…`` → ``{"blocked": bool, "version": n}``, HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # headers and body leave in one segment (flushed after each request)
    store: Store
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        query = parse_qs(urlsplit(self.path).query)
        try:
            with self.lock:
                found = self.store.lookup(query["ki"][0])
            body = json.dumps(
                {"blocked": found.blocked is not None, "version": found.blocklist_version}
            ).encode()
            self.send_response(200)
        except Exception as exc:  # noqa: BLE001 - any failure is an answer for the client
            body = json.dumps({"error": str(exc)}).encode()
            self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass


def serve_http(store_dir: str) -> None:
    """The child side: serve lookups from the store until stdin closes or SIGTERM."""
    _LookupHandler.store = Store.open(store_dir, readonly=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LookupHandler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_address[1], flush=True)
    server.serve_forever()
    _LookupHandler.store.close()


def http_latency(store_dir: Path, data: Dataset, count: int) -> Latency:
    """The same lookups (the first ``count``) over one persistent loopback connection."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-http", str(store_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        conn = HTTPConnection("127.0.0.1", port, timeout=10)
        queries = data.queries[:count]
        paths = ["/lookup?ki=" + quote(ki, safe="") for ki, _, _ in queries]
        expected = [hit for _, _, hit in queries]

        def ask(path: str) -> bool:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            return body.startswith(b'{"blocked": true')

        time_each(ask, paths[: min(2_000, count)], expected)  # warm up both sides
        gc.collect()
        latency = time_each(ask, paths, expected)
        conn.close()
    finally:
        child.terminate()
        child.wait(10)
    return latency


# ---------------------------------------------------------------------------------------------
# Main


# ---------------------------------------------------------------------------------------------
# The fleet's own snapshot format

#: (reason, source) pairs of the fleet list; each entry takes one at random.
FLEET_ATTRS = (
    ("withdrawn from circulation", "fleet"),
    ("recall 2026-114", "head office"),
    ("expired", "fleet"),
    ("stolen batch", "security"),
)
YEAR_S = 365 * 86_400


def write_fleet_list(sorted_file: Path, path: Path, seed: int = 7) -> int:
    """A markd snapshot of every КИ of ``sorted_file``, each blocked at its own random second
    of the past year with one of :data:`FLEET_ATTRS` (the worst case for the reader: no two
    rows need share a value). Returns the rows written."""
    rng = random.Random(seed)
    base = 1_735_689_600  # 2025-01-01
    rows = 0
    with open(sorted_file, "rb") as source, open(path, "wb") as out:
        out.write(b"#markd-blocklist 1\n")
        for number, pair in enumerate(FLEET_ATTRS, start=1):
            out.write(b"#attr\t%d\t%s\n" % (number, json.dumps(pair).encode()))
        while lines := source.readlines(8 << 20):
            draws = struct.unpack(f"<{len(lines)}I", rng.randbytes(4 * len(lines)))
            out.write(
                b"".join(
                    b"%s\t%d\t%d\n" % (line[:-1], base + draw % YEAR_S, 1 + (draw >> 30))
                    for line, draw in zip(lines, draws, strict=True)
                )
            )
            rows += len(lines)
        out.write(b"#end\t%d\n" % rows)
    return rows


@dataclass
class FleetFigures:
    export_seconds: float
    export_csv_seconds: float
    snapshot_mb: float
    snapshot_csv_mb: float
    sync: ChildRun
    markd: ImportFigures
    csv: ImportFigures | None

    @property
    def sync_rows_per_s(self) -> float:
        return self.sync.result["snapshot_rows"] / self.sync.result["seconds"]


def fleet_figures(workdir: Path, sorted_file: Path, entries: int, csv_too: bool) -> FleetFigures:
    """A master store filled from a markd snapshot, exported signed (markd format, and CSV for
    comparison); a kiosk with the public key configured syncs it over HTTP on loopback (index
    signature, download, size and sha256 against the signed index, import); the exported files
    are also imported on their own."""
    from markd.emulators.static_http import StaticHTTPServer

    config = workdir / "markd.toml"
    source = workdir / "fleet-source.mbl"
    started = time.perf_counter()
    write_fleet_list(sorted_file, source)
    took = time.perf_counter() - started
    say(f"fleet list:      {entries:,} rows, random since and reason ({took:.1f} s)")
    master = workdir / "store-master"
    import_in_child(source, master, config)
    source.unlink()
    key = workdir / "fleet.key"
    public = markctl_in_child(["store", "keygen", "--out", str(key)]).result["public_key"]
    www = workdir / "www"
    exported = markctl_in_child(
        ["store", "export", "--to", str(www), "--sign-key", str(key), "--store", str(master)]
        + ["--config", str(config)]
    )
    snapshot = www / exported.result["snapshot"]["file"]
    snapshot_mb = snapshot.stat().st_size / MB
    say(f"export (markd):  {exported.wall_seconds:.1f} s, {snapshot.name} {snapshot_mb:,.1f} MiB")
    export_csv_seconds, csv_mb, csv_import = 0.0, 0.0, None
    if csv_too:
        csv_dir = workdir / "www-csv"
        exported_csv = markctl_in_child(
            ["store", "export", "--to", str(csv_dir), "--format", "csv", "--store", str(master)]
            + ["--config", str(config)]
        )
        export_csv_seconds = exported_csv.wall_seconds
        csv_file = csv_dir / exported_csv.result["snapshot"]["file"]
        csv_mb = csv_file.stat().st_size / MB
        say(f"export (CSV):    {export_csv_seconds:.1f} s, {csv_file.name} {csv_mb:,.1f} MiB")
    shutil.rmtree(master)

    kiosk_config = workdir / "kiosk.toml"
    kiosk_config.write_text(f'[store]\nsync_public_keys = ["{public}"]\n')
    kiosk = workdir / "store-kiosk"
    with StaticHTTPServer(www) as server:
        sync = markctl_in_child(
            ["store", "sync", server.url, "--store", str(kiosk), "--config", str(kiosk_config)]
            + ["--progress", "none"]
        )
    if sync.result["snapshot_rows"] != entries:
        raise SystemExit(f"the sync took {sync.result['snapshot_rows']:,} rows, not {entries:,}")
    shutil.rmtree(kiosk)
    markd_import = import_in_child(snapshot, workdir / "store-markd", config)
    shutil.rmtree(workdir / "store-markd")
    if csv_too:
        csv_import = import_in_child(csv_file, workdir / "store-csv", config)
        shutil.rmtree(workdir / "store-csv")
    return FleetFigures(
        export_seconds=exported.wall_seconds,
        export_csv_seconds=export_csv_seconds,
        snapshot_mb=snapshot_mb,
        snapshot_csv_mb=csv_mb,
        sync=sync,
        markd=markd_import,
        csv=csv_import,
    )


def fleet_report(workdir: Path, data: Dataset, csv_too: bool) -> dict[str, Any]:
    """Run :func:`fleet_figures`, print its lines; its figures and targets as a dict."""
    fleet = fleet_figures(workdir, data.sorted_file, data.entries, csv_too)
    sync = fleet.sync
    say(
        f"signed sync:     {fleet.sync_rows_per_s:12,.0f} rows/s ({sync.result['seconds']:.1f} s: "
        f"index, signature, download, sha256, import {sync.result['import_seconds']:.1f} s), "
        f"peak RSS {sync.peak_rss_mb:.0f} MiB"
    )
    say(fleet.markd.line("markd"))
    figures: dict[str, Any] = {
        "sync_rows_per_s": round(fleet.sync_rows_per_s),
        "sync_seconds": round(sync.result["seconds"], 2),
        "sync_import_seconds": round(sync.result["import_seconds"], 2),
        "sync_peak_rss_mb": round(sync.peak_rss_mb, 1),
        "import_markd_rows_per_s": round(fleet.markd.rows_per_s),
        "import_markd_peak_rss_mb": round(fleet.markd.peak_rss_mb, 1),
        "export_seconds": round(fleet.export_seconds, 1),
        "snapshot_mb": round(fleet.snapshot_mb, 1),
    }
    if fleet.csv is not None:
        say(fleet.csv.line("CSV"))
        ratio = fleet.markd.rows_per_s / fleet.csv.rows_per_s
        say(f"markd format / CSV import rate: {ratio:.1f}×")
        figures |= {
            "import_csv_rows_per_s": round(fleet.csv.rows_per_s),
            "export_csv_seconds": round(fleet.export_csv_seconds, 1),
            "snapshot_csv_mb": round(fleet.snapshot_csv_mb, 1),
            "markd_over_csv": round(ratio, 2),
        }
    peak = max(sync.peak_rss_mb, fleet.markd.peak_rss_mb)
    figures["targets"] = {
        "fleet_sync_ge_1M_per_s": {
            "target": TARGET_IMPORT_SORTED_PER_S,
            "met": fleet.sync_rows_per_s >= TARGET_IMPORT_SORTED_PER_S,
        },
        "fleet_rss_le_300MB": {
            "target": TARGET_IMPORT_RSS_MB,
            "met": peak * MB / 1e6 <= TARGET_IMPORT_RSS_MB,  # MiB measured, MB targeted
        },
    }
    for name, target in figures["targets"].items():
        say(f"target {name:<32} {'met' if target['met'] else 'NOT MET'}")
    return figures


def size_of(store_dir: Path) -> tuple[float, float]:
    """(file size, bytes actually allocated) of ``data.mdb`` in MiB."""
    st = (store_dir / "data.mdb").stat()
    return st.st_size / MB, st.st_blocks * 512 / MB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=10_000_000, help="КИ in the store")
    ap.add_argument("--lookups", type=int, default=200_000, help="timed lookups (50 %% hits)")
    ap.add_argument("--http-lookups", type=int, default=20_000, help="timed HTTP lookups")
    ap.add_argument("--workdir", help="where files and stores go (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also split a lookup's time into its bare LMDB calls and the Python around them",
    )
    ap.add_argument(
        "--fleet-only",
        action="store_true",
        help="only the fleet snapshot step (markd format: export, signed sync, import)",
    )
    ap.add_argument(
        "--no-csv",
        action="store_true",
        help="leave out the CSV export and import it is compared to",
    )
    ap.add_argument("--serve-http", metavar="STORE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_http:
        serve_http(args.serve_http)
        return 0
    if args.entries < 1 or args.lookups < 2:
        ap.error("--entries must be at least 1 and --lookups at least 2")

    base = Path(args.workdir) if args.workdir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="markd-bench-store-", dir=base))
    try:
        return run(args, workdir)
    finally:
        if args.keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> int:
    n = args.entries
    say(f"markd store benchmark: {n:,} entries, {args.lookups:,} lookups, work dir {workdir}")
    data = generate(workdir, n, args.lookups)
    text_mb = data.sorted_file.stat().st_size / MB
    say(
        f"generated {n:,} КИ ({text_mb:,.0f} MiB of text, sorted + shuffled) "
        f"in {data.seconds:.1f} s"
    )

    config = workdir / "markd.toml"
    config.write_text("# empty: every default (a 64 MiB map that grows when full)\n")
    if args.fleet_only:
        data.shuffled_file.unlink()
        fleet = fleet_report(workdir, data, not args.no_csv)
        print(json.dumps({"entries": n, **fleet}, ensure_ascii=False), flush=True)
        return 0
    sorted_store, unsorted_store = workdir / "store-sorted", workdir / "store-unsorted"
    imp_sorted = import_in_child(data.sorted_file, sorted_store, config)
    say(imp_sorted.line("sorted"))
    imp_unsorted = import_in_child(data.shuffled_file, unsorted_store, config)
    say(imp_unsorted.line("unsorted"))
    for imported in (imp_sorted, imp_unsorted):
        if imported.rows != n:
            raise SystemExit(f"imported {imported.rows:,} rows, expected {n:,}")
    size_mb, allocated_mb = size_of(sorted_store)
    unsorted_size_mb, _ = size_of(unsorted_store)
    say(
        f"size on disk:    {size_mb:,.1f} MiB data.mdb ({allocated_mb:,.1f} MiB allocated, "
        f"{size_mb * MB / n:.1f} bytes/entry); from unsorted input {unsorted_size_mb:,.1f} MiB"
    )
    shutil.rmtree(unsorted_store)
    data.shuffled_file.unlink()

    lookups = lmdb_latencies(sorted_store, data)
    count = len(data.queries)
    say(f"lookups through py-lmdb {lmdb.__version__}, LMDB {'.'.join(map(str, lmdb.version()))}")
    say(lookups["code"].line("LMDB, parsed code (daemon path)", count))
    say(lookups["cold"].line("LMDB, parsed code, first pass", count))
    say(lookups["text"].line("LMDB, КИ text (parsed per call)", count))
    breakdown: dict[str, Latency] = {}
    if args.breakdown:
        say("where a lookup's time goes (each step adds to the one above):")
        breakdown = lookup_breakdown(sorted_store, data)
        for name, latency in breakdown.items():
            say(latency.line(f"  {name}", count))

    sqlite = sqlite_figures(data.sorted_file, workdir / "blocked.sqlite", data)
    say(
        f"SQLite build:    {n / sqlite.build_seconds:12,.0f} rows/s "
        f"({sqlite.build_seconds:.1f} s), {sqlite.size_mb:,.1f} MiB"
    )
    say(sqlite.latency.line("SQLite, parsed code", count))
    (workdir / "blocked.sqlite").unlink()

    http_count = min(args.http_lookups, count)
    http = http_latency(sorted_store, data, http_count)
    say(http.line("HTTP loopback, keep-alive", http_count))

    fleet = fleet_report(workdir, data, not args.no_csv)

    lmdb_p99 = lookups["code"].p99_us
    wrong = sum(x.wrong for x in (*lookups.values(), *breakdown.values(), sqlite.latency, http))
    # The size target is for 10 M entries; scale it for other N so small runs still say something.
    size_target = TARGET_SIZE_10M_MB * n / 10_000_000
    peak_rss = max(imp_sorted.peak_rss_mb, imp_unsorted.peak_rss_mb)
    targets = {
        "lookup_p99_le_5us": {"target": TARGET_LOOKUP_P99_US, "met": lmdb_p99 <= 5.0},
        "import_sorted_ge_1M_per_s": {
            "target": TARGET_IMPORT_SORTED_PER_S,
            "met": imp_sorted.rows_per_s >= TARGET_IMPORT_SORTED_PER_S,
        },
        "import_unsorted_ge_300k_per_s": {
            "target": TARGET_IMPORT_UNSORTED_PER_S,
            "met": imp_unsorted.rows_per_s >= TARGET_IMPORT_UNSORTED_PER_S,
        },
        "size_le_600MB_per_10M": {"target": round(size_target, 3), "met": size_mb <= size_target},
        "import_rss_le_300MB": {
            "target": TARGET_IMPORT_RSS_MB,
            "met": peak_rss * MB / 1e6 <= TARGET_IMPORT_RSS_MB,  # MiB measured, MB targeted
        },
        **fleet.pop("targets"),
    }
    for name, target in targets.items():
        say(f"target {name:<32} {'met' if target['met'] else 'NOT MET'}")
    if wrong:
        say(f"WRONG ANSWERS: {wrong} (see the per-method counts above)")

    def r(x: float, digits: int = 2) -> float:
        return round(x, digits)

    result = {
        "entries": n,
        "lookups": count,
        "http_lookups": http_count,
        "import_sorted_rows_per_s": round(imp_sorted.rows_per_s),
        "import_unsorted_rows_per_s": round(imp_unsorted.rows_per_s),
        "import_sorted_seconds": r(imp_sorted.seconds),
        "import_unsorted_seconds": r(imp_unsorted.seconds),
        "import_sorted_wall_seconds": r(imp_sorted.wall_seconds),
        "import_unsorted_wall_seconds": r(imp_unsorted.wall_seconds),
        "import_peak_rss_mb": {
            "sorted": r(imp_sorted.peak_rss_mb, 1),
            "unsorted": r(imp_unsorted.peak_rss_mb, 1),
        },
        "import_peak_anon_mb": {
            "sorted": r(imp_sorted.peak_anon_mb, 1),
            "unsorted": r(imp_unsorted.peak_anon_mb, 1),
        },
        "size_on_disk_mb": r(size_mb, 1),
        "size_allocated_mb": r(allocated_mb, 1),
        "lookup_p50_us": r(lookups["code"].p50_us),
        "lookup_p99_us": r(lmdb_p99),
        "lookup_p999_us": r(lookups["code"].p999_us),
        "py_lmdb": lmdb.__version__,
        "lookup_cold_p50_us": r(lookups["cold"].p50_us),
        "lookup_cold_p99_us": r(lookups["cold"].p99_us),
        "lookup_text_p50_us": r(lookups["text"].p50_us),
        "lookup_text_p99_us": r(lookups["text"].p99_us),
        "sqlite_build_seconds": r(sqlite.build_seconds),
        "sqlite_size_mb": r(sqlite.size_mb, 1),
        "sqlite_p50_us": r(sqlite.latency.p50_us),
        "sqlite_p99_us": r(sqlite.latency.p99_us),
        "http_p50_us": r(http.p50_us),
        "http_p99_us": r(http.p99_us),
        "ratios": {
            "sqlite_p99/lmdb_p99": r(sqlite.latency.p99_us / lmdb_p99),
            "http_p99/lmdb_p99": r(http.p99_us / lmdb_p99, 1),
        },
        "breakdown": {
            name: {"p50_us": r(x.p50_us), "p90_us": r(x.p90_us), "p99_us": r(x.p99_us)}
            for name, x in breakdown.items()
        },
        "fleet": fleet,
        "wrong_answers": wrong,
        "targets": targets,
    }
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
