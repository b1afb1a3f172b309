"""Fleet sync over real HTTP on loopback: a master exports, kiosks sync from a static server.

Every test uses real LMDB stores in a temporary directory and the static file emulator
(:mod:`markd.emulators.static_http`) with its request log, so "the snapshot was not fetched"
or "the download resumed at byte N" are assertions on what crossed the wire.
"""

from __future__ import annotations

import csv
import fcntl
import gzip
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from markd import samples
from markd.cli import markctl
from markd.codes import parse
from markd.emulators.server import Reply, Request, Route
from markd.emulators.static_http import StaticHTTPServer
from markd.errors import StoreError
from markd.store import Store, fleet
from markd.store.importer import apply_delta, import_snapshot, read_delta

PASSWORD = "hunter2-Secret"
TOKEN = "tok3n-Secret"


def kis(count: int, seed: int = 7) -> list[str]:
    """Distinct КИ texts (GS1 form) from synthetic codes."""
    found = {parse(code).ki for code in samples.batch(count * 3, seed=seed)}
    return sorted(k for k in found if k.startswith("01"))[:count]


KIS = kis(6000)
GTIN = "04680029460908"


def snapshot_csv(path: Path, rows: list[str]) -> Path:
    """A CSV snapshot: КИ rows with reasons, sources and times, plus a GTIN and a series.

    Serials may hold ``,`` and ``"`` (GS1 character set 82): the csv module quotes them."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ki", "gtin", "series", "reason", "source", "since"])
        writer.writerows(
            [ki, "", "", "recalled", "rpn", 1_700_000_000 + i] for i, ki in enumerate(rows)
        )
        writer.writerow(["", GTIN, "", "bad gtin", "head office", 1_700_000_000])
        writer.writerow(["", "04607809596237", "L-9", "batch", "", ""])
    return path


def delta_file(path: Path, version: int, changes: list[dict[str, Any]]) -> Path:
    header = {"format": "markd-delta", "version": version, "previous": version - 1}
    lines = [json.dumps(header)] + [json.dumps(change) for change in changes]
    path.write_text("\n".join(lines) + "\n")
    return path


def content(store: Store) -> list[tuple[bytes, int, str, str]]:
    return list(store.iter_blocked())


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """The directory the file server serves."""
    path = tmp_path / "www"
    path.mkdir()
    return path


@pytest.fixture
def server(www: Path) -> Iterator[StaticHTTPServer]:
    with StaticHTTPServer(www) as srv:
        yield srv


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Store]:
    """The head office's store at version 1 with 2,000 entries."""
    with Store.open(str(tmp_path / "master"), map_size_mb=8) as store:
        import_snapshot(store, snapshot_csv(tmp_path / "v1.csv", KIS[:2000]), version=1)
        yield store


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[Store]:
    with Store.open(str(tmp_path / "kiosk"), map_size_mb=8) as store:
        yield store


def two_deltas(master: Store, tmp_path: Path) -> None:
    """Master goes 1 → 2 → 3: adds (one without a since-time) and removes."""
    apply_delta(
        master,
        delta_file(
            tmp_path / "d2.jsonl",
            2,
            [
                {"op": "add", "ki": KIS[3000], "reason": "stolen", "source": "police"},
                {"op": "remove", "ki": KIS[0]},
            ],
        ),
    )
    apply_delta(
        master,
        delta_file(
            tmp_path / "d3.jsonl",
            3,
            [{"op": "add", "gtin": "4680029460915", "since": 1_700_000_500}],
        ),
    )


def store_error(call: Any, *args: Any, **kwargs: Any) -> StoreError:
    with pytest.raises(StoreError) as caught:
        call(*args, **kwargs)
    return caught.value


# ---------------------------------------------------------------------------------------------
# export


