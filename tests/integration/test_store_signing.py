"""Signed fleet snapshots: each test is named after the attack it stops.

A real master store exports to a directory signed with a real Ed25519 key (``markctl store
keygen``); a kiosk syncs from a real HTTP file server on loopback. The attacker is whoever
controls that server or the path to it: it can rewrite any file, but holds no fleet key.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_store_fleet as direct_sync
from test_store_fleet import KIS, content, delta_file, snapshot_csv

from conftest import RecordingEventLog, make_config
from markd import config as config_module
from markd.cli import markctl
from markd.emulators.static_http import StaticHTTPServer
from markd.errors import ConfigError, StoreError
from markd.service import Service, StoreSync
from markd.store import Store, fleet, signing
from markd.store.importer import apply_delta, import_snapshot

#: The highest version a store can hold: a snapshot there would leave no version above it.
TOP_VERSION = 2**63 - 1


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """The fleet's current and next keys, and an attacker's: (private key file, public key)."""
    made = {}
    for name in ("fleet", "next", "attacker"):
        path = tmp_path / f"{name}.key"
        made[name] = (path, signing.generate_key(path))
    return made


# The file server and the kiosk as the unsigned sync's tests have them.
www = direct_sync.www
server = direct_sync.server
kiosk = direct_sync.kiosk


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Store]:
    """The head office at version 1: 500 КИ blocked."""
    with Store.open(str(tmp_path / "master"), map_size_mb=8) as store:
        import_snapshot(store, snapshot_csv(tmp_path / "v1.csv", KIS[:500]), version=1)
        yield store


def refused(store: Store, url: str, public_keys: tuple[str, ...], **kwargs: Any) -> StoreError:
    """The error of a sync that must be refused, after checking it changed nothing."""
    before = (store.info().version, content(store))
    with pytest.raises(StoreError) as caught:
        fleet.sync(store, url, public_keys=public_keys, **kwargs)
    assert (store.info().version, content(store)) == before
    assert "nothing changed" in caught.value.message or caught.value.reason == "tampered-download"
    return caught.value


def blocked(store: Store, ki: str) -> bool:
    return any(key == ki.encode() or ki.encode() in key for key, *_ in content(store))


def _put(www: Path, name: str, data: bytes) -> dict[str, Any]:
    (www / name).write_bytes(data)
    return {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _empty_snapshot() -> bytes:
    return gzip.compress(b"ki,gtin,series,reason,source,since\n", mtime=0)


def _index(www: Path) -> dict[str, Any]:
    return json.loads((www / "index.json").read_text())


def _write_index(www: Path, index: dict[str, Any]) -> None:
    (www / "index.json").write_text(json.dumps(index))


def _forged_unblock(www: Path, ki: str) -> dict[str, Any]:
    """An index one version up whose only delta removes ``ki``: the signed index of version 1
    with a delta added (its signature left as it was)."""
    index = _index(www)
    lines = [
        {"format": "markd-delta", "version": 2, "previous": 1, "source": "x", "applied_at": 1},
        {"op": "remove", "ki": ki},
    ]
    entry = _put(www, "delta-2.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())
    index["version"] = 2
    index["deltas"] = [{"version": 2, "previous": 1, **entry}]
    return index


def _wiped_at_top_version(www: Path) -> dict[str, Any]:
    """An index offering an empty snapshot at version 2^63 − 1."""
    entry = _put(www, f"snapshot-{TOP_VERSION}.csv.gz", _empty_snapshot())
    return {
        "format": "markd-store-index",
        "version": TOP_VERSION,
        "generated_at": 1,
        "list_synced_at": 1,
        "snapshot": {"version": TOP_VERSION, "rows": 0, **entry},
        "deltas": [],
    }


# -- keys --------------------------------------------------------------------------------------


def test_keygen_makes_a_private_key_only_its_owner_reads_and_never_overwrites_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fleet.key"
    assert markctl.main(["store", "keygen", "--out", str(out), "--json"]) == 0
    public = json.loads(capsys.readouterr().out)["public_key"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert signing.public_key_problem(public) is None and public.startswith("ed25519:")
    assert public == signing.public_key_text(signing.load_private_key(out).public_key())

    key_before = out.read_bytes()
    status = markctl.main(["store", "keygen", "--out", str(out)])
    captured = capsys.readouterr()
    assert status != 0 and "refusing to overwrite" in captured.err
    assert out.read_bytes() == key_before  # the fleet's key survives a second keygen


def test_a_signed_export_names_its_key_and_syncs_with_deltas(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys, tmp_path: Path
) -> None:
    key_file, public = keys["fleet"]
    index = fleet.export(master, www, sign_key=key_file)
    assert index["signature"]["key"] == public == _index(www)["signature"]["key"]
    result = fleet.sync(kiosk, server.url, public_keys=(public,))
    assert (result.action, result.after_version) == ("snapshot", 1)

    apply_delta(master, delta_file(tmp_path / "d2.jsonl", 2, [{"op": "remove", "ki": KIS[0]}]))
    fleet.export(master, www, sign_key=key_file)
    result = fleet.sync(kiosk, server.url, public_keys=(public,))
    assert (result.action, result.after_version) == ("deltas", 2)
    assert content(kiosk) == content(master)


def test_a_wrong_sign_key_file_leaves_the_export_directory_untouched(
    master: Store, www: Path, tmp_path: Path
) -> None:
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello\n")
    with pytest.raises(StoreError) as caught:
        fleet.export(master, www, sign_key=not_a_key)
    assert caught.value.reason == "bad-key" and list(www.iterdir()) == []


# -- the attacks -------------------------------------------------------------------------------


def test_a_forged_unblock_delta_unblocks_nothing(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys
) -> None:
    key_file, public = keys["fleet"]
    fleet.export(master, www, sign_key=key_file)
    fleet.sync(kiosk, server.url, public_keys=(public,))
    assert blocked(kiosk, KIS[0])

    # The signed index with a delta slipped in: its signature no longer matches.
    _write_index(www, _forged_unblock(www, KIS[0]))
    assert refused(kiosk, server.url, (public,)).reason == "bad-signature"
    # Re-signed with the attacker's own key.
    forged = signing.sign_index(
        _forged_unblock(www, KIS[0]), signing.load_private_key(keys["attacker"][0])
    )
    _write_index(www, forged)
    assert refused(kiosk, server.url, (public,)).reason == "unknown-key"
    # Or the signature simply dropped.
    _write_index(www, {k: v for k, v in forged.items() if k != "signature"})
    assert refused(kiosk, server.url, (public,)).reason == "unsigned-index"
    assert blocked(kiosk, KIS[0]) and kiosk.info().version == 1


def test_a_wiped_blocklist_at_version_2_63_minus_1_cannot_lock_the_kiosk_out(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys, tmp_path: Path
) -> None:
    key_file, public = keys["fleet"]
    fleet.export(master, www, sign_key=key_file)
    fleet.sync(kiosk, server.url, public_keys=(public,))
    rows = content(kiosk)

    wiped = _wiped_at_top_version(www)
    _write_index(www, wiped)
    assert refused(kiosk, server.url, (public,)).reason == "unsigned-index"
    attacker = signing.load_private_key(keys["attacker"][0])
    _write_index(www, signing.sign_index(wiped, attacker))
    assert refused(kiosk, server.url, (public,)).reason == "unknown-key"
    assert content(kiosk) == rows and kiosk.info().version == 1

    # The next genuine update still goes through: nothing forged set the kiosk's version.
    apply_delta(master, delta_file(tmp_path / "d2.jsonl", 2, [{"op": "remove", "ki": KIS[1]}]))
    fleet.export(master, www, sign_key=key_file)
    result = fleet.sync(kiosk, server.url, public_keys=(public,))
    assert (result.action, result.after_version) == ("deltas", 2)
    assert content(kiosk) == content(master)


def test_an_old_signed_index_replayed_cannot_roll_the_kiosk_back(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys, tmp_path: Path
) -> None:
    """The attacker kept the genuine signed export of version 1 and serves it again once the
    fleet has blocked more at version 2 — also after the kiosk's list was replaced by hand,
    which makes the list's own version say nothing about what the kiosk had taken."""
    key_file, public = keys["fleet"]
    fleet.export(master, www, sign_key=key_file)
    old = {name: (www / name).read_bytes() for name in ("index.json", "snapshot-1.mbl.gz")}
    fleet.sync(kiosk, server.url, public_keys=(public,))
    apply_delta(master, delta_file(tmp_path / "d2.jsonl", 2, [{"op": "add", "ki": KIS[900]}]))
    fleet.export(master, www, sign_key=key_file)
    fleet.sync(kiosk, server.url, public_keys=(public,))
    assert blocked(kiosk, KIS[900]) and kiosk.info().signed_version == 2

    for name, data in old.items():
        (www / name).write_bytes(data)
    error = refused(kiosk, server.url, (public,))
    assert error.reason == "stale-snapshot" and "signed version 2" in error.message

    # A technician's local import (another source) does not lower the floor either.
    import_snapshot(kiosk, snapshot_csv(tmp_path / "local.csv", KIS[:3]), version=1, force=True)
    error = refused(kiosk, server.url, (public,))
    assert error.reason == "stale-snapshot" and not blocked(kiosk, KIS[900])
    # Only an explicit rollback takes it.
    result = fleet.sync(kiosk, server.url, public_keys=(public,), allow_rollback=True)
    assert (result.action, result.after_version) == ("snapshot", 1)
    assert kiosk.info().signed_version == 1


