"""The LMDB store: blocklist, sold journal, verdict cache and metadata in one environment.

Named databases (encodings in :mod:`markd.store.keys` and ``docs/store.md``)::

    blocked.0, blocked.1   the blocklist, double-buffered: ``meta["current"]`` names the live
                           slot; a snapshot import fills the other one, then flips the name
    manual                 entries blocked by hand on this terminal (``markctl store block``):
                           kept across imports and syncs, never exported
    units                  per-КИ facts of this terminal: sold here (receipt, time) and the last
                           online verdict (time, isBlocked, sold, expireDate, mrp, smp, …)
    attrs                  interned (reason, source) pairs referenced by blocklist values
    deltas                 the deltas applied since the last snapshot (for fleet export)
    meta                   ``current`` (slot) and ``info`` (version, source, times, counts)

Concurrency: LMDB gives one writer and any number of readers in any number of processes. A
lookup is one short read transaction, so a reader always sees one committed state: never
half of an import, never a delta without its version. Writers in other processes (``markctl``)
become visible to the daemon at its next lookup without reopening anything.

Only py-lmdb's public API is used, so any py-lmdb from 1.4 on works (Debian 12 ships 1.4.0).
A store belongs to the process that opened it: a forked child finds it closed (see
:func:`_let_go_after_fork`).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import lmdb

from markd.codes import CodeError, MarkingCode, mentions_gs, parse
from markd.errors import StoreError
from markd.store import keys, ownership
from markd.store.keys import BLOCK_VALUE, BadKey
from markd.text import control_problem

DEFAULT_PATH = "/var/lib/markd/store"
FORMAT_VERSION = 1
_SLOTS = (b"blocked.0", b"blocked.1")
_MAX_DBS = 16
_T = TypeVar("_T")
_time = time.time


class BlockEntry(NamedTuple):
    """Why a unit is blocked: the matching key's kind (``ki``/``series``/``gtin``) and facts."""

    kind: str
    raw_key: bytes
    reason: str
    source: str
    since: int

    @property
    def key(self) -> str:
        """The matching entry as a person writes it: a КИ, a GTIN, or "GTIN series"."""
        shown = keys.key_to_text(self.raw_key)
        return shown.get("ki") or " ".join(filter(None, (shown.get("gtin"), shown.get("series"))))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "reason": self.reason,
            "source": self.source,
            "since": self.since,
        }


class SoldEntry(NamedTuple):
    """The unit was sold at this terminal (and not returned since)."""

    receipt: str
    at: int


class CachedVerdict(NamedTuple):
    """The last online verdict for the КИ: its facts and when it was received."""

    at: int
    facts: dict[str, Any]
    fresh: bool  # younger than the configured TTL


class Lookup(NamedTuple):
    """Everything the store knows about one unit. ``None`` fields mean "nothing known".

    A named tuple rather than a dataclass: it is built on every scan, and building a tuple
    costs a fraction of a frozen dataclass (a whole lookup takes a few microseconds).
    """

    blocked: BlockEntry | None
    sold: SoldEntry | None
    cached: CachedVerdict | None
    blocklist_version: int
    blocklist_age_s: float | None  # None: no blocklist was ever loaded
    stale: bool  # older than [store] max_age_hours: may deny, never vouches

    @property
    def deny_reason(self) -> str | None:
        """``blocked-locally`` or ``sold-here`` when the store alone forbids the sale."""
        if self.blocked is not None:
            return "blocked-locally"
        if self.sold is not None:
            return "sold-here"
        return None


@dataclass
class StoreInfo:
    """Metadata of the blocklist (``meta["info"]``)."""

    version: int = 0
    source: str = ""
    synced_at: int | None = None  # last time the list was confirmed current (import/delta/sync)
    imported_at: int | None = None  # last snapshot import
    counts: dict[str, int] = field(default_factory=lambda: {"ki": 0, "gtin": 0, "series": 0})
    manual: int = 0  # entries in the manual database
    checked_at: int | None = None  # last time a sync reached its server
    sync_etag: str = ""
    sync_url: str = ""
    format_version: int = FORMAT_VERSION
    #: The highest version this store ever took from a signed index: a signed sync never goes
    #: below it (an old index replayed, signature and all) unless a rollback is allowed.
    signed_version: int = 0
    #: The list is exactly what a signed sync delivered (any import or delta since clears it).
    signed: bool = False

    @classmethod
    def decode(cls, raw: bytes | None) -> StoreInfo:
        if not raw:
            return cls()
        data = json.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":"), sort_keys=True).encode()


