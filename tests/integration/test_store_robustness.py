"""The store under abuse: ``kill -9`` during an import, a full disk, a map grown by another
process, and the daemon reading while ``markctl`` writes (issue 3, point 6).

Every writer here is a real child process (``markctl`` or a ``python -c`` calling
:func:`~markd.store.importer.import_snapshot`), killed with SIGKILL or starved of disk space the
way a kiosk loses power or fills its SD card. After each, the store must open (read-only and
read-write) and hold *exactly* the old or the new blocklist: every key compared, never a mix.

Two data sets share one pool of made-up КИ: set A (version 1, 30,000 КИ) and set B (version 2,
200,000 КИ); 10,000 КИ are in both.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import pytest

from markd.codes import gtin_check_digit
from markd.store import Store
from markd.store.importer import import_snapshot
from markd.store.keys import ki_key

A_SIZE = 30_000
B_SIZE = 200_000
SHARED = 10_000  # КИ in both sets
CHILD_TIMEOUT = 30.0

# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DataSets:
    """The two snapshots as files (B also shuffled) and as the key sets a store must hold."""

    a_file: Path
    b_file: Path
    b_shuffled: Path
    a_kis: list[str]
    b_kis: list[str]
    a_keys: frozenset[bytes]
    b_keys: frozenset[bytes]


def make_kis(count: int, seed: int) -> list[str]:
    """``count`` distinct GS1 КИ (4 GTINs with valid check digits, 13-character serials)."""
    rng = random.Random(seed)
    gtins = []
    for i in range(4):
        body = f"04607{i:03d}{rng.randrange(10**5):05d}"
        gtins.append(body + str(gtin_check_digit(body)))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    table = bytes(ord(alphabet[i % len(alphabet)]) for i in range(256))
    found: set[str] = set()
    while len(found) < count:
        raw = rng.randbytes(13 * count).translate(table).decode()
        for i in range(0, len(raw), 13):
            found.add(f"01{gtins[i % 4]}21{raw[i : i + 13]}")
    kis = sorted(found)[:count]
    rng.shuffle(kis)
    return kis


def write_kis(path: Path, kis: list[str], *, shuffled: bool = False, seed: int = 0) -> Path:
    lines = sorted(kis)
    if shuffled:
        random.Random(seed).shuffle(lines)
    path.write_text("".join(f"{ki}\n" for ki in lines))
    return path


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> DataSets:
    base = tmp_path_factory.mktemp("sets")
    pool = make_kis(A_SIZE + B_SIZE - SHARED, seed=3)
    a_kis = pool[:A_SIZE]
    b_kis = pool[A_SIZE - SHARED :]
    return DataSets(
        a_file=write_kis(base / "a.txt", a_kis),
        b_file=write_kis(base / "b.txt", b_kis),
        b_shuffled=write_kis(base / "b-shuffled.txt", b_kis, shuffled=True, seed=5),
        a_kis=a_kis,
        b_kis=b_kis,
        a_keys=frozenset(map(ki_key, a_kis)),
        b_keys=frozenset(map(ki_key, b_kis)),
    )


@pytest.fixture(scope="module")
def store_with_a(sets: DataSets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store at version 1 holding set A, to be copied (``data.mdb`` alone) for each test."""
    path = tmp_path_factory.mktemp("template") / "store"
    with Store.open(str(path)) as store:
        import_snapshot(store, sets.a_file, "text", version=1)
    return path


