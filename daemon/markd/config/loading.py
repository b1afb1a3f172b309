"""Reading the configuration: the main file, its drop-ins, merging, and one error for all.

Files, in the order they are read (later files override earlier ones)::

    /etc/markd/markd.toml              main file (optional at the default location)
    /etc/markd/markd.toml.d/*.toml     drop-ins, sorted by file name

Tables merge key by key; scalars and arrays replace. ``load(path)`` with an explicit path
requires that file to exist and reads its drop-ins from ``<path>.d/``.

Every file is validated on its own and then the merge once more (:mod:`markd.config.validation`);
all problems in all files come out in one :class:`~markd.errors.ConfigError`, each naming the
file, the line and the key, e.g.
``/etc/markd/markd.toml:12: [store] map_size_mb: expected an integer, got a string ('big')``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markd.config.access import Account, access_problems
from markd.config.lines import key_lines
from markd.config.schema import Config, whole_config_problems
from markd.config.startup import startup_problems
from markd.config.validation import INVALID, Checker, build
from markd.errors import ConfigError

DEFAULT_PATH = "/etc/markd/markd.toml"
"""The main configuration file; its drop-in directory is this path plus ``.d``."""

DROPIN_SUFFIX = ".d"
"""Appended to the main file's path to name its drop-in directory."""


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    default_path: str | os.PathLike[str] = DEFAULT_PATH,
    for_service: bool = False,
    environ: Mapping[str, str] | None = None,
    readable_by: Account | None = None,
) -> Config:
    """Read, merge and validate the configuration.

    With ``path`` None, reads ``default_path`` (:data:`DEFAULT_PATH`) if it exists (a missing
    default file means all defaults) and the drop-ins in ``<default_path>.d/`` if that directory
    exists. With an explicit ``path``, that file must exist; its drop-ins are read from
    ``<path>.d/``.

    ``for_service=True`` also reads what the daemon reads at start beyond the files — each
    secret the configuration calls for, the proxies built with them
    (:func:`markd.config.startup.startup_problems`, looked up in ``environ``, default the
    process's environment) — and reports what it would refuse like any other problem, at its
    key. ``markd`` (at start and on reload) and ``markctl config check`` load this way, so
    the two refuse the same files; the other markctl commands read only what they use.

    ``readable_by`` (``markctl config check`` run as root: the service's user) also reports
    each file the daemon opens at start that this user could not read
    (:mod:`markd.config.access`).

    Raises :class:`~markd.errors.ConfigError` listing every problem found in all files; the
    error never carries a traceback-worthy OSError or decode error, only readable problems.
    """
    main = Path(default_path if path is None else path)
    problems: list[str] = []
    documents: list[Document] = []
    # Files the configuration names (the price list), parsed once for all the checks below;
    # the merged result keeps what its own keys name.
    parsed: dict[Any, Any] = {}

    def read(file: Path, missing_ok: bool) -> None:
        # Each file is validated on its own, so that a bad value is reported even when a
        # later file overrides it, and problems come out in file order.
        doc = read_document(file, problems, missing_ok)
        if doc is not None:
            documents.append(doc)
            checker = Checker(doc.where, require=False, parsed=parsed)
            build(Config, doc.data, (), checker)
            problems.extend(checker.problems)

    read(main, missing_ok=path is None)
    for dropin in dropin_files(Path(str(main) + DROPIN_SUFFIX), problems):
        read(dropin, missing_ok=False)

    # The merged result is validated again for what only merging can show: a required key
    # that no file sets. Findings already made in a single file come out the same and are
    # reported once.
    merged, origins = merge(documents)
    by_name = {doc.name: doc for doc in documents}

    def where_merged(key_path: tuple[str, ...]) -> str:
        for depth in range(len(key_path), 0, -1):
            name = origins.get(key_path[:depth])
            if name is not None:
                return by_name[name].where(key_path)
        return documents[0].name if documents else str(main)

    checker = Checker(where_merged, require=True, parsed=parsed)
    config = build(Config, merged, (), checker)
    if config is not INVALID:
        for key_path, problem in whole_config_problems(config):
            checker.add(key_path, problem)
        if for_service:
            for key_path, problem in startup_problems(config, environ):
                checker.add(key_path, problem)
        if readable_by is not None:
            for key_path, problem in access_problems(config, readable_by):
                checker.add(key_path, problem)
    problems.extend(checker.problems)
    problems = list(dict.fromkeys(problems))  # drop duplicates, keep the order found

    if problems or config is INVALID:
        count = len(problems)
        raise ConfigError(f"configuration has {count} problem{'s' if count != 1 else ''}", problems)
    return dataclasses.replace(config, sources=tuple(doc.name for doc in documents))


