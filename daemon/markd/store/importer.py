"""Blocklist snapshots and deltas: streaming import with an atomic switch.

Snapshot formats (chosen by ``fmt`` or the file name; any of them may be gzip-compressed):

``text``   one КИ or GTIN per line; ``#`` comments and blank lines are skipped
``csv``    a header naming columns among ``ki, gtin, series, reason, source, since``
``jsonl``  one JSON object per line with the same keys (or a bare JSON string: a КИ or GTIN)
``markd``  the fleet's own snapshot (``markctl store export``; ``.mbl``): a ``#markd-blocklist 1``
           line, ``#attr`` lines numbering the (reason, source) pairs, then one
           ``KEY<TAB>SINCE<TAB>ATTR`` line per entry in key order, and ``#end<TAB>ROWS`` last
           (docs/store.md). Made to be read a block at a time with no per-row Python work:
           about ten times the rate of CSV

How a snapshot becomes visible: the blocklist has two slots; the live one is named in
``meta["current"]``. An import empties the other slot, streams the rows into it in bounded
write transactions, and finally, in one small transaction, points ``current`` at it, updates
version, counts and times, and empties the old slot. Readers see the old set or the new set,
never a mix; ``kill -9`` at any moment leaves the old set live (LMDB commits are atomic), and
the half-filled slot is simply emptied by the next import.

Memory does not grow with the file: rows are handled in chunks of ``chunk_rows`` keys (half as
many CSV or JSONL rows, which carry a value each), one chunk at a time. Input that is already
sorted is appended chunk by chunk (LMDB's append mode, the fast path). Unsorted input is
sorted chunk by chunk into run files next to the store and merged, a small batch of each run
at a time and at most 64 runs at once, so it is still appended in key order.

Deltas are JSON lines: a header ``{"format": "markd-delta", "version": N, "previous": N-1}``
then one ``{"op": "add"|"remove", "ki"|"gtin": …, …}`` per line. A delta applies in one
transaction, only on top of the version it names.

Bad rows: by default any bad row rejects the whole file (nothing changes) and the error lists
the first problems by file and line; with ``skip_bad`` the bad rows are left out, counted and
reported.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import datetime as dt
import errno
import fcntl
import gzip
import heapq
import io
import itertools
import json
import math
import operator
import os
import pickle
import queue
import re
import shutil
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import lmdb

from markd.codes import GS1_CHARSET_82, CodeError, gtin_is_valid, mentions_gs, parse
from markd.errors import StoreError
from markd.store import keys, ownership
from markd.store.core import _SLOTS, Store, StoreInfo, _store_error
from markd.store.keys import BLOCK_VALUE, BadKey
from markd.text import control_problem, csv_uncell, printable

FORMATS = ("text", "csv", "jsonl", "markd")
MAX_VERSION = 1 << 63
CSV_COLUMNS = ("ki", "gtin", "series", "reason", "source", "since")
DEFAULT_REASON = "blocklist"
MAX_PROBLEMS = 20  # listed in an error; the count covers all of them
#: Changes in one delta. A delta applies in one transaction and is held in memory whole (about
#: 0.75 kB a change: 200,000 measured at 193 MB peak RSS for ``markctl store delta``), so this
#: keeps it under the 300 MB any import may take; a bigger change is a snapshot's job.
MAX_DELTA_CHANGES = 200_000
#: Characters of a block's reason and source the store keeps (the rest is dropped on reading).
TEXT_KEPT = 200

#: progress(phase, bytes_done, bytes_total or None, rows_so_far)
Progress = Callable[[str, int, int | None, int], None]

_SERIAL_B = b"[" + re.escape(GS1_CHARSET_82.encode()) + b"]"
_GS_MARKER = re.compile(rb"(?i)<gs>|\[gs\]|\{gs\}|<fnc1>|\\u001d|\\x1d")

#: A block of lines that are each a GS1 КИ or a GTIN-14: exactly the stored key form.
_TEXT_BLOCK = re.compile(rb"(?:(?:01\d{14}21" + _SERIAL_B + rb"{1,20}|\d{14})\n)*")


_GTIN_SLICE = operator.itemgetter(slice(2, 16))


def _GTIN_OF_LINE(line: bytes) -> bytes:  # noqa: N802 - used with map() on the fast path
    return line if len(line) == 14 else line[2:16]


_BLOCK_BYTES = 4 << 20
#: GTINs whose check digit a reader remembers (a real list has thousands; a hostile one may
#: have a GTIN a row): past this the memory is dropped and rebuilt.
_MAX_GTINS_KEPT = 100_000
#: A markd snapshot block: small enough that its bytes and its lists of keys and values stay
#: in a core's cache while they are worked on (measured: 512 KiB imports about 7 % faster than
#: 4 MiB, 1 MiB in between).
_MARKD_BLOCK_BYTES = 512 << 10

#: The first line of a markd snapshot, and the one version of the format this code reads.
MARKD_MAGIC = b"#markd-blocklist"
MARKD_VERSION = 1
#: A stored key as a markd snapshot writes it: a КИ in GS1 form, a GTIN-14, or a GTIN-14 and a
#: series with ``|`` standing for the store's 0x1F (a control byte has no place in a text file;
#: ``|`` is not a GS1 character). Possessive quantifiers: nothing here ever needs to backtrack.
_MARKD_KEY = rb"(?:01\d{14}21" + _SERIAL_B + rb"{1,20}+|\d{14}(?:\|" + _SERIAL_B + rb"{1,40}+)?)"
#: A block of rows, each ``KEY<TAB>SINCE<TAB>ATTR``: checked whole with one match.
_MARKD_BLOCK = re.compile(rb"(?:" + _MARKD_KEY + rb"\t\d{1,10}+\t\d{1,9}+\n)*+")
_MARKD_ROW = re.compile(rb"(" + _MARKD_KEY + rb")\t(\d{1,10})\t(\d{1,9})")
#: The written-out GS a key of GS1 characters can hold (the other stand-ins use characters
#: no key may hold). A literal first character: the search is a fast scan.
_GS_IN_KEY = re.compile(rb"<(?:[Gg][Ss]|[Ff][Nn][Cc]1)>")
_MARKD_ATTR = re.compile(rb"#attr\t([1-9]\d{0,8})\t(.*)")
_MARKD_END = re.compile(rb"#end\t(\d{1,12})")


@dataclass
class ImportResult:
    """What an import did: the new version, rows read and stored, and any skipped rows."""

    version: int
    rows: int
    stored: dict[str, int]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    sorted_input: bool = True
    seconds: float = 0.0


@dataclass
class DeltaResult:
    version: int
    added: int
    removed: int
    unchanged: int


class _Problems:
    """Bad rows: reject the file (default) or skip them with a count."""

    def __init__(self, name: str, skip_bad: bool) -> None:
        self.name = name
        self.skip_bad = skip_bad
        self.count = 0
        self.listed: list[str] = []
        #: Lines dropped as longer than 1 MiB (each over 1 MiB of input, so few).
        self.long_lines: set[int] = set()

    def add(self, line: int, message: str) -> None:
        self.count += 1
        if len(self.listed) < MAX_PROBLEMS:
            self.listed.append(f"{self.name}:{line}: {message}")

    def raise_if_any(self, what: str) -> None:
        if self.count and not self.skip_bad:
            more = (
                f" (and {self.count - len(self.listed)} more)"
                if self.count > len(self.listed)
                else ""
            )
            raise StoreError(
                f"{what} refused, nothing changed: {self.count} bad row(s){more}\n"
                + "\n".join(f"  {p}" for p in self.listed),
                "bad-rows",
            )


# ---------------------------------------------------------------------------------------------
# Reading rows


class _Attrs:
    """(reason, source) → id, with the ids the store already has and the new ones."""

    def __init__(self, existing: dict[tuple[str, str], int]) -> None:
        self.ids = dict(existing)
        self.new: dict[tuple[str, str], int] = {}
        self.next = max(existing.values(), default=0) + 1

    LIMIT = 65_536  # reasons and sources are categories, not per-row text

    def id(self, reason: str, source: str) -> int:
        pair = (reason, source)
        found = self.ids.get(pair)
        if found is None:
            if len(self.new) >= self.LIMIT:
                raise StoreError(
                    f"more than {self.LIMIT:,} distinct (reason, source) pairs in one file: "
                    "reason and source name categories (a ban, a recall, an authority), not "
                    "one text per row",
                    "bad-file",
                )
            found = self.ids[pair] = self.new[pair] = self.next
            self.next += 1
        return found


#: What a damaged gzip stream raises while it is read.
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


@contextlib.contextmanager
def _reading(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a damaged or unreadable input file into a clear bad-file error naming it."""
    try:
        yield
    except _STREAM_ERRORS as exc:
        raise StoreError(f"{path}: damaged gzip data ({exc}); nothing changed", "bad-file") from exc
    except OSError as exc:
        if exc.errno in (None, 0) or "CRC" in str(exc) or "gzip" in str(exc).lower():
            raise StoreError(
                f"{path}: damaged gzip data ({exc}); nothing changed", "bad-file"
            ) from exc
        raise


