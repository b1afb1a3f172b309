"""Secrets (the X-API-KEY, the Local Module password, the ТС ПИоТ token).

A secret comes from the file a configuration key names (``token_file``, ``password_file``) or,
when that key is empty, from the systemd credential of the same purpose
(``LoadCredential=crpt-token:…`` puts it in ``$CREDENTIALS_DIRECTORY/crpt-token``). Never from
the main configuration file, never from the command line.

One trailing newline (LF or CRLF) is not part of the secret: editors add it. Anything else —
an empty file, a file with several lines, control characters — is a clear error naming the
file, never the value. :class:`Secret` keeps the value out of ``repr`` and ``str`` so it cannot
reach a log line by accident.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from markd.errors import ConfigError

MAX_SECRET_BYTES = 4096


class Secret:
    """A secret value. ``reveal()`` gives it to the code that must send it; printing shows
    only where it came from."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        self.origin = origin

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.origin})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


#: Where the unit's ``LoadCredential=NAME:markd.NAME`` finds the secrets (systemd's credstore);
#: ``markctl`` reads the same files when it runs outside the service.
CREDSTORE = "/etc/credstore"


def load_secret(
    file: str,
    credential: str,
    *,
    what: str,
    required: bool = True,
    environ: dict[str, str] | None = None,
) -> Secret | None:
    """Read a secret from ``file``, or (``file`` empty) from the systemd credential
    ``credential``. Returns None when neither exists and ``required`` is False."""
    env = os.environ if environ is None else environ
    from_store = False  # read from /etc/credstore by this process (not by systemd)
    if file:
        path = Path(file)
    else:
        directory = env.get("CREDENTIALS_DIRECTORY", "")
        path = Path(directory, credential) if directory else Path()
        if not directory:
            # Not started by systemd (markctl in a root shell): read the file the unit loads
            # the credential from (LoadCredential=NAME:markd.NAME looks in /etc/credstore).
            stored = Path(env.get("MARKD_CREDSTORE", CREDSTORE), f"markd.{credential}")
            from_store = _exists(stored, what, in_credstore=True)
            path = stored if from_store else Path()
        if path == Path() or not _exists(path, what, in_credstore=from_store):
            if not required:
                return None
            raise ConfigError(
                f"{what}: no secret configured: set its *_file key or pass the systemd "
                f"credential '{credential}' (LoadCredential=, or "
                f"{CREDSTORE}/markd.{credential})"
            )
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what}: {path} is not a regular file")
        if info.st_size > MAX_SECRET_BYTES:
            raise ConfigError(f"{what}: {path} is {info.st_size} bytes, too large for a secret")
        raw = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, what, exc, in_credstore=from_store) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    if any(ch in text for ch in "\r\n") or not text.isprintable():
        raise ConfigError(
            f"{what}: {path} holds more than one line or control characters; a secret file "
            "holds the secret alone (one trailing newline is fine)"
        )
    return Secret(text, str(path))


def _exists(path: Path, what: str, *, in_credstore: bool) -> bool:
    """Whether ``path`` exists. A directory that may not be searched (``/etc/credstore`` is
    root's, mode 0700) makes Python raise instead of answering: that is a refusal to report,
    not a missing secret and not a traceback."""
    try:
        return path.exists()
    except OSError as exc:
        raise _unreadable(path, what, exc, in_credstore=in_credstore) from exc


def _unreadable(path: Path, what: str, exc: OSError, *, in_credstore: bool) -> ConfigError:
    message = f"{what}: cannot read {path}: {exc.strerror or exc}"
    if in_credstore and isinstance(exc, PermissionError):
        message += " (the credential store is root's: run as root)"
    return ConfigError(message)
