"""The receipt index: what became of each receipt, by its id, read without reading the journal.

The session journal (:mod:`markd.fiscal.journal`) is the truth, but it is a log: finding one
receipt in it means reading the whole file (up to 4 MiB, and the receipt may have been rotated
away into ``<journal>.1`` or further). The index keeps one small summary per receipt — its
state, the fiscal document that registered it (number, fiscal sign, ФН), the payments, the
idempotency keys its close was asked with and the answer that close gave — in an SQLite
database beside the journal, ``<journal>.index``, looked up by primary key.

Each journal record that changes a receipt's summary is folded into it right after the record
is fsync'd (:meth:`ReceiptIndex.note`), in one SQLite transaction (WAL, ``synchronous=FULL``:
on disk when it returns). The index is derived: at start the session's recovery folds the
whole journal in again (:meth:`ReceiptIndex.sync`), so an update lost to a power cut or a
failed write comes back from the journal; an index that is missing or does not pass SQLite's
``quick_check`` is moved aside (``<journal>.index.corrupt``) and rebuilt from the journal and
``<journal>.1``. Receipts older than those two generations live in the index only, so every
record folded before a rotation is already durable (the transaction is).

States, in the order a receipt goes through them:

``open``
    being built (units added), nothing paid;
``closing``
    the payment is journaled: the receipt must come to exist, and is being (or waits to be)
    registered — after a refused close it stays here until closed again or cancelled;
``registered``
    fiscalised: the ФН's document number and fiscal sign (ФП, tag 1077) are known;
``cancelled``
    dropped (cancelled by the POS, interrupted before the payment, or every unit refused when
    it was registered anew after a crash);
``unknown-needs-technician``
    recovery cannot settle it by itself (too many attempts, ATOL's Web Requests queue
    blocked): a person must look at the ККТ; it may still end ``registered`` or ``cancelled``.

Bounded: the latest :data:`MAX_RECEIPTS` receipts are kept, with their keys; older ones are
pruned as new ones come. Nothing here holds a full marking code (the journal does not either).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from markd.errors import FiscalError

#: Receipts kept in the index (a kiosk's one to three months; a few KiB each); older ones
#: are pruned.
MAX_RECEIPTS = 10_000
#: Prune once per this many new receipts.
PRUNE_EVERY = 64
#: Idempotency keys one receipt's close may be asked with.
MAX_KEYS_PER_RECEIPT = 16

OPEN = "open"
CLOSING = "closing"
REGISTERED = "registered"
CANCELLED = "cancelled"
NEEDS_TECHNICIAN = "unknown-needs-technician"
#: States a receipt never leaves.
FINAL_STATES = frozenset({REGISTERED, CANCELLED})

#: Journal events that change a receipt's summary; the others (units, recovery notes) do not.
INDEXED_EVENTS = frozenset(
    {
        "open",
        "paid",
        "payments-replaced",
        "payments-adjusted",
        "closing",
        "close-failed",
        "closed",
        "cancelled",
        "needs-technician",
        "stored",
        "store-failed",
        "close-requested",
        "close-answered",
    }
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_by_seq ON receipts (seq);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY,
    receipt TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_by_receipt ON keys (receipt);
"""


class IndexUnavailable(FiscalError):
    """The receipt index cannot be read (its file damaged under a running daemon, the disk
    failing). The journal still holds the truth: the next start rebuilds the index."""

    reason = "receipt-index-unavailable"