def test_export_writes_verifiable_files_and_the_index_last(
    master: Store, www: Path, tmp_path: Path
) -> None:
    two_deltas(master, tmp_path)
    index = fleet.export(master, www / "fleet")
    directory = www / "fleet"
    assert index == json.loads((directory / "index.json").read_text())
    assert (index["format"], index["version"]) == ("markd-store-index", 3)
    assert index["snapshot"]["file"] == "snapshot-3.mbl.gz"
    assert [(d["version"], d["previous"], d["file"]) for d in index["deltas"]] == [
        (2, 1, "delta-2.jsonl"),
        (3, 2, "delta-3.jsonl"),
    ]
    for entry in [index["snapshot"], *index["deltas"]]:
        data = (directory / entry["file"]).read_bytes()
        assert len(data) == entry["size"]
        assert fleet._file_sha256(directory / entry["file"]) == entry["sha256"]
    assert sorted(p.name for p in directory.iterdir()) == [
        "delta-2.jsonl",
        "delta-3.jsonl",
        "index.json",
        "snapshot-3.mbl.gz",
    ]  # no temporary file left behind
    lines = gzip.decompress((directory / "snapshot-3.mbl.gz").read_bytes()).decode().splitlines()
    attrs = [line for line in lines if line.startswith("#attr\t")]
    rows = [line for line in lines if not line.startswith("#")]
    total = sum(master.info().counts.values())
    assert lines[0] == "#markd-blocklist 1" and lines[1 : 1 + len(attrs)] == attrs
    assert lines[-1] == f"#end\t{total}" and len(rows) == total == index["snapshot"]["rows"]
    assert [line.split("\t")[0] for line in rows] == sorted(
        key.replace(b"\x1f", b"|").decode() for key, *_ in master.iter_blocked()
    )
    # The delta file is what `markctl store delta` reads, with the master's apply time filled in.
    delta = read_delta(directory / "delta-2.jsonl")
    applied_at = master.deltas()[0]["applied_at"]
    assert (delta["version"], delta["previous"]) == (2, 1)
    assert delta["changes"][0] == (
        "add",
        {"ki": KIS[3000], "reason": "stolen", "source": "police", "since": applied_at},
    )
    # Same list, same bytes: a second export leaves the files (and their ETags) alone.
    before = (directory / "snapshot-3.mbl.gz").stat().st_mtime_ns
    time.sleep(0.01)
    again = fleet.export(master, directory)
    assert again["snapshot"] == index["snapshot"]
    assert (directory / "snapshot-3.mbl.gz").stat().st_mtime_ns == before


def test_an_empty_store_exports_version_0_and_syncs_as_up_to_date(
    kiosk: Store, tmp_path: Path, www: Path, server: StaticHTTPServer
) -> None:
    with Store.open(str(tmp_path / "empty"), map_size_mb=8) as empty:
        index = fleet.export(empty, www)
    assert (index["version"], index["deltas"]) == (0, [])
    result = fleet.sync(kiosk, server.url)
    assert (result.action, result.after_version) == ("up-to-date", 0)
    # A master without a list confirms nothing: the kiosk's list is no more current than before.
    assert kiosk.info().synced_at is None and kiosk.info().checked_at is not None


# ---------------------------------------------------------------------------------------------
# sync


def test_sync_into_an_empty_store_then_304_and_freshness_follows_the_master(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer
) -> None:
    an_hour_ago = int(time.time()) - 3600
    master._write(lambda txn: master._update_info(txn, synced_at=an_hour_ago), "ageing")
    fleet.export(master, www)
    progress: list[tuple[str, int, int | None, int]] = []
    result = fleet.sync(kiosk, server.url, progress=lambda *a: progress.append(a))
    assert (result.action, result.before_version, result.after_version) == ("snapshot", 0, 1)
    assert result.downloaded_bytes == (www / "snapshot-1.mbl.gz").stat().st_size
    assert content(kiosk) == content(master)
    assert kiosk.lookup(KIS[5]).blocked.reason == "recalled"
    info = kiosk.info()
    assert (info.version, info.source, info.sync_url) == (1, server.url, server.url)
    assert info.counts == master.info().counts
    assert progress[-1][0] == "switch" and ("download", result.downloaded_bytes) in {
        p[:2] for p in progress
    }
    assert not [p for p in Path(kiosk.path, "downloads").iterdir() if p.name != ".lock"]

    # The kiosk's list is exactly as current as the master's was when it exported.
    assert info.synced_at == an_hour_ago

    kiosk._write(lambda txn: kiosk._update_info(txn, synced_at=1), "ageing the list")
    assert kiosk.lookup(KIS[5]).stale
    again = fleet.sync(kiosk, server.url)
    assert again.action == "unchanged" and "index unchanged" in again.summary()
    last = server.requests_for("index.json")[-1]
    assert last.status == 304 and last.if_none_match == info.sync_etag
    # Nothing new on the server says nothing new about the list: still stale, checked now.
    assert kiosk.lookup(KIS[5]).stale
    assert kiosk.info().checked_at >= time.time() - 60

    master.touch_sync()  # the master confirms its list (its own sync) and exports again
    fleet.export(master, www)
    third = fleet.sync(kiosk, server.url)
    assert third.action == "up-to-date"
    assert kiosk.info().synced_at >= time.time() - 60
    assert not kiosk.lookup(KIS[5]).stale
    assert server.count("snapshot-1.mbl.gz") == 1