def copy_store(template: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    shutil.copyfile(template / "data.mdb", target / "data.mdb")
    return target


def markctl_store(
    command: str, store_dir: Path, *args: str, config: Path
) -> subprocess.CompletedProcess[str]:
    """``markctl store COMMAND … --store DIR --config FILE`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "markd.cli.markctl", "store", command, *args]
        + ["--store", str(store_dir), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A configuration file with every default, so /etc/markd never leaks into a test."""
    path = tmp_path_factory.mktemp("config") / "markd.toml"
    path.write_text("# every default\n")
    return path


def assert_exactly(store_dir: Path, sets: DataSets, *, readonly: bool) -> int:
    """The store opens and holds exactly set A at version 1 or set B at version 2; returns
    the version."""
    with Store.open(str(store_dir), readonly=readonly) as store:
        info = store.info()
        assert info.version in (1, 2), f"version {info.version} after the kill"
        held = {key for key, *_ in store.iter_blocked()}
        expected = sets.a_keys if info.version == 1 else sets.b_keys
        if held != expected:
            pytest.fail(
                f"version {info.version} but the blocklist is not exactly set "
                f"{'A' if info.version == 1 else 'B'}: {len(held - expected)} extra, "
                f"{len(expected - held)} missing"
            )
        assert info.counts == {"ki": len(expected), "gtin": 0, "series": 0}
        # The lookup path agrees with the listing: КИ of the other set are not blocked.
        other = sets.b_kis if info.version == 1 else sets.a_kis
        mine = sets.a_kis if info.version == 1 else sets.b_kis
        assert all(store.lookup(ki).blocked is not None for ki in mine[:100])
        assert all(
            store.lookup(ki).blocked is None for ki in other[:300] if ki_key(ki) not in expected
        )
        return info.version


# ---------------------------------------------------------------------------------------------
# kill -9 during an import

#: An import in a child process that reports each progress phase on stdout, one JSON per line,
#: with small chunks and commits so that there are many write transactions to land in; after
#: the import it prints "done" and waits (on stdin) to be killed.
IMPORT_CHILD = textwrap.dedent(
    """
    import json, sys
    from markd.store import Store
    from markd.store.importer import import_snapshot

    store_dir, snapshot, version = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def progress(phase, done, total, rows):
        print(json.dumps({"phase": phase, "rows": rows}), flush=True)

    with Store.open(store_dir) as store:
        print(json.dumps({"phase": "start"}), flush=True)
        import_snapshot(store, snapshot, "text", version=version, progress=progress,
                        chunk_rows=20_000, commit_rows=5_000)
    print(json.dumps({"phase": "done"}), flush=True)
    sys.stdin.read()
    """
)


class SlotProbe:
    """Counts the rows committed so far into the slot an import is filling, from outside.

    It reads the on-disk layout documented in ``docs/store.md`` (``meta["current"]`` names the
    live slot ``blocked.0``/``blocked.1``) with plain lmdb, as another process would. Close it
    before opening a :class:`Store` on the same path in this process: LMDB forbids one process
    to hold two handles on one environment.
    """

    def __init__(self, store_dir: Path) -> None:
        self.env = lmdb.open(str(store_dir), readonly=True, max_dbs=16, lock=True)
        self.meta = self.env.open_db(b"meta", create=False)
        self.slots = [self.env.open_db(name, create=False) for name in (b"blocked.0", b"blocked.1")]

    def filling(self) -> int:
        try:
            txn = self.env.begin()
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            txn = self.env.begin()
        try:
            live = txn.get(b"current", db=self.meta) == b"1"
            return txn.stat(self.slots[not live])["entries"]
        finally:
            txn.abort()

    def close(self) -> None:
        self.env.close()


@dataclass
class KillPoint:
    """When to send SIGKILL: once ``phase`` was printed and the filling slot holds at least
    ``rows_committed`` rows. ``phases_before_death`` bounds what the child may have printed by
    the time it died, proving the kill landed where this point says."""

    name: str
    shuffled: bool
    phase: str
    rows_committed: int
    phases_before_death: frozenset[str]
    outcomes: frozenset[int]
    delay_s: float = 0.0  # then wait this long before the kill


KILL_POINTS = [
    KillPoint(
        "append-commits", False, "start", 60_000, frozenset({"start", "read"}), frozenset({1})
    ),
    KillPoint(
        "sorting-runs", True, "sort", 0, frozenset({"start", "read", "sort"}), frozenset({1})
    ),
    KillPoint(
        "merge-commits",
        True,
        "merge",
        60_000,
        frozenset({"start", "read", "sort", "merge"}),
        frozenset({1}),
    ),
    KillPoint(
        "at-switch",
        False,
        "switch",
        0,
        frozenset({"start", "read", "switch", "done"}),
        frozenset({1, 2}),
    ),
    KillPoint(
        "after-finish",
        False,
        "done",
        0,
        frozenset({"start", "read", "switch", "done"}),
        frozenset({2}),
    ),
]


def _lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def import_and_kill(store_dir: Path, snapshot: Path, point: KillPoint) -> set[str]:
    """Run :data:`IMPORT_CHILD` and SIGKILL it at ``point``; the phases it printed."""
    child = subprocess.Popen(
        [sys.executable, "-c", IMPORT_CHILD, str(store_dir), str(snapshot), "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(child.stdout, lines), daemon=True).start()
    seen: set[str] = set()
    probe: SlotProbe | None = None
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while True:
            assert time.monotonic() < deadline, f"the import never reached {point.name}"
            try:
                line = lines.get(timeout=0.001 if point.phase in seen else 0.5)
            except queue.Empty:
                line = ""
            if line is None:
                pytest.fail(f"the import ended before {point.name}; it printed {sorted(seen)}")
            if line:
                seen.add(json.loads(line)["phase"])
            if point.phase not in seen:
                continue
            if point.rows_committed:
                probe = probe or SlotProbe(store_dir)
                if probe.filling() < point.rows_committed:
                    continue
            if point.delay_s:
                time.sleep(point.delay_s)
            child.send_signal(signal.SIGKILL)
            break
    finally:
        if probe is not None:
            probe.close()
        child.kill()
        child.wait(CHILD_TIMEOUT)
    while (line := lines.get(timeout=CHILD_TIMEOUT)) is not None:  # printed before it died
        seen.add(json.loads(line)["phase"])
    assert child.returncode == -signal.SIGKILL
    return seen


@pytest.mark.parametrize("point", KILL_POINTS, ids=lambda p: p.name)
def test_kill_9_during_import_leaves_exactly_the_old_or_the_new_list(
    point: KillPoint, sets: DataSets, store_with_a: Path, defaults: Path, tmp_path: Path
) -> None:
    store_dir = copy_store(store_with_a, tmp_path / "store")
    snapshot = sets.b_shuffled if point.shuffled else sets.b_file

    seen = import_and_kill(store_dir, snapshot, point)

    assert seen <= point.phases_before_death, f"killed too late: it printed {sorted(seen)}"
    version = assert_exactly(store_dir, sets, readonly=True)
    assert version in point.outcomes
    assert assert_exactly(store_dir, sets, readonly=False) == version
    # The next import works over whatever the killed one left behind.
    result = markctl_store(
        "import", store_dir, str(sets.b_shuffled), "--version", "3", config=defaults
    )
    assert result.returncode == 0, result.stderr
    with Store.open(str(store_dir), readonly=True) as store:
        assert store.info().version == 3
        assert {key for key, *_ in store.iter_blocked()} == sets.b_keys
    assert not list((store_dir / "tmp").glob("import-*/*")), "sort runs left behind"


ALL_PHASES = frozenset({"start", "read", "sort", "merge", "switch", "done"})


def test_kill_9_at_random_moments_of_an_import(
    sets: DataSets, store_with_a: Path, tmp_path: Path
) -> None:
    """Kill at moments spread over a whole unsorted import, wherever they land."""
    started = time.monotonic()
    import_and_kill(copy_store(store_with_a, tmp_path / "timing"), sets.b_shuffled, KILL_POINTS[-1])
    duration = time.monotonic() - started
    rng = random.Random(42)
    outcomes = []
    kills = 8
    for i in range(kills):  # one random moment in each eighth of the import's duration
        store_dir = copy_store(store_with_a, tmp_path / f"store-{i}")
        delay = duration * (i + rng.random()) / kills
        point = KillPoint(f"{delay:.3f} s", True, "start", 0, ALL_PHASES, frozenset({1, 2}), delay)
        import_and_kill(store_dir, sets.b_shuffled, point)
        outcomes.append(assert_exactly(store_dir, sets, readonly=False))
    assert 1 in outcomes, "no kill landed before the switch: the moments say nothing"


def test_sorted_import_removes_the_runs_a_killed_unsorted_import_left(
    sets: DataSets, store_with_a: Path, defaults: Path, tmp_path: Path
) -> None:
    store_dir = copy_store(store_with_a, tmp_path / "store")
    import_and_kill(store_dir, sets.b_shuffled, KILL_POINTS[1])
    assert list((store_dir / "tmp").glob("import-*/run-*")), "the kill left no runs to clean"

    result = markctl_store("import", store_dir, str(sets.b_file), "--version", "3", config=defaults)

    assert result.returncode == 0, result.stderr
    assert not list((store_dir / "tmp").glob("import-*")), "runs of the killed import remain"


# ---------------------------------------------------------------------------------------------
# A full disk

#: Runs inside a private mount namespace with a 3 MB tmpfs at argv[1]: imports set A there,
#: then the too-large set B sorted and shuffled, each through markctl; prints what happened.
DISK_FULL_CHILD = textwrap.dedent(
    """
    import json, subprocess, sys
    from markd.store import Store

    mount, a_file, b_file, b_shuffled, config = sys.argv[1:6]
    store = mount + "/store"

    def markctl(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "markd.cli.markctl", "store", "import", *args,
             "--store", store, "--config", config, "--progress", "none", "--json"],
            capture_output=True, text=True, timeout=60)
        return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

    def state():
        out = {}
        for readonly in (True, False):
            with Store.open(store, readonly=readonly) as s:
                out["readonly" if readonly else "readwrite"] = {
                    "version": s.info().version,
                    "keys": sorted(k.decode() for k, *_ in s.iter_blocked()),
                }
        return out

    report = {"a": markctl(a_file, "--version", "1")}
    report["sorted"] = markctl(b_file, "--version", "2")
    report["after_sorted"] = state()
    report["shuffled"] = markctl(b_shuffled, "--version", "2")
    report["after_shuffled"] = state()
    json.dump(report, sys.stdout)
    """
)


@pytest.fixture(scope="module")
def disk_full(sets: DataSets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What markctl did on a 3 MB tmpfs: set A (small) imported, set B (about 10 MB in the
    store) refused by the disk, sorted and then shuffled. The map (64 MiB, sparse) is never the
    limit: the filesystem is."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"]).returncode != 0:
        pytest.skip("mount namespaces are not available here")
    base = tmp_path_factory.mktemp("disk-full")
    mount = base / "mnt"
    mount.mkdir()
    small_a = write_kis(base / "a-small.txt", sets.a_kis[:2_000])
    config = base / "markd.toml"
    config.write_text("[store]\nmap_size_mb = 64\n")
    script = base / "child.py"
    script.write_text(DISK_FULL_CHILD)
    command = (
        f"mount -t tmpfs -o size=3m tmpfs {mount} && exec {sys.executable} {script} {mount} "
        f"{small_a} {sets.b_file} {sets.b_shuffled} {config}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["a"]["rc"] == 0, report["a"]["stderr"]
    report["a_keys"] = sorted(ki_key(ki).decode() for ki in sets.a_kis[:2_000])
    report["store"] = str(mount / "store")
    return report


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_full_disk_fails_the_import_and_keeps_the_previous_version(
    disk_full: dict[str, Any], order: str
) -> None:
    assert disk_full[order]["rc"] == 1, disk_full[order]
    for mode, state in disk_full[f"after_{order}"].items():
        assert state["version"] == 1, mode
        assert state["keys"] == disk_full["a_keys"], f"{mode}: not exactly set A"


@pytest.mark.parametrize(
    "order",
    [
        "sorted",
        "shuffled",
    ],
)
def test_full_disk_error_says_so_and_names_the_store(disk_full: dict[str, Any], order: str) -> None:
    result = disk_full[order]
    assert "Traceback" not in result["stderr"], result["stderr"]
    error = json.loads(result["stdout"].strip().splitlines()[-1])["error"]
    assert error["reason"] == "store-disk-full", error
    assert disk_full["store"] in error["message"]
    assert "previous blocklist version is intact" in error["message"]
    assert result["stderr"].startswith("markctl: ")


# ---------------------------------------------------------------------------------------------
# Two writers: the daemon's periodic sync and a technician's markctl may import at once

#: One import with many small commits (so two of them overlap), printing its source's name.
PLAIN_IMPORT_CHILD = textwrap.dedent(
    """
    import sys
    from markd.store import Store
    from markd.store.importer import import_snapshot

    with Store.open(sys.argv[1]) as store:
        import_snapshot(store, sys.argv[2], "text", force=True, commit_rows=2_000)
    """
)


def test_two_imports_at_once_never_mix_their_files(
    sets: DataSets, store_with_a: Path, tmp_path: Path
) -> None:
    store_dir = copy_store(store_with_a, tmp_path / "store")
    other = make_kis(100_000, seed=17)  # shares no КИ with set B
    files = {"b.txt": sets.b_file, "other.txt": write_kis(tmp_path / "other.txt", other)}
    key_sets = {"b.txt": sets.b_keys, "other.txt": frozenset(map(ki_key, other))}

    children = [
        subprocess.Popen([sys.executable, "-c", PLAIN_IMPORT_CHILD, str(store_dir), str(path)])
        for path in files.values()
    ]
    codes = [child.wait(CHILD_TIMEOUT) for child in children]

    assert 0 in codes, "neither import finished"
    with Store.open(str(store_dir), readonly=True) as store:
        info = store.info()
        held = {key for key, *_ in store.iter_blocked()}
    assert info.source in key_sets, info.source
    expected = key_sets[info.source]
    assert held == expected, (
        f"the live list claims {info.source} but holds {len(held & expected)} of its КИ and "
        f"{len(held - expected)} others"
    )
    assert info.counts["ki"] == len(held)


# ---------------------------------------------------------------------------------------------
# The map grows in one process; a reader in another adopts it


def test_reader_adopts_a_map_grown_by_another_process(sets: DataSets, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    small_a = write_kis(tmp_path / "a.txt", sets.a_kis[:500])
    with Store.open(str(store_dir), map_size_mb=1) as writer:
        import_snapshot(writer, small_a, "text", version=1)
    config = tmp_path / "markd.toml"
    config.write_text("[store]\nmap_size_mb = 1\n")
    b_only = sorted(set(sets.b_kis) - set(sets.a_kis))

    with Store.open(str(store_dir), map_size_mb=1, readonly=True) as reader:
        assert reader.lookup(sets.a_kis[0]).blocked is not None
        assert reader.stats()["map_size_bytes"] == 1 << 20

        # 200,000 КИ need about 10 MiB: markctl, also configured for 1 MiB, grows the map.
        result = markctl_store(
            "import", store_dir, str(sets.b_file), "--version", "2", config=config
        )
        assert result.returncode == 0, result.stderr

        found = reader.lookup(b_only[0])
        assert found.blocked is not None and found.blocklist_version == 2
        assert reader.lookup(sets.a_kis[0]).blocked is None  # only in set A
        assert reader.stats()["map_size_bytes"] > 8 << 20
        assert {key for key, *_ in reader.iter_blocked()} == sets.b_keys


# ---------------------------------------------------------------------------------------------
# The daemon keeps reading while markctl writes

#: The daemon's side: a read-write Store (as markd opens it) looking up КИ of every category in
#: a loop, checking each answer against the version the same lookup reports.
READER_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from markd.store import Store

    store_dir, probes_file, final = sys.argv[1], sys.argv[2], int(sys.argv[3])
    probes = json.load(open(probes_file))  # [[ki, [versions where it is blocked]], ...]
    seen, wrong, errors, lookups, after_final = [], [], [], 0, 0
    deadline = time.monotonic() + 60
    with Store.open(store_dir) as store:
        while time.monotonic() < deadline and after_final < 3:
            for ki, blocked_in in probes:
                try:
                    found = store.lookup(ki)
                except Exception as exc:
                    errors.append(repr(exc))
                    continue
                lookups += 1
                version = found.blocklist_version
                if not seen or seen[-1] != version:
                    seen.append(version)
                if (found.blocked is not None) != (version in blocked_in) and len(wrong) < 20:
                    wrong.append([ki, version, found.blocked is not None])
            if lookups == len(probes):
                print("ready", flush=True)
            after_final += bool(seen) and seen[-1] == final
    print(json.dumps({"seen": seen, "wrong": wrong, "errors": errors[:20], "lookups": lookups}))
    """
)


def delta_file(path: Path, version: int, changes: list[tuple[str, str]]) -> Path:
    lines = [{"format": "markd-delta", "version": version, "previous": version - 1}]
    lines += [{"op": op, "ki": ki} for op, ki in changes]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_daemon_reads_consistently_while_markctl_imports_and_applies_deltas(
    sets: DataSets, store_with_a: Path, defaults: Path, tmp_path: Path
) -> None:
    store_dir = copy_store(store_with_a, tmp_path / "store")
    a_only = sorted(set(sets.a_kis) - set(sets.b_kis))
    both = sorted(set(sets.a_kis) & set(sets.b_kis))
    b_only = sorted(set(sets.b_kis) - set(sets.a_kis))
    added_in_3 = make_kis(1_000, seed=11)  # in neither set
    removed_in_4 = b_only[:1_000]
    delta_3 = delta_file(tmp_path / "d3.jsonl", 3, [("add", ki) for ki in added_in_3])
    delta_4 = delta_file(tmp_path / "d4.jsonl", 4, [("remove", ki) for ki in removed_in_4])
    probes: list[tuple[str, list[int]]] = []
    probes += [(ki, [1]) for ki in a_only[:200]]
    probes += [(ki, [1, 2, 3, 4]) for ki in both[:200]]
    probes += [(ki, [2, 3, 4]) for ki in b_only[-200:]]
    probes += [(ki, [3, 4]) for ki in added_in_3[:200]]
    probes += [(ki, [2, 3]) for ki in removed_in_4[:200]]
    random.Random(1).shuffle(probes)
    probes_file = tmp_path / "probes.json"
    probes_file.write_text(json.dumps(probes))

    reader = subprocess.Popen(
        [sys.executable, "-c", READER_CHILD, str(store_dir), str(probes_file), "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        for step in (
            ("import", str(sets.b_file), "--version", "2"),
            ("delta", str(delta_3)),
            ("delta", str(delta_4)),
        ):
            command, *args = step
            result = markctl_store(command, store_dir, *args, config=defaults)
            assert result.returncode == 0, (step, result.stderr)
        out, _ = reader.communicate(timeout=CHILD_TIMEOUT)
    finally:
        reader.kill()
        reader.wait(CHILD_TIMEOUT)
    summary = json.loads(out.strip().splitlines()[-1])

    assert summary["errors"] == []
    assert summary["wrong"] == [], "a lookup saw a mix of versions"
    assert summary["seen"][0] == 1 and summary["seen"][-1] == 4
    assert summary["seen"] == sorted(summary["seen"]), "a reader went back to an older version"
    assert summary["lookups"] >= 3 * len(probes)
