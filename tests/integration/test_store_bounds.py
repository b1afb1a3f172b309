"""Bounded imports and downloads (issue 15, item 2): a gzip bomb holding one long line, a
fleet index claiming a huge file, a server sending more than the index says.

Each import runs as a real ``markctl`` child; its peak RSS (``ru_maxrss`` of that very child,
from ``os.wait4``) must stay within :data:`RSS_LIMIT_KIB` whatever the input.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """Run ``args`` as a child; its exit code, stdout, stderr and peak RSS in KiB."""
    out, err = tmp_path / "child.out", tmp_path / "child.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        child = subprocess.Popen(args, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            child.returncode = 0  # reaped by wait4
    return (
        os.waitstatus_to_exitcode(status),
        out.read_text(),
        err.read_text(),
        usage.ru_maxrss,
    )


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
