"""The CDN host list kept on disk between runs (domain.md §3.2).

A client that starts without a host list must ask the list service before its first check,
which costs part of that check's budget (or all of it when the network is slow). So the list
the online client last fetched, with when it was fetched and the hosts' last health figures, is
written to a small JSON file under the state directory and read back at the next start: a
restarted daemon, or a one-shot ``markctl check``, checks online at once while the list is
young, and keeps using an older one while a fresh list is fetched in the background.

The file is written atomically (a temporary file in the same directory, ``fsync``, rename,
``fsync`` of the directory), so a power cut leaves the old list or the new one, never half of
either. It is read as untrusted input: a file too large, not JSON, of another format version,
for another base URL, or with hosts that are not ``http(s)`` URLs is ignored with a warning,
and the client starts as if there were no file. It holds no secret: no key, no code.

Format (version 1)::

    {"format": 1, "base_url": "https://cdn.crpt.ru", "fetched_at": 1764950400.0,
     "hosts": [{"host": "https://cdn03.crpt.ru", "latency_ms": 21.4, "avg_time_ms": 18,
                "measured_at": 1764950401.2}, …]}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from markd.numbers import read_number

log = logging.getLogger(__name__)

FORMAT = 1
#: Larger files are not read (a real list has about a dozen hosts).
MAX_FILE_BYTES = 64 * 1024
MAX_HOSTS = 64
FILE_NAME = "cdn-hosts.json"


@dataclass(frozen=True)
class SavedHost:
    url: str
    latency_ms: float | None = None
    avg_time_ms: float | None = None
    measured_at: float | None = None  # wall time of the health check behind the figures


@dataclass(frozen=True)
class SavedList:
    """A host list as kept on disk: for which base URL, fetched when (wall time), the hosts."""

    base_url: str
    fetched_at: float
    hosts: tuple[SavedHost, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "base_url": self.base_url,
            "fetched_at": self.fetched_at,
            "hosts": [
                {
                    "host": h.url,
                    "latency_ms": h.latency_ms,
                    "avg_time_ms": h.avg_time_ms,
                    "measured_at": h.measured_at,
                }
                for h in self.hosts
            ],
        }


class HostListFile:
    """Reads and writes one host list file at ``path``. Blocking: call it off the event loop
    (:func:`asyncio.to_thread`) where a write's ``fsync`` would delay a check."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"HostListFile({str(self.path)!r})"

    def load(self, base_url: str) -> SavedList | None:
        """The saved list for ``base_url``, or None (no file, or a file not to be trusted:
        the reason is logged)."""
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("CDN host list %s not read: %s", self.path, exc.strerror or exc)
            return None
        if len(raw) > MAX_FILE_BYTES:
            log.warning("CDN host list %s ignored: larger than %d bytes", self.path, MAX_FILE_BYTES)
            return None
        try:
            saved = parse_saved(json.loads(raw))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser goes ("[[[[…").
            log.warning("CDN host list %s ignored: %s", self.path, type(exc).__name__)
            return None
        except Exception as exc:  # noqa: BLE001 - hostile input never stops a start
            log.warning("CDN host list %s ignored: unreadable (%s)", self.path, exc)
            return None
        if saved.base_url != base_url:
            log.info(
                "CDN host list %s ignored: it was fetched from %s, not %s",
                self.path,
                saved.base_url,
                base_url,
            )
            return None
        return saved

    def save(self, saved: SavedList) -> None:
        """Replace the file atomically; an error is logged, never raised (the list on disk is
        an aid to the next start, not worth a check)."""
        text = json.dumps(saved.to_json(), ensure_ascii=False, indent=1) + "\n"
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
            handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    out.write(text)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(temporary, 0o644)
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            _fsync_directory(directory)
        except OSError as exc:
            log.warning("CDN host list not saved to %s: %s", self.path, exc.strerror or exc)

    def _remove_leftovers(self) -> None:
        """Temporary files of a write that a crash or a kill interrupted (never renamed)."""
        for leftover in self.path.parent.glob(f".{self.path.name}.*"):
            with contextlib.suppress(OSError):
                leftover.unlink()


def usable_host_url(url: str, *, https_only: bool = False) -> bool:
    """True when ``url`` can be a CDN host: an ``http(s)`` URL with a host name, of a sane
    length, without spaces or control characters; ``https`` only when ``https_only``."""
    if not _is_http_url(url):
        return False
    return not https_only or url.lower().startswith("https://")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_saved(data: Any) -> SavedList:
    """A :class:`SavedList` from the file's JSON; ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
    base_url = data.get("base_url")
    if not isinstance(base_url, str) or not _is_http_url(base_url):
        raise ValueError("base_url is not an http(s) URL")
    fetched_at = read_number(data.get("fetched_at"))
    if fetched_at is None:
        raise ValueError("fetched_at is not a number")
    entries = data.get("hosts")
    if not isinstance(entries, list) or not entries:
        raise ValueError("hosts is not a non-empty list")
    if len(entries) > MAX_HOSTS:
        raise ValueError(f"more than {MAX_HOSTS} hosts")
    hosts: list[SavedHost] = []
    for index, entry in enumerate(entries):
        url = entry.get("host") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not _is_http_url(url):
            raise ValueError(f"hosts[{index}] is not an http(s) URL")
        if any(h.url == url for h in hosts):
            continue
        # A figure that is not a finite number ≥ 0 is kept as "not measured" (None).
        hosts.append(
            SavedHost(
                url,
                latency_ms=read_number(entry.get("latency_ms"), lo=0),
                avg_time_ms=read_number(entry.get("avg_time_ms"), lo=0),
                measured_at=read_number(entry.get("measured_at")),
            )
        )
    return SavedList(base_url, fetched_at, tuple(hosts))


def _is_http_url(text: str) -> bool:
    if len(text) > 2048 or any(c.isspace() or ord(c) < 32 for c in text):
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


__all__ = [
    "FILE_NAME",
    "MAX_HOSTS",
    "HostListFile",
    "SavedHost",
    "SavedList",
    "parse_saved",
    "usable_host_url",
]
