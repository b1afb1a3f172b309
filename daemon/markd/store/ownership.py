"""Who owns the store: markctl writing it as the service's user, and a clear refusal when the
process cannot open it.

The daemon runs as the system user ``markd`` (the unit's ``User=``), and its store, in
``/var/lib/markd/store``, belongs to that user. A technician runs ``markctl store import``,
``delta``, ``sync``, ``block`` or ``unblock`` as root, usually through sudo. LMDB creates
``data.mdb`` and ``lock.mdb`` with the owner of the process that creates them, and an import
adds ``import.lock`` and a ``tmp/`` directory of sort runs: written as root, they would leave
the service with files it cannot open.

So a command that writes the store, run as root on a store whose path is in another user's
hands (the store directory, or a directory above it, belongs to that user:
:func:`store_owner`), becomes that user first (:func:`act_as_owner`): supplementary groups,
group and user, for the rest of the process and before the store is opened. What it creates
then belongs to the service, as if ``runuser -u markd`` had been typed. When the switch is not
allowed (a container without ``CAP_SETUID``), the command is refused before anything is
touched, and the message gives the exact command line to run instead. A symbolic link on the
way that another user could have placed (the service's user owns ``/var/lib/markd`` and could
turn ``store`` into a link to ``/etc``) is refused the same way, wherever it points: root
would otherwise write ``data.mdb``, ``import.lock`` and ``tmp/`` wherever that user chose.

Nothing changes when root writes a store that root owns (a development store under /tmp, a
master that only exports), or when a user other than root runs markctl: a process that is not
root cannot become anyone, and what it creates is its own. Read-only commands (``stats``,
``lookup``, ``export``) keep the caller's identity: they create nothing in the store, and
``export`` writes its files wherever ``--to`` says, as the caller.

The other side is :func:`access_problem`: when a process (the daemon at start, a markctl as
some user) cannot open the store, it says which path is in the way, whom it belongs to, who
the process is and the ``chown`` that fixes it, as :class:`~markd.errors.StoreAccessError`.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from markd.errors import StoreAccessError

#: The store's files that every process opening it reads and writes (readers too: a read
#: transaction takes a slot in ``lock.mdb``).
DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"


@dataclass(frozen=True)
class Account:
    """A user and group by number, with their names when the system knows them."""

    uid: int
    gid: int

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    @property
    def group(self) -> str:
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)

    @property
    def has_name(self) -> bool:
        return self.user != str(self.uid)

    def __str__(self) -> str:
        return f"{self.user}:{self.group}"

    @classmethod
    def of(cls, info: os.stat_result) -> Account:
        return cls(info.st_uid, info.st_gid)

    @classmethod
    def current(cls) -> Account:
        return cls(os.geteuid(), os.getegid())


#: Symbolic links followed on the way to the store before giving up (as the kernel does).
MAX_LINKS = 40


def store_owner(store_path: str | os.PathLike[str]) -> tuple[Path, Account]:
    """The directory whose owner the store's files should have, and that owner.

    The path is followed one component at a time from ``/`` with :func:`os.lstat`, as the
    kernel would follow it, links included (:func:`_existing_directories`). Of the real
    directories met, the deepest one (the store itself, or before it exists its nearest
    existing ancestor) decides when it belongs to a user other than root; otherwise the
    nearest ancestor that does. A user who owns any directory on the way can move what is
    below it, so whatever root would write there is in that user's hands: it is written as
    that user. Only a path that root owns all the way down is written as root.

    :raises StoreAccessError: (reason ``store-symlink``) a link on the way sits where a user
        other than root could have put it (see :func:`_check_link`).
    """
    directories = _existing_directories(store_path)
    for directory, info in reversed(directories):
        if info.st_uid != 0:
            return directory, Account.of(info)
    directory, info = directories[-1]
    return directory, Account.of(info)


def _existing_directories(store_path: str | os.PathLike[str]) -> list[tuple[Path, os.stat_result]]:
    """The real path of the store, as far as it exists: ``/`` first, each entry with its
    ``lstat``. A link is checked (:func:`_check_link`) and replaced by its target; ``..``
    goes back to the real parent, not the one written in the path."""
    given = os.fspath(store_path)
    if not os.path.isabs(given):
        given = os.path.join(os.getcwd(), given)
    root = Path("/")
    found = [(root, os.lstat(root))]
    todo = list(reversed(given.split("/")))  # popped from the end: the next component last
    links = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if len(found) > 1:
                found.pop()
            continue
        candidate = found[-1][0] / part
        try:
            info = os.lstat(candidate)
        except OSError:
            break  # not there yet (or not a directory): the rest is created, or refused later
        if stat.S_ISLNK(info.st_mode):
            try:
                target = os.readlink(candidate)
            except OSError:
                break  # gone since the lstat: opening the store will say what is there now
            _check_link(candidate, info, target, found)
            links += 1
            if links > MAX_LINKS:
                raise StoreAccessError(
                    f"{store_path}: more than {MAX_LINKS} symbolic links on the way to the "
                    "store (a loop?); set [store] path to the store's real location",
                    "store-symlink",
                )
            if os.path.isabs(target):
                del found[1:]
            todo.extend(reversed(target.split("/")))
            continue
        found.append((candidate, info))
    return found


def _check_link(
    link: Path, info: os.stat_result, target: str, above: list[tuple[Path, os.stat_result]]
) -> None:
    """Refuse to follow ``link`` unless only root could have made it what it is: the link
    belongs to root, and so does every directory above it (``above``, ``/`` first), none of
    them writable by a group or by others unless sticky (``/tmp``: others cannot move what
    root put there). A distribution's own links (``/var/run`` to ``/run``) pass; a link the
    service's user put in its own ``/var/lib/markd``, to send root's writes into ``/etc``,
    does not."""
    suspect: str | None = None
    if info.st_uid != 0:
        suspect = f"belongs to {Account.of(info)}"
    else:
        for directory, dir_info in reversed(above):
            if dir_info.st_uid != 0:
                suspect = f"is in {directory}, which belongs to {Account.of(dir_info)}"
            elif dir_info.st_mode & 0o022 and not dir_info.st_mode & stat.S_ISVTX:
                mode = stat.S_IMODE(dir_info.st_mode)
                suspect = f"is in {directory}, mode {mode:04o}, which others may change"
            if suspect is not None:
                break
    if suspect is None:
        return
    raise StoreAccessError(
        f"{link} is a symbolic link to {target} and {suspect}: a user other than root could "
        "have placed it, and markctl, running as root, does not write the store through it. "
        f"Nothing was changed. Replace {link} with a real directory, or set [store] path to "
        "the store's real location",
        "store-symlink",
    )


def _load_before_switching() -> None:
    """Have the LMDB binding load, as root, what it loads on the first open of an environment
    (recent releases import a helper module then). The new user can read a packaged install,
    but not necessarily a checkout or venv in root's home (a development machine, the tests):
    an import after the switch would then fail. Opening a scratch environment is the public
    way to get there, whatever the binding's version."""
    import tempfile

    import lmdb

    with tempfile.TemporaryDirectory(prefix="markd-warm-") as scratch:
        lmdb.open(scratch, map_size=1 << 20, max_dbs=1).close()