def _now() -> int:
    return int(time.time())


class Store:
    """An open store. Use :meth:`open` (or :meth:`from_config`) and close it, or ``with``.

    One instance is meant for one thread at a time; other processes may open the same path.
    """

    def __init__(
        self,
        path: str,
        *,
        map_size_mb: int = 64,
        readonly: bool = False,
        max_age_hours: float = 72.0,
        verdict_ttl_s: int = 86_400,
        delta_history: int = 100,
    ) -> None:
        self.path = str(path)
        self.readonly = readonly
        self.max_age_s = max_age_hours * 3600.0
        self.verdict_ttl_s = verdict_ttl_s
        self.delta_history = delta_history
        #: The process that opened the environment: the only one that may use or close it.
        self._pid = os.getpid()
        #: Held by every write and by close(): a write in another thread (the check chain
        #: caches verdicts in one) ends before the environment closes. Closing an environment
        #: under a live transaction is a crash in py-lmdb 1.x, not an error.
        self._write_lock = threading.RLock()
        self._env: lmdb.Environment | None = None  # before anything that may fail: close()
        self._env = self._open_env(map_size_mb)
        try:
            self._dbs = self._open_dbs()
        except BaseException:
            self.close()
            raise
        self._seen_txn = -1
        self._gtin_blocks = True
        self._manual_blocks = True
        self._unit_keys: set[bytes] = set()
        self._units_gen: bytes | None = b"unread"
        self._units = self._dbs[b"units"]
        self._live: Any = None
        self._info = StoreInfo()
        self._version = 0  # self._info.version and .synced_at, for the lookup's answer
        self._synced_at: float | None = None
        self._attrs: dict[int, tuple[str, str]] = {}
        _open_stores.add(self)

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str = DEFAULT_PATH, **kwargs: Any) -> Store:
        """Open (creating unless ``readonly``) the store in directory ``path``."""
        return cls(path, **kwargs)

    @classmethod
    def from_config(cls, store_config: Any, *, readonly: bool = False) -> Store:
        """Open the store described by a ``[store]`` configuration section."""
        return cls(
            store_config.path,
            map_size_mb=store_config.map_size_mb,
            readonly=readonly,
            max_age_hours=store_config.max_age_hours,
            verdict_ttl_s=store_config.verdict_ttl_s,
            delta_history=store_config.delta_history,
        )

    def _open_env(self, map_size_mb: int) -> lmdb.Environment:
        path = Path(self.path)
        try:
            missing = self.readonly and not (path / "data.mdb").exists()
        except PermissionError as exc:  # a directory on the way that we may not enter
            raise self._access_error(exc) from exc
        if missing:
            raise StoreError(
                f"no store at {self.path} (import a blocklist with 'markctl store import' "
                "or start markd once)",
                "store-missing",
            )
        try:
            if not self.readonly:
                path.mkdir(parents=True, exist_ok=True, mode=0o750)
            env = lmdb.open(
                self.path,
                map_size=max(1, map_size_mb) << 20,
                max_dbs=_MAX_DBS,
                readonly=self.readonly,
                # A lookup must never wait for a writer and must survive power loss with the
                # last committed state: default durable sync, readers without locks.
                subdir=True,
                create=not self.readonly,
                max_readers=256,
            )
        except (lmdb.Error, OSError) as exc:
            # Permissions first: a store left to root by a markctl run as root is the usual
            # reason, and the message says what to chown.
            problem = ownership.access_problem(self.path, readonly=self.readonly)
            if problem is not None:
                raise problem from exc
            if isinstance(exc, lmdb.Error):
                raise _store_error(self.path, "opening", exc) from exc
            raise StoreError(f"opening {self.path}: {exc.strerror or exc}") from exc
        if not self.readonly:
            # Slots of readers killed with -9 would pin old pages forever otherwise.
            env.reader_check()
            # Adopt a map that another process has grown beyond our configured size.
            if env.info()["map_size"] < os.path.getsize(path / "data.mdb"):
                env.set_mapsize(0)
        return env

    def _access_error(self, exc: OSError) -> StoreError:
        problem = ownership.access_problem(self.path, readonly=self.readonly)
        return problem or StoreError(f"opening {self.path}: {exc.strerror or exc}")

    def _open_dbs(self) -> dict[bytes, Any]:
        env = self._require_env()
        names = (*_SLOTS, b"manual", b"units", b"attrs", b"deltas", b"meta")
        dbs = {}
        try:
            if self.readonly:
                for name in names:
                    dbs[name] = env.open_db(name, create=False)
            else:
                for name in names:
                    dbs[name] = env.open_db(name)
                with env.begin(write=True) as txn:
                    if txn.get(b"current", db=dbs[b"meta"]) is None:
                        txn.put(b"current", b"0", db=dbs[b"meta"])
                        txn.put(b"info", StoreInfo().encode(), db=dbs[b"meta"])
        except lmdb.NotFoundError as exc:
            raise StoreError(f"{self.path} is not a markd store (missing databases)") from exc
        except lmdb.Error as exc:
            raise _store_error(self.path, "opening", exc) from exc
        return dbs

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            if self._pid != os.getpid():
                raise StoreError(
                    f"store {self.path} was opened by process {self._pid}; a forked process "
                    "must open it again",
                    "store-closed",
                )
            raise StoreError(f"store {self.path} is closed", "store-closed")
        return self._env

    def __repr__(self) -> str:
        state = "closed" if self._env is None else ("read-only" if self.readonly else "open")
        return f"<Store {self.path} {state}>"

    def close(self) -> None:
        _open_stores.discard(self)
        if self._pid != os.getpid():
            self._let_go()  # a forked child: the environment is the parent's to close
            return
        with self._write_lock:
            if self._env is not None:
                self._env.close()
                self._env = None

    def _let_go(self) -> None:
        """In a forked child: stop using the parent's environment without closing it."""
        # The lock may have been held by a thread that the fork left behind.
        self._write_lock = threading.RLock()
        if self._env is not None:
            _inherited_envs.append(self._env)
            self._env = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------------

    def _begin(self, write: bool = False) -> lmdb.Transaction:
        env = self._require_env()
        try:
            return env.begin(write=write)
        except lmdb.Error as exc:
            return self._begin_again(env, exc, write)

    def _begin_again(
        self, env: lmdb.Environment, exc: lmdb.Error, write: bool = False
    ) -> lmdb.Transaction:
        """The second try at a transaction, after the errors that one more try cures."""
        if isinstance(exc, lmdb.MapResizedError):
            env.set_mapsize(0)  # another process grew the map: adopt its size
        elif not isinstance(exc, lmdb.BadRslotError):
            # BadRslotError: py-lmdb 1.x renews a cached reader whose slot was ended elsewhere
            # (by a forked child's exit, see _let_go_after_fork); the next begin takes a new one.
            raise _store_error(self.path, "reading", exc) from exc
        try:
            return env.begin(write=write)
        except lmdb.Error as again:
            raise _store_error(self.path, "reading", again) from again

    def _refresh(self, txn: lmdb.Transaction) -> None:
        """Re-read the live slot and info when something was committed since we last looked."""
        tid = txn.id()
        if tid == self._seen_txn:
            return
        meta = self._dbs[b"meta"]
        slot = txn.get(b"current", db=meta) or b"0"
        self._live = self._dbs[_SLOTS[slot == b"1"]]
        self._info = info = StoreInfo.decode(txn.get(b"info", db=meta))
        self._version = info.version
        self._synced_at = None if info.synced_at is None else float(info.synced_at)
        # Most lists block units only; skip the GTIN and series probes when there are none.
        counts = info.counts
        self._gtin_blocks = counts.get("gtin", 1) > 0 or counts.get("series", 1) > 0
        self._manual_blocks = info.manual > 0
        generation = txn.get(b"units_gen", db=meta)
        if generation != self._units_gen:
            # Someone else wrote the units (or we never looked): read the key set again.
            cursor = txn.cursor(db=self._units)
            self._unit_keys = {bytes(k) for k in cursor.iternext(keys=True, values=False)}
            self._units_gen = generation
        self._seen_txn = tid

    def lookup(
        self, code: MarkingCode | str, *, series: str | None = None, now: float | None = None
    ) -> Lookup:
        """What the store knows about ``code``: blocked (КИ, then series, then GTIN), sold
        here, cached online verdict, and how fresh the blocklist is.

        ``code`` is a parsed code or any text ``parse`` accepts (a КИ alone too). ``series``
        defaults to the code's batch (AI 10) when it carries one.
        """
        # Runs on every scan, so it is written for CPython's sake: positional arguments to
        # py-lmdb (a keyword costs it more than a tenth of a microsecond to parse), tuples built
        # without namedtuple's Python __new__, and no probe the store's contents make pointless.
        if type(code) is MarkingCode and series is None and not code.extra:
            # The daemon's case: a parsed code without a batch (keys.code_key, inlined).
            key = f"01{code.gtin}21{code.serial}".encode()
        else:
            key, series = _lookup_key(code, series)
        env = self._env
        if env is None:
            self._require_env()  # raises store-closed
        # One short read transaction per lookup: it sees the last commit of any process, and
        # between lookups this store holds no reader slot that could pin old pages. Beginning
        # one costs a fraction of a microsecond (py-lmdb 1.x even renews a cached one).
        try:
            txn = env.begin()
        except lmdb.Error as exc:
            txn = self._begin_again(env, exc)
        try:
            if txn.id() != self._seen_txn:
                self._refresh(txn)
            live = self._live
            kind = "ki"
            found = key  # the key of the matching entry
            raw = txn.get(key, None, live)
            if raw is None and self._gtin_blocks:
                gtin = key[2:16]
                if series:
                    kind = "series"
                    found = gtin + keys.SERIES_SEPARATOR + series.encode()
                    raw = txn.get(found, None, live)
                if raw is None:
                    kind = "gtin"
                    found = gtin
                    raw = txn.get(gtin, None, live)
            if raw is None and self._manual_blocks:
                raw, kind, found = self._manual_lookup(txn, key, series)
            # Most scanned units were never sold or checked online here: a set of the units
            # database's keys spares the read (a random one, in a big store) for them.
            unit = txn.get(key, None, self._units) if key in self._unit_keys else None
            # A float either way (an int `now` would make an int age).
            now = _time() if now is None else float(now)
            blocked = sold = cached = None
            if raw is not None:
                blocked = self._block_entry(txn, kind, found, raw)
            if unit is not None:
                sold, cached = self._unit_facts(unit, now)
        except lmdb.Error as exc:
            raise _store_error(self.path, "reading", exc) from exc
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            # Fail closed: a value markd cannot read must not pass for "nothing known".
            raise StoreError(
                f"{self.path}: unreadable entry for {key[:16].decode(errors='replace')}… "
                f"({type(exc).__name__}); the store may be damaged",
                "store-corrupt",
            ) from exc
        finally:
            txn.abort()
        synced = self._synced_at
        if synced is None:
            return _new_tuple(Lookup, (blocked, sold, cached, self._version, None, True))
        age = now - synced if now > synced else 0.0
        return _new_tuple(Lookup, (blocked, sold, cached, self._version, age, age > self.max_age_s))

    def _manual_lookup(
        self, txn: lmdb.Transaction, key: bytes, series: str | None
    ) -> tuple[bytes | None, str, bytes]:
        """(value, kind, key) of the entry blocked by hand that matches, or (None, "ki", key)."""
        manual = self._dbs[b"manual"]
        gtin = key[2:16]
        probes = [("ki", key), ("gtin", gtin)]
        if series:
            probes.insert(1, ("series", gtin + keys.SERIES_SEPARATOR + series.encode()))
        for kind, probe in probes:
            raw = txn.get(probe, db=manual)
            if raw is not None:
                return raw, kind, probe
        return None, "ki", key

    def _block_entry(self, txn: lmdb.Transaction, kind: str, key: bytes, raw: bytes) -> BlockEntry:
        since, attr = BLOCK_VALUE.unpack(raw)
        pair = self._attrs.get(attr)
        if pair is None:
            stored = txn.get(struct.pack(">I", attr), db=self._dbs[b"attrs"])
            pair = tuple(json.loads(stored)) if stored else ("", "")
            self._attrs[attr] = pair  # attrs are append-only: an id never changes meaning
        return _new_tuple(BlockEntry, (kind, bytes(key), pair[0], pair[1], since))

    def _unit_facts(self, raw: bytes, now: float) -> tuple[SoldEntry | None, CachedVerdict | None]:
        data = json.loads(raw)
        sold = data.get("sold")
        verdict = data.get("verdict")
        sold_entry = SoldEntry(sold["receipt"], sold["at"]) if sold else None
        cached = None
        if verdict:
            fresh = now - verdict["at"] <= self.verdict_ttl_s
            cached = CachedVerdict(verdict["at"], verdict["facts"], fresh)
        return sold_entry, cached

    def info(self) -> StoreInfo:
        """The blocklist metadata as committed now."""
        txn = self._begin()
        try:
            self._refresh(txn)
            return StoreInfo(**self._info.__dict__)
        finally:
            txn.abort()

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Counts, version, age, freshness and size on disk, for ``markctl store stats``."""
        info = self.info()
        now = time.time() if now is None else now
        txn = self._begin()
        try:
            units = txn.stat(self._dbs[b"units"])["entries"]
            deltas = txn.stat(self._dbs[b"deltas"])["entries"]
            sold = cached = 0
            if units <= 100_000:  # counting needs a scan; skip it for very large journals
                for _, raw in txn.cursor(db=self._dbs[b"units"]):
                    data = json.loads(raw)
                    sold += "sold" in data
                    cached += "verdict" in data
        finally:
            txn.abort()
        age = None if info.synced_at is None else max(0.0, now - info.synced_at)
        data_file = Path(self.path) / "data.mdb"
        return {
            "path": self.path,
            "version": info.version,
            "source": info.source,
            "synced_at": info.synced_at,
            "imported_at": info.imported_at,
            "checked_at": info.checked_at,
            "age_s": age,
            "max_age_s": self.max_age_s,
            "stale": age is None or age > self.max_age_s,
            "blocked": dict(info.counts),
            "blocked_by_hand": info.manual,
            "units": units,
            "sold": sold if units <= 100_000 else None,
            "cached_verdicts": cached if units <= 100_000 else None,
            "deltas_kept": deltas,
            # The list is what a signed sync delivered; the highest signed version taken.
            "signed": info.signed,
            "signed_version": info.signed_version,
            "size_bytes": data_file.stat().st_size if data_file.exists() else 0,
            "map_size_bytes": self._require_env().info()["map_size"],
        }

    def iter_blocked(self) -> Iterator[tuple[bytes, int, str, str]]:
        """Every live blocklist entry as (key, since, reason, source), in key order, from one
        consistent snapshot."""
        txn = self._begin()
        try:
            self._refresh(txn)
            for key, raw in txn.cursor(db=self._live):
                since, attr = BLOCK_VALUE.unpack(raw)
                entry = self._block_entry(txn, keys.key_kind(key), key, raw)
                yield bytes(key), since, entry.reason, entry.source
        finally:
            txn.abort()

    def iter_blocked_raw(self, batch: int = 65_536) -> Iterator[list[tuple[bytes, bytes]]]:
        """The live blocklist as lists of (key, value) in key order, from one consistent
        snapshot; values are :data:`~markd.store.keys.BLOCK_VALUE` (since, attr id), the ids
        named by :meth:`attr_pair`. For an export: no per-entry decoding."""
        txn = self._begin()
        try:
            self._refresh(txn)
            rows = txn.cursor(db=self._live).iternext(keys=True, values=True)
            while chunk := list(itertools.islice(rows, batch)):
                yield chunk
        finally:
            txn.abort()

    def attr_pair(self, attr: int) -> tuple[str, str]:
        """The (reason, source) of an attr id of a stored value (``("", "")`` if unknown)."""
        txn = self._begin()
        try:
            return self._block_entry(txn, "ki", b"", BLOCK_VALUE.pack(0, attr))[2:4]
        finally:
            txn.abort()

    def deltas(self) -> list[dict[str, Any]]:
        """The deltas applied since the last snapshot import, oldest first."""
        txn = self._begin()
        try:
            return [json.loads(raw) for _, raw in txn.cursor(db=self._dbs[b"deltas"])]
        finally:
            txn.abort()

    # -- writing --------------------------------------------------------------------------------

    def _write(self, fn: Callable[[lmdb.Transaction], _T], what: str) -> _T:
        """Run ``fn`` in one write transaction, growing the map and retrying when it is full."""
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only", "store-readonly")
        with self._write_lock:
            env = self._require_env()
            for _ in range(32):
                try:
                    with env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    self.grow_map()
                except lmdb.MapResizedError:
                    env.set_mapsize(0)
                except lmdb.Error as exc:
                    raise _store_error(self.path, what, exc) from exc
        raise StoreError(f"{what} in {self.path}: the map could not be grown enough")

    def grow_map(self, at_least: int = 0) -> None:
        """Double the memory map (or grow it to ``at_least`` bytes)."""
        env = self._require_env()
        size = env.info()["map_size"]
        new = max(size * 2, at_least)
        try:
            env.set_mapsize(new)
        except lmdb.Error as exc:
            raise _store_error(self.path, "growing the map", exc) from exc

    def _update_info(self, txn: lmdb.Transaction, **changes: Any) -> StoreInfo:
        meta = self._dbs[b"meta"]
        info = StoreInfo.decode(txn.get(b"info", db=meta))
        for name, value in changes.items():
            setattr(info, name, value)
        txn.put(b"info", info.encode(), db=meta)
        return info

    def intern_attr(self, txn: lmdb.Transaction, reason: str, source: str) -> int:
        """The id of a (reason, source) pair, adding it when new (ids are never reused)."""
        db = self._dbs[b"attrs"]
        wanted = json.dumps([reason, source], ensure_ascii=False).encode()
        cursor = txn.cursor(db=db)
        last = 0
        for key, value in cursor:
            if bytes(value) == wanted:
                return struct.unpack(">I", key)[0]
            last = struct.unpack(">I", key)[0]
        txn.put(struct.pack(">I", last + 1), wanted, db=db)
        return last + 1

    def block(
        self, text: str, reason: str, source: str = "manual", *, series: str | None = None
    ) -> None:
        """Block one КИ, GTIN (or GTIN + ``series``) by hand on this terminal.

        Hand-made entries live apart from the fleet blocklist: a snapshot import or a sync does
        not remove them, the blocklist version does not change, and export leaves them out (a
        fleet-wide block belongs in a delta on the master).
        """
        for what, value in (("reason", reason), ("source", source)):
            problem = control_problem(value, what)
            if problem is not None:  # the same rule as an import (markd.text)
                raise StoreError(problem, "bad-text")
        key = _key_of(text, series)
        value_since = _now()
        manual = self._dbs[b"manual"]

        def write(txn: lmdb.Transaction) -> None:
            attr = self.intern_attr(txn, reason, source)
            if txn.replace(key, BLOCK_VALUE.pack(value_since, attr), db=manual) is None:
                info = StoreInfo.decode(txn.get(b"info", db=self._dbs[b"meta"]))
                self._update_info(txn, manual=info.manual + 1)

        self._write(write, "blocking")

    def unblock(self, text: str, *, series: str | None = None) -> bool:
        """Remove an entry blocked by hand; True when it was there."""
        key = _key_of(text, series)
        manual = self._dbs[b"manual"]

        def write(txn: lmdb.Transaction) -> bool:
            if txn.pop(key, db=manual) is None:
                return False
            info = StoreInfo.decode(txn.get(b"info", db=self._dbs[b"meta"]))
            self._update_info(txn, manual=max(0, info.manual - 1))
            return True

        return self._write(write, "unblocking")

    def _update_unit(self, key: bytes, change: Callable[[dict[str, Any]], None], what: str) -> None:
        self._update_units([(key, change)], what)

    def _update_units(
        self,
        changes: Sequence[tuple[bytes, Callable[[dict[str, Any]], None]]],
        what: str,
        *,
        between: Callable[[], None] | None = None,
    ) -> None:
        """Apply each ``(key, change)`` to its unit, all in one write transaction;
        ``between`` is called before each unit after the first."""
        units = self._dbs[b"units"]

        def write(txn: lmdb.Transaction) -> tuple[bytes | None, bytes]:
            for n, (key, change) in enumerate(changes):
                if n and between is not None:
                    between()
                raw = txn.get(key, db=units)
                data = json.loads(raw) if raw else {}
                change(data)
                if data:
                    txn.put(key, json.dumps(data, separators=(",", ":")).encode(), db=units)
                elif raw is not None:
                    txn.delete(key, db=units)
            return self._bump_units_gen(txn)

        before, after = self._write(write, what)
        # Keep the lookup's key set in step with our own write. If the generation we saw
        # before was not the one we knew, another process wrote too: re-read at next lookup.
        if before == self._units_gen:
            # A superset is safe: it only costs a read.
            self._unit_keys.update(key for key, _ in changes)
            self._units_gen = after

    def _bump_units_gen(self, txn: lmdb.Transaction) -> tuple[bytes | None, bytes]:
        """Count writes to the units database (``meta["units_gen"]``), so readers know when
        their copy of its key set is out of date. Returns (before, after)."""
        meta = self._dbs[b"meta"]
        before = txn.get(b"units_gen", db=meta)
        value = struct.unpack(">Q", before)[0] + 1 if before else 1
        after = struct.pack(">Q", value)
        txn.put(b"units_gen", after, db=meta)
        return (bytes(before) if before is not None else None), after

    def mark_sold(self, code: MarkingCode | str, receipt: str, at: int | None = None) -> None:
        """Record that the unit was sold here, on ``receipt``."""
        key = _unit_key(code)
        when = _now() if at is None else at
        self._update_unit(
            key,
            lambda d: d.__setitem__("sold", {"receipt": receipt, "at": when}),
            "recording a sale",
        )

    def mark_returned(self, code: MarkingCode | str) -> None:
        """A return receipt took the unit back: it may be sold again."""
        self._update_unit(_unit_key(code), lambda d: d.pop("sold", None), "recording a return")

    def cache_verdict(
        self, code: MarkingCode | str, facts: dict[str, Any], at: int | None = None
    ) -> None:
        """Keep the facts of an online verdict (isBlocked, sold, expireDate, mrp, smp, …)."""
        self.cache_verdicts([(code, facts)], at)

    def cache_verdicts(
        self,
        verdicts: Sequence[tuple[MarkingCode | str, dict[str, Any]]],
        at: int | None = None,
        *,
        between: Callable[[], None] | None = None,
    ) -> None:
        """:meth:`cache_verdict` for several units in one write transaction (one commit).
        ``between``: called between two units (a writer thread lets the event loop have the
        interpreter lock there, ``time.sleep(0)``, rather than hold it for the whole batch)."""
        when = _now() if at is None else at

        def keeper(facts: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
            return lambda d: d.__setitem__("verdict", {"at": when, "facts": facts})

        what = "caching a verdict" if len(verdicts) == 1 else "caching verdicts"
        self._update_units(
            [(_unit_key(code), keeper(facts)) for code, facts in verdicts], what, between=between
        )

    def purge_cache(self, now: float | None = None) -> int:
        """Drop cached verdicts older than the TTL; return how many went."""
        limit = (time.time() if now is None else now) - self.verdict_ttl_s
        units = self._dbs[b"units"]

        def write(txn: lmdb.Transaction) -> int:
            gone = 0
            cursor = txn.cursor(db=units)
            self._bump_units_gen(txn)
            for key, raw in list(cursor):
                data = json.loads(raw)
                verdict = data.get("verdict")
                if verdict and verdict["at"] < limit:
                    del data["verdict"]
                    gone += 1
                    if data:
                        txn.put(key, json.dumps(data, separators=(",", ":")).encode(), db=units)
                    else:
                        txn.delete(key, db=units)
            return gone

        gone = self._write(write, "purging the verdict cache")
        self._units_gen = b"unread"  # re-read the key set at the next lookup
        return gone

    def touch_sync(
        self,
        *,
        source: str | None = None,
        etag: str | None = None,
        url: str | None = None,
        synced_at: int | None = None,
        confirm: bool = True,
        signed_version: int | None = None,
        expect_version: int | None = None,
    ) -> None:
        """Record a successful sync check.

        ``signed_version``: the sync took the list of a signed index at this version; the
        list is marked as signed and the version becomes the floor of later signed syncs.

        ``expect_version``: record it all only if the list is still at this version — an
        import or a delta that landed between the sync's last write and this one (another
        process's) is not the list the sync delivered: then only ``checked_at`` moves.

        ``confirm``: the list is confirmed current as of ``synced_at`` (default now; a fleet
        sync passes the master's own time, so staleness travels through the fleet). Without
        ``confirm`` only ``checked_at`` moves (the server said nothing changed, which says
        nothing new about how current the master's list is).
        """
        now = _now()
        changes: dict[str, Any] = {"checked_at": now}
        if confirm:
            changes["synced_at"] = now if synced_at is None else min(synced_at, now)
        if source is not None:
            changes["source"] = source
        if etag is not None:
            changes["sync_etag"] = etag
        if url is not None:
            changes["sync_url"] = url
        if signed_version is not None:
            changes["signed_version"] = signed_version
            changes["signed"] = True

        def record(txn: lmdb.Transaction) -> StoreInfo:
            if expect_version is not None:
                current = StoreInfo.decode(txn.get(b"info", db=self._dbs[b"meta"]))
                if current.version != expect_version:
                    return self._update_info(txn, checked_at=now)
            return self._update_info(txn, **changes)

        self._write(record, "recording a sync")

    # Snapshot import and deltas live in markd.store.importer; they use these internals.
    def _internal(self) -> tuple[lmdb.Environment, dict[bytes, Any]]:
        return self._require_env(), self._dbs


#: Builds a named tuple without the Python-level ``__new__`` that namedtuple generates (the
#: same thing minus one frame; a lookup builds one on every scan).
_new_tuple: Callable[..., Any] = tuple.__new__

#: The stores this process has open, so that a forked child can let go of them.
_open_stores: weakref.WeakSet[Store] = weakref.WeakSet()
#: Environments a forked child inherited: referenced here so the child never closes them.
_inherited_envs: list[lmdb.Environment] = []


def _let_go_after_fork() -> None:
    """In a forked child, make every inherited store behave as closed.

    LMDB ties an environment to the process that opened it: its reader slots carry that
    process's id, and ending a reader frees the slot in the lock file every process shares. A
    child reading through its parent's environment would take slots in the parent's name, and
    a child closing it would end the reader py-lmdb 1.x keeps cached for the parent. So the
    child leaves each environment alone (a lookup there raises ``store-closed``; ``close()``
    does nothing) and opens the store again if it needs one. When the child's interpreter
    finally frees the environment, py-lmdb 1.x still ends that cached reader; the parent's
    next lookup then meets ``BadRslotError`` and simply takes a new one (``_begin_again``).
    """
    for store in list(_open_stores):
        store._let_go()
    _open_stores.clear()


os.register_at_fork(after_in_child=_let_go_after_fork)


def _lookup_key(code: MarkingCode | str, series: str | None) -> tuple[bytes, str | None]:
    """The КИ key and the series to look up for any query but the daemon's (a parsed code
    without a batch, which :meth:`Store.lookup` keys itself)."""
    if isinstance(code, str) and mentions_gs(code):
        # A full code in text: parse it, so its batch (AI 10) is checked as a series too.
        try:
            code = parse(code)
        except CodeError as exc:
            raise StoreError(f"cannot look up: {exc.message}", "bad-key") from exc
    if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) <= 14:
        # A GTIN alone: only GTIN (and series) blocks can match. "01<GTIN>21" with no serial
        # is a КИ key no entry has, so the КИ probe misses and the rest runs as usual.
        try:
            return b"01" + keys.gtin_key(code) + b"21", series
        except BadKey as exc:
            raise StoreError(str(exc), "bad-key") from exc
    if isinstance(code, str):
        return _unit_key(code), series
    if series is None and code.extra:
        series = code.extra.get("10")
    return keys.code_key(code), series


def _key_of(text: str, series: str | None) -> bytes:
    try:
        if series is not None:
            return keys.series_key(text, series)
        if len(text) <= 14 and text.isdigit():
            return keys.gtin_key(text)
        if mentions_gs(text):  # a full code: "<GS>" could otherwise pass for serial characters
            return keys.code_key(parse(text))
        try:
            return keys.ki_key(text)
        except BadKey:
            return keys.code_key(parse(text))
    except (BadKey, CodeError) as exc:
        raise StoreError(str(exc), "bad-key") from exc


def _unit_key(code: MarkingCode | str) -> bytes:
    """The key of a parsed code, a КИ in text or a full code in text."""
    if isinstance(code, MarkingCode):
        return keys.code_key(code)
    key = _key_of(code, None)
    if keys.key_kind(key) != "ki":
        raise StoreError(f"{code[:40]!r} is not a КИ or a marking code", "bad-key")
    return key


def _disk_nearly_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20) or st.f_bavail < st.f_blocks // 200


def _store_error(path: str, what: str, exc: lmdb.Error) -> StoreError:
    text = str(exc)
    # LMDB reports a short write at commit as EIO; on a full file system that is ENOSPC.
    full = "No space left" in text or getattr(exc, "errno", None) == errno.ENOSPC
    if full or ("Input/output error" in text and _disk_nearly_full(path)):
        return StoreError(
            f"{what} {path}: no space left on device; the previous blocklist version is intact",
            "store-disk-full",
        )
    return StoreError(f"{what} {path}: {text}")
