"""markd's own LMDB store.

One LMDB environment (a directory, default ``/var/lib/markd/store``) with named databases. The
walking skeleton has one, the local blocklist (:mod:`markd.store.blocklist`); the sold journal,
the verdict cache and metadata join it as further named databases of the same environment, so
:class:`Store` reserves room for them (``max_dbs``).

LMDB gives one writer and many readers across processes: the daemon writes, ``markctl`` opens
the same directory with ``readonly=True`` and sees every committed write without reopening.
A lookup is a single read transaction, a few microseconds, so the service runs it inline on the
event loop.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp, Store.open(tmp + "/store") as store:
...     store.block("0104650117240408215Qbag!", "recalled")
...     store.lookup("0104650117240408215Qbag!").reason, store.count()
('recalled', 1)

Every lmdb error is wrapped in :class:`~markd.errors.StoreError` naming the store path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lmdb

from markd.errors import StoreError
from markd.store.blocklist import DB_NAME as BLOCKLIST_DB
from markd.store.blocklist import BlockEntry, decode_value, encode_value

__all__ = ["DEFAULT_PATH", "BlockEntry", "Store"]

#: Where the daemon keeps its store (systemd ``StateDirectory=markd``).
DEFAULT_PATH = "/var/lib/markd/store"

#: Named databases the environment may hold, now and later (blocklist, sold, cache, meta, ...).
_MAX_DBS = 16


class Store:
    """An open markd store. Create it with :meth:`open`; close it (or use ``with``).

    Not thread-safe by design: the service uses it from the event loop thread only.
    """

    def __init__(self, env: lmdb.Environment, path: str, readonly: bool) -> None:
        # Use Store.open(); this constructor only wraps an already opened environment.
        self._env: lmdb.Environment | None = env
        self.path = path
        self.readonly = readonly
        self._blocked = self._open_db(BLOCKLIST_DB)

    @classmethod
    def open(cls, path: str = DEFAULT_PATH, map_size_mb: int = 64, readonly: bool = False) -> Store:
        """Open (and, unless ``readonly``, create) the store in directory ``path``.

        ``map_size_mb`` bounds how large the store may grow; LMDB reserves address space, not
        disk, so a generous value costs nothing on 64-bit systems. A reader opening a store
        that a writer made larger uses the file's size.
        """
        if map_size_mb < 1:
            raise StoreError(f"store {path}: map_size_mb must be positive", "bad-config")
        try:
            if not readonly:
                os.makedirs(path, mode=0o750, exist_ok=True)
            elif not os.path.isdir(path):
                raise StoreError(f"store {path}: no such directory", "store-missing")
            env = lmdb.open(
                path,
                map_size=map_size_mb * 1024 * 1024,
                max_dbs=_MAX_DBS,
                readonly=readonly,
                subdir=True,
                create=not readonly,
            )
        except lmdb.Error as exc:
            raise StoreError(f"store {path}: cannot open: {exc}", "store-unavailable") from exc
        except OSError as exc:
            raise StoreError(f"store {path}: cannot create: {exc}", "store-unavailable") from exc
        try:
            return cls(env, path, readonly)
        except BaseException:
            env.close()
            raise

    def _open_db(self, name: bytes) -> Any:  # an lmdb database handle
        env = self._require_env()
        try:
            # Without an explicit transaction lmdb uses a read transaction on a read-only
            # environment, and the handle outlives it (one opened inside a caller's `with
            # env.begin()` would be closed again when that transaction ends).
            return env.open_db(name, create=not self.readonly)
        except lmdb.NotFoundError as exc:
            raise StoreError(
                f"store {self.path}: no {name.decode()} database (not a markd store, "
                "or the daemon never started on it)",
                "store-missing",
            ) from exc
        except lmdb.Error as exc:
            raise StoreError(f"store {self.path}: cannot open {name.decode()}: {exc}") from exc

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise StoreError(f"store {self.path}: already closed", "store-closed")
        return self._env

    @contextmanager
    def _txn(self, write: bool = False) -> Iterator[lmdb.Transaction]:
        env = self._require_env()
        if write and self.readonly:
            raise StoreError(f"store {self.path}: opened read-only", "store-readonly")
        try:
            with env.begin(db=self._blocked, write=write) as txn:
                yield txn
        except lmdb.MapFullError as exc:
            raise StoreError(
                f"store {self.path}: full; raise [store] map_size_mb", "store-full"
            ) from exc
        except lmdb.Error as exc:
            raise StoreError(f"store {self.path}: {exc}") from exc

    def _key(self, ki: str) -> bytes:
        if not isinstance(ki, str) or not ki:
            raise StoreError(f"store {self.path}: a КИ must be a non-empty string", "bad-key")
        key = ki.encode("utf-8")
        if len(key) > self._require_env().max_key_size():
            raise StoreError(f"store {self.path}: КИ too long for a key", "bad-key")
        return key

    # -- blocklist ------------------------------------------------------------------------------

    def block(self, ki: str, reason: str, source: str = "manual", since: int | None = None) -> None:
        """Add ``ki`` to the local blocklist (or replace its entry)."""
        entry = BlockEntry(ki, reason, source, int(time.time()) if since is None else since)
        key = self._key(ki)
        with self._txn(write=True) as txn:
            txn.put(key, encode_value(entry))

    def unblock(self, ki: str) -> bool:
        """Remove ``ki`` from the blocklist; return False if it was not there."""
        key = self._key(ki)
        with self._txn(write=True) as txn:
            return bool(txn.delete(key))

    def lookup(self, ki: str) -> BlockEntry | None:
        """The blocklist entry for ``ki``, or None when it is not blocked."""
        key = self._key(ki)
        with self._txn() as txn:
            raw = txn.get(key)
        if raw is None:
            return None
        try:
            return decode_value(ki, bytes(raw))
        except ValueError as exc:
            # A value we cannot read still marks the КИ as blocked: failing open would sell it.
            raise StoreError(
                f"store {self.path}: corrupt blocklist entry: {exc}", "store-corrupt"
            ) from exc

    def count(self) -> int:
        """Number of blocked КИ."""
        with self._txn() as txn:
            return int(txn.stat(self._blocked)["entries"])

    # -- life cycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the environment. Safe to call more than once."""
        env, self._env = self._env, None
        if env is not None:
            env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._env is None else ("read-only" if self.readonly else "open")
        return f"<Store {self.path} {state}>"