@dataclass
class Document:
    """One parsed file, with the line of each key for error messages."""

    name: str
    text: str
    data: dict[str, Any]
    _lines: dict[tuple[str, ...], int] | None = field(default=None, repr=False)

    def where(self, key_path: tuple[str, ...]) -> str:
        """``file:line`` of the key (or of its nearest enclosing table), else ``file``."""
        if self._lines is None:
            self._lines = key_lines(self.text)
        for depth in range(len(key_path), 0, -1):
            line = self._lines.get(key_path[:depth])
            if line is not None:
                return f"{self.name}:{line}"
        return self.name


def read_document(path: Path, problems: list[str], missing_ok: bool) -> Document | None:
    """Read and parse one TOML file; on failure append a problem and return None."""
    name = str(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            problems.append(f"{name}: is a directory, expected a TOML file")
            return None
        if not stat.S_ISREG(mode):
            # A FIFO or device would block or never end; refuse before opening it.
            problems.append(f"{name}: not a regular file")
            return None
        raw = path.read_bytes()
    except FileNotFoundError:
        if not missing_ok:
            problems.append(f"{name}: no such file")
        return None
    except OSError as exc:
        problems.append(f"{name}: cannot read: {exc.strerror or exc}")
        return None

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        problems.append(
            f"{name}:{line}: not valid UTF-8 text "
            f"(byte 0x{raw[exc.start]:02x} at byte offset {exc.start})"
        )
        return None
    # Editors on Windows save UTF-8 with a byte-order mark, which TOML forbids; a technician
    # copying a file from a laptop should not have to know that.
    text = text.removeprefix("\ufeff")

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(syntax_problem(name, str(exc)))
        return None
    return Document(name=name, text=text, data=data)


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def syntax_problem(name: str, message: str) -> str:
    """``file:line:column: TOML syntax error: ...`` from tomllib's ``... (at line L, column C)``."""
    found = _TOML_POSITION.search(message)
    if found is None:
        return f"{name}: TOML syntax error: {message}"
    line, column = found.groups()
    return f"{name}:{line}:{column}: TOML syntax error: {message[: found.start()]}"


def dropin_files(directory: Path, problems: list[str]) -> list[Path]:
    """The ``*.toml`` files of a drop-in directory in name order; none if it does not exist."""
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        problems.append(f"{directory}: not a directory (drop-ins go in a directory)")
        return []
    except OSError as exc:
        problems.append(f"{directory}: cannot list drop-ins: {exc.strerror or exc}")
        return []
    # Hidden files are editor and package-manager leftovers (.50-till.toml.swp, .dpkg-new).
    return [directory / e for e in entries if e.endswith(".toml") and not e.startswith(".")]


def merge(documents: list[Document]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Merge parsed files in order: tables key by key, anything else replaced.

    Also returns, for every merged key path, the file that set it (for a table: the file
    that first created it), so that problems found after merging still name a file.
    """
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}

    def merge_into(
        target: dict[str, Any], source: dict[str, Any], prefix: tuple[str, ...], name: str
    ) -> None:
        for key, value in source.items():
            key_path = (*prefix, key)
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                merge_into(target[key], value, key_path, name)
                continue
            for stale in [p for p in origins if p[: len(key_path)] == key_path]:
                del origins[stale]
            origins[key_path] = name
            if isinstance(value, dict):
                target[key] = {}
                merge_into(target[key], value, key_path, name)
            else:
                target[key] = value

    for doc in documents:
        merge_into(merged, doc.data, (), doc.name)
    return merged, origins


def configured_files(
    path: str | os.PathLike[str] | None = None,
    *,
    default_path: str | os.PathLike[str] = DEFAULT_PATH,
) -> list[str]:
    """The files of the configuration that set something, in reading order.

    The package ships ``/etc/markd/markd.toml`` with every line commented out, so an empty
    answer means nobody has configured this machine yet (``markd configured``, the unit's
    ``ExecCondition=``). A file that cannot be read or parsed counts as setting something:
    deciding whether it is valid is the start's job, which then reports it properly.
    """
    main = Path(default_path if path is None else path)
    found: list[str] = []
    unreadable: list[str] = []
    files = [main, *dropin_files(Path(str(main) + DROPIN_SUFFIX), unreadable)]
    for file in files:
        problems: list[str] = []
        doc = read_document(file, problems, missing_ok=file == main and path is None)
        if problems or (doc is not None and doc.data):
            found.append(str(file))
    if unreadable:
        found.append(str(main) + DROPIN_SUFFIX)
    return found
