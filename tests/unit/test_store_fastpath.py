"""The store's C lookup path gives exactly the Python path's answers, and steps aside safely.

Every comparison opens the same store twice in turn (never at once: LMDB forbids two handles
in one process): once with the C reader, once with ``MARKD_STORE_FASTPATH=0``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from markd import samples
from markd.codes import MarkingCode, parse
from markd.errors import StoreError
from markd.store import Store, fastpath
from markd.store.importer import apply_delta, import_snapshot

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


def answers(
    path: Path, queries: list[MarkingCode | str], *, fast: bool, now: float = NOW
) -> list[object]:
    with Store.open(str(path), readonly=True) as store:
        if fast:
            assert store._reader is not None, fastpath.why_not()
        else:
            assert store._reader is None
        # Twice: the first lookup after opening always refreshes through the Python path.
        store.lookup(queries[0], now=now)
        return [store.lookup(query, now=now) for query in queries]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_c_path_answers_exactly_as_the_python_path(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    codes, gtins = build_store(path, tmp_path, seed)
    queries: list[MarkingCode | str] = [*codes, *gtins, *(code.ki for code in codes[:50])]
    fast = answers(path, queries, fast=True)
    monkeypatch.setenv("MARKD_STORE_FASTPATH", "0")
    slow = answers(path, queries, fast=False)
    assert fast == slow
    # The data exercises every branch: КИ hits, GTIN hits, sold units, fresh and old verdicts.
    kinds = {entry.blocked.kind for entry in fast if entry.blocked}  # type: ignore[attr-defined]
    assert kinds == {"ki", "gtin"}
    assert any(entry.sold for entry in fast)  # type: ignore[attr-defined]
    assert {entry.cached.fresh for entry in fast if entry.cached} == {True, False}  # type: ignore[attr-defined]


def test_the_c_path_is_taken_in_the_steady_state(tmp_path: Path) -> None:
    path = tmp_path / "store"
    codes, _ = build_store(path, tmp_path, 4)
    with Store.open(str(path), readonly=True) as store:
        for code in codes:  # refresh, and cache the block attributes met
            store.lookup(code, now=NOW)
        answered = 0
        for code in codes:
            key = f"01{code.gtin}21{code.serial}".encode()
            fast = store._reader.lookup(key, NOW)
            if fast is not None:
                answered += 1
                assert fast == store.lookup(code, now=NOW)
                assert type(fast) is type(store.lookup(code, now=NOW))
        # Only sold units and units with a cached verdict (about 80 of ~300) go to Python.
        assert answered >= len(codes) - 80


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
    reader = store._reader
    store.close()
    with pytest.raises(StoreError):
        store.lookup(codes[0], now=NOW)
    # The reader itself steps aside once closed: the Python path answers (with StoreError).
    assert reader is not None
    assert reader.lookup(b"0104670540176099215LpGKy", NOW) is None


def test_the_fast_path_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKD_STORE_FASTPATH", "0")
    assert fastpath.why_not() == "disabled by MARKD_STORE_FASTPATH=0"


def test_the_c_module_is_built_here() -> None:
    # `make test` builds it (gcc and the Python headers come with tools/bootstrap.sh): if this
    # fails, the benchmark's lookup figure silently becomes the Python path's.
    assert fastpath.why_not() is None


def test_an_int_now_gives_the_same_float_age_on_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    codes, _ = build_store(path, tmp_path, 8)
    free = [code for code in codes if code.extra == {} or not code.extra]
    fast = answers(path, free[:20], fast=True, now=int(NOW))
    monkeypatch.setenv("MARKD_STORE_FASTPATH", "0")
    slow = answers(path, free[:20], fast=False, now=int(NOW))
    assert [type(a.blocklist_age_s) for a in fast] == [float] * len(fast)  # type: ignore[attr-defined]
    assert [type(a.blocklist_age_s) for a in slow] == [float] * len(slow)  # type: ignore[attr-defined]


def test_a_failed_open_is_a_store_error(tmp_path: Path) -> None:
    import lmdb

    plain = tmp_path / "plain"
    lmdb.open(str(plain)).close()  # an LMDB environment, but not a markd store
    with pytest.raises(StoreError, match="not a markd store"):
        Store.open(str(plain), readonly=True)


CHILD_SCRIPTS = {
    # A forked child closing its inherited store must not free the parent's reader slot.
    "fork": """
import os, sys
from markd.codes import parse
from markd.store import Store
store = Store.open(sys.argv[1])
code = parse(sys.argv[2])
store.lookup(code); store.lookup(code)
mine = [l for l in store._env.readers().splitlines()[1:] if l.split()[0] == str(os.getpid())]
assert mine, "the C reader holds a slot"
pid = os.fork()
if pid == 0:
    store.close()
    os._exit(0)
os.waitpid(pid, 0)
after = [l for l in store._env.readers().splitlines()[1:] if l.split()[0] == str(os.getpid())]
print("slots", len(mine), len(after))
store.lookup(code)
""",
    # A garbage collection inside a lookup that closes the store must not crash the process.
    "gc": """
import gc, sys
from markd.codes import parse
from markd.store import Store
store = Store.open(sys.argv[1])
code = parse(sys.argv[3])
store.lookup(code); store.lookup(code)
key = f"01{code.gtin}21{code.serial}".encode()
reader = store._reader
armed = [True]
def close_in_gc(phase, info):
    if armed[0] and phase == "start":
        armed[0] = False
        store.close()
gc.callbacks.append(close_in_gc)
gc.set_threshold(1)
result = reader.lookup(key, 1.0)
gc.set_threshold(700)
print("survived", result is None or result.blocked is not None)
""",
}


@pytest.mark.parametrize("case", sorted(CHILD_SCRIPTS))
def test_the_c_reader_survives_fork_and_reentry(case: str, tmp_path: Path) -> None:
    path = tmp_path / "store"
    codes, _ = build_store(path, tmp_path, 9)
    with Store.open(str(path), readonly=True) as store:
        blocked = [c for c in codes if store.lookup(c, now=NOW).blocked is not None]
    result = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPTS[case], str(path), codes[0].km, blocked[0].km],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    if case == "fork":
        assert result.stdout.split() == ["slots", "1", "1"]
    else:
        assert result.stdout.split() == ["survived", "True"]