def test_a_kiosk_one_export_behind_fetches_only_the_deltas(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, tmp_path: Path
) -> None:
    fleet.export(master, www)
    fleet.sync(kiosk, server.url)
    two_deltas(master, tmp_path)
    fleet.export(master, www)
    result = fleet.sync(kiosk, server.url)
    assert (result.action, result.deltas_applied, result.after_version) == ("deltas", 2, 3)
    assert server.count("snapshot-3.mbl.gz") == 0
    assert server.count("delta-2.jsonl") == server.count("delta-3.jsonl") == 1
    # Identical to the byte, the since-time of the add that gave none included.
    assert content(kiosk) == content(master)
    assert kiosk.lookup(KIS[0]).blocked is None
    assert kiosk.lookup(KIS[3000]).blocked.source == "police"


@pytest.mark.parametrize("how", ["deltas trimmed", "new snapshot"])
def test_a_kiosk_too_far_behind_takes_the_snapshot(
    how: str, kiosk: Store, www: Path, server: StaticHTTPServer, tmp_path: Path
) -> None:
    with Store.open(str(tmp_path / "m"), map_size_mb=8, delta_history=1) as master:
        import_snapshot(master, snapshot_csv(tmp_path / "v1.csv", KIS[:500]), version=1)
        fleet.export(master, www)
        fleet.sync(kiosk, server.url)
        two_deltas(master, tmp_path)  # the master keeps only delta 3
        if how == "new snapshot":
            import_snapshot(master, snapshot_csv(tmp_path / "v4.csv", KIS[400:900]), version=4)
        index = fleet.export(master, www)
        result = fleet.sync(kiosk, server.url)
        assert result.action == "snapshot" and result.deltas_applied == 0
        assert result.after_version == index["version"]
        assert server.count(index["snapshot"]["file"]) == 1
        assert server.count("delta-2.jsonl") == 0
        assert content(kiosk) == content(master)


def test_a_cut_download_resumes_with_a_range_request(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer
) -> None:
    fleet.export(master, www)
    name = "snapshot-1.mbl.gz"
    size = (www / name).stat().st_size
    cut = size // 2
    server.cut_after = {name: cut}

    error = store_error(fleet.sync, kiosk, server.url)
    assert error.reason == "sync-failed"
    assert name in error.message and f"after {cut:,} of {size:,} bytes" in error.message
    part = Path(kiosk.path, "downloads", name + ".part")
    assert part.stat().st_size == cut
    assert kiosk.info().version == 0

    result = fleet.sync(kiosk, server.url)
    first, second = server.requests_for(name)
    assert (first.status, first.sent, first.range) == (200, cut, None)
    assert (second.status, second.range, second.sent) == (206, f"bytes={cut}-", size - cut)
    assert second.if_range is not None
    assert result.resumed and result.downloaded_bytes == size - cut
    assert content(kiosk) == content(master)
    assert not part.exists()


def test_a_part_whose_file_changed_is_fetched_whole(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer
) -> None:
    fleet.export(master, www)
    name = "snapshot-1.mbl.gz"
    server.cut_after = {name: 1000}
    store_error(fleet.sync, kiosk, server.url)
    # As if the server had another file under this name when the first half came.
    Path(kiosk.path, "downloads", name + ".part.etag").write_text('"an-older-file"\n')
    result = fleet.sync(kiosk, server.url)
    last = server.requests_for(name)[-1]
    assert (last.range, last.if_range, last.status) == ("bytes=1000-", '"an-older-file"', 200)
    assert not result.resumed and content(kiosk) == content(master)


