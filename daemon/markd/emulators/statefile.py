"""The files a virtual ККТ keeps in its folder, shared by the ATOL one
(:mod:`markd.emulators.virtual_kkt`) and the Shtrih-M one (:mod:`markd.emulators.shtrih`).
Only the file handling is here: what the state and the documents hold, and every byte a
device speaks, stay with each device.

* ``state.json`` — the device's whole state, one JSON object, mode 0600 (it holds the codes
  the ФН keeps accepted). It is never written in place: the new state goes to a temporary
  file, which is fsync'd and renamed over the old one, and then the folder is fsync'd, so a
  kill at any instant leaves either the old state or the new one.
* ``documents.jsonl`` — the fiscal documents, one JSON object a line, mode 0640 (the owner
  writes, its group reads). Each is appended and fsync'd (the folder too when the file is
  new). A line torn by a kill mid-write is skipped when read, and the next document starts on
  a line of its own.
* ``.lock`` — an exclusive ``flock`` held (with a thread lock) around every load, change and
  save, so threads and processes sharing the folder take turns.

The order that makes it crash safe: a document is appended and fsync'd *before* the state
that counts it is saved; loading then rolls forward — a last document whose number is above
the state's ``document_number`` (the process was killed in between) is counted by the
device's own rule and the state saved — so the state always agrees with the documents.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
DOCUMENTS_FILE = "documents.jsonl"
LOCK_FILE = ".lock"
#: ``state.json``: the owner only (the accepted codes are full marking codes).
STATE_MODE = 0o600
#: ``documents.jsonl``: the owner writes, its group (a technician) reads.
DOCUMENTS_MODE = 0o640
#: How much of the end of ``documents.jsonl`` is read for the last document.
_TAIL_BYTES = 65536

State = dict[str, Any]


class DeviceFiles:
    """The state, documents and lock files of one device in ``path`` (which must exist).

    ``name`` says whose state an unreadable file is; ``default`` makes the state of a new
    device; ``count(state, document)`` counts a document the state has not yet counted
    (rolling forward) and must set ``document_number`` to the document's number."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        default: Callable[[], State],
        count: Callable[[State, dict[str, Any]], None],
        state_name: str = STATE_FILE,
        documents_name: str = DOCUMENTS_FILE,
        lock_name: str = LOCK_FILE,
    ) -> None:
        self.path = path
        self.state_file = path / state_name
        self.documents_file = path / documents_name
        self.lock_file = path / lock_name
        self.lock = threading.RLock()
        self._name = name
        self._default = default
        self._count = count

    @contextlib.contextmanager
    def locked(self) -> Iterator[State]:
        """The state, loaded (and rolled forward) under the thread and file locks, which are
        held until the block ends; a change is kept only by :meth:`save`."""
        with self.lock, open(self.lock_file, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.load()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> State:
        """The state on disk (a new device's when there is none), rolled forward."""
        try:
            state: State = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = self._default()
            self.save(state)
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"{self._name} state {self.state_file} is unreadable: {exc}"
            ) from exc
        last = self.last_document()
        if last is not None and last["number"] > state["document_number"]:
            # Written but not yet counted (killed in between): count it.
            self._count(state, last)
            self.save(state)
        return state

    def save(self, state: State) -> None:
        """Replace the state atomically: temporary file, fsync, rename, fsync the folder."""
        tmp = self.state_file.with_suffix(".tmp")
        data = json.dumps(state, ensure_ascii=False, separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, STATE_MODE)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), STATE_MODE)  # a .tmp left by a kill may have been wider
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.state_file)
        fsync_dir(self.path)

    def append_document(self, document: dict[str, Any]) -> None:
        """Append one document as a line and fsync it (and the folder, for a new file)."""
        file = self.documents_file
        new = not file.exists()
        line = json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"
        # Not world-readable: the receipts name the КИ sold (a file of an older version, made
        # with the default mode, is narrowed too).
        fd = os.open(file, os.O_RDWR | os.O_APPEND | os.O_CREAT, DOCUMENTS_MODE)
        with os.fdopen(fd, "a+b") as out:
            if os.fstat(fd).st_mode & 0o777 & ~DOCUMENTS_MODE:
                os.fchmod(fd, DOCUMENTS_MODE)
            out.seek(0, os.SEEK_END)
            if out.tell() > 0:
                out.seek(out.tell() - 1)
                if out.read(1) != b"\n":
                    line = "\n" + line  # a line torn by a kill mid-write stays on its own
            out.write(line.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        if new:
            fsync_dir(self.path)

    def documents(self) -> list[Any]:
        """Every line that reads as JSON, oldest first (a torn line is skipped)."""
        with self.lock:
            try:
                text = self.documents_file.read_text(encoding="utf-8")
            except FileNotFoundError:
                return []
        documents = []
        for line in text.splitlines():
            try:
                documents.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a kill mid-write
        return documents

    def last_document(self) -> dict[str, Any] | None:
        """The last complete document line, read from the end of the file."""
        try:
            with open(self.documents_file, "rb") as source:
                source.seek(0, os.SEEK_END)
                size = source.tell()
                source.seek(max(size - _TAIL_BYTES, 0))
                tail = source.read()
        except FileNotFoundError:
            return None
        for line in reversed(tail.splitlines()):
            try:
                document = json.loads(line)
            except ValueError:
                continue
            if isinstance(document, dict) and isinstance(document.get("number"), int):
                return document
        return None


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a file created or renamed in it stays after a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