#: The longest line any reader accepts (text, CSV, JSONL, deltas; compressed or not). A real
#: row is under 1 kB; a longer line is a damaged file or a gzip bomb, and it is refused (or
#: skipped) without ever being held in memory whole.
MAX_LINE_BYTES = 1 << 20


class _LineBound(io.RawIOBase):
    """The bytes of ``inner`` (a file or a gzip stream), with every line at most
    :data:`MAX_LINE_BYTES` long.

    Memory stays bounded whatever one line holds (1 MB of gzip can decompress into a single
    line of 1 GB): the bytes of a line are held back, at most 1 MiB of them, until its newline
    (or the end of the file) shows it is whole, and only then handed to the consumer
    (``readline``, iteration, ``csv``, the text reader's blocks). A longer line is handed to
    ``long_line(n)`` (n: its line number), which raises to refuse the file, or returns to have
    the line dropped whole: the rest of it is read in bounded pieces and thrown away, and the
    consumer sees only its newline, an empty line, so no part of it is ever parsed as a row and
    the lines after it keep their numbers.
    """

    def __init__(self, inner: IO[bytes], long_line: Callable[[int], None], file: IO[bytes]) -> None:
        super().__init__()
        self._inner = inner
        self._file = file  # the file under a gzip stream (GzipFile leaves it open)
        self._long_line = long_line
        self._held = b""  # the start of a line not yet known to be whole (no newline)
        self._ready = b""  # whole lines (and, at the end, the last line) to hand out
        self._ready_at = 0  # how much of _ready is handed out
        self._lines = 0  # newlines read from inner (a dropped line's too)
        self._position = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        try:
            self._inner.close()
            self._file.close()
        finally:
            super().close()

    def readinto(self, buffer: Any) -> int:
        while self._ready_at >= len(self._ready):
            if not self._fill():
                return 0
        size = min(len(buffer), len(self._ready) - self._ready_at)
        buffer[:size] = memoryview(self._ready)[self._ready_at : self._ready_at + size]
        self._ready_at += size
        self._position += size
        return size

    def _fill(self) -> bool:
        """Read one piece of ``inner`` and make ready the lines it completes; False at the end
        of the file with nothing left to hand out."""
        data = self._inner.read(MAX_LINE_BYTES)
        if not data:
            self._ready, self._ready_at, self._held = self._held, 0, b""
            return bool(self._ready)
        first = data.find(b"\n")
        # A piece holds at most 1 MiB, so only the line it continues (up to its first newline)
        # can be too long.
        if len(self._held) + (len(data) if first < 0 else first) > MAX_LINE_BYTES:
            self._long_line(self._lines + 1)
            self._held = b""
            data = self._drop_rest(data, first)  # from the dropped line's newline on
            first = 0
            if not data:
                return False
        if first < 0:
            self._held += data
            self._ready, self._ready_at = b"", 0
            return True
        last = data.rfind(b"\n") + 1
        self._ready, self._ready_at = self._held + data[:last], 0
        self._held = data[last:]
        self._lines += self._ready.count(b"\n")
        return True

    def _drop_rest(self, data: bytes, first: int) -> bytes:
        """Read and drop the rest of an over-long line, in bounded pieces; return what follows
        it, starting with its newline (b"" at the end of the file)."""
        while first < 0:
            data = self._inner.read(MAX_LINE_BYTES)
            if not data:
                return b""
            first = data.find(b"\n")
        return data[first:]