def test_a_tampered_file_is_a_bad_download_and_changes_nothing(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, tmp_path: Path
) -> None:
    fleet.export(master, www)
    snapshot = www / "snapshot-1.mbl.gz"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    snapshot.write_bytes(bytes(data))

    error = store_error(fleet.sync, kiosk, server.url)
    assert error.reason == "bad-download" and "snapshot-1.mbl.gz" in error.message
    assert "sha256" in error.message
    assert content(kiosk) == [] and kiosk.info().version == 0
    assert not Path(kiosk.path, "downloads", "snapshot-1.mbl.gz.part").exists()


def _index(www: Path) -> dict[str, Any]:
    return json.loads((www / "index.json").read_text())


@pytest.mark.parametrize(
    "damage",
    [
        "not json",
        "format",
        "version as text",
        "slash in name",
        "dot-dot name",
        "short sha256",
        "broken chain",
        "unreachable version",
    ],
)
def test_a_bad_index_is_refused(
    damage: str,
    master: Store,
    kiosk: Store,
    www: Path,
    server: StaticHTTPServer,
    tmp_path: Path,
) -> None:
    two_deltas(master, tmp_path)
    fleet.export(master, www)
    index = _index(www)
    if damage == "not json":
        raw = "{'format': 'markd-store-index'"
    else:
        if damage == "format":
            index["format"] = "something-else"
        elif damage == "version as text":
            index["version"] = "3"
        elif damage == "slash in name":
            index["snapshot"]["file"] = "sub/snapshot-3.mbl.gz"
        elif damage == "dot-dot name":
            index["deltas"][0]["file"] = "..delta-2.jsonl"
        elif damage == "short sha256":
            index["snapshot"]["sha256"] = "abc123"
        elif damage == "broken chain":
            index["deltas"][1]["previous"] = 1
        elif damage == "unreachable version":
            index["version"] = 9
        raw = json.dumps(index)
    (www / "index.json").write_text(raw)
    error = store_error(fleet.sync, kiosk, server.url)
    assert error.reason == "bad-index" and "index.json" in error.message
    assert kiosk.info().version == 0
    assert [r.path for r in server.requests] == ["index.json"]


def test_an_unreachable_server_fails_fast(kiosk: Store) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = store_error(fleet.sync, kiosk, f"http://127.0.0.1:{port}/fleet", timeout=2)
    assert error.reason == "sync-failed"
    assert f"http://127.0.0.1:{port}/fleet" in error.message and "refused" in error.message


def test_a_server_that_never_answers_fails_within_the_timeout(kiosk: Store) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # connections complete in the backlog, nobody ever answers
        started = time.monotonic()
        error = store_error(
            fleet.sync, kiosk, f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3
        )
        assert time.monotonic() - started < 3
    assert error.reason == "sync-failed" and "no answer within 0.3 s" in error.message


def test_http_errors_name_the_status(kiosk: Store, server: StaticHTTPServer) -> None:
    error = store_error(fleet.sync, kiosk, server.url + "/nothing-here/")
    assert error.reason == "sync-failed"
    assert f"{server.url}/nothing-here failed: index.json: HTTP 404" in error.message


def test_a_server_behind_the_store_is_refused_unless_allowed(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, tmp_path: Path
) -> None:
    two_deltas(master, tmp_path)
    fleet.export(master, www)
    fleet.sync(kiosk, server.url)
    at_three = content(kiosk)
    with Store.open(str(tmp_path / "restored"), map_size_mb=8) as restored:
        import_snapshot(restored, snapshot_csv(tmp_path / "old.csv", KIS[:10]), version=2)
        fleet.export(restored, www)
        error = store_error(fleet.sync, kiosk, server.url)
        assert error.reason == "stale-snapshot"
        assert "version 2" in error.message and "version 3" in error.message
        assert content(kiosk) == at_three and kiosk.info().version == 3
        assert server.count("snapshot-2.mbl.gz") == 0

        result = fleet.sync(kiosk, server.url, allow_rollback=True)
        assert (result.action, result.after_version) == ("snapshot", 2)
        assert content(kiosk) == content(restored)


