"""Whether the service's own user can read the files the configuration names.

``markctl config check`` is run as root; the packaged unit runs markd as the user
:data:`SERVICE_USER`. A ``*_file`` secret or a price list that only root may read passes a
check that merely reads it, and then fails the daemon's start. So, when the check runs as
root and that user exists, each file the daemon opens itself at start is judged as that user
would be: the mode bits against its uid, its primary group and its supplementary groups, and
search permission on every directory above the file. (Access control lists are not looked
at: the packaged layout does not use them.)

Secrets from the credential store (a ``*_file`` key left empty) are not judged: systemd reads
``/etc/credstore`` as root and hands them over (``LoadCredential=``).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from markd.config.lines import key_name
from markd.config.startup import local_module_used
from markd.secrets import CREDSTORE

if TYPE_CHECKING:
    from markd.config.schema import Config
    from markd.config.startup import Problem

#: The account the packaged unit runs markd as (``User=`` in systemd/markd.service.in).
SERVICE_USER = "markd"

#: Names another account to judge for (tests; a site that changed ``User=``).
SERVICE_USER_VARIABLE = "MARKD_SERVICE_USER"


@dataclass(frozen=True)
class Account:
    """A user as the kernel sees it when it opens a file."""

    name: str
    uid: int
    groups: frozenset[int]  # the primary group and every supplementary one

    def may(self, info: os.stat_result, owner_bit: int, group_bit: int, other_bit: int) -> bool:
        # The kernel uses one class of bits: the owner's, else the group's, else the others'.
        if self.uid == 0:
            return True
        if info.st_uid == self.uid:
            return bool(info.st_mode & owner_bit)
        if info.st_gid in self.groups:
            return bool(info.st_mode & group_bit)
        return bool(info.st_mode & other_bit)


def service_account(environ: Mapping[str, str] | None = None) -> Account | None:
    """The service's user when this process is root and that user exists, else None (a
    non-root check cannot see what root cannot; without the user there is nothing to judge)."""
    if os.geteuid() != 0:
        return None
    env = os.environ if environ is None else environ
    name = env.get(SERVICE_USER_VARIABLE) or SERVICE_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_uid == 0:
        return None
    groups = frozenset(os.getgrouplist(name, entry.pw_gid)) | {entry.pw_gid}
    return Account(name=name, uid=entry.pw_uid, groups=groups)


#: (key path, file, credential that may hold it instead, or "" when there is no such choice)
ServiceFile = tuple[tuple[str, ...], str, str]


def service_files(config: Config) -> list[ServiceFile]:
    """Each file a key names that the daemon opens itself at start: the secrets read by
    :func:`markd.config.startup.startup_problems` under the same conditions, and the price
    list (parsed whenever ``[sale] catalog`` is set)."""
    found: list[ServiceFile] = []
    check = config.check
    sections = []
    if check.mode == "direct" and check.online is not None:
        found.append((("check", "online", "token_file"), check.online.token_file, "crpt-token"))
        sections.append(("online", check.online))
    if local_module_used(config):
        lm = check.local_module
        assert lm is not None
        found.append((("check", "local_module", "password_file"), lm.password_file, "lm-password"))
        sections.append(("local_module", lm))
    if check.mode == "tspiot" and check.tspiot is not None:
        found.append((("check", "tspiot", "token_file"), check.tspiot.token_file, "tspiot-token"))
        sections.append(("tspiot", check.tspiot))
    for name, section in sections:
        if section.proxy:
            found.append(
                (("check", name, "proxy_auth_file"), section.proxy_auth_file, "proxy-auth")
            )
    if config.sale.mode != "off" and config.fiscal.web_user:
        found.append(
            (("fiscal", "web_password_file"), config.fiscal.web_password_file, "atol-web-password")
        )
    if config.api.enabled and config.api.listen:
        found.append((("api", "token_file"), config.api.token_file, "api-token"))
    if config.api.enabled and config.metrics.listen:
        found.append((("metrics", "token_file"), config.metrics.token_file, "metrics-token"))
    if config.sale.catalog:
        found.append((("sale", "catalog"), config.sale.catalog, ""))
    return [(key, file, credential) for key, file, credential in found if file]


def access_problems(config: Config, account: Account) -> list[Problem]:
    """One problem for each file of :func:`service_files` that ``account`` could not read."""
    found: list[Problem] = []
    for key_path, file, credential in service_files(config):
        reason = _unreadable_because(Path(file), account)
        if reason is None:
            continue
        fix = f"chown root:{account.name} {file}; chmod 0640 {file}"
        if credential:
            fix += (
                f", or leave the key empty and keep the secret in {CREDSTORE}/markd.{credential} "
                "(systemd reads it as root)"
            )
        found.append(
            (
                key_path,
                f"{key_name(key_path)}: {file} is not readable by {account.name}, the user "
                f"markd runs as ({reason}): {fix}",
            )
        )
    return found


def _unreadable_because(path: Path, account: Account) -> str | None:
    """Why ``account`` could not read ``path``, or None when it could or the file is missing
    (the other checks report a missing file)."""
    try:
        resolved = Path(os.path.realpath(path))
        info = resolved.stat()
    except OSError:
        return None
    for directory in reversed(resolved.parents):
        try:
            dir_info = directory.stat()
        except OSError:
            return None
        if not account.may(dir_info, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return f"it may not enter {directory}, {_described(dir_info)}"
    if not account.may(info, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
        return _described(info)
    return None


def _described(info: os.stat_result) -> str:
    """``mode 0600, owner root:root`` (numbers when a name is unknown)."""
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"mode {stat.S_IMODE(info.st_mode):04o}, owner {user}:{group}"