class _Inflating(io.RawIOBase):
    """The inflated bytes of a gzip file, decompressed ahead by a thread of their own.

    zlib lets go of the interpreter lock while it inflates, and here it is handed large
    pieces (up to 4 MiB at a time, so the thread seldom needs the lock), so a
    compressed snapshot is decompressed on one core while its rows are checked and written on
    the other. At most :data:`DEPTH` pieces of at most :data:`PIECE` bytes wait at any time:
    memory stays bounded however far the stream inflates (``max_length``). Every gzip member is
    read (``cat a.gz b.gz`` is one file); zlib checks each member's CRC and length. Damaged or
    cut-short data raises where the reader meets it (``zlib.error``, ``EOFError``).
    """

    PIECE = 4 << 20
    DEPTH = 3

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._pieces: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=self.DEPTH)
        self._stop = threading.Event()
        self._piece = memoryview(b"")
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="import-inflate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for piece in self._inflate():
                if not self._hand_over(piece):
                    return
            self._hand_over(b"")
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._hand_over(exc)

    def _inflate(self) -> Iterator[bytes]:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        pending = b""
        member_started = False
        while not self._stop.is_set():
            if not pending:
                pending = self._raw.read(self.PIECE)
                if not pending:
                    if member_started and not inflater.eof:
                        raise EOFError("compressed file ended before the end-of-stream marker")
                    return
            if inflater.eof:  # the next gzip member (trailing zero bytes are padding)
                if not pending.strip(b"\0"):
                    pending = b""
                    continue
                inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            member_started = True
            piece = inflater.decompress(pending, self.PIECE)
            pending = inflater.unconsumed_tail or inflater.unused_data
            if piece:
                yield piece

    def _hand_over(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._pieces.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._piece:
            if self._ended:
                return 0
            item = self._pieces.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if not item:
                self._ended = True
                return 0
            self._piece = memoryview(item)
        size = min(len(buffer), len(self._piece))
        buffer[:size] = self._piece[:size]
        self._piece = self._piece[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._thread.join()
        super().close()


def _refuse_long_line(path: str | os.PathLike[str]) -> Callable[[int], None]:
    def refuse(line: int) -> None:
        raise StoreError(
            f"{path}:{line}: line longer than {MAX_LINE_BYTES >> 20} MiB; not a blocklist "
            "(nothing changed)",
            "bad-file",
        )

    return refuse


def _open_binary(
    path: str | os.PathLike[str], long_line: Callable[[int], None] | None = None
) -> tuple[IO[bytes], int | None]:
    """``path`` (gzip or not) as a stream of lines of at most :data:`MAX_LINE_BYTES`, and its
    size when that is the size of what is read (not compressed). ``long_line(n)`` decides
    about a longer line (default: refuse the file, naming it and the line)."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}", "bad-file") from exc
    size: int | None = os.fstat(raw.fileno()).st_size
    inner: IO[bytes] = raw
    if raw.peek(2)[:2] == b"\x1f\x8b":
        inner = _Inflating(raw)
        size = None
    bounded = _LineBound(inner, long_line or _refuse_long_line(path), raw)
    return io.BufferedReader(bounded, buffer_size=1 << 16), size  # type: ignore[return-value]


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format a file's name says (``.gz`` aside); ``text`` when it says nothing, unless
    the file opens with a markd snapshot's first line."""
    name = str(path).lower().removesuffix(".gz")
    if name.endswith(".mbl"):
        return "markd"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    with contextlib.suppress(StoreError, *_STREAM_ERRORS, OSError):
        stream, _ = _open_binary(path)
        with stream:
            if stream.read(len(MARKD_MAGIC)) == MARKD_MAGIC:
                return "markd"
    return "text"


def _since_of(value: Any, default: int) -> int:
    """Unix seconds from an int, a digit string or an ISO-8601 time; 0 … 2**32-1."""
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        raise BadKey(f"since {value!r} is not a time")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadKey("since must be a finite number of seconds")
        value = int(value)
    if isinstance(value, int):
        seconds = value
    else:
        text = str(value).strip()
        if text.isascii() and text.isdigit():
            if len(text) > 12:
                raise BadKey(f"since has {len(text)} digits; not a time")
            seconds = int(text)
        else:
            try:
                when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise BadKey(
                    f"since {text[:32]!r} is neither Unix seconds nor an ISO-8601 time"
                ) from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            seconds = int(when.timestamp())
    if not 0 <= seconds < 1 << 32:
        raise BadKey(f"since {seconds} is out of range")
    return seconds


#: CSV columns of free text: markd's export may have made them inert for spreadsheets.
_TEXT_CELLS = frozenset(("series", "reason", "source"))


def _clean_text(row: dict[str, Any]) -> None:
    """Refuse a row whose reason or source holds a control character (markd.text): it would
    reach a technician's terminal or a spreadsheet. Refused, not stripped: what is stored is
    exactly what the file says, or nothing."""
    for name in ("reason", "source"):
        value = row.get(name)
        if isinstance(value, str):
            problem = control_problem(value, name)
            if problem is not None:
                raise BadKey(problem)


def row_key(row: dict[str, Any]) -> bytes:
    """The blocklist key of a CSV/JSONL row (``ki``, or ``gtin`` with optional ``series``)."""
    ki = row.get("ki") or ""
    gtin = row.get("gtin") or ""
    series = row.get("series") or ""
    if not isinstance(ki, str) or not isinstance(gtin, str) or not isinstance(series, str):
        raise BadKey("ki, gtin and series must be strings")
    if ki:
        if gtin or series:
            raise BadKey("a row names either a ki or a gtin (with an optional series), not both")
        try:
            if mentions_gs(ki):
                raise BadKey("a full code")  # read it with the parser below
            return keys.ki_key(ki)
        except BadKey:
            try:  # a full code with its crypto tail is fine too: keep only its КИ
                code = parse(ki)
            except CodeError as exc:
                raise BadKey(f"ki {keys.excerpt(ki)}: {exc.reason}") from None
            return keys.code_key(code)
    if gtin:
        return keys.series_key(gtin, series) if series else keys.gtin_key(gtin)
    raise BadKey("row has neither ki nor gtin")


def _all_valid(gtins: Iterable[bytes], known: dict[bytes, bool]) -> bool:
    """Whether every GTIN has a right check digit; ``known`` remembers the answers across
    blocks (a list has thousands of GTINs), dropped past :data:`_MAX_GTINS_KEPT` so a file of
    a GTIN a row cannot grow it without end."""
    if len(known) > _MAX_GTINS_KEPT:
        known.clear()
    for gtin in gtins:
        ok = known.get(gtin)
        if ok is None:
            ok = known[gtin] = gtin_is_valid(gtin.decode())
        if not ok:
            return False
    return True


def _text_key(line: bytes) -> bytes:
    text = line.decode("ascii", errors="replace").strip()
    if text.isdigit() and len(text) <= 14:
        return keys.gtin_key(text)
    try:
        if mentions_gs(text):
            raise BadKey("a full code")  # read it with the parser below
        return keys.ki_key(text)
    except BadKey:
        try:
            return keys.code_key(parse(text))
        except CodeError as exc:
            raise BadKey(f"{keys.excerpt(text)} is not a КИ or GTIN ({exc.reason})") from None


class _CsvRecordBound:
    """The lines of a CSV text for ``csv.reader``, refusing a record over
    :data:`MAX_LINE_BYTES`.

    A quoted field may hold newlines, so one record can run over millions of short lines, each
    well within the line limit (six million 5-byte lines made csv build a record of 467 MB).
    csv cannot find the start of the next record in what follows, so the file is refused, with
    skip_bad too. csv reads no further than the record it returns: the caller calls
    :meth:`next_record` before asking for each record.
    """

    def __init__(self, text: IO[str], path: str | os.PathLike[str]) -> None:
        self._text = text
        self._path = path
        self._bytes = 0  # read since the record began
        self._lines = 0  # read in all
        self._start = 1  # the line the record begins on

    def next_record(self) -> None:
        self._bytes, self._start = 0, self._lines + 1

    def lines(self) -> Iterator[str]:
        for line in self._text:
            self._bytes += len(line) if line.isascii() else len(line.encode("utf-8", "replace"))
            self._lines += 1
            if self._bytes > MAX_LINE_BYTES:
                raise StoreError(
                    f"{self._path}:{self._start}: record longer than {MAX_LINE_BYTES >> 20} MiB "
                    "(a quoted field left open?); not a blocklist (nothing changed)",
                    "bad-file",
                )
            yield line


def _take_pairs(
    pairs: Iterator[tuple[bytes, bytes]], count: int
) -> tuple[list[bytes], list[bytes]]:
    """The next ``count`` (key, value) pairs of ``pairs``, as a list of keys and a list of
    values.

    Never as a list of pairs: each pair would stay a tuple of 64 bytes (with its list slot),
    one more object per row for the garbage collector to walk. 500,000 CSV rows took 126 MiB
    as pairs (and a 10 M-row CSV import 317 MiB peak RSS, two such chunks at once).
    """
    keys_taken: list[bytes] = []
    values: list[bytes] = []
    add_key, add_value = keys_taken.append, values.append
    for key, value in itertools.islice(pairs, count):
        add_key(key)
        add_value(value)
    return keys_taken, values


class _Reader:
    """Turns a snapshot file into chunks of (key, value) pairs; collects bad rows."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: str,
        attrs: _Attrs,
        problems: _Problems,
        *,
        reason: str,
        source: str,
        since: int,
        chunk_rows: int,
        progress: Progress | None,
    ) -> None:
        if fmt not in FORMATS:
            raise StoreError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        self.path, self.fmt, self.attrs, self.problems = path, fmt, attrs, problems
        self.reason, self.source, self.since = reason, source, since
        self.chunk_rows = chunk_rows
        self.progress = progress
        self.rows = 0
        self.default_value = self._default_value = BLOCK_VALUE.pack(since, attrs.id(reason, source))

    def chunks(self) -> Iterator[_Chunk]:
        """The file as chunks of about ``chunk_rows`` rows (memory stays bounded)."""
        stream, size = _open_binary(self.path, self._long_line)
        with stream, _reading(self.path):
            if self.fmt == "text":
                keys_so_far: list[bytes] = []
                for block_keys in self._text_keys(stream, size):
                    keys_so_far.extend(block_keys)
                    if len(keys_so_far) >= self.chunk_rows:
                        yield _Chunk(keys_so_far, None, self._default_value, series=False)
                        keys_so_far = []
                if keys_so_far:
                    yield _Chunk(keys_so_far, None, self._default_value, series=False)
                return
            if self.fmt == "markd":
                yield from self._markd_chunks(_MarkdBlocks(self, stream, size))
                return
            rows = (
                self._csv_rows(stream, size)
                if self.fmt == "csv"
                else self._jsonl_rows(stream, size)
            )
            # A row with a value of its own (a since, reason or source) holds a key and an
            # 8-byte value object: about 130 bytes against 72 for a key alone, so it counts
            # twice.
            chunk_rows = max(1, self.chunk_rows // 2)
            while True:
                chunk_keys, values = _take_pairs(rows, chunk_rows)
                if not chunk_keys:
                    return
                yield _Chunk(chunk_keys, values, self._default_value)
                del chunk_keys, values  # not held while the next chunk is read

    def _markd_chunks(self, blocks: _MarkdBlocks) -> Iterator[_Chunk]:
        """A markd snapshot's blocks as chunks. While the rows come in key order each block
        (about 11,000 rows) is a chunk of its own: nothing to gather for a sort, and memory
        stays at a block's worth. From the first block out of order on, blocks are gathered
        into chunks of half ``chunk_rows`` (rows with values, as CSV), each sorted into one
        run file (a run a block would
        leave thousands of files open at the merge)."""
        in_order, last = True, b""
        gathered_keys: list[bytes] = []
        gathered_values: list[bytes] = []
        series = False
        for block_keys, block_values in blocks:
            if not block_keys:
                continue
            series, blocks.series = series or blocks.series, False
            if in_order and blocks.ordered and block_keys[0] > last:
                last = block_keys[-1]
                yield _Chunk(block_keys, block_values, self._default_value, series, True)
                series = False
                continue
            in_order = False
            gathered_keys += block_keys
            gathered_values += block_values
            if len(gathered_keys) >= max(1, self.chunk_rows // 2):  # rows with values: as CSV
                yield _Chunk(gathered_keys, gathered_values, self._default_value, series)
                gathered_keys, gathered_values, series = [], [], False
        if gathered_keys:
            yield _Chunk(gathered_keys, gathered_values, self._default_value, series)

    def _long_line(self, line: int) -> None:
        """A line over 1 MiB: refuse the file at once (decompressing the rest of a gzip bomb
        only to refuse it later would be wasted), or with ``skip_bad`` count it and drop it."""
        if not self.problems.skip_bad:
            _refuse_long_line(self.path)(line)
        self.problems.long_lines.add(line)
        self.problems.add(line, f"line longer than {MAX_LINE_BYTES >> 20} MiB; skipped unread")

    def _tick(self, stream: IO[bytes], size: int | None) -> None:
        if self.progress is not None:
            done = stream.tell() if size is not None else 0
            self.progress("read", done, size, self.rows)

    def _text_keys(self, stream: IO[bytes], size: int | None) -> Iterator[list[bytes]]:
        """Keys of a text file, block by block.

        The fast path checks a whole block with one regular expression (GS1 КИ or GTIN-14 per
        line) and splits it: a line *is* its key, no per-row Python work but a GTIN check-digit
        test per distinct GTIN. A block with anything else (comments, blank lines, tobacco-form
        КИ, short GTINs, full codes, bad rows) goes line by line.
        """
        valid: dict[bytes, bool] = {}  # cleared past _MAX_GTINS_KEPT
        line_no = 0
        carry = b""
        first = True
        while True:
            data = stream.read(_BLOCK_BYTES)
            if first:
                first = False
                data = data.removeprefix(b"\xef\xbb\xbf")  # a BOM left by a Windows editor
            block = carry + data
            if not data:
                carry = b""
                if not block:
                    return
                if not block.endswith(b"\n"):
                    block += b"\n"
            else:
                cut = block.rfind(b"\n") + 1
                block, carry = block[:cut], block[cut:]
                if not block:
                    if len(carry) > 1 << 20:
                        raise StoreError(
                            f"{self.path}:{line_no + 1}: line longer than 1 MiB; not a blocklist",
                            "bad-file",
                        )
                    continue
            lines = block.count(b"\n")
            if b"\r" in block:
                block = block.replace(b"\r", b"")
            # Text stand-ins for GS ("<GS>", "\\u001d") are made of serial characters: a line
            # holding one is a full code, and only the parser may read it.
            fast = _TEXT_BLOCK.fullmatch(block) is not None and not _GS_MARKER.search(block)
            if fast:
                block_keys = block.split(b"\n")
                block_keys.pop()  # after the last newline
                if block_keys and min(map(len, block_keys)) > 14:
                    gtins = set(map(_GTIN_SLICE, block_keys))  # all КИ: C-level slicing
                else:
                    gtins = set(map(_GTIN_OF_LINE, block_keys))
                fast = _all_valid(gtins, valid)
            if not fast:
                block_keys = []
                for offset, line in enumerate(block.split(b"\n")[:lines]):
                    stripped = line.strip()
                    if not stripped or stripped.startswith(b"#"):
                        continue
                    try:
                        block_keys.append(_text_key(stripped))
                    except BadKey as exc:
                        self.problems.add(line_no + offset + 1, str(exc))
            self.rows += len(block_keys)
            line_no += lines
            yield block_keys
            self._tick(stream, size)

    def _row_value(self, row: dict[str, Any]) -> bytes:
        reason = row.get("reason") or self.reason
        source = row.get("source") or self.source
        since = _since_of(row.get("since"), self.since)
        if not isinstance(reason, str) or not isinstance(source, str):
            raise BadKey("reason and source must be strings")
        _clean_text(row)
        if not 0 <= since < 1 << 32:
            raise BadKey(f"since {since} is out of range")
        if (reason, source, since) == (self.reason, self.source, self.since):
            return self._default_value
        return BLOCK_VALUE.pack(since, self.attrs.id(reason[:TEXT_KEPT], source[:TEXT_KEPT]))

    def _csv_rows(self, stream: IO[bytes], size: int | None) -> Iterator[tuple[bytes, bytes]]:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
        record = _CsvRecordBound(text, self.path)
        reader = csv.reader(record.lines())
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            return
        except (UnicodeDecodeError, csv.Error) as exc:
            raise StoreError(f"{self.path}:1: unreadable CSV header: {exc}", "bad-file") from exc
        unknown = [h for h in header if h not in CSV_COLUMNS]
        if len(set(header)) != len(header):
            raise StoreError(f"{self.path}:1: CSV header names a column twice", "bad-file")
        if unknown or not ({"ki", "gtin"} & set(header)):
            raise StoreError(
                f"{self.path}:1: CSV header must name ki or gtin and only columns among "
                f"{', '.join(CSV_COLUMNS)}; got {', '.join(header) or 'nothing'}",
                "bad-file",
            )
        while True:
            record.next_record()
            try:
                values = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                # The decoder cannot resynchronise: skipping on would silently lose every row
                # after it, so the file is refused, --skip-bad or not. It decodes ahead of csv
                # (8 KiB at a time), so the line is where the bad bytes are or before them.
                raise StoreError(
                    f"{self.path}:{reader.line_num + 1}: not UTF-8 at or after this line "
                    f"({exc.reason}); nothing changed",
                    "bad-file",
                ) from exc
            except csv.Error as exc:
                self.problems.add(reader.line_num, f"unreadable row: {exc}")
                continue
            if not values or values == [""]:
                continue
            if len(values) != len(header):
                self.problems.add(
                    reader.line_num, f"{len(values)} columns, header has {len(header)}"
                )
                continue
            row = dict(zip(header, (v.strip() for v in values), strict=True))
            # Cells markd's export made inert for spreadsheets ("'=…") read back as written.
            for name in _TEXT_CELLS.intersection(row):
                row[name] = csv_uncell(row[name])
            try:
                pair = (row_key(row), self._row_value(row))
            except BadKey as exc:
                self.problems.add(reader.line_num, str(exc))
                continue
            self.rows += 1
            yield pair
            if self.rows % 100_000 == 0:
                self._tick(stream, size)

    def _jsonl_rows(self, stream: IO[bytes], size: int | None) -> Iterator[tuple[bytes, bytes]]:
        for line_no, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if isinstance(row, str):
                    pair = (_text_key(row.encode()), self._default_value)
                elif isinstance(row, dict):
                    extra = set(row) - set(CSV_COLUMNS)
                    if extra:
                        raise BadKey(f"unknown keys {', '.join(sorted(extra))}")
                    pair = (row_key(row), self._row_value(row))
                else:
                    raise BadKey("a line must be a JSON object or string")
            except (ValueError, RecursionError, BadKey) as exc:  # bad JSON, bad UTF-8, nesting
                self.problems.add(
                    line_no, str(exc) if isinstance(exc, BadKey) else f"not JSON: {exc}"
                )
                continue
            self.rows += 1
            yield pair
            if self.rows % 100_000 == 0:
                self._tick(stream, size)


class _MarkdBlocks:
    """The rows of a markd snapshot (the module docstring; docs/store.md), as (keys, values)
    a block of about 512 KiB (some 11,000 rows) at a time.

    A block of rows is checked with one regular expression, split at its tabs and newlines,
    and its values packed by ``map``: no Python code runs per row, which is what makes this
    format about ten times faster to read than CSV. A block the quick check refuses (a bad row,
    an undeclared attr, a wrong GTIN check digit, a ``since`` out of range) is read again line
    by line, to name each bad row by its line.

    Every problem of the file's frame — not a markd snapshot, a version this code does not
    read, no ``#end`` line (a cut file), a row count that differs from ``#end`` — refuses the
    file whatever ``skip_bad`` says: the file is not the one that was written.
    """

    def __init__(self, reader: _Reader, stream: IO[bytes], size: int | None) -> None:
        self.reader, self.stream, self.size = reader, stream, size
        self.path = reader.path
        self.problems = reader.problems
        self.attrs: dict[bytes, int] = {}  # the file's attr number → the store's attr id
        self.valid_gtins: dict[bytes, bool] = {}
        self.line_no = 0
        self.row_lines = 0  # lines between the #attr lines and #end, good or bad
        self.rows_started = False
        self.declared_rows: int | None = None
        self.end_line = 0
        self.series = False  # a series key since the last chunk was handed out
        self.attr_lines = 0
        self.ordered = True  # the last block's keys were in strict order

    def _refuse(self, line: int, problem: str) -> StoreError:
        return StoreError(f"{self.path}:{line}: {problem}; nothing changed", "bad-file")

    def __iter__(self) -> Iterator[tuple[list[bytes], list[bytes]]]:
        stream = self.stream
        first_line = stream.readline(len(MARKD_MAGIC) + 64)
        self.line_no = 1
        self._check_magic(first_line)
        while block := stream.read(_MARKD_BLOCK_BYTES):
            if not block.endswith(b"\n"):
                block += stream.readline()  # the rest of the last line (at most 1 MiB)
                if not block.endswith(b"\n"):  # the file's last line has no newline
                    block += b"\n"
            if self.declared_rows is not None:
                raise self._refuse(self.end_line + 1, "a line after #end")
            block = self._take_end(block)
            if not self.rows_started:
                block = self._take_attrs(block)
            if block:
                yield self._rows(block)
                self.reader._tick(stream, self.size)
        if self.declared_rows is None:
            raise self._refuse(
                self.line_no + 1, "no #end line: the file is cut short (or is not whole)"
            )
        if self.declared_rows != self.row_lines:
            raise self._refuse(
                self.end_line,
                f"#end says {self.declared_rows:,} rows but the file holds {self.row_lines:,}",
            )

    def _check_magic(self, line: bytes) -> None:
        line = line.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n")
        head, _, version = line.partition(b" ")
        if head != MARKD_MAGIC:
            raise self._refuse(
                1,
                f"not a markd snapshot: the first line must be '{MARKD_MAGIC.decode()} "
                f"{MARKD_VERSION}'",
            )
        if version != str(MARKD_VERSION).encode():
            raise self._refuse(
                1,
                f"markd snapshot format version {printable(version.decode('ascii', 'replace'))!r}"
                f"; this markd reads version {MARKD_VERSION} (export with --format csv for "
                "kiosks of different versions, or upgrade this one)",
            )

    def _take_attrs(self, block: bytes) -> bytes:
        """Read the ``#attr`` lines at the head of ``block``; return what follows them."""
        while block.startswith(b"#attr"):
            end = block.index(b"\n") + 1
            line, block = block[: end - 1], block[end:]
            self.line_no += 1
            self._attr(line.rstrip(b"\r"))
        if block:
            self.rows_started = True
        return block

    def _attr(self, line: bytes) -> None:
        m = _MARKD_ATTR.fullmatch(line)
        if m is None:
            self.problems.add(self.line_no, "an #attr line is #attr<TAB>NUMBER<TAB>JSON")
            return
        number, raw = m.groups()
        self.attr_lines += 1
        if self.attr_lines > _Attrs.LIMIT:
            raise self._refuse(self.line_no, f"more than {_Attrs.LIMIT:,} #attr lines")
        try:
            pair = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, deep nesting
            problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            self.problems.add(self.line_no, f"#attr {number.decode()}: not JSON ({problem})")
            return
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
        ):
            self.problems.add(
                self.line_no, f"#attr {number.decode()}: must be a JSON [reason, source]"
            )
            return
        reason, source = pair
        for what, text in (("reason", reason), ("source", source)):
            problem = control_problem(text, what)
            if problem is not None:
                self.problems.add(self.line_no, f"#attr {number.decode()}: {problem}")
                return
        if number in self.attrs:
            self.problems.add(self.line_no, f"#attr {number.decode()} is declared twice")
            return
        try:
            self.attrs[number] = self.reader.attrs.id(reason[:TEXT_KEPT], source[:TEXT_KEPT])
        except StoreError as exc:  # too many distinct pairs
            raise self._refuse(self.line_no, exc.message.rstrip(".")) from None

    def _take_end(self, block: bytes) -> bytes:
        """Cut the ``#end`` line off the last block of the file (checked after every row)."""
        start = block.rfind(b"\n", 0, len(block) - 1) + 1
        last = block[start:-1].rstrip(b"\r")
        if not last.startswith(b"#end"):
            return block
        rest = block[:start]
        m = _MARKD_END.fullmatch(last)
        self.end_line = self.line_no + rest.count(b"\n") + 1
        if m is None:
            raise self._refuse(self.end_line, "the #end line is #end<TAB>ROWS")
        self.declared_rows = int(m.group(1))
        return rest

    def _rows(self, block: bytes) -> tuple[list[bytes], list[bytes]]:
        result = None
        if (
            b"#" not in block
            and b"\r" not in block
            and _MARKD_BLOCK.fullmatch(block)
            and not _GS_IN_KEY.search(block)
        ):
            result = self._quick(block)
        if result is None:
            lines = block.count(b"\n")
            result = self._line_by_line(block, lines)
        else:
            lines = len(result[0])  # every line a row
        self.line_no += lines
        self.row_lines += lines
        self.reader.rows += len(result[0])
        return result

    def _quick(self, block: bytes) -> tuple[list[bytes], list[bytes]] | None:
        if b"|" in block:
            self.series = True
            block = block.replace(b"|", keys.SERIES_SEPARATOR)
        fields = block.replace(b"\n", b"\t").split(b"\t")
        fields.pop()  # after the last newline
        block_keys = fields[0::3]
        try:
            values = list(
                map(
                    BLOCK_VALUE.pack,
                    map(int, fields[1::3]),
                    map(self.attrs.__getitem__, fields[2::3]),
                )
            )
        except (KeyError, struct.error):  # an undeclared attr, a since of 2**32 or more
            return None
        self.ordered = all(map(operator.lt, block_keys, itertools.islice(block_keys, 1, None)))
        if self.ordered:
            gtins = _sorted_gtins(block_keys)
        else:
            gtins = set(map(_gtin_of_key, block_keys))
        if not _all_valid(gtins, self.valid_gtins):
            return None
        return block_keys, values

    def _line_by_line(self, block: bytes, lines: int) -> tuple[list[bytes], list[bytes]]:
        block_keys: list[bytes] = []
        values: list[bytes] = []
        for offset, line in enumerate(block.split(b"\n")[:lines]):
            at = self.line_no + offset + 1
            m = _MARKD_ROW.fullmatch(line.rstrip(b"\r"))
            if m is None and not line and at in self.problems.long_lines:
                continue  # what is left of a line dropped as too long (already counted)
            if m is None:
                if line.startswith(b"#end"):  # not the last line: something follows it
                    raise self._refuse(at + 1, "a line after #end")
                if line.startswith(b"#"):
                    self.problems.add(at, "#attr lines come before every row, #end last")
                else:
                    shown = keys.excerpt(line.decode("ascii", "replace"))
                    self.problems.add(at, f"{shown} is not a row KEY<TAB>SINCE<TAB>ATTR")
                continue
            key, since_text, number = m.groups()
            if _GS_IN_KEY.search(key):
                # "<GS>" is made of GS1 characters: a full code written out, crypto tail and
                # all. A snapshot holds a КИ alone; never store the tail as part of a key.
                self.problems.add(
                    at,
                    f"{keys.excerpt(key.decode('ascii'))} is a full code with a written-out "
                    "GS, not a key; a markd snapshot holds the КИ alone",
                )
                continue
            if b"|" in key:
                self.series = True
                key = key.replace(b"|", keys.SERIES_SEPARATOR)
            since = int(since_text)
            ident = self.attrs.get(number)
            gtin = _gtin_of_key(key)
            if ident is None:
                self.problems.add(at, f"attr {number.decode()} has no #attr line before the rows")
            elif since >= 1 << 32:
                self.problems.add(at, f"since {since} is out of range")
            elif not gtin_is_valid(gtin.decode()):
                self.problems.add(at, f"GTIN {gtin.decode()} has a wrong check digit")
            else:
                block_keys.append(key)
                values.append(BLOCK_VALUE.pack(since, ident))
        self.ordered = all(map(operator.lt, block_keys, itertools.islice(block_keys, 1, None)))
        return block_keys, values


def _sorted_gtins(sorted_keys: list[bytes]) -> set[bytes]:
    """The GTINs of stored keys in strict key order, found by jumping over the run of keys of
    each GTIN (a block holds tens of GTINs for about a hundred thousand keys)."""
    found: set[bytes] = set()
    at, count = 0, len(sorted_keys)
    while at < count:
        key = sorted_keys[at]
        gtin = _gtin_of_key(key)
        found.add(gtin)
        if len(key) > 14 and key[14:15] != keys.SERIES_SEPARATOR:
            # КИ keys of this GTIN: all of them, and only they, start 01 + GTIN + 21.
            past = b"01" + gtin + b"21\xff"
        else:
            # The GTIN key, then its series keys (GTIN + 0x1F + printable characters).
            past = gtin + b"\x20"
        at = bisect.bisect_left(sorted_keys, past, at + 1)
    return found


def _gtin_of_key(key: bytes) -> bytes:
    """The GTIN of a stored key: a КИ's (after ``01``), or the first 14 bytes of the rest."""
    if len(key) > 14 and key[14:15] != keys.SERIES_SEPARATOR:
        return key[2:16]
    return key[:14]


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class _Chunk:
    """Rows as parallel lists: keys, and values (``None``: every row has ``value``)."""

    keys: list[bytes]
    values: list[bytes] | None
    value: bytes
    #: Whether a key may be a series key (False: known to hold none, so nobody looks).
    series: bool = True
    #: Known to be in strict key order (the reader checked it on the way).
    ordered: bool = False

    def __len__(self) -> int:
        return len(self.keys)

    def pairs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        keys_slice = self.keys[start:end]
        if self.values is None:
            return zip(keys_slice, itertools.repeat(self.value))
        return zip(keys_slice, self.values[start:end], strict=True)

    def sorted_unique(self) -> tuple[_Chunk, bool]:
        """The chunk in key order without repeated keys, and whether it came sorted."""
        keys_in = self.keys
        if self.values is None:
            ordered = sorted(keys_in)
            came_sorted = ordered == keys_in
            if any(map(operator.eq, ordered, itertools.islice(ordered, 1, None))):
                ordered = list(dict.fromkeys(ordered))
            return _Chunk(ordered, None, self.value, self.series), came_sorted
        if self.ordered or all(map(operator.lt, keys_in, itertools.islice(keys_in, 1, None))):
            return self, True  # in strict key order already (a markd snapshot): nothing to do
        order = sorted(range(len(keys_in)), key=keys_in.__getitem__)
        ordered = list(map(keys_in.__getitem__, order))
        came_sorted = ordered == keys_in
        values = list(map(self.values.__getitem__, order))
        if any(map(operator.eq, ordered, itertools.islice(ordered, 1, None))):
            unique = dict(zip(ordered, values, strict=True))  # a later row's value wins
            ordered, values = list(unique), list(unique.values())
        return _Chunk(ordered, values, self.value, self.series), came_sorted


class _SlotWriter:
    """Appends rows in key order into the inactive slot, in transactions of about
    ``commit_rows`` rows: smaller chunks (a markd snapshot's blocks) wait for the next ones, so
    the cost of a commit (two fsyncs) is paid once for every ``commit_rows`` rows, not per
    chunk. :meth:`flush` commits what waits; nothing waiting is in the slot yet."""

    def __init__(self, store: Store, slot: Any, commit_rows: int) -> None:
        self.store = store
        self.env, _ = store._internal()
        self.slot = slot
        self.commit_rows = commit_rows
        self.counts = {"ki": 0, "gtin": 0, "series": 0}
        self.last: bytes | None = None
        self._waiting: list[tuple[_Chunk, int, int]] = []
        self._waiting_rows = 0

    def write(self, chunk: _Chunk) -> None:
        for start in range(0, len(chunk), self.commit_rows):
            end = min(start + self.commit_rows, len(chunk))
            self._waiting.append((chunk, start, end))
            self._waiting_rows += end - start
            if self._waiting_rows >= self.commit_rows:
                self.flush()
            batch = chunk.keys[start:end]
            gtins = list(map(len, batch)).count(14)
            series = 0
            if chunk.series and keys.SERIES_SEPARATOR in b"".join(batch):  # rare
                series = sum(
                    map(bytes.__contains__, batch, itertools.repeat(keys.SERIES_SEPARATOR))
                )
            self.counts["gtin"] += gtins
            self.counts["series"] += series
            self.counts["ki"] += len(batch) - gtins - series
            self.last = batch[-1]

    def flush(self) -> None:
        """Commit every waiting row, in one transaction."""
        if not self._waiting:
            return
        for _ in range(40):
            try:
                with self.env.begin(write=True) as txn:
                    cursor = txn.cursor(db=self.slot)
                    for chunk, start, end in self._waiting:
                        consumed, added = cursor.putmulti(chunk.pairs(start, end), append=True)
                        if consumed != end - start or added != end - start:
                            raise StoreError(
                                "the store refused part of a batch (keys out of order)"
                            )
                self._waiting, self._waiting_rows = [], 0
                return
            except lmdb.MapFullError:
                self.store.grow_map()
            except lmdb.Error as exc:
                raise _store_error(self.store.path, "importing into", exc) from exc
        raise StoreError(f"importing into {self.store.path}: the map could not grow enough")


def _dedupe_keys(items: Iterable[Any], key: Callable[[Any], bytes] | None = None) -> Iterator[Any]:
    last = None
    for item in items:
        k = item if key is None else key(item)
        if k != last:
            last = k
            yield item


class _Runs:
    """Sorted chunks spilled to files beside the store, merged back in key order."""

    #: Rows in one pickled batch of a run file. The merge holds one batch of every run at
    #: once: about 0.6 MB a run of CSV rows (with 50,000 rows it was 7 MB a run, 150 MB for
    #: the 20 runs of a shuffled 10 M-row CSV).
    _BATCH = 4_096
    #: Runs merged at once. One run more first merges those so far into one (a pass over them
    #: on disk), so a merge never holds more than this many batches, however long the file:
    #: 64 runs of 250,000 CSV rows take a file of 16 M rows in one pass.
    _FAN_IN = 64

    def __init__(self, store_path: str) -> None:
        base = ownership.writable_directory(Path(store_path) / "tmp", store_path)
        self.dir = Path(tempfile.mkdtemp(prefix="import-", dir=base))
        self.files: list[Path] = []
        self.values: set[bytes | None] = set()  # the constant value of keys-only runs
        self._named = 0  # run files named so far

    def add(self, chunk: _Chunk) -> None:
        """Spill one sorted chunk (written in batches)."""
        if len(self.files) >= self._FAN_IN:
            self._merge_runs()
        path = self._new_path()
        with open(path, "wb") as f:
            self._dump(chunk, f)
        self.files.append(path)
        self.values.add(chunk.value if chunk.values is None else None)

    def add_sorted(self, rows: Iterator[tuple[bytes, bytes]], value: bytes) -> None:
        """Spill (key, value) rows already in key order as one run, a batch at a time; a batch
        whose every row has ``value`` is kept as keys alone."""
        path = self._new_path()
        with open(path, "wb") as f:
            while True:
                batch_keys, batch_values = _take_pairs(rows, self._BATCH)
                if not batch_keys:
                    break
                constant = batch_values.count(value) == len(batch_values)
                self._dump(_Chunk(batch_keys, None if constant else batch_values, value), f)
                self.values.add(value if constant else None)
        self.files.append(path)

    def _new_path(self) -> Path:
        self._named += 1
        return self.dir / f"run-{self._named:05d}"

    def _dump(self, chunk: _Chunk, f: IO[bytes]) -> None:
        for start in range(0, len(chunk), self._BATCH):
            end = start + self._BATCH
            values = None if chunk.values is None else chunk.values[start:end]
            pickle.dump((chunk.keys[start:end], values), f, protocol=pickle.HIGHEST_PROTOCOL)

    def _merge_runs(self) -> None:
        """Replace every run so far with one run of their merge. It takes their place first in
        line, so a key in several runs keeps the row it had (the first run's)."""
        constant = self._constant()
        path = self._new_path()
        with open(path, "wb") as f:
            for chunk in self.merged_chunks(self._BATCH):
                self._dump(chunk, f)
        for merged in self.files:
            merged.unlink()
        self.files, self.values = [path], {constant}

    def _constant(self) -> bytes | None:
        """The one value of every row when all runs hold keys alone (text), else None."""
        if len(self.values) == 1 and None not in self.values:
            return next(iter(self.values))
        return None

    def _read(self, path: Path, pairs: bool) -> Iterator[Any]:
        with open(path, "rb") as f:
            while True:
                try:
                    batch_keys, batch_values = pickle.load(f)  # noqa: S301 - our own file
                except EOFError:
                    return
                if not pairs:
                    yield from batch_keys
                elif batch_values is None:
                    value = next(iter(self.values - {None}))
                    yield from zip(batch_keys, itertools.repeat(value))
                else:
                    yield from zip(batch_keys, batch_values, strict=True)

    def merged(self) -> tuple[Iterator[Any], bytes | None]:
        """The rows of every run in key order, each key once; keys alone when every run had
        one constant value (text imports), else (key, value) pairs."""
        value = self._constant()
        if value is not None:
            streams = [self._read(p, pairs=False) for p in self.files]
            return _dedupe_keys(heapq.merge(*streams)), value
        streams = [self._read(p, pairs=True) for p in self.files]
        return _dedupe_keys(heapq.merge(*streams), key=operator.itemgetter(0)), None

    def merged_chunks(self, rows: int) -> Iterator[_Chunk]:
        """:meth:`merged` as chunks of ``rows`` rows in key order, each read only once the
        one before is let go."""
        stream, value = self.merged()
        while True:
            if value is not None:
                chunk = _Chunk(list(itertools.islice(stream, rows)), None, value)
            else:
                chunk = _Chunk(*_take_pairs(stream, rows), b"")
            if not len(chunk):
                return
            yield chunk
            del chunk

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _spill_slot(store: Store, slot: Any, runs: _Runs, default_value: bytes) -> None:
    """Copy what the slot holds into one run (it is in key order already)."""
    env, _ = store._internal()
    with env.begin() as txn:
        runs.add_sorted(((bytes(k), bytes(v)) for k, v in txn.cursor(db=slot)), default_value)


@contextlib.contextmanager
def _exclusive(store: Store, what: str) -> Iterator[None]:
    """One import or delta at a time per store: two imports would fill the same inactive slot.

    An advisory lock on ``<store>/import.lock``, released by the kernel when the holder dies
    (so ``kill -9`` never leaves the store locked).
    """
    path = Path(store.path) / "import.lock"
    try:
        handle = open(path, "a")  # noqa: SIM115 - closed below
    except PermissionError as exc:  # left owned by root by an older markctl run as root
        raise ownership.denied(path, "read and write it", store.path) from exc
    except OSError as exc:
        raise StoreError(f"cannot lock {path}: {exc.strerror}") from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"another import, delta or sync is writing {store.path}; try again when it "
                "has finished",
                "store-busy",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clean_tmp(store_path: str) -> None:
    """Remove sort runs left by an import that was killed."""
    for stale in (Path(store_path) / "tmp").glob("import-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _existing_attrs(store: Store) -> dict[tuple[str, str], int]:
    env, dbs = store._internal()
    with env.begin() as txn:
        return {
            tuple(json.loads(v)): struct.unpack(">I", k)[0]  # type: ignore[misc]
            for k, v in txn.cursor(db=dbs[b"attrs"])
        }


def _write_attrs(txn: lmdb.Transaction, dbs: dict[bytes, Any], attrs: _Attrs) -> None:
    for (reason, source), ident in attrs.new.items():
        value = json.dumps([reason, source], ensure_ascii=False).encode()
        txn.put(struct.pack(">I", ident), value, db=dbs[b"attrs"])


def import_snapshot(
    store: Store,
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    version: int | None = None,
    source: str | None = None,
    reason: str = DEFAULT_REASON,
    since: int | None = None,
    skip_bad: bool = False,
    force: bool = False,
    allow_empty: bool = False,
    synced_at: int | None = None,
    progress: Progress | None = None,
    chunk_rows: int = 500_000,
    commit_rows: int = 250_000,
) -> ImportResult:
    """Replace the blocklist with the rows of ``path``; see the module docstring.

    A file that yields no row at all is refused unless ``allow_empty`` (an empty or truncated
    download must not wipe the list). ``synced_at`` is when the list was known current (the
    master's time for a fleet sync); default now.
    """
    if store.readonly:
        raise StoreError(f"store {store.path} is open read-only", "store-readonly")
    if version is not None and not 1 <= version < MAX_VERSION:
        raise StoreError(f"version {version} must be from 1 to {MAX_VERSION - 1}", "bad-version")
    for what, text in (("reason", reason), ("source", source or "")):
        problem = control_problem(text, what)
        if problem is not None:
            raise StoreError(problem, "bad-text")
    with _exclusive(store, "import"):
        _clean_tmp(store.path)
        try:
            return _import_locked(
                store,
                path,
                fmt,
                version=version,
                source=source,
                reason=reason,
                since=since,
                skip_bad=skip_bad,
                force=force,
                allow_empty=allow_empty,
                synced_at=synced_at,
                progress=progress,
                chunk_rows=chunk_rows,
                commit_rows=commit_rows,
            )
        except OSError as exc:
            # Run files and reads outside LMDB: a full disk must read like one, never a trace.
            if exc.errno == errno.ENOSPC:
                raise StoreError(
                    f"importing into {store.path}: no space left on device (for sort runs in "
                    f"{Path(store.path) / 'tmp'}); the previous blocklist version is intact",
                    "store-disk-full",
                ) from exc
            raise StoreError(f"importing into {store.path}: {exc}") from exc


def _import_locked(
    store: Store,
    path: str | os.PathLike[str],
    fmt: str | None,
    *,
    version: int | None,
    source: str | None,
    reason: str,
    since: int | None,
    skip_bad: bool,
    force: bool,
    allow_empty: bool,
    synced_at: int | None,
    progress: Progress | None,
    chunk_rows: int,
    commit_rows: int,
) -> ImportResult:
    started = time.monotonic()
    env, dbs = store._internal()
    fmt = fmt or detect_format(path)
    now = int(time.time())
    # A file name may hold anything a file system allows: the default source is its
    # printable form (markd.text), so it is as clean as a source a file gives.
    source = source or printable(os.path.basename(str(path)))
    current = store.info()
    if version is None:
        version = current.version + 1
    elif version <= current.version and not force:
        raise StoreError(
            f"snapshot version {version} is not newer than the store's version "
            f"{current.version}; refusing to go back (force it if that is meant)",
            "stale-snapshot",
        )
    problems = _Problems(str(path), skip_bad)
    attrs = _Attrs(_existing_attrs(store))
    reader = _Reader(
        path,
        fmt,
        attrs,
        problems,
        reason=reason,
        source=source,
        since=since or now,
        chunk_rows=chunk_rows,
        progress=progress,
    )

    with env.begin() as txn:
        live_name = txn.get(b"current", db=dbs[b"meta"]) or b"0"
    target_index = 0 if live_name == b"1" else 1
    target = dbs[_SLOTS[target_index]]

    def empty_target(txn: lmdb.Transaction) -> None:
        txn.drop(target, delete=False)

    store._write(empty_target, "preparing an import into")
    writer = _SlotWriter(store, target, commit_rows)
    runs: _Runs | None = None
    in_order = True
    try:
        for chunk in reader.chunks():
            problems.raise_if_any("import")  # stop early: the file will be refused anyway
            ordered, came_sorted = chunk.sorted_unique()
            # Held no longer than needed: the reader builds the next chunk while these names
            # would still hold this one (two chunks at once: the peak of a CSV import).
            del chunk
            if not len(ordered):
                continue
            follows = writer.last is None or ordered.keys[0] > writer.last
            if runs is None and came_sorted and follows:
                writer.write(ordered)  # the fast path: straight into the slot, in order
                del ordered
                continue
            if runs is None:
                in_order = False
                runs = _Runs(store.path)
                if writer.last is not None:
                    writer.flush()
                    # Earlier chunks went straight into the slot; spill them as a run too
                    # (streamed), and refill the slot from the merge.
                    _spill_slot(store, target, runs, reader.default_value)
                    store._write(empty_target, "restarting an import into")
                    writer = _SlotWriter(store, target, commit_rows)
            runs.add(ordered)
            del ordered
            if progress is not None:
                progress("sort", 0, None, reader.rows)
        problems.raise_if_any("import")
        if runs is not None:
            if progress is not None:
                progress("merge", 0, None, reader.rows)
            for merged in runs.merged_chunks(commit_rows):
                writer.write(merged)
                del merged  # not held while the next chunk is merged
        writer.flush()
    except BaseException:
        # Give back the space the half-written slot holds (best effort: on a full disk even
        # this write may fail; the next import empties the slot anyway).
        with contextlib.suppress(StoreError):
            store._write(empty_target, "cleaning up after a failed import into")
        raise
    finally:
        if runs is not None:
            runs.close()

    if not any(writer.counts.values()) and not allow_empty:
        with contextlib.suppress(StoreError):
            store._write(empty_target, "cleaning up after a refused import into")
        raise StoreError(
            f"{path} holds no blocklist row ({reader.rows} read, {problems.count} bad); "
            "refusing to empty the blocklist; if that is meant, import it again with "
            "--allow-empty (markctl store import FILE --allow-empty)",
            "empty-snapshot",
        )

    def flip(txn: lmdb.Transaction) -> StoreInfo:
        _write_attrs(txn, dbs, attrs)
        txn.put(b"current", b"1" if target_index == 1 else b"0", db=dbs[b"meta"])
        txn.drop(dbs[_SLOTS[1 - target_index]], delete=False)
        txn.drop(dbs[b"deltas"], delete=False)
        return store._update_info(
            txn,
            version=version,
            source=source,
            synced_at=now if synced_at is None else min(synced_at, now),
            imported_at=now,
            counts=dict(writer.counts),
            signed=False,  # a signed sync that imported it says so afterwards
        )

    if progress is not None:
        progress("switch", 0, None, reader.rows)
    store._write(flip, "switching to the new blocklist in")
    return ImportResult(
        version=version,
        rows=reader.rows,
        stored=dict(writer.counts),
        skipped=problems.count,
        problems=list(problems.listed),
        sorted_input=in_order,
        seconds=time.monotonic() - started,
    )


# ---------------------------------------------------------------------------------------------
# Deltas


def read_delta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate a delta file; return ``{header…, "changes": [(op, row), …]}``."""
    stream, _ = _open_binary(path)
    problems = _Problems(str(path), skip_bad=False)
    header: dict[str, Any] | None = None
    changes: list[tuple[str, dict[str, Any]]] = []
    with stream:
        for line_no, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (ValueError, RecursionError) as exc:  # too deeply nested: not a change either
                problems.add(line_no, f"not JSON: {exc}")
                continue
            if header is None:
                if not isinstance(item, dict) or item.get("format") != "markd-delta":
                    raise StoreError(
                        f"{path}:{line_no}: a delta starts with a header line "
                        '{"format": "markd-delta", "version": N, "previous": N-1}',
                        "bad-file",
                    )
                ver = item.get("version")
                prev = item.get("previous", ver - 1 if isinstance(ver, int) else None)
                if not isinstance(ver, int) or isinstance(ver, bool) or not 1 <= ver < MAX_VERSION:
                    raise StoreError(
                        f"{path}:{line_no}: version must be an integer from 1 to {MAX_VERSION - 1}",
                        "bad-file",
                    )
                if not isinstance(prev, int) or isinstance(prev, bool) or prev >= ver:
                    raise StoreError(
                        f"{path}:{line_no}: previous must be an integer below version", "bad-file"
                    )
                source = str(item.get("source", ""))
                problem = control_problem(source, "source")
                if problem is not None:
                    raise StoreError(f"{path}:{line_no}: {problem}", "bad-file")
                header = {"version": ver, "previous": prev, "source": source}
                continue
            if len(changes) >= MAX_DELTA_CHANGES:
                raise StoreError(
                    f"{path}:{line_no}: more than {MAX_DELTA_CHANGES:,} changes in one delta; "
                    "nothing changed (a change that big is a snapshot: markctl store import)",
                    "bad-file",
                )
            if not isinstance(item, dict) or item.get("op") not in ("add", "remove"):
                problems.add(line_no, 'each change is {"op": "add"|"remove", "ki"|"gtin": …}')
                continue
            row = {k: v for k, v in item.items() if k != "op"}
            extra = set(row) - set(CSV_COLUMNS)
            if extra:
                problems.add(line_no, f"unknown keys {', '.join(sorted(extra))}")
                continue
            try:
                row_key(row)
                _since_of(row.get("since"), 0)
                for name in ("reason", "source"):
                    if not isinstance(row.get(name, ""), str):
                        raise BadKey(f"{name} must be a string")
                _clean_text(row)
            except BadKey as exc:
                problems.add(line_no, str(exc))
                continue
            for name in ("reason", "source"):
                if name in row:
                    # The store keeps 200 characters of each (TextRows): only those are held,
                    # so a delta of long reasons is bounded by its count of changes.
                    row[name] = row[name][:TEXT_KEPT]
            changes.append((item["op"], row))
    if header is None:
        raise StoreError(f"{path}: empty delta (no header line)", "bad-file")
    problems.raise_if_any("delta")
    return {**header, "changes": changes}


def apply_delta(
    store: Store,
    delta: dict[str, Any] | str | os.PathLike[str],
    *,
    synced_at: int | None = None,
) -> DeltaResult:
    """Apply one delta in one transaction, only on top of the version it names.

    ``synced_at``: when the list was known current (the master's time for a fleet sync).
    """
    if not isinstance(delta, dict):
        delta = read_delta(delta)
    with _exclusive(store, "delta"):
        return _apply_delta_locked(store, delta, synced_at)


def _apply_delta_locked(store: Store, delta: dict[str, Any], synced_at: int | None) -> DeltaResult:
    env, dbs = store._internal()
    version, previous = delta["version"], delta["previous"]
    attrs = _Attrs(_existing_attrs(store))
    now = int(time.time())
    source = delta.get("source") or "delta"

    def write(txn: lmdb.Transaction) -> DeltaResult:
        info = StoreInfo.decode(txn.get(b"info", db=dbs[b"meta"]))
        if version <= info.version:
            raise StoreError(
                f"delta {version} is already applied (the store is at version {info.version})",
                "duplicate-delta",
            )
        if previous != info.version:
            raise StoreError(
                f"delta {version} applies on top of version {previous}, but the store is at "
                f"version {info.version}: apply deltas {info.version + 1}…{previous} first, "
                "or import a snapshot",
                "out-of-order-delta",
            )
        slot = dbs[_SLOTS[(txn.get(b"current", db=dbs[b"meta"]) or b"0") == b"1"]]
        added = removed = unchanged = 0
        for op, row in delta["changes"]:
            key = row_key(row)
            kind = keys.key_kind(key)
            if op == "add":
                since = _since_of(row.get("since"), now)
                attr = attrs.id(row.get("reason") or DEFAULT_REASON, row.get("source") or source)
                old = txn.replace(key, BLOCK_VALUE.pack(since, attr), db=slot)
                if old is None:
                    added += 1
                    info.counts[kind] += 1
                else:
                    unchanged += 1
            else:
                if txn.pop(key, db=slot) is not None:
                    removed += 1
                    info.counts[kind] -= 1
                else:
                    unchanged += 1
        _write_attrs(txn, dbs, attrs)
        record = {
            "version": version,
            "previous": previous,
            "source": source,
            "applied_at": now,
            "changes": delta["changes"],
        }
        history = dbs[b"deltas"]
        txn.put(
            struct.pack(">Q", version), json.dumps(record, ensure_ascii=False).encode(), db=history
        )
        excess = txn.stat(history)["entries"] - store.delta_history
        if excess > 0:
            cursor = txn.cursor(db=history)
            cursor.first()
            for _ in range(excess):
                cursor.delete()
        info.version = version
        info.synced_at = now if synced_at is None else min(synced_at, now)
        info.source = source
        info.signed = False  # a signed sync that applied it says so afterwards
        txn.put(b"info", info.encode(), db=dbs[b"meta"])
        return DeltaResult(version, added, removed, unchanged)

    return store._write(write, "applying a delta to")