def act_as_owner(store_path: str | os.PathLike[str], command_line: Sequence[str]) -> Account | None:
    """Before a command writes the store at ``store_path``: when this process is root and the
    store's path is in another user's hands (:func:`store_owner`), become that user and the
    group of the directory that decided, for good. Return the account switched to, or None
    when there was nothing to do (not root, or a path root owns all the way down).

    ``command_line``: the arguments as typed after ``markctl``, for the refusal's advice.

    :raises StoreAccessError: reason ``store-symlink``: a link on the store's path could have
        been placed by another user (:func:`_check_link`); reason ``store-owner``: the switch
        was refused by the system, and the message gives the command to run instead. Either
        way nothing was opened or written.
    """
    if os.geteuid() != 0:
        return None
    directory, owner = store_owner(store_path)
    if owner.uid == 0:
        return None
    _load_before_switching()
    try:
        if owner.has_name:
            os.initgroups(owner.user, owner.gid)
        else:
            os.setgroups([owner.gid])
        os.setresgid(owner.gid, owner.gid, owner.gid)
        os.setresuid(owner.uid, owner.uid, owner.uid)
    except OSError as exc:
        raise StoreAccessError(
            f"{directory} belongs to {owner}; markctl runs as root and could not become "
            f"{owner.user} to write the store as the service does ({exc.strerror}). Nothing "
            f"was changed. Run it as the store's owner: {as_owner_command(owner, command_line)}",
            "store-owner",
        ) from exc
    return owner