def fold(entry: dict[str, Any] | None, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """``entry`` (a receipt's summary, None: not seen yet) with journal ``record`` folded in;
    None when the record changes nothing. Pure: the live update and the rebuild share it."""
    event = record.get("event")
    rid = record.get("receipt")
    if event not in INDEXED_EVENTS or not isinstance(rid, str):
        return None
    new = dict(entry) if entry is not None else {"id": rid, "state": None, "keys": []}
    state = new.get("state")
    final = state in FINAL_STATES
    at = record.get("at")
    if event == "open":
        new["kind"] = "return" if record.get("kind") == "return" else "sell"
        new.setdefault("opened_at", at)
        if state is None:
            new["state"] = OPEN
    elif event in ("paid", "payments-replaced", "payments-adjusted", "closing"):
        if not final:
            new["state"] = CLOSING  # after needs-technician too: a new attempt is under way
        if "payments" in record:
            new["payments"] = record.get("payments")
        if record.get("total_kopecks") is not None:
            new["total_kopecks"] = record.get("total_kopecks")
    elif event == "close-failed":
        if not final:
            new["reason"] = record.get("reason")
    elif event == "closed":
        new["state"] = REGISTERED
        new["reason"] = "recovered" if record.get("recovered") else "fiscalised"
        new["kind"] = record.get("kind") or new.get("kind")
        new["document"] = {
            key: value
            for key, value in record.items()
            if key not in ("at", "event", "receipt", "reference")
        }
        new["total_kopecks"] = record.get("total_kopecks", new.get("total_kopecks"))
        if record.get("payments"):
            new["payments"] = record.get("payments")
    elif event == "cancelled":
        if state != REGISTERED:
            new["state"] = CANCELLED
            new["reason"] = record.get("reason")
    elif event == "needs-technician":
        if final:
            return None
        new["state"] = NEEDS_TECHNICIAN
        new["reason"] = record.get("reason")
    elif event == "stored":
        new["store_ok"] = True
    elif event == "store-failed":
        new["store_ok"] = False
    elif event == "close-requested":
        key = record.get("key")
        if not isinstance(key, str) or key in new["keys"]:
            return None
        new["keys"] = [*new["keys"], key]
    elif event == "close-answered":
        new["answer"] = record.get("answer")
    if new.get("kind") is None:
        new["kind"] = "sell"
    new["updated_at"] = at
    return new


def view(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A receipt's summary as ``GET /v1/receipts/{id}`` answers it."""
    document = entry.get("document") or {}
    return {
        "id": entry["id"],
        "kind": entry.get("kind", "sell"),
        "state": entry.get("state") or OPEN,
        "reason": entry.get("reason"),
        "total_kopecks": entry.get("total_kopecks"),
        "payments": entry.get("payments") or [],
        "document_number": document.get("document_number"),
        "fiscal_sign": document.get("fiscal_sign"),
        "fn_number": document.get("fn_number"),
        "registered_at": document.get("datetime"),
        "shift_number": document.get("shift_number"),
        "store_ok": entry.get("store_ok"),
        "opened_at": entry.get("opened_at"),
        "updated_at": entry.get("updated_at"),
    }


class ReceiptIndex:
    """The index at ``path`` (an SQLite file; opened on first use). Safe to use from the
    event loop and the session's worker thread alike (one connection, one lock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        #: The index was created anew (missing, or moved aside as corrupt): the next
        #: :meth:`sync` takes ``<journal>.1`` too.
        self.created = False
        #: Why the last update failed (None: it did not). The journal has the record; the
        #: next start folds it in again.
        self.problem: str | None = None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # -- opening --------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        existed = self.path.exists()
        try:
            db = self._connect()
        except sqlite3.OperationalError:
            raise  # it cannot be opened at all (a directory, no permission): not damage
        except sqlite3.DatabaseError:
            if not self.path.is_file():
                raise
            # Not a database, or a damaged one: the journal has what it held. Keep the file
            # for a technician, start a new index, and let the next sync rebuild it.
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path.with_name(self.path.name + ".corrupt"))
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    self.path.with_name(self.path.name + suffix).unlink()
            existed = False
            db = self._connect()
        if not existed:
            self.created = True
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o640)
        self._db = db
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- reading --------------------------------------------------------------------------------

    def get(self, receipt_id: str) -> dict[str, Any] | None:
        """The summary of ``receipt_id`` (None: not in the index). Raises
        :class:`IndexUnavailable` when the index cannot be read."""
        try:
            with self._lock:
                row = (
                    self._open()
                    .execute("SELECT entry FROM receipts WHERE id = ?", (receipt_id,))
                    .fetchone()
                )
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"the receipt index {self.path} cannot be read: {exc}") from exc
        if row is None:
            return None
        try:
            entry = json.loads(row[0])
        except ValueError as exc:
            raise IndexUnavailable(f"the receipt index holds a damaged entry: {exc}") from exc
        return entry if isinstance(entry, dict) else None

    def receipt_of_key(self, key: str) -> str | None:
        """The receipt whose close was asked with idempotency ``key`` (None: none)."""
        try:
            with self._lock:
                row = (
                    self._open()
                    .execute("SELECT receipt FROM keys WHERE key = ?", (key,))
                    .fetchone()
                )
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"the receipt index {self.path} cannot be read: {exc}") from exc
        return None if row is None else str(row[0])

    # -- writing --------------------------------------------------------------------------------

    def note(self, record: Mapping[str, Any]) -> None:
        """Fold one journal record (already on disk) into its receipt's summary. A failure is
        kept in :attr:`problem`, not raised: the sale goes on, and the journal has the record
        for the next start's :meth:`sync`."""
        if record.get("event") not in INDEXED_EVENTS or not isinstance(record.get("receipt"), str):
            return
        try:
            with self._lock:
                db = self._open()
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._fold_into(db, record)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.problem = f"{type(exc).__name__}: {exc}"

    def sync(self, generations: Iterable[Iterable[Mapping[str, Any]]]) -> None:
        """Fold the journal in again, oldest generation first: each receipt whose ``open``
        record a generation holds is rebuilt from its records alone (the journal is the
        truth); a receipt that generation holds only later records of (its start was rotated
        away: a close's answer journaled since) has them folded onto its entry as it stands;
        the others are kept. Raises :class:`IndexUnavailable` when the index cannot be
        written."""
        try:
            with self._lock:
                db = self._open()
                db.execute("BEGIN IMMEDIATE")
                try:
                    for generation in generations:
                        records = list(generation)
                        started = {r.get("receipt") for r in records if r.get("event") == "open"}
                        rebuilt: dict[str, dict[str, Any] | None] = {}
                        for record in records:
                            rid = record.get("receipt")
                            if not isinstance(rid, str):
                                continue
                            if rid not in rebuilt and rid not in started:
                                rebuilt[rid] = self._entry(db, rid)
                            folded = fold(rebuilt.get(rid), record)
                            if folded is not None:
                                rebuilt[rid] = folded
                            else:
                                rebuilt.setdefault(rid, None)
                        for entry in rebuilt.values():
                            if entry is not None:
                                self._store(db, entry)
                    self._prune(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise IndexUnavailable(
                f"the receipt index {self.path} cannot be written: {exc}"
            ) from exc
        self.created = False
        self.problem = None

    @staticmethod
    def _entry(db: sqlite3.Connection, rid: str) -> dict[str, Any] | None:
        """The stored entry of ``rid`` (None: none, or a damaged one)."""
        row = db.execute("SELECT entry FROM receipts WHERE id = ?", (rid,)).fetchone()
        entry = None
        if row is not None:
            with contextlib.suppress(ValueError):
                entry = json.loads(row[0])
        return entry if isinstance(entry, dict) else None

    def _fold_into(self, db: sqlite3.Connection, record: Mapping[str, Any]) -> None:
        folded = fold(self._entry(db, str(record["receipt"])), record)
        if folded is None:
            return
        if self._store(db, folded) and self._newest(db) % PRUNE_EVERY == 0:
            self._prune(db)

    def _store(self, db: sqlite3.Connection, entry: Mapping[str, Any]) -> bool:
        """Write ``entry`` and its keys; True when the receipt is new to the index."""
        rid = entry["id"]
        text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)
        updated = db.execute("UPDATE receipts SET entry = ? WHERE id = ?", (text, rid)).rowcount
        if not updated:
            db.execute(
                "INSERT INTO receipts (id, seq, entry) VALUES (?, ?, ?)",
                (rid, self._newest(db) + 1, text),
            )
        for key in entry.get("keys") or ():
            db.execute("INSERT OR REPLACE INTO keys (key, receipt) VALUES (?, ?)", (key, rid))
        return not updated

    @staticmethod
    def _newest(db: sqlite3.Connection) -> int:
        (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM receipts").fetchone()
        return int(seq)

    @staticmethod
    def _prune(db: sqlite3.Connection) -> None:
        """Keep the latest :data:`MAX_RECEIPTS` receipts and their keys."""
        cutoff = ReceiptIndex._newest(db) - MAX_RECEIPTS
        if cutoff <= 0:
            return
        db.execute(
            "DELETE FROM keys WHERE receipt IN (SELECT id FROM receipts WHERE seq <= ?)",
            (cutoff,),
        )
        db.execute("DELETE FROM receipts WHERE seq <= ?", (cutoff,))