def test_credentials_are_used_but_never_shown(
    master: Store, kiosk: Store, www: Path, tmp_path: Path
) -> None:
    fleet.export(master, www / "x")
    with StaticHTTPServer(www, auth=("kiosk", PASSWORD)) as srv:
        host = srv.url.removeprefix("http://")
        good = f"http://kiosk:{PASSWORD}@{host}/x?token={TOKEN}"
        result = fleet.sync(kiosk, good)
        assert result.url == f"{srv.url}/x" and result.after_version == 1
        assert all(r.authorized for r in srv.requests)
        stored = json.dumps(kiosk.info().__dict__)
        assert PASSWORD not in stored and TOKEN not in stored

        failures = [
            store_error(fleet.sync, kiosk, f"http://kiosk:wrong-{PASSWORD}@{host}/x"),
            store_error(fleet.sync, kiosk, f"http://kiosk:{PASSWORD}@{host}/y?token={TOKEN}"),
            store_error(fleet.sync, kiosk, f"http://kiosk:{PASSWORD}@127.0.0.1:1/x?t={TOKEN}"),
            store_error(fleet.sync, kiosk, f"ftp://kiosk:{PASSWORD}@{host}/x"),
        ]
    assert [e.reason for e in failures] == ["sync-failed"] * 3 + ["bad-url"]
    assert "HTTP 401" in failures[0].message and "HTTP 404" in failures[1].message
    for error in failures:
        assert PASSWORD not in error.message and TOKEN not in error.message
        assert "kiosk:" not in error.message


def test_one_sync_per_store_at_a_time(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer
) -> None:
    fleet.export(master, www)
    downloads = Path(kiosk.path, "downloads")
    downloads.mkdir()
    with open(downloads / ".lock", "a") as held:  # as the daemon's sync child holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        error = store_error(fleet.sync, kiosk, server.url)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert error.reason == "sync-busy" and server.requests == []
    assert fleet.sync(kiosk, server.url).after_version == 1


# ---------------------------------------------------------------------------------------------
# markctl


def markctl_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    status = markctl.main(list(args))
    out, err = capsys.readouterr()
    return status, json.loads(out) if out.strip() else None, err


