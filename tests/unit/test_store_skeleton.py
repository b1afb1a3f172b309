"""The LMDB store skeleton: the local blocklist on a real LMDB file (markd.store)."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import pytest

import markd.store
from markd.errors import StoreError
from markd.store import BlockEntry, Store

KI = "0104670540176099215LpGKy"
OTHER_KI = "0104680029460908215jcmHzLmkdPML"


def test_module_example_runs() -> None:
    assert doctest.testmod(markd.store).failed == 0


def test_block_lookup_unblock_count(tmp_store: Store) -> None:
    assert tmp_store.lookup(KI) is None
    assert tmp_store.count() == 0
    tmp_store.block(KI, "recalled", since=1_763_700_000)
    assert tmp_store.lookup(KI) == BlockEntry(KI, "recalled", "manual", 1_763_700_000)
    assert tmp_store.lookup(OTHER_KI) is None
    assert tmp_store.count() == 1
    assert tmp_store.unblock(KI) is True
    assert tmp_store.unblock(KI) is False
    assert tmp_store.lookup(KI) is None
    assert tmp_store.count() == 0


def test_value_is_the_documented_json(tmp_store: Store, store_path: str) -> None:
    tmp_store.block(KI, "recalled", source="import", since=42)
    tmp_store.close()
    with lmdb.open(store_path, max_dbs=4, readonly=True) as env:
        db = env.open_db(b"blocked_ki", create=False)
        with env.begin(db=db) as txn:
            raw = txn.get(KI.encode())
    assert json.loads(raw) == {"reason": "recalled", "source": "import", "since": 42}


def test_creates_the_directory_and_persists_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "deep" / "store")
    with Store.open(path) as store:
        store.block(KI, "stolen")
    with Store.open(path, readonly=True) as store:
        entry = store.lookup(KI)
    assert entry is not None and entry.reason == "stolen" and entry.since > 1_700_000_000


def test_another_process_reading_sees_a_committed_write(tmp_store: Store, store_path: str) -> None:
    """One writer, many readers: markctl (another process) sees what the daemon blocked,
    including a write made after the reader opened the store."""
    reader = textwrap.dedent(
        f"""
        import sys
        from markd.store import Store
        with Store.open({store_path!r}, readonly=True) as store:
            print("before", store.lookup({KI!r}) is not None, flush=True)
            sys.stdin.readline()              # the writer blocks the КИ now
            entry = store.lookup({KI!r})
            print("after", entry.reason if entry else None, store.count(), flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", reader],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "before False"
    tmp_store.block(KI, "recalled")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "after recalled 1"
    assert proc.wait(timeout=10) == 0


def test_readonly_store_refuses_writes(tmp_store: Store, store_path: str) -> None:
    tmp_store.close()
    with Store.open(store_path, readonly=True) as store, pytest.raises(StoreError) as err:
        store.block(KI, "x")
    assert err.value.reason == "store-readonly"
    assert store_path in err.value.message


def test_readonly_open_of_a_missing_store_names_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere")
    with pytest.raises(StoreError) as err:
        Store.open(path, readonly=True)
    assert path in err.value.message


def test_unopenable_path_is_a_store_error_naming_the_path(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(StoreError) as err:
        Store.open(str(not_a_dir / "store"))
    assert str(not_a_dir) in err.value.message
    assert err.value.__cause__ is not None  # the OSError / lmdb.Error stays visible


def test_full_store_is_a_store_error(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s"), map_size_mb=1) as store, pytest.raises(StoreError) as err:
        for i in range(100):
            store.block(f"{KI}{i:03d}", "r" * 100_000)
    assert err.value.reason == "store-full"


def test_corrupt_entry_fails_closed_not_open(tmp_store: Store, store_path: str) -> None:
    tmp_store.close()
    with lmdb.open(store_path, max_dbs=4) as env:
        db = env.open_db(b"blocked_ki")
        with env.begin(db=db, write=True) as txn:
            txn.put(KI.encode(), b"not json")
    with Store.open(store_path) as store, pytest.raises(StoreError) as err:
        store.lookup(KI)
    assert err.value.reason == "store-corrupt"


def test_bad_keys_and_closed_store(tmp_store: Store) -> None:
    with pytest.raises(StoreError):
        tmp_store.lookup("")
    with pytest.raises(StoreError):
        tmp_store.block("x" * 600, "too long for an LMDB key")
    tmp_store.close()
    tmp_store.close()  # idempotent
    with pytest.raises(StoreError) as err:
        tmp_store.lookup(KI)
    assert err.value.reason == "store-closed"