def test_a_forged_version_synced_before_the_keys_were_set_is_replaced_by_signed_data(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys
) -> None:
    """Before the fleet configured keys, an attacker on the path served an empty list at
    version 2^63 − 1 and the kiosk took it. Once the keys are set, the genuine signed list
    (version 1, far below) replaces it instead of being refused as a rollback."""
    _write_index(www, _wiped_at_top_version(www))
    fleet.sync(kiosk, server.url, allow_unsigned=True)
    assert kiosk.info().version == TOP_VERSION and content(kiosk) == []

    key_file, public = keys["fleet"]
    fleet.export(master, www, sign_key=key_file)
    result = fleet.sync(kiosk, server.url, public_keys=(public,))
    assert (result.action, result.after_version) == ("snapshot", 1)
    assert content(kiosk) == content(master)
    info = kiosk.info()
    assert (info.signed, info.signed_version) == (True, 1)
    stats = kiosk.stats()
    assert (stats["signed"], stats["signed_version"]) == (True, 1)
    # From then on the ordinary shortcuts apply again: the same index is up to date.
    assert fleet.sync(kiosk, server.url, public_keys=(public,)).action == "unchanged"


def test_a_local_import_racing_the_end_of_a_sync_is_never_marked_signed(
    master: Store,
    kiosk: Store,
    www: Path,
    server: StaticHTTPServer,
    keys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A technician's import lands between the sync's own import and its last record: the
    list then is the technician's, and must not be taken as the signed one (it would set a
    signed version the fleet never published)."""
    key_file, public = keys["fleet"]
    fleet.export(master, www, sign_key=key_file)
    real_import = fleet.import_snapshot

    def import_then_a_local_one(store: Store, *args: Any, **kwargs: Any) -> Any:
        done = real_import(store, *args, **kwargs)
        real_import(store, snapshot_csv(tmp_path / "local.csv", KIS[:2]), version=7, force=True)
        return done

    monkeypatch.setattr(fleet, "import_snapshot", import_then_a_local_one)
    fleet.sync(kiosk, server.url, public_keys=(public,))
    info = kiosk.info()
    assert (info.version, info.signed, info.signed_version) == (7, False, 0)
    assert info.source != server.url
    monkeypatch.setattr(fleet, "import_snapshot", real_import)
    # The next sync takes the signed list again: nothing marked the local one as signed.
    result = fleet.sync(kiosk, server.url, public_keys=(public,))
    assert (result.action, result.after_version) == ("snapshot", 1)
    assert kiosk.info().signed and content(kiosk) == content(master)


def test_a_bad_signature_is_refused(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys
) -> None:
    key_file, public = keys["fleet"]
    fleet.export(master, www, sign_key=key_file)
    index = _index(www)
    raw = bytearray(base64.b64decode(index["signature"]["ed25519"]))
    raw[5] ^= 0x01
    index["signature"]["ed25519"] = base64.b64encode(bytes(raw)).decode()
    _write_index(www, index)
    error = refused(kiosk, server.url, (public,))
    assert error.reason == "bad-signature" and "index.json" in error.message

    index["signature"]["ed25519"] = "not base64!"
    _write_index(www, index)
    assert refused(kiosk, server.url, (public,)).reason == "bad-signature"


def test_a_list_signed_by_an_unknown_key_is_refused(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys
) -> None:
    fleet.export(master, www, sign_key=keys["attacker"][0])
    error = refused(kiosk, server.url, (keys["fleet"][1],))
    assert error.reason == "unknown-key" and keys["attacker"][1][:20] in error.message
    assert content(kiosk) == [] and kiosk.info().version == 0


def test_a_signed_list_whose_altered_index_raises_the_version_is_refused(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys
) -> None:
    """A forged high version in a signed index: the signature covers the version too."""
    key_file, public = keys["fleet"]
    fleet.export(master, www, sign_key=key_file)
    index = _index(www)
    index["version"] = index["snapshot"]["version"] = TOP_VERSION
    _write_index(www, index)
    assert refused(kiosk, server.url, (public,)).reason == "bad-signature"
    assert kiosk.info().version == 0


@pytest.mark.parametrize("how", ["same-size", "longer", "shorter"])
def test_a_tampered_snapshot_under_a_signed_index_is_refused(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys, how: str
) -> None:
    key_file, public = keys["fleet"]
    fleet.export(master, www, sign_key=key_file)
    snapshot = www / "snapshot-1.mbl.gz"
    data = bytearray(snapshot.read_bytes())
    if how == "same-size":
        data[len(data) // 2] ^= 0xFF
    elif how == "longer":
        data += b"\0" * 100
    else:
        del data[-10:]
    snapshot.write_bytes(bytes(data))
    error = refused(kiosk, server.url, (public,))
    assert error.reason == "tampered-download" and "snapshot-1.mbl.gz" in error.message
    assert content(kiosk) == [] and kiosk.info().version == 0
    assert not Path(kiosk.path, "downloads", "snapshot-1.mbl.gz.part").exists()


def test_a_tampered_second_delta_leaves_even_the_first_unapplied(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys, tmp_path: Path
) -> None:
    """Everything is downloaded and verified before the store changes: a kiosk two deltas
    behind does not end with the first applied and the second refused."""
    key_file, public = keys["fleet"]
    fleet.export(master, www, sign_key=key_file)
    fleet.sync(kiosk, server.url, public_keys=(public,))
    rows = content(kiosk)
    apply_delta(master, delta_file(tmp_path / "d2.jsonl", 2, [{"op": "remove", "ki": KIS[0]}]))
    apply_delta(master, delta_file(tmp_path / "d3.jsonl", 3, [{"op": "remove", "ki": KIS[1]}]))
    fleet.export(master, www, sign_key=key_file)
    delta = www / "delta-3.jsonl"
    delta.write_bytes(delta.read_bytes().replace(KIS[1].encode(), KIS[2].encode()))
    error = refused(kiosk, server.url, (public,))
    assert error.reason == "tampered-download" and "delta-3.jsonl" in error.message
    assert content(kiosk) == rows and kiosk.info().version == 1


def test_an_unsigned_index_is_refused_where_keys_are_configured(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys
) -> None:
    fleet.export(master, www)  # no --sign-key
    error = refused(kiosk, server.url, (keys["fleet"][1],), allow_unsigned=True)
    assert error.reason == "unsigned-index" and "sync_public_keys" in error.message


def test_unsigned_sync_over_plain_http_is_refused_unless_allowed(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer
) -> None:
    fleet.export(master, www)
    error = refused(kiosk, server.url, (), allow_unsigned=False)
    assert error.reason == "unsigned-sync" and "sync_allow_unsigned" in error.message

    result = fleet.sync(kiosk, server.url, allow_unsigned=True)
    assert result.after_version == 1


def test_key_rotation_accepts_either_fleet_key_and_then_only_the_new_one(
    master: Store, kiosk: Store, www: Path, server: StaticHTTPServer, keys, tmp_path: Path
) -> None:
    (old_file, old), (new_file, new) = keys["fleet"], keys["next"]
    both = (old, new)
    fleet.export(master, www, sign_key=old_file)
    assert fleet.sync(kiosk, server.url, public_keys=both).after_version == 1

    apply_delta(master, delta_file(tmp_path / "d2.jsonl", 2, [{"op": "remove", "ki": KIS[0]}]))
    fleet.export(master, www, sign_key=new_file)  # the master switched keys
    assert fleet.sync(kiosk, server.url, public_keys=both).after_version == 2

    # The old key retired on the kiosks: an index it signed is no longer taken.
    apply_delta(master, delta_file(tmp_path / "d3.jsonl", 3, [{"op": "remove", "ki": KIS[1]}]))
    fleet.export(master, www, sign_key=old_file)
    assert refused(kiosk, server.url, (new,)).reason == "unknown-key"


# -- markctl and the daemon ----------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "markd.toml"
    path.write_text(text)
    return path


def test_markctl_sync_refusing_a_forged_list_exits_3_and_says_why(
    master: Store, www: Path, server: StaticHTTPServer, keys, tmp_path: Path, capsys
) -> None:
    fleet.export(master, www, sign_key=keys["attacker"][0])
    config = _config(tmp_path, f"[store]\nsync_public_keys = ['{keys['fleet'][1]}']\n")
    kiosk_dir = str(tmp_path / "k")
    argv = ["store", "sync", server.url, "--store", kiosk_dir, "--config", str(config)]
    assert markctl.main([*argv, "--progress", "none"]) == 3
    assert "unknown-key" in capsys.readouterr().err

    # export and sync through markctl with the fleet's key
    master.close()  # markctl opens it in this very process
    status = markctl.main(
        ["store", "export", "--to", str(www), "--store", master.path, "--sign-key"]
        + [str(keys["fleet"][0]), "--config", str(config)]
    )
    assert status == 0 and "signed by ed25519:" in capsys.readouterr().out
    assert markctl.main([*argv, "--progress", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["after_version"] == 1


def test_markctl_sync_over_plain_http_without_keys_exits_3_naming_the_setting(
    master: Store, www: Path, server: StaticHTTPServer, tmp_path: Path, capsys
) -> None:
    fleet.export(master, www)
    config = _config(tmp_path, "")
    argv = ["store", "sync", server.url, "--store", str(tmp_path / "k"), "--config", str(config)]
    assert markctl.main([*argv, "--progress", "none"]) == 3
    err = capsys.readouterr().err
    assert "unsigned-sync" in err and "sync_allow_unsigned" in err


def test_a_malformed_public_key_is_refused_at_config_load_with_file_and_line(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, "[store]\nsync_public_keys = ['ed25519:AAAA', 'rsa:xyz']\n")
    with pytest.raises(ConfigError) as caught:
        config_module.load(str(config))
    problems = "\n".join(caught.value.problems)
    assert f"{config}:2: [store] sync_public_keys" in problems
    assert "32 bytes" in problems and "ed25519:BASE64" in problems


def test_config_check_warns_about_a_sync_without_keys(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, "[store]\nsync_url = 'http://fleet.example/markd'\n")
    assert markctl.main(["config", "check", str(config)]) == 0
    assert "warning: [store] sync_url is plain http://" in capsys.readouterr().err
    config.write_text("[store]\nsync_url = 'https://fleet.example/markd'\n")
    assert markctl.main(["config", "check", str(config), "--json"]) == 0
    captured = capsys.readouterr()
    assert "sync_public_keys is empty" in captured.err
    assert json.loads(captured.out)["warnings"]
    config.write_text(
        "[store]\nsync_url = 'http://fleet.example/markd'\n"
        f"sync_public_keys = ['{signing.public_key_text(_any_public_key())}']\n"
    )
    assert markctl.main(["config", "check", str(config)]) == 0
    assert "warning" not in capsys.readouterr().err


def _any_public_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().public_key()


class _PriorityLog(RecordingEventLog):
    def __init__(self) -> None:
        super().__init__()
        self.priorities: dict[str, Any] = {}

    def event(self, kind: str, message: str, *, priority: str | int = "info", **fields) -> None:
        self.priorities[kind] = priority
        super().event(kind, message, priority=priority, **fields)


async def test_the_daemon_logs_a_forged_list_at_err_with_its_own_message_id(
    master: Store, www: Path, server: StaticHTTPServer, keys, tmp_path: Path
) -> None:
    fleet.export(master, www, sign_key=keys["attacker"][0])
    config = make_config(str(tmp_path / "kiosk-store"), {})
    store = dataclasses.replace(
        config.store, sync_url=server.url, sync_public_keys=(keys["fleet"][1],)
    )
    config = dataclasses.replace(config, store=store)
    log = _PriorityLog()
    sync = StoreSync(config, log)
    assert "--public-key" in sync.command()
    result = await sync.run_once()

    assert result["error"]["reason"] == "unknown-key"
    assert log.kinds() == ["store-sync-refused"] and log.priorities["store-sync-refused"] == "error"
    assert sync.refused is not None and sync.refused["reason"] == "unknown-key"

    # systemctl status and GET /v1/status say it until a sync succeeds
    service = Service(config, event_log=log)
    service.store_sync = sync
    assert "blocklist sync REFUSED (unknown-key)" in service.status_line()
    assert service.status_snapshot()["store"]["sync_refused"]["reason"] == "unknown-key"
    # and GET /metrics (a gauge while it lasts; the sync counts every refusal)
    assert "\nmarkd_store_last_sync_refused 1.0\n" in service.metrics().decode()
    assert sync.refusals == 1