def as_owner_command(owner: Account, command_line: Sequence[str]) -> str:
    """The shell command that runs ``markctl COMMAND_LINE`` as ``owner``."""
    markctl = shlex.join(["markctl", *command_line])
    if owner.has_name:
        return f"runuser -u {shlex.quote(owner.user)} -- {markctl}"
    return f"setpriv --reuid={owner.uid} --regid={owner.gid} --clear-groups -- {markctl}"


def access_problem(
    store_path: str | os.PathLike[str], *, readonly: bool = False
) -> StoreAccessError | None:
    """Why this process cannot open the store at ``store_path``, or None when permissions are
    not the reason. Looks at what opening needs, in order: to enter every directory above the
    store and the store's own (or, before it exists, to create it); to read ``data.mdb`` (and,
    to write, to write it); to read and write ``lock.mdb``; to list the store directory (and,
    to write, to create files in it)."""
    me = Account.current()
    path = Path(os.path.abspath(store_path))
    ancestors: list[Path] = []
    for directory in reversed(path.parents):  # "/" first: each is entered before the next
        if not directory.exists():
            break
        ancestors.append(directory)
        if not _may(directory, os.X_OK):
            return _refusal(directory, me, "enter it", f"chown {me} {directory}")
    if len(ancestors) < len(path.parents) or not path.exists():
        parent = ancestors[-1]
        if not readonly and not _may(parent, os.W_OK | os.X_OK):
            return _refusal(parent, me, f"create {path.name} in it", f"chown {me} {parent}")
        return None
    fix = f"chown -R {me} {path}"
    # The files first: they are what LMDB opens, and what an older markctl run as root left
    # behind; then the directory, where an import or a sync creates its own files.
    needs = [
        (path, os.X_OK, "enter it"),
        (path / DATA_FILE, os.R_OK, "read it")
        if readonly
        else (path / DATA_FILE, os.R_OK | os.W_OK, "read and write it"),
        (path / LOCK_FILE, os.R_OK | os.W_OK, "read and write it"),
        (path, os.R_OK | os.X_OK, "list it")
        if readonly
        else (path, os.R_OK | os.W_OK | os.X_OK, "list it and create files in it"),
    ]
    for target, mode, verb in needs:
        if target.exists() and not _may(target, mode):
            return _refusal(target, me, verb, fix)
    return None


def denied(path: str | os.PathLike[str], what: str, store_path: str) -> StoreAccessError:
    """A file of the store (``import.lock``, ``tmp/``, a download) this process may not
    ``what`` (``read and write it``): whose it is and the ``chown`` of the store that fixes
    it (one left by an earlier markctl run as root)."""
    me = Account.current()
    return _refusal(Path(path), me, what, f"chown -R {me} {os.path.abspath(store_path)}")


def writable_directory(directory: str | os.PathLike[str], store_path: str) -> Path:
    """Create ``directory`` inside the store (``tmp/``, ``downloads/``) if needed and make
    sure this process may create files in it; one that an earlier markctl run as root left
    behind is refused with :func:`denied`'s advice rather than failing halfway."""
    path = Path(directory)
    try:
        path.mkdir(exist_ok=True)
    except PermissionError as exc:
        raise denied(path.parent, "create files in it", store_path) from exc
    if not _may(path, os.W_OK | os.X_OK):
        raise denied(path, "create files in it", store_path)
    return path


def _may(path: Path, mode: int) -> bool:
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def _refusal(path: Path, me: Account, what: str, fix: str) -> StoreAccessError:
    try:
        info = path.stat()
    except OSError:
        whose = "cannot be examined"
    else:
        whose = f"belongs to {Account.of(info)} mode {stat.S_IMODE(info.st_mode):04o}"
    return StoreAccessError(f"{path} {whose}; this process runs as {me} and needs to {what}: {fix}")
