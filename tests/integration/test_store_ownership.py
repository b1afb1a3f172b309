"""Who owns the store: ``markctl store`` run as root on the service's store writes files the
service can open, and a store the service cannot open is refused with the path, its owner and
the fix (markd.store.ownership).

These tests need root (the suite's containers run as root): they create a system user to play
the service's ``markd`` and remove it afterwards. The user must reach the test's files, so they
live in a directory under /tmp that everyone may enter, not in pytest's own 0700 tmp_path.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from conftest import DAIRY_KI, WATER_KI
from markd import config as config_module
from markd.errors import StoreAccessError
from markd.store import Store
from markd.store.ownership import Account, act_as_owner
from process_helpers import markd_command

MARKCTL = [sys.executable, "-m", "markd.cli.markctl"]


@pytest.fixture
def service_user() -> Iterator[Account]:
    """A system user (and its own group) standing for the service's ``markd``."""
    if os.geteuid() != 0:
        pytest.skip("creating a user and switching to it needs root")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed")
    name = f"markdt{secrets.token_hex(3)}"
    created = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        + ["--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
    )
    if created.returncode != 0:
        pytest.skip(f"cannot create a test user: {created.stderr.strip()}")
    entry = pwd.getpwnam(name)
    try:
        yield Account(entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the test user can enter (pytest's tmp_path may be 0700)."""
    path = Path(tempfile.mkdtemp(prefix="markd-owner-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config_file(shared: Path) -> Path:
    """Every default, and the store in the shared directory (also the daemon's store)."""
    path = shared / "markd.toml"
    path.write_text(
        f'[log]\ntarget = "auto"\n\n[store]\npath = "{shared / "lib" / "store"}"\n'
        'map_size_mb = 8\n\n[scanners.front]\nurl = "virtual://front"\n\n'
        f'[api]\nsocket = "{shared / "control.sock"}"\n',
        encoding="utf-8",
    )
    path.chmod(0o644)
    return path


def blocklist(shared: Path) -> Path:
    path = shared / "list.txt"
    path.write_text(f"{WATER_KI}\n{DAIRY_KI}\n", encoding="utf-8")
    path.chmod(0o644)
    return path


def markctl(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    # Always a child process: the command may give up root for good.
    return subprocess.run([*prefix, *MARKCTL, *args], capture_output=True, text=True, timeout=120)


def as_user(user: Account, action: Callable[[], Any]) -> Any:
    """Run ``action`` in a forked child that has become ``user``; its JSON-able result, or
    ``{"error": class name, "reason", "message"}`` for a markd error."""
    # What opening a store imports on first use is imported here, as root: the test user
    # may not be able to read this checkout's venv (a clone in a 0700 directory, as CI makes).
    with tempfile.TemporaryDirectory() as scratch:
        lmdb.open(scratch, map_size=1 << 20).close()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
            try:
                result: Any = action()
            except StoreAccessError as exc:
                result = {"error": type(exc).__name__, "reason": exc.reason, "message": str(exc)}
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails
                result = {"error": type(exc).__name__, "message": str(exc)}
            os.write(write_end, json.dumps(result).encode())
        except BaseException:  # noqa: BLE001 - nothing may escape a forked child
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the child as the user failed"
    return json.loads(data)


def owners(directory: Path) -> dict[str, tuple[int, int]]:
    """Every path in ``directory`` (itself included) with its uid and gid."""
    found = {".": (directory.stat().st_uid, directory.stat().st_gid)}
    for path in directory.rglob("*"):
        info = path.lstat()
        found[str(path.relative_to(directory))] = (info.st_uid, info.st_gid)
    return found


# --------------------------------------------------------------------------------------------
# markctl store as root


def test_root_importing_into_the_services_store_leaves_files_the_service_can_open(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    store = shared / "lib" / "store"
    store.mkdir(parents=True)
    for directory in (store.parent, store):  # as systemd's StateDirectory= leaves them
        os.chown(directory, service_user.uid, service_user.gid)

    result = markctl(
        "store", "import", str(blocklist(shared)), "--config", str(config_file), "--json"
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 2
    found = owners(store)
    # data.mdb and lock.mdb, and the import's own import.lock and tmp/: all the service's.
    assert {"data.mdb", "lock.mdb", "import.lock", "tmp"} <= set(found)
    service = (service_user.uid, service_user.gid)
    assert {path: ids for path, ids in found.items() if ids != service} == {}

    def look_up() -> dict[str, Any]:
        cfg = config_module.load(str(config_file))
        with Store.from_config(cfg.store) as opened:  # read-write, as the daemon opens it
            found = opened.lookup(WATER_KI)
            opened.block(DAIRY_KI, "the service writes too")
        return {"blocked": found.blocked is not None, "version": found.blocklist_version}

    assert as_user(service_user, look_up) == {"blocked": True, "version": 1}


def test_root_creating_the_store_in_the_services_directory_creates_it_as_the_service(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    # The first import on a new kiosk: /var/lib/markd exists (the service's), store/ not yet.
    lib = shared / "lib"
    lib.mkdir()
    os.chown(lib, service_user.uid, service_user.gid)

    result = markctl("store", "import", str(blocklist(shared)), "--config", str(config_file))

    assert result.returncode == 0, result.stderr
    assert set(owners(lib / "store").values()) == {(service_user.uid, service_user.gid)}


def test_root_who_may_not_switch_users_is_refused_with_the_command_to_use(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    store = shared / "lib" / "store"
    store.mkdir(parents=True)
    os.chown(store, service_user.uid, service_user.gid)
    source = blocklist(shared)
    # Root without CAP_SETUID and CAP_SETGID, as in a container that dropped them.
    result = markctl(
        "store",
        "import",
        str(source),
        "--config",
        str(config_file),
        prefix=("setpriv", "--bounding-set=-setuid,-setgid", "--"),
    )

    assert result.returncode == 2  # permanent: retrying cannot help
    user = pwd.getpwuid(service_user.uid).pw_name
    advice = f"runuser -u {user} -- markctl store import {source} --config {config_file}"
    assert advice in result.stderr
    assert "markctl: store-owner:" in result.stderr
    assert f"{store} belongs to {user}:{grp.getgrgid(service_user.gid).gr_name}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(store.iterdir()) == []  # refused before anything was written


def test_an_input_file_the_service_may_not_read_is_named_with_the_way_out(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    store = shared / "lib" / "store"
    store.mkdir(parents=True)
    os.chown(store, service_user.uid, service_user.gid)
    private = shared / "root-only"
    private.mkdir(mode=0o700)
    source = private / "list.txt"
    source.write_text(f"{WATER_KI}\n", encoding="utf-8")

    result = markctl("store", "import", str(source), "--config", str(config_file))

    assert result.returncode == 2
    user = pwd.getpwuid(service_user.uid).pw_name
    assert f"cannot read {source} as {user}" in result.stderr
    assert f"install -m 0644 {source} /var/tmp/" in result.stderr


def test_a_lock_file_left_to_root_by_an_older_markctl_is_named_with_the_chown(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    store = shared / "lib" / "store"
    store.mkdir(parents=True)
    os.chown(store, service_user.uid, service_user.gid)
    (store / "import.lock").touch(mode=0o600)  # root's, as a root import used to leave it

    result = markctl("store", "import", str(blocklist(shared)), "--config", str(config_file))

    assert result.returncode == 2
    user = pwd.getpwuid(service_user.uid).pw_name
    me = f"{user}:{grp.getgrgid(service_user.gid).gr_name}"
    assert result.stderr == (
        f"markctl: store-access: {store}/import.lock belongs to root:root mode 0600; this "
        f"process runs as {me} and needs to read and write it: chown -R {me} {store}\n"
    )


def test_root_on_a_store_root_owns_stays_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    store = tmp_path / "store"
    store.mkdir()
    assert act_as_owner(store, ["store", "import", "x"]) is None
    assert os.geteuid() == 0 and os.getuid() == 0


# --------------------------------------------------------------------------------------------
# markctl store as root: a path another user could have changed


@pytest.mark.parametrize("where", ["store", "above", "link-owner"])
def test_root_does_not_write_through_a_link_another_user_could_have_placed(
    service_user: Account, shared: Path, config_file: Path, where: str
) -> None:
    """The service's user owns /var/lib/markd, so it can turn ``store`` (or a directory on
    the way to it) into a link to a directory of root's. Root's next import must not land
    there: it stays a refusal, and the directory is untouched."""
    lib = shared / "lib"
    lib.mkdir()
    target = shared / "root-only"  # stands for /etc: root's, where root may write anything
    target.mkdir(mode=0o755)
    if where == "store":  # the store itself is the link (made by root: its place counts)
        os.chown(lib, service_user.uid, service_user.gid)
        link = store = lib / "store"
        link.symlink_to(target)
    elif where == "above":  # a directory above the store is a link, in the user's directory
        os.chown(lib, service_user.uid, service_user.gid)
        link = lib / "markd"
        store = link / "store"
        link.symlink_to(target)
    else:  # a link of the user's own, in a directory of root's
        link = store = lib / "store"
        link.symlink_to(target)
        os.lchown(link, service_user.uid, service_user.gid)

    result = markctl(
        "store",
        "import",
        str(blocklist(shared)),
        "--config",
        str(config_file),
        "--store",
        str(store),
    )

    assert result.returncode == 2, result.stderr  # permanent: a person must fix the path
    assert f"markctl: store-symlink: {link} is a symbolic link to {target} " in result.stderr
    assert f"Replace {link} with a real directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(target.iterdir()) == []  # refused before anything was written there
    assert (target.stat().st_uid, target.stat().st_gid) == (0, 0)


def test_root_follows_a_link_only_root_could_have_placed(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    """A distribution's own links (/var to /srv/var, say) are in root's directories: they
    are followed, and the real directory's owner decides."""
    real = shared / "real"
    (real / "lib").mkdir(parents=True)
    os.chown(real / "lib", service_user.uid, service_user.gid)
    (shared / "var").symlink_to(real)
    store = shared / "var" / "lib" / "store"

    result = markctl(
        "store",
        "import",
        str(blocklist(shared)),
        "--config",
        str(config_file),
        "--store",
        str(store),
    )

    assert result.returncode == 0, result.stderr
    found = owners(real / "lib" / "store")
    assert {"data.mdb", "lock.mdb", "import.lock", "tmp"} <= set(found)
    assert set(found.values()) == {(service_user.uid, service_user.gid)}


def test_a_store_of_roots_in_the_services_directory_is_written_as_the_service(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    """A store directory root owns, inside the service's /var/lib/markd: the service's user
    could swap it for anything, so root does not write it. markctl becomes that user, who
    may not write a directory of root's, and the refusal says which chown fixes it."""
    lib = shared / "lib"
    lib.mkdir()
    os.chown(lib, service_user.uid, service_user.gid)
    store = lib / "store"
    store.mkdir(mode=0o755)  # root's

    result = markctl("store", "import", str(blocklist(shared)), "--config", str(config_file))

    assert result.returncode == 2, result.stderr
    user = pwd.getpwuid(service_user.uid).pw_name
    me = f"{user}:{grp.getgrgid(service_user.gid).gr_name}"
    assert result.stderr.startswith(
        f"markctl: store-access: {store} belongs to root:root mode 0755; this process runs "
        f"as {me} and needs to "
    )
    assert f"chown -R {me} {store}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(store.iterdir()) == []  # root created nothing there
    assert owners(lib) == {
        ".": (service_user.uid, service_user.gid),
        "store": (0, 0),
    }


# --------------------------------------------------------------------------------------------
# the daemon's side: a store it cannot open


def leave_to_root(store: Path, service_user: Account) -> None:
    """What a markctl run as root used to leave: the service's directory, root's files."""
    Store.open(str(store)).close()
    for directory in (store.parent, store):
        os.chown(directory, service_user.uid, service_user.gid)
    (store / "data.mdb").chmod(0o600)


def test_a_store_left_to_root_is_refused_naming_the_file_and_its_owner(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    store = shared / "lib" / "store"
    leave_to_root(store, service_user)

    def open_like_the_daemon() -> dict[str, str]:
        cfg = config_module.load(str(config_file))
        Store.from_config(cfg.store).close()
        return {}

    refusal = as_user(service_user, open_like_the_daemon)

    me = f"{pwd.getpwuid(service_user.uid).pw_name}:{grp.getgrgid(service_user.gid).gr_name}"
    assert refusal["error"] == "StoreAccessError" and refusal["reason"] == "store-access"
    assert refusal["message"] == (
        f"{store}/data.mdb belongs to root:root mode 0600; this process runs as {me} and "
        f"needs to read and write it: chown -R {me} {store}"
    )
    assert StoreAccessError.permanent is True


def test_a_store_directory_the_service_may_not_enter_is_named(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    store = shared / "lib" / "store"
    Store.open(str(store)).close()
    store.chmod(0o750)  # root's, and the service is not in root's group

    def open_read_only() -> dict[str, str]:
        Store.open(str(store), readonly=True).close()
        return {}

    refusal = as_user(service_user, open_read_only)

    assert refusal["reason"] == "store-access"
    assert refusal["message"].startswith(f"{store} belongs to root:root mode 0750; ")
    assert "needs to enter it: chown -R " in refusal["message"]


def test_markd_on_a_store_it_cannot_open_says_why_and_exits_without_a_traceback(
    service_user: Account, shared: Path, config_file: Path
) -> None:
    """The real ``markd --config FILE`` in a child process. As the test user when that user
    may run this interpreter; otherwise (a Python under root's 0700 home, as in the
    development container) as root without the capabilities that bypass file permissions,
    on a store whose data.mdb belongs to the test user: the same refusal, seen from root."""
    store = shared / "lib" / "store"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    interpreter = os.path.realpath(sys.executable)
    owner = f"{pwd.getpwuid(service_user.uid).pw_name}:{grp.getgrgid(service_user.gid).gr_name}"
    if as_user(service_user, lambda: os.access(interpreter, os.X_OK)):
        leave_to_root(store, service_user)
        expected, fix = "root:root", f"chown -R {owner} {store}"
        ids: dict[str, Any] = {"user": service_user.uid, "group": service_user.gid}
        command = [*markd_command(), "--config", str(config_file)]
    else:
        if shutil.which("setpriv") is None:
            pytest.skip("the test user cannot run this Python, and setpriv is not installed")
        Store.open(str(store)).close()
        for path in (store.parent, store, store / "data.mdb", store / "lock.mdb"):
            os.chown(path, service_user.uid, service_user.gid)
        store.chmod(0o755)
        (store / "data.mdb").chmod(0o600)
        expected, fix = owner, f"chown -R root:root {store}"
        ids = {}
        command = [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search,-fowner",
            "--",
            *markd_command(),
            "--config",
            str(config_file),
        ]

    result = subprocess.run(
        command,
        **ids,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Permanent (MarkdError.permanent): exit 2, which the unit does not restart into.
    assert result.returncode == 2, result.stderr
    assert f"store-access: {store}/data.mdb belongs to {expected} mode 0600; " in result.stderr
    assert fix in result.stderr
    assert "Traceback" not in result.stderr
