"""The sale session's journal: what markd was doing with the ККТ, durable across a crash.

One JSON object per line, appended and fsync'd before the step it announces is taken (or right
after a device answer, before anything else happens), so a process killed at any instant
leaves a journal that says how far the receipt got. A line torn by the kill is ignored when
reading. Each record has ``at`` (ISO-8601 UTC), ``event`` and ``receipt`` (the receipt's id;
null for a unit refused before any receipt was open), plus the event's facts — КИ, tags,
document numbers, never a full marking code.

The ККТ must get the full code again if a receipt has to be registered anew after a crash, so
the codes of the receipt in flight are kept beside the journal, in ``<journal>.codes`` (mode
0600, replaced atomically), and that file is deleted as soon as the receipt is closed or
cancelled: it is the session's working memory, not a record, and it never holds more than one
receipt. Recovery deletes it too when no receipt is in flight (a kill between journaling the
end of a receipt and deleting the file leaves it behind), and deletes a ``<journal>.codes.tmp``
a kill left between writing and renaming it.

What became of each receipt is also kept by id in the receipt index, ``<journal>.index``
(:mod:`markd.fiscal.receipt_index`): every record that changes a receipt's state is folded
into it right after the record is on disk, and recovery folds the journal in again at start.

When the journal grows past :data:`ROTATE_BYTES` and nothing is in flight, it is renamed to
``<journal>.1`` (one generation kept) and a new one started. The records of receipts recovery
still has work for (a store or Local Module update to replay), and of the receipt whose close
rotated it (the close's answer is journaled next), are carried on into the new journal, so
rotating never loses them: recovery reads the current journal only. Records of a receipt whose
``open`` is not in the journal are a fragment (an answer journaled after its start was rotated
away): recovery leaves them and the index folds them onto the receipt's summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from markd.errors import FiscalError
from markd.fiscal.receipt_index import ReceiptIndex

DEFAULT_PATH = "/var/lib/markd/fiscal/session.journal"
ROTATE_BYTES = 4 << 20


class JournalUnavailable(FiscalError):
    """The journal's directory cannot be created (a wrong ``[fiscal] journal`` path, or one
    the service user may not write). Permanent: no sale may run without its journal, and
    starting again changes nothing until a person fixes the path or its ownership."""

    reason = "journal-unavailable"
    permanent = True


class SessionJournal:
    """The journal file at ``path`` (its directory is created when missing)."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH) -> None:
        self.path = Path(path)
        self.codes_path = self.path.with_name(self.path.name + ".codes")
        self.codes_tmp_path = self.codes_path.with_name(self.codes_path.name + ".tmp")
        #: Each receipt's state by id (opened on first use).
        self.index = ReceiptIndex(self.path.with_name(self.path.name + ".index"))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalUnavailable(
                f"[fiscal] journal: cannot create the directory of {self.path}: "
                f"{exc.strerror or exc}"
            ) from exc

    def append(self, event: str, receipt: str | None, **facts: Any) -> dict[str, Any]:
        """Write one record and fsync it; returns the record."""
        record = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            "receipt": receipt,
            **facts,
        }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
        new = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # the last line was torn by a kill: start a new one
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.path.parent)
        self.index.note(record)
        return record

    def sync_index(self, records: list[dict[str, Any]]) -> None:
        """Fold ``records`` (this journal's, as :meth:`records` read them) into the receipt
        index again; an index created anew (missing or corrupt) gets ``<journal>.1`` first.
        Raises :class:`~markd.fiscal.receipt_index.IndexUnavailable` when it cannot be
        written."""
        generations: list[list[dict[str, Any]]] = []
        self.index.get("")  # opens it: a corrupt file is moved aside and a new one made
        if self.index.created:
            generations.append(list(self._read(self.path.with_name(self.path.name + ".1"))))
        generations.append(records)
        self.index.sync(generations)

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, oldest first."""
        fresh = self.path.with_name(self.path.name + ".new")
        if not self.path.exists() and fresh.exists():
            # A rotation without hard links was killed between its two renames: the new
            # journal, complete, is still aside.
            os.replace(fresh, self.path)
            _fsync_dir(self.path.parent)
        return list(self._read(self.path))

    def by_receipt(self) -> dict[str, list[dict[str, Any]]]:
        """Records grouped by receipt id, receipts in the order they were opened."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for record in self.records():
            receipt = record.get("receipt")
            if isinstance(receipt, str):
                grouped.setdefault(receipt, []).append(record)
        return grouped

    # -- codes of the receipt in flight ---------------------------------------------------------

    def put_code(self, receipt: str, unit: str, km: str) -> None:
        """Keep ``km`` for ``unit`` of ``receipt`` (replacing codes of any other receipt)."""
        data = self.codes(receipt)
        data[unit] = km
        tmp = self.codes_tmp_path
        payload = json.dumps({"receipt": receipt, "codes": data}, ensure_ascii=False).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.codes_path)
        _fsync_dir(self.codes_path.parent)

    def codes(self, receipt: str) -> dict[str, str]:
        """The kept codes of ``receipt`` by unit id (empty when they belong to another)."""
        try:
            data = json.loads(self.codes_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("receipt") != receipt:
            return {}
        codes = data.get("codes")
        return dict(codes) if isinstance(codes, dict) else {}

    def drop_codes(self) -> None:
        """Delete the kept codes (and a half-written copy of them)."""
        removed = False
        for path in (self.codes_path, self.codes_tmp_path):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed = True
        if removed:
            _fsync_dir(self.codes_path.parent)

    def discard_partial_codes(self) -> None:
        """Delete ``<journal>.codes.tmp``: a kill between writing it and renaming it into place
        leaves it, full codes included, and nothing else would ever remove it. Call only while
        no :meth:`put_code` runs (the session calls it from recovery, under its lock)."""
        try:
            self.codes_tmp_path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(self.codes_path.parent)

    def rotate_if_large(
        self,
        limit: int = ROTATE_BYTES,
        keep: Callable[[list[dict[str, Any]]], Collection[str]] | None = None,
    ) -> bool:
        """Start a new journal when this one is larger than ``limit`` bytes (call only when no
        receipt is in flight). ``keep`` is given every record and names the receipts whose
        records go on into the new journal, in their order. Returns True when it rotated.

        The new journal is written aside first and renamed into place while the old one is
        still reachable under a second name, so a kill at any instant leaves a journal that
        holds every record recovery needs (at worst ``<journal>.1`` is one generation old).
        """
        try:
            if self.path.stat().st_size <= limit:
                return False
        except FileNotFoundError:
            return False
        records = self.records()
        carried = set(keep(records)) if keep is not None else set()
        lines = [
            json.dumps(r, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
            for r in records
            if r.get("receipt") in carried
        ]
        fresh = self.path.with_name(self.path.name + ".new")
        old = self.path.with_name(self.path.name + ".1")
        old_link = self.path.with_name(self.path.name + ".1.new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            old_link.unlink()  # left by a kill during an earlier rotation
        except FileNotFoundError:
            pass
        try:
            os.link(self.path, old_link)  # the old records stay reachable while swapped
        except OSError:
            # No hard links here: rename, then put the new journal in place (a kill in
            # between leaves no journal but a complete <journal>.new: records() takes it).
            os.replace(self.path, old)
            os.replace(fresh, self.path)
        else:
            os.replace(fresh, self.path)
            os.replace(old_link, old)
        _fsync_dir(self.path.parent)
        return True

    @staticmethod
    def _read(path: Path) -> Iterator[dict[str, Any]]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        for line in raw.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # torn by a kill mid-write
            if isinstance(record, dict) and "event" in record:
                yield record


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