def test_markctl_export_and_sync(
    tmp_path: Path, www: Path, server: StaticHTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "markd.toml"
    # Unsigned over plain http:// (loopback): allowed only by saying so (test_store_signing.py).
    config.write_text("[store]\nsync_allow_unsigned = true\n")
    master_dir, kiosk_dir = str(tmp_path / "m"), str(tmp_path / "k")
    with Store.open(master_dir, map_size_mb=8) as master:
        import_snapshot(master, snapshot_csv(tmp_path / "v1.csv", KIS[:50]), version=1)
    common = ("--config", str(config), "--json")

    status, index, _ = markctl_run(
        capsys, "store", "export", "--to", str(www), "--store", master_dir, *common
    )
    assert status == 0 and index["version"] == 1 and (www / "index.json").exists()

    sync = ("store", "sync", "--store", kiosk_dir, "--progress", "none", *common)
    status, result, _ = markctl_run(capsys, *sync[:2], server.url, *sync[2:])
    assert status == 0
    assert (result["action"], result["after_version"], result["url"]) == (
        "snapshot",
        1,
        server.url,
    )
    status, result, _ = markctl_run(capsys, *sync[:2], server.url, *sync[2:])
    assert (status, result["action"]) == (0, "unchanged")

    (www / "index.json").write_text('{"format": "markd-store-index", "version": -1}')
    status, result, err = markctl_run(capsys, *sync[:2], server.url, *sync[2:])
    assert (status, result["error"]["reason"]) == (2, "bad-index")
    assert "markctl:" in err

    url = f"http://u:{PASSWORD}@127.0.0.1:1/x"
    status, result, err = markctl_run(capsys, *sync[:2], url, *sync[2:])
    assert (status, result["error"]["reason"]) == (1, "sync-failed")
    assert PASSWORD not in json.dumps(result) and PASSWORD not in err

    status = markctl.main(
        ["store", "sync", server.url, "--store", kiosk_dir, "--config", str(config)]
    )
    out = capsys.readouterr().out
    assert status == 2 and out == ""  # the broken index from above, in plain text on stderr


# ---------------------------------------------------------------------------------------------
# the emulator itself


def test_emulator_speaks_etags_ranges_and_404(www: Path, server: StaticHTTPServer) -> None:
    (www / "f.bin").write_bytes(bytes(range(100)))

    def get(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.headers), response.read()
        finally:
            conn.close()

    status, headers, body = get("/f.bin")
    etag = headers["ETag"]
    assert (status, body, headers["Accept-Ranges"]) == (200, bytes(range(100)), "bytes")
    assert get("/f.bin", **{"If-None-Match": f'"x", {etag}'})[0] == 304
    status, headers, body = get("/f.bin", Range="bytes=10-19")
    assert (status, headers["Content-Range"], body) == (
        206,
        "bytes 10-19/100",
        bytes(range(10, 20)),
    )
    assert get("/f.bin", Range="bytes=-5")[2] == bytes(range(95, 100))
    assert get("/f.bin", Range="bytes=90-", **{"If-Range": etag})[0] == 206
    assert get("/f.bin", Range="bytes=90-", **{"If-Range": '"old"'})[:1] == (200,)
    status, headers, _ = get("/f.bin", Range="bytes=100-")
    assert (status, headers["Content-Range"]) == (416, "bytes */100")
    assert get("/f.bin", Range="bytes=x-y")[0] == 416
    assert get("/../www/f.bin")[0] == 404 and get("/missing")[0] == 404 and get("/")[0] == 404
    assert server.count("f.bin") == 8


def test_a_list_from_elsewhere_is_replaced_by_the_snapshot_whatever_its_version(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, tmp_path: Path
) -> None:
    """Versions only compare within one origin: a kiosk at version 5 from a local file must
    not take the master's deltas 2…3 on top of a list they were never made for."""
    local = tmp_path / "local.txt"
    local.write_text(KIS[0] + "\n")
    for version in range(1, 6):
        import_snapshot(kiosk, local, version=version)
    two_deltas(master, tmp_path)  # master at version 3
    fleet.export(master, www)
    result = fleet.sync(kiosk, server.url)
    assert result.action == "snapshot"
    assert content(kiosk) == content(master)
    assert kiosk.info().version == 3 and kiosk.info().source == server.url


def test_markctl_sync_refuses_a_silly_timeout(kiosk: Store, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        markctl.main(
            ["store", "sync", "http://127.0.0.1:9/x", "--store", kiosk.path, "--timeout", "nan"]
        )
    assert exit_info.value.code == 2
    assert "outside" in capsys.readouterr().err


class HostileRangeServer(StaticHTTPServer):
    """The file server whose ``206`` answers carry ``content_range`` instead of their own."""

    content_range = ""

    def route(self, method: str, path: str) -> Route:
        route = super().route(method, path)
        answer = route.handler

        def hostile(request: Request) -> Reply:
            reply = answer(request)
            if reply.status == 206:
                reply.headers["Content-Range"] = self.content_range
            return reply

        return replace(route, handler=hostile)


# "²" crosses the wire as the Latin-1 byte 0xB2, which the client reads back as "²".
@pytest.mark.parametrize("start", ["9" * 5000, "²"], ids=["5000-digits", "superscript"])
def test_a_resumed_download_whose_content_range_is_unreadable_starts_over(
    master: Store, kiosk: Store, www: Path, start: str
) -> None:
    """int() refuses 5,000 digits with a bare ValueError, which escaped the sync; ``²`` (no
    decimal digit, though ``isdigit()`` says it is one) must not be read either. The range
    cannot be trusted, so the file is fetched whole."""
    fleet.export(master, www)
    name = "snapshot-1.mbl.gz"
    size = (www / name).stat().st_size
    with HostileRangeServer(www) as server:
        server.cut_after = {name: size // 2}
        store_error(fleet.sync, kiosk, server.url)
        server.content_range = f"bytes {start}-{size - 1}/{size}"
        result = fleet.sync(kiosk, server.url)
        requests = server.requests_for(name)

    assert [r.status for r in requests] == [200, 206, 200]
    assert requests[-1].range is None and not result.resumed
    assert content(kiosk) == content(master)
