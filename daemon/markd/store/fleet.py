"""Fleet sync: export the blocklist for a static file server, and sync a store from one.

Thousands of kiosks get the same blocklist from a plain file server, a CDN or an object store:
no server of markd's own. The master (head office) runs ``markctl store export --to DIR`` and
publishes DIR; each kiosk runs ``markctl store sync URL`` (or the daemon does, every
``[store] sync_interval_s``).

An export directory::

    index.json                 written last; names everything below
    snapshot-<V>.mbl.gz        the whole live blocklist at version V, gzip-compressed in
                               markd's own snapshot format (markd.store.importer; about ten
                               times faster to import than CSV); with ``--format csv``
                               snapshot-<V>.csv.gz instead (ki,gtin,series,reason,source,since),
                               which every markd version reads
    delta-<N>.jsonl            one per delta the master applied since its last snapshot import
                               (markd-delta JSON lines, as ``markctl store delta`` reads)

``index.json``::

    {"format": "markd-store-index", "version": V, "generated_at": <unix>,
     "snapshot": {"version": V, "rows": R, "file": "snapshot-V.mbl.gz", "size": …,
                  "sha256": "…"},     (.mbl/.mbl.gz: the markd format; any other name: CSV)
     "deltas": [{"version": N, "previous": N-1, "file": "delta-N.jsonl", "size": …,
                 "sha256": "…"}, …],         (oldest first, a contiguous chain)
     "signature": {"key": "ed25519:…", "ed25519": "…"}}   (with ``--sign-key``;
                                                          :mod:`markd.store.signing`)

How a kiosk syncs (:func:`sync`):

1. ``GET <url>/index.json`` with ``If-None-Match`` (the ETag of the last index this store
   synced from the same URL). ``304 Not Modified`` → the list is confirmed current.
2. With ``public_keys`` (``[store] sync_public_keys``) the index's signature is checked
   first; then the index is validated strictly (``bad-index`` otherwise). Without keys, a
   plain ``http://`` URL is refused before any request unless ``allow_unsigned``.
3. The store is at the index version → nothing to fetch. The deltas listed lead from the
   store's version to the index version → fetch and apply only them. Otherwise (too far
   behind, or a new snapshot on the master) → fetch the snapshot, resumably, import it, then
   apply the deltas after it. A server *behind* the store (a rollback on the master) is refused
   unless ``allow_rollback``.
4. Every file is checked against the size and sha256 in the index before it is used, and
   all of them are downloaded and checked before the store changes at all. Before a byte is
   written, every file's size (from the index, signed when keys are configured) must be at
   most ``max_file_mb`` and all of them must fit in the free space; a download is cut as
   soon as one byte more than the index says arrives. A refused or mismatching file's
   ``.part`` is deleted (only a cut connection keeps it, for resuming).

Versions are taken to come from one master: a kiosk at version N is assumed to hold what the
master held at version N (deltas apply only on top of the version they name).

Downloads go to ``<store path>/downloads/<file>.part``. A cut connection leaves the ``.part``
and the ETag of the file beside it (``<file>.part.etag``); the next sync asks for the rest
(``Range`` with ``If-Range``, so a file that changed meanwhile is fetched whole again).

The URL may carry credentials (``https://user:password@host/path``, sent as HTTP Basic
authentication; after a redirect only to the same scheme, host and port) and a query string (a
CDN token, appended to every file's URL). Neither ever appears in an error, a log line, a
result or the store: :func:`redact_url` shows the URL as ``scheme://host[:port]/path``.

HTTP goes through :class:`~markd.http.blocking.BlockingHTTPClient` (the sync runs in a process
or thread of its own), one connection per file, redirects followed (:data:`MAX_REDIRECTS`).

Errors are :class:`~markd.errors.StoreError` with these reasons: ``sync-failed`` (HTTP error,
timeout, connection failure; names the URL and the HTTP status), ``bad-index``,
``bad-download`` (size or sha256 mismatch; names the file), ``download-too-large`` (the
index names a file over ``max_file_mb``), ``store-disk-full`` (not enough free space for
the files to download), ``stale-snapshot`` (the server is
behind the store), ``sync-busy`` (another sync of the same store is running), ``bad-url``; and,
for a sync refused as untrusted (:data:`markd.errors.UNTRUSTED_SYNC_REASONS`),
``unsigned-index``, ``unknown-key``, ``bad-signature``, ``tampered-download`` (a size or
sha256 mismatch against a signed index) and ``unsigned-sync``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import errno
import fcntl
import gzip
import hashlib
import io
import json
import operator
import os
import re
import shutil
import socket
import ssl
import struct
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from markd import __version__
from markd.errors import StoreError
from markd.http.blocking import BlockingHTTPClient, BlockingStreamResponse
from markd.http.client import os_reason
from markd.http.errors import HTTPBodyCut, HTTPError, HTTPTimeout, ProxyError
from markd.numbers import read_int
from markd.proxy import ProxyEndpoint, ProxySettings
from markd.store import keys, ownership, signing
from markd.store.core import Store
from markd.store.importer import (
    CSV_COLUMNS,
    MARKD_MAGIC,
    MARKD_VERSION,
    Progress,
    apply_delta,
    import_snapshot,
    read_delta,
)
from markd.text import csv_cell

INDEX_FORMAT = "markd-store-index"
DELTA_FORMAT = "markd-delta"
INDEX_NAME = "index.json"
#: Directory under the store where downloads (and their ``.part`` files) are kept.
DOWNLOADS_DIR = "downloads"
#: An index bigger than this is refused (a real one is a few kB even with 100 deltas).
MAX_INDEX_BYTES = 16 << 20
DEFAULT_TIMEOUT_S = 30.0
#: Default of ``[store] sync_max_file_mb``, the largest fleet file a kiosk downloads. A
#: snapshot of 10 M КИ with 13-character serials is about 150 MB in the markd format (about
#: 215 MB as gzip CSV), so 1 GiB leaves room for 50 M+ entries.
DEFAULT_MAX_FILE_MB = 1024

#: The parts of a stored value (keys.BLOCK_VALUE): since, then the attr id.
BLOCK_SINCE = struct.Struct("<I")
BLOCK_ATTR = struct.Struct("<I")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: ``\d`` matches any Unicode decimal digit, of any length: the numbers go through read_int.
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_CHUNK = 1 << 16
_PROGRESS_EVERY_S = 0.1
_EXPORT_ATTEMPTS = 5
#: Redirects followed for one file (urllib's limit, which the sync used before).
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


# ---------------------------------------------------------------------------------------------
# Export


class _HashingWriter:
    """A binary sink that counts and hashes what passes through to ``raw``."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.size = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.size += len(data)
        self.sha256.update(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


@dataclass
class _Written:
    """A file written under a temporary name, not yet renamed into place."""

    tmp: Path
    name: str
    size: int
    sha256: str


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _temporary(directory: Path, name: str) -> Iterator[tuple[Path, _HashingWriter]]:
    """A hidden temporary file in ``directory`` for ``name``; removed unless renamed."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            yield tmp, _HashingWriter(raw)
            raw.flush()
            os.fsync(raw.fileno())  # the data is on disk before any index can name it
        # mkstemp makes 0600; the web server serving the directory must read the files.
        os.chmod(tmp, 0o644)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _place(directory: Path, written: _Written) -> None:
    """Rename ``written`` into place, unless an identical file is already there (that one keeps
    its ETag and mtime, so CDN caches and clients in the middle of a download are undisturbed)."""
    final = directory / written.name
    try:
        same = final.stat().st_size == written.size and _file_sha256(final) == written.sha256
    except OSError:
        same = False
    if same:
        written.tmp.unlink(missing_ok=True)
    else:
        os.replace(written.tmp, final)


class _ListChanged(Exception):
    """The blocklist changed between the two reads of a markd snapshot export."""


#: The snapshot formats an export writes: markd's own (fast to import), or CSV (read by every
#: markd, for a fleet whose kiosks are not all of this version yet).
EXPORT_FORMATS = ("markd", "csv")
_ATTR_OF_VALUE = operator.itemgetter(slice(4, 8))
_VALUE = operator.itemgetter(1)


def _write_markd_snapshot(store: Store, directory: Path, version: int) -> _Written:
    """The live list as a markd snapshot (``markd.store.importer``; docs/store.md): the
    (reason, source) pairs numbered first, then every entry in key order, then the count."""
    attr_ids: set[bytes] = set()
    for chunk in store.iter_blocked_raw():
        attr_ids.update(map(_ATTR_OF_VALUE, map(_VALUE, chunk)))
    numbers = {
        raw: b"%d" % number
        for number, raw in enumerate(sorted(attr_ids, key=BLOCK_ATTR.unpack), start=1)
    }
    name = f"snapshot-{version}.mbl.gz"
    with _temporary(directory, name) as (tmp, sink):
        # mtime=0 and no file name in the gzip header: the same list gives the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as gz:  # type: ignore[arg-type]
            gz.write(MARKD_MAGIC + b" %d\n" % MARKD_VERSION)
            for raw, number in numbers.items():
                pair = store.attr_pair(BLOCK_ATTR.unpack(raw)[0])
                text = json.dumps(list(pair), ensure_ascii=False).encode()
                gz.write(b"#attr\t" + number + b"\t" + text + b"\n")
            rows = 0
            for chunk in store.iter_blocked_raw():
                try:
                    lines = [
                        b"%s\t%d\t%s\n"
                        % (
                            key.replace(keys.SERIES_SEPARATOR, b"|"),
                            BLOCK_SINCE.unpack_from(value)[0],
                            numbers[value[4:8]],
                        )
                        for key, value in chunk
                    ]
                except KeyError:
                    raise _ListChanged from None  # an attr the first read did not see
                gz.write(b"".join(lines))
                rows += len(lines)
            gz.write(b"#end\t%d\n" % rows)
    return _Written(tmp, name, sink.size, sink.sha256.hexdigest())


def _write_snapshot(store: Store, directory: Path, version: int, fmt: str = "csv") -> _Written:
    if fmt == "markd":
        return _write_markd_snapshot(store, directory, version)
    name = f"snapshot-{version}.csv.gz"
    with _temporary(directory, name) as (tmp, sink):
        # mtime=0 and no file name in the gzip header: the same list gives the same bytes,
        # hence the same sha256 and the same file on the server.
        with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as gz:  # type: ignore[arg-type]
            text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for key, since, reason, source in store.iter_blocked():
                row = keys.key_to_text(key)
                # Text cells go out inert (markd.text.csv_cell): a reason "=HYPERLINK(…)"
                # must not run in the spreadsheet a technician opens the export with.
                writer.writerow(
                    (row.get("ki", ""), row.get("gtin", ""), csv_cell(row.get("series", "")))
                    + (csv_cell(reason), csv_cell(source), since)
                )
            text.flush()
            text.detach()
    return _Written(tmp, name, sink.size, sink.sha256.hexdigest())


def delta_lines(record: dict[str, Any]) -> list[str]:
    """The markd-delta JSON lines that reproduce an applied delta ``record`` (from
    :meth:`Store.deltas`).

    An ``add`` that gave no ``since`` got the time the master applied it (``applied_at``); the
    exported line states that time, so a kiosk ends with exactly the master's entry rather than
    its own apply time.
    """
    header = {
        "format": DELTA_FORMAT,
        "version": record["version"],
        "previous": record["previous"],
        "source": record.get("source", ""),
        "applied_at": record.get("applied_at"),
    }
    lines = [json.dumps(header, ensure_ascii=False, separators=(",", ":"))]
    for op, row in record["changes"]:
        item = {"op": op, **row}
        if op == "add" and row.get("since") in (None, "") and record.get("applied_at"):
            item["since"] = record["applied_at"]
        lines.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
    return lines


def _write_delta(directory: Path, record: dict[str, Any]) -> _Written:
    name = f"delta-{record['version']}.jsonl"
    with _temporary(directory, name) as (tmp, sink):
        for line in delta_lines(record):
            sink.write(line.encode("utf-8") + b"\n")
    return _Written(tmp, name, sink.size, sink.sha256.hexdigest())


def export(
    store: Store,
    to_dir: str | os.PathLike[str],
    *,
    sign_key: str | os.PathLike[str] | None = None,
    fmt: str = "markd",
) -> dict[str, Any]:
    """Write the live blocklist of ``store`` into ``to_dir`` for a static file server; return
    the index (also written as ``index.json``).

    ``fmt``: the snapshot's format, ``markd`` (``snapshot-V.mbl.gz``, the fast one to import)
    or ``csv`` (``snapshot-V.csv.gz``, which markd versions before the markd format read too:
    for a fleet in the middle of an upgrade).

    ``sign_key``: a private key file (``markctl store keygen``); the index is then signed
    (:mod:`markd.store.signing`), and with it every file it names (by size and sha256). The
    key is read before anything is written: a wrong key leaves ``to_dir`` as it was.

    ``to_dir`` is created if missing. Each file is written under a hidden temporary name,
    flushed to disk and renamed into place; ``index.json`` comes last, so a client never sees
    an index naming a missing or partial file. A file whose content did not change is left as
    it was (same ETag). Files of earlier exports are **not** removed: clients may be in the
    middle of downloading them; delete old ``snapshot-*``/``delta-*`` files yourself once no
    client can still be using them (say, after a day).

    The snapshot is one consistent read of the blocklist; when a delta or an import lands in
    the store while it is read (the version changes), the export is read again. A store at
    version 0 (never loaded) exports an empty snapshot.
    """
    if fmt not in EXPORT_FORMATS:
        raise StoreError(
            f"unknown snapshot format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}",
            "export-failed",
        )
    private_key = signing.load_private_key(sign_key) if sign_key is not None else None
    directory = Path(to_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create {directory}: {exc.strerror or exc}", "export-failed"
        ) from exc
    pending: list[_Written] = []
    try:
        for _ in range(_EXPORT_ATTEMPTS):
            info = store.info()
            version = info.version
            records = store.deltas()
            try:
                snapshot = _write_snapshot(store, directory, version, fmt)
            except _ListChanged:
                continue
            pending.append(snapshot)
            if store.info().version == version:
                break
            # Another process applied a delta or imported meanwhile: read everything again.
        else:
            raise StoreError(
                f"the blocklist in {store.path} kept changing during the export; try again",
                "export-failed",
            )
        deltas = [_write_delta(directory, record) for record in records]
        pending += deltas
        for written in (snapshot, *deltas):
            _place(directory, written)
        index = {
            "format": INDEX_FORMAT,
            "version": version,
            "generated_at": int(time.time()),
            # How current the master's list is: kiosks inherit it, so a stale master shows as
            # stale everywhere instead of looking fresh after every sync.
            "list_synced_at": info.synced_at,
            "snapshot": {
                "version": version,
                "rows": sum(info.counts.values()),
                "file": snapshot.name,
                "size": snapshot.size,
                "sha256": snapshot.sha256,
            },
            "deltas": [
                {
                    "version": record["version"],
                    "previous": record["previous"],
                    "file": written.name,
                    "size": written.size,
                    "sha256": written.sha256,
                }
                for record, written in zip(records, deltas, strict=True)
            ],
        }
        if private_key is not None:
            index = signing.sign_index(index, private_key)
        with _temporary(directory, INDEX_NAME) as (tmp, sink):
            sink.write(json.dumps(index, indent=1).encode() + b"\n")
        os.replace(tmp, directory / INDEX_NAME)
        _fsync_directory(directory)
    except OSError as exc:
        raise StoreError(
            f"exporting to {directory}: {exc.strerror or exc}", "export-failed"
        ) from exc
    finally:
        for written in pending:  # whatever was not renamed into place
            written.tmp.unlink(missing_ok=True)
    return index


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# URLs and HTTP


def redact_url(url: str) -> str:
    """``url`` as ``scheme://host[:port]/path``: without user, password, query or fragment,
    and without a trailing ``/``. Safe to log."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return "(unparsable URL)"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def hide_secrets(text: str, url: str) -> str:
    """``text`` with the password and the query string of ``url`` replaced by ``***`` (for
    output of another process that was given ``url``)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        password = parts.password
    except ValueError:
        return text
    for secret in (password, urllib.parse.unquote(password or ""), parts.query):
        if secret:
            text = text.replace(secret, "***")
    return text


class _Remote:
    """One export directory on an HTTP(S) server: builds file URLs, sends requests through
    :class:`~markd.http.blocking.BlockingHTTPClient`, follows redirects, turns every failure
    into a ``sync-failed`` :class:`StoreError` that names the safe URL (and the proxy, when
    the request went through one).

    ``proxy``: the proxy settings, which decide per request (so a redirect to a host on the
    direct list goes direct); None means no proxy at all (the environment's proxy variables
    are not followed). ``timeout`` bounds connecting and every single read, not a whole file.

    Redirects (``301``, ``302``, ``303``, ``307``, ``308``; CDNs and object stores use them)
    are followed up to :data:`MAX_REDIRECTS` times with the request's own headers. The Basic
    credentials from the URL go only to the origin they were given for (same scheme, host and
    port): a redirect to another host, or from https to http, gets none.

    Each request has a connection of its own: a sync fetches a few files every few minutes,
    and a file server or CDN closes idle connections long before the next sync anyway. Use as
    a context manager (or call :meth:`close`)."""

    def __init__(self, url: str, timeout: float, proxy: ProxySettings | None = None) -> None:
        self.safe = redact_url(url)
        #: Refuse a redirect from https:// to plain http:// (an unsigned sync trusts TLS).
        self.no_downgrade = False
        try:
            parts = urllib.parse.urlsplit(url.strip())
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            parts, port_ok = None, False
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or not port_ok
        ):
            raise StoreError(
                f"sync URL {self.safe!r} must look like http(s)://[user:password@]host[:port]/path",
                "bad-url",
            )
        self.timeout = timeout
        host = parts.netloc.rpartition("@")[2]
        self._base = urllib.parse.urlunsplit(
            (parts.scheme, host, parts.path.rstrip("/") + "/", "", "")
        )
        self._origin = _origin(self._base)
        self._query = parts.query
        self._url = url
        self._authorization: str | None = None
        if parts.username is not None or parts.password is not None:
            user = urllib.parse.unquote(parts.username or "")
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._authorization = f"Basic {token}"
        self.proxy = proxy
        #: The proxy of the latest request (None: it went direct), to name it in errors.
        self.last: ProxyEndpoint | None = None
        self._http = BlockingHTTPClient(user_agent=f"markd/{__version__}", proxy=proxy, max_idle=0)

    def __enter__(self) -> _Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def file_url(self, name: str) -> str:
        url = self._base + urllib.parse.quote(name)
        return f"{url}?{self._query}" if self._query else url

    def scrub(self, text: str) -> str:
        return hide_secrets(text, self._url)

    def failure(self, name: str, detail: str) -> StoreError:
        return StoreError(
            self.scrub(f"sync from {self.safe} failed: {name}: {detail}"), "sync-failed"
        )

    def describe(self, exc: HTTPError) -> str:
        """A short text for a network failure: a timeout, the OS error, a broken answer; what
        the proxy did when the request went through one."""
        if isinstance(exc, ProxyError):
            return self._proxy_failure(exc)
        if isinstance(exc, HTTPTimeout):
            text = f"no answer within {self.timeout:g} s"
        elif isinstance(exc, HTTPBodyCut):
            text = f"connection closed after {exc.received} bytes"
        elif isinstance(exc.__cause__, socket.gaierror):
            text = f"cannot resolve the host name ({exc.__cause__.strerror})"
        elif isinstance(exc.__cause__, OSError) and not isinstance(exc.__cause__, ssl.SSLError):
            text = os_reason(exc.__cause__)
        elif str(exc).endswith("closed the connection without answering"):
            text = "the server closed the connection without an answer"
        else:
            text = str(exc)
        return text if self.last is None else f"{text} (through proxy {self.last})"

    def _proxy_failure(self, exc: ProxyError) -> str:
        if exc.kind == "proxy-timeout":
            return f"proxy {exc.proxy} gave no answer within {self.timeout:g} s"
        if exc.kind == "proxy-unreachable" and isinstance(exc.__cause__, socket.gaierror):
            return f"cannot resolve the name of proxy {exc.proxy} ({exc.__cause__.strerror})"
        if exc.kind == "proxy-error" and exc.status is not None:
            status = f"HTTP {exc.status} {exc.reason}".rstrip()
            return f"proxy {exc.proxy} refused the tunnel ({status})"
        return str(exc)  # names the proxy and what it did, never its credentials

    @contextlib.contextmanager
    def failures(self, name: str) -> Iterator[None]:
        """Turn network errors raised while reading ``name`` into ``sync-failed``."""
        try:
            yield
        except HTTPError as exc:
            raise self.failure(name, self.describe(exc)) from exc

    @contextlib.contextmanager
    def get(
        self, name: str, headers: dict[str, str], *, accept: tuple[int, ...] = (), limit: int
    ) -> Iterator[BlockingStreamResponse]:
        """GET ``name``: a 2xx answer, or one of the ``accept`` statuses (e.g. 304), with at
        most ``limit`` bytes of body to be read."""
        url = self.file_url(name)
        for _ in range(MAX_REDIRECTS + 1):
            # The files are checked byte for byte (sha256, ranges): no content coding, ever.
            wanted = {"Accept": "*/*", "Accept-Encoding": "identity", **headers}
            if self._authorization is not None and _origin(url) == self._origin:
                wanted["Authorization"] = self._authorization
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            self.last = (
                self.proxy.route(parts.scheme, parts.hostname or "", port)
                if self.proxy is not None
                else None
            )
            with contextlib.ExitStack() as stack, self.failures(name):
                response = stack.enter_context(
                    self._http.stream(
                        "GET", url, max_bytes=limit, read_timeout=self.timeout, headers=wanted
                    )
                )
                location = response.headers.get("location")
                if response.status in _REDIRECTS and location:
                    url = self._redirect(name, url, location)
                    continue
                if not (200 <= response.status < 300 or response.status in accept):
                    detail = f"HTTP {response.status} {response.reason}".rstrip()
                    if self.last is not None:
                        detail += f" (through proxy {self.last})"
                    raise self.failure(name, detail)
                yield response
                return
        raise self.failure(name, f"more than {MAX_REDIRECTS} redirects")

    def _redirect(self, name: str, url: str, location: str) -> str:
        """Where a redirect from ``url`` leads (a relative ``Location`` included)."""
        target = urllib.parse.urljoin(url, location.strip())
        try:
            parts = urllib.parse.urlsplit(target)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            parts, port_ok = None, False
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.failure(name, "redirected to something that is not an http(s) URL")
        if not port_ok:
            raise self.failure(name, f"redirected to {redact_url(target)}, whose port is wrong")
        if self.no_downgrade and url.lower().startswith("https://") and parts.scheme == "http":
            raise StoreError(
                self.scrub(
                    f"sync from {self.safe}: {name} redirected from https:// to plain http:// "
                    f"({redact_url(target)}): an unsigned sync trusts TLS alone. Sign the export "
                    "and set [store] sync_public_keys, or accept the risk with [store] "
                    "sync_allow_unsigned = true; nothing changed"
                ),
                "unsigned-sync",
            )
        return target


def _origin(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of ``url``: who may receive the URL's credentials."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _read_up_to(response: BlockingStreamResponse, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes when it is longer."""
    blocks: list[bytes] = []
    got = 0
    while got < limit:
        block = response.read(min(_CHUNK, limit - got))
        if not block:
            break
        blocks.append(block)
        got += len(block)
    return b"".join(blocks)


# ---------------------------------------------------------------------------------------------
# The index


def _bad_index(safe_url: str, problem: str) -> StoreError:
    return StoreError(f"{safe_url}/{INDEX_NAME}: {problem}", "bad-index")


def _int_field(data: dict[str, Any], name: str, where: str, errors: list[str]) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        errors.append(f"{where}{name} must be a non-negative integer, got {value!r:.40}")
        return 0
    return value


def _file_entry(data: Any, where: str, errors: list[str], *, delta: bool) -> dict[str, Any]:
    if not isinstance(data, dict):
        errors.append(f"{where.rstrip('.')} must be an object")
        return {}
    found = len(errors)
    entry: dict[str, Any] = {"version": _int_field(data, "version", where, errors)}
    if delta:
        entry["previous"] = _int_field(data, "previous", where, errors)
        if len(errors) == found and entry["previous"] >= entry["version"]:
            errors.append(f"{where}previous must be below version")
    entry["size"] = _int_field(data, "size", where, errors)
    name = data.get("file")
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
        errors.append(
            f"{where}file must be a plain file name (letters, digits, . _ -; no '/' or '..'), "
            f"got {name!r:.60}"
        )
    entry["file"] = name
    digest = data.get("sha256")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
        errors.append(f"{where}sha256 must be 64 hex digits, got {digest!r:.80}")
    entry["sha256"] = digest.lower() if isinstance(digest, str) else ""
    return entry


def parse_index(raw: bytes, safe_url: str = "") -> dict[str, Any]:
    """Validate an ``index.json``; return it normalised. Raises ``bad-index`` naming every
    problem."""
    return _index_from(_load_index(raw, safe_url), safe_url)


def _load_index(raw: bytes, safe_url: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _bad_index(safe_url, f"not JSON ({exc})") from exc


def _index_from(data: Any, safe_url: str) -> dict[str, Any]:
    """Validate a parsed ``index.json`` (the very object whose signature was checked)."""
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise _bad_index(safe_url, f'not a markd index (expected "format": "{INDEX_FORMAT}")')
    errors: list[str] = []
    version = _int_field(data, "version", "", errors)
    generated_at = _int_field(data, "generated_at", "", errors)
    list_synced_at = data.get("list_synced_at", generated_at)
    if list_synced_at is not None and (
        not isinstance(list_synced_at, int)
        or isinstance(list_synced_at, bool)
        or list_synced_at < 0
    ):
        errors.append("list_synced_at must be Unix seconds or null")
    rows = (
        (data.get("snapshot") or {}).get("rows") if isinstance(data.get("snapshot"), dict) else None
    )
    if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 0):
        errors.append("snapshot.rows must be a count")
    snapshot = _file_entry(data.get("snapshot"), "snapshot.", errors, delta=False)
    raw_deltas = data.get("deltas", [])
    deltas: list[dict[str, Any]] = []
    if not isinstance(raw_deltas, list):
        errors.append("deltas must be a list")
    else:
        for i, item in enumerate(raw_deltas):
            deltas.append(_file_entry(item, f"deltas[{i}].", errors, delta=True))
    if not errors:
        if snapshot["version"] > version:
            errors.append(f"snapshot version {snapshot['version']} is above version {version}")
        for before, after in zip(deltas, deltas[1:], strict=False):
            if after["previous"] != before["version"]:
                errors.append(
                    f"deltas must form a chain, oldest first: delta {after['version']} follows "
                    f"{after['previous']}, listed after delta {before['version']}"
                )
        if deltas and deltas[-1]["version"] > version:
            errors.append(f"delta {deltas[-1]['version']} is above version {version}")
        if (
            not errors
            and snapshot["version"] != version
            and _chain(deltas, snapshot["version"], version) is None
        ):
            errors.append(
                f"neither the snapshot (version {snapshot['version']}) nor the deltas after it "
                f"reach version {version}"
            )
    snapshot_format = _snapshot_format(snapshot.get("file"))
    if errors:
        raise _bad_index(safe_url, "; ".join(errors[:5]))
    return {
        "version": version,
        "snapshot": {**snapshot, "rows": rows, "format": snapshot_format},
        "deltas": deltas,
        "list_synced_at": list_synced_at,
    }


def _snapshot_format(name: Any) -> str:
    """The import format of a snapshot named ``name`` in an index: ``markd`` for ``.mbl`` or
    ``.mbl.gz``, CSV for anything else (what every index named before the markd format, and
    what exporters of other makers write)."""
    if isinstance(name, str) and name.lower().endswith((".mbl", ".mbl.gz")):
        return "markd"
    return "csv"


def _chain(deltas: list[dict[str, Any]], start: int, end: int) -> list[dict[str, Any]] | None:
    """The deltas that lead from version ``start`` to ``end`` (``[]`` when equal), or None."""
    if start == end:
        return []
    for i, delta in enumerate(deltas):
        if delta["previous"] == start:
            chain = [d for d in deltas[i:] if d["version"] <= end]
            return chain if chain and chain[-1]["version"] == end else None
    return None


# ---------------------------------------------------------------------------------------------
# Sync


@dataclass
class SyncResult:
    """What a sync did. ``action``: ``unchanged`` (HTTP 304: the index did not change),
    ``up-to-date`` (the index changed but the store already has its version), ``deltas`` or
    ``snapshot`` (what was fetched)."""

    url: str
    before_version: int
    after_version: int
    action: str
    deltas_applied: int = 0
    downloaded_bytes: int = 0
    resumed: bool = False
    seconds: float = 0.0
    #: Rows of the snapshot taken, and the seconds its import took (0 without a snapshot).
    snapshot_rows: int = 0
    import_seconds: float = 0.0

    def summary(self) -> str:
        """One line for a technician."""
        if self.action == "unchanged":
            what = f"index unchanged, still version {self.after_version}"
        elif self.action == "up-to-date":
            what = f"already at version {self.after_version}"
        else:
            how = (
                f"{self.deltas_applied} delta(s)"
                if self.action == "deltas"
                else "snapshot"
                + (f" + {self.deltas_applied} delta(s)" if self.deltas_applied else "")
            )
            size = f"{self.downloaded_bytes:,} bytes" + (", resumed" if self.resumed else "")
            what = f"version {self.before_version} → {self.after_version} by {how} ({size})"
        return f"synced from {self.url}: {what} in {self.seconds:.1f} s"


class _Throttle:
    """Forwards ``download`` progress at most every 0.1 s (and always the last call)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self._last = 0.0
        self._reported: tuple[int, int | None] | None = None

    def __call__(self, done: int, total: int | None, *, final: bool = False) -> None:
        if self.progress is None or self._reported == (done, total):
            return
        now = time.monotonic()
        if final or now - self._last >= _PROGRESS_EVERY_S:
            self._last = now
            self._reported = (done, total)
            self.progress("download", done, total, 0)


@contextlib.contextmanager
def _sync_lock(downloads: Path, store_path: str) -> Iterator[None]:
    """One sync per store at a time (the daemon's periodic one and a technician's)."""
    with open(downloads / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"another sync of {store_path} is running; try again when it has finished",
                "sync-busy",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Downloader:
    """Fetches files of the export into the downloads directory, resumably, and verifies
    them against the index."""

    def __init__(
        self,
        remote: _Remote,
        directory: Path,
        progress: Progress | None,
        *,
        signed: bool = False,
        max_file_bytes: int = DEFAULT_MAX_FILE_MB << 20,
    ) -> None:
        self.remote = remote
        self.max_file_bytes = max_file_bytes
        #: The index was signed: a mismatch is a tampered file (``tampered-download``).
        self.signed = signed
        self.directory = directory
        self.progress = _Throttle(progress)
        self.downloaded = 0
        self.resumed = False
        #: sha256 of a file downloaded whole, taken as it came (no second read of the file).
        self._hashed: dict[str, str] = {}

    def part(self, name: str) -> Path:
        return self.directory / f"{name}.part"

    def discard(self, name: str) -> None:
        self.part(name).unlink(missing_ok=True)
        (self.directory / f"{name}.part.etag").unlink(missing_ok=True)

    def check_room(self, entries: list[dict[str, Any]]) -> None:
        """Refuse, before writing anything, files over the size limit or more bytes than the
        disk has free; the ``.part`` files of a refused plan are deleted."""
        names = [entry["file"] for entry in entries]
        limit_mb = self.max_file_bytes >> 20
        for entry in entries:
            if entry["size"] > self.max_file_bytes:
                for name in names:
                    self.discard(name)
                raise StoreError(
                    f"{entry['file']} from {self.remote.safe}: the index says "
                    f"{entry['size']:,} bytes, over the limit of {limit_mb:,} MiB "
                    "([store] sync_max_file_mb); nothing was downloaded, nothing changed",
                    "download-too-large",
                )
        have = 0
        for name in names:
            with contextlib.suppress(OSError):
                have += self.part(name).stat().st_size
        need = sum(entry["size"] for entry in entries) - have
        try:
            free = free_bytes(self.directory)
        except OSError as exc:
            raise StoreError(f"cannot tell the free space of {self.directory}: {exc}") from exc
        if need > free:
            for name in names:
                self.discard(name)
            raise StoreError(
                f"{len(entries)} file(s) from {self.remote.safe} need {need:,} bytes, "
                f"{self.directory} has {free:,} free; nothing was downloaded, nothing changed",
                "store-disk-full",
            )

    def fetch(self, entry: dict[str, Any]) -> Path:
        """The verified file of ``entry`` (``file``, ``size``, ``sha256``)."""
        name, size = entry["file"], entry["size"]
        for _ in range(2):
            try:
                # Network failures come out of _receive as StoreError already; an OSError
                # here is the local disk.
                self._hashed.pop(name, None)
                reused = self._receive(name, size)
                got = self.part(name).stat().st_size
                # Hashed on the way in when downloaded whole; read back when resumed.
                digest = self._hashed.pop(name, None) or _file_sha256(self.part(name))
            except OSError as exc:
                full = exc.errno == errno.ENOSPC
                if full:
                    # A full disk is no cut connection: a .part kept to resume would hold the
                    # space the kiosk needs (the next sync checks the free space first).
                    self.discard(name)
                raise StoreError(
                    f"downloading {name} into {self.directory}: {exc.strerror or exc}"
                    + ("; the download was deleted, nothing changed" if full else ""),
                    "store-disk-full" if full else "store-error",
                ) from exc
            if got == size and digest == entry["sha256"]:
                return self.part(name)
            self.discard(name)
            if not reused:
                break
            # Part of the file came from an earlier attempt and the whole does not match:
            # the server may have ignored If-Range. Fetch it whole once before giving up.
        raise StoreError(
            f"{name} from {self.remote.safe}: got {got:,} bytes with sha256 {digest[:16]}…, "
            f"the index says {size:,} bytes with sha256 {entry['sha256'][:16]}…; "
            "the download was deleted"
            + ("; the signed index is authoritative" if self.signed else ""),
            "tampered-download" if self.signed else "bad-download",
        )

    def _receive(self, name: str, size: int) -> bool:
        """Bring ``<name>.part`` to ``size`` bytes (or fail); return True when bytes of an
        earlier attempt were kept."""
        part = self.part(name)
        etag_file = self.directory / f"{name}.part.etag"
        have = part.stat().st_size if part.exists() else 0
        validator = etag_file.read_text().strip() if have and etag_file.exists() else ""
        if have > size or (have and (not validator or validator.startswith("W/"))):
            # Longer than the file, or no strong validator to resume it safely with.
            self.discard(name)
            have = 0
        if have and have == size:
            return True  # complete from an earlier run (stopped before the file was used)
        headers = {"Range": f"bytes={have}-", "If-Range": validator} if have else {}
        accept = (416,) if have else ()
        with self.remote.get(name, headers, accept=accept, limit=size + 1) as response:
            status = response.status
            restart = have and (status == 416 or (status == 206 and _range_start(response) != have))
            if not restart:
                self._take(name, response, have, size)
        if restart:
            # The server cannot continue where we stopped: start over.
            self.discard(name)
            return self._receive(name, size)
        return have > 0 and status == 206

    def _take(self, name: str, response: BlockingStreamResponse, have: int, size: int) -> None:
        """Write the answer's body into the ``.part`` file: appended after ``have`` bytes for a
        ``206``, from the start otherwise."""
        if response.status == 206:
            self.resumed = True
            mode = "ab"
        else:
            have = 0
            mode = "wb"
            etag = response.headers.get("etag", "")
            etag_file = self.directory / f"{name}.part.etag"
            if etag and not etag.startswith("W/"):
                etag_file.write_text(etag + "\n")
            else:
                etag_file.unlink(missing_ok=True)
        # h11 has checked the header, but an unreadable one simply skips this early check:
        # the body is read to at most size + 1 bytes and its length judged below anyway.
        length = read_int(response.headers.get("content-length"), lo=0)
        if length is not None and have + length != size:
            self.discard(name)
            raise StoreError(
                f"{name} from {self.remote.safe}: the server has "
                f"{have + length:,} bytes, the index says {size:,}",
                "tampered-download" if self.signed else "bad-download",
            )
        self._stream(name, response, mode, have, size)

    def _stream(
        self, name: str, response: BlockingStreamResponse, mode: str, have: int, size: int
    ) -> None:
        done = have
        digest = hashlib.sha256() if mode == "wb" else None
        with open(self.part(name), mode) as out:
            while done <= size:  # one byte more than expected is enough to call it wrong
                with self.remote.failures(name):
                    try:
                        block = response.read(min(_CHUNK, size + 1 - done))
                    except HTTPBodyCut:
                        block = b""  # the connection ended early: said below, with how far
                if not block:
                    break
                out.write(block)
                if digest is not None:
                    digest.update(block)
                done += len(block)
                self.downloaded += len(block)
                self.progress(done, size)
            self.progress(done, size, final=True)
        if done < size:
            raise self.remote.failure(
                name, f"connection closed after {done:,} of {size:,} bytes (kept for resuming)"
            )
        if digest is not None:
            self._hashed[name] = digest.hexdigest()


def _range_start(response: BlockingStreamResponse) -> int | None:
    """Where a ``206`` answer's range starts; None when its ``Content-Range`` is missing or
    unreadable (5,000 digits, ``²``), which starts the download over."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    return read_int(match.group(1), lo=0) if match else None


@contextlib.contextmanager
def _discarding_on_refusal(fetcher: _Downloader, name: str) -> Iterator[None]:
    """Delete the download of ``name`` when its content is refused (bad rows, a line over
    1 MiB, a full disk): a refused file is not kept to be refused again. A busy store is no
    verdict on the file, so it is kept for the next try."""
    try:
        yield
    except StoreError as exc:
        if exc.reason not in ("store-busy", "sync-busy"):
            fetcher.discard(name)
        raise


def free_bytes(directory: Path) -> int:
    """Bytes free for the sync's downloads (tests replace it to play a full disk)."""
    return shutil.disk_usage(directory).free


def _clean_downloads(directory: Path, keep: set[str]) -> None:
    """Remove downloads of files the current index no longer names (older versions)."""
    for path in directory.iterdir():
        base = path.name.removesuffix(".etag").removesuffix(".part")
        if path.name != ".lock" and base not in keep:
            with contextlib.suppress(OSError):
                path.unlink()


def sync(
    store: Store,
    url: str,
    *,
    progress: Progress | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    allow_rollback: bool = False,
    proxy: ProxySettings | None = None,
    public_keys: tuple[str, ...] = (),
    allow_unsigned: bool = True,
    max_file_mb: int = DEFAULT_MAX_FILE_MB,
) -> SyncResult:
    """Bring ``store`` to the version published at ``url`` (an export directory on any static
    HTTP(S) server); see the module docstring for the steps.

    :param progress: ``progress(phase, done_bytes, total_bytes, rows)``: ``download`` while a
        file is fetched, then the import's own phases.
    :param timeout: seconds to wait for a connection or for any single read.
    :param allow_rollback: accept an index whose version is *below* the store's (the master
        went back to an older list); by default that is refused with ``stale-snapshot``.
    :param proxy: the HTTP proxy to go through (:class:`~markd.proxy.ProxySettings`, which
        also decide what goes direct); None: no proxy, whatever the environment says. A
        proxy's failure (407, a refused tunnel, no connection) is a ``sync-failed`` naming
        the proxy, never its credentials.
    :param public_keys: ``ed25519:BASE64`` keys (``[store] sync_public_keys``). When given,
        the index must be signed by one of them (``unsigned-index``, ``unknown-key``,
        ``bad-signature`` otherwise) and every file must match the signed size and sha256
        (``tampered-download``); all of it is checked, every file downloaded and verified,
        before the store changes at all. Versions (and so the rollback check) come only
        from the signed index.
    :param allow_unsigned: without ``public_keys``, whether a sync over plain ``http://`` is
        allowed (anyone on the path could rewrite the list); refused with ``unsigned-sync``
        otherwise. markctl and the daemon pass ``[store] sync_allow_unsigned`` (default
        false); HTTPS without keys is allowed (the server is trusted, ``config check`` warns).
    :param max_file_mb: the largest file taken (``[store] sync_max_file_mb``), in MiB; a
        larger one in the index is refused (``download-too-large``) before any download.
    """
    started = time.monotonic()
    if store.readonly:
        raise StoreError(f"store {store.path} is open read-only", "store-readonly")
    remote = _Remote(url, timeout, proxy)
    safe = remote.safe
    for key in public_keys:
        if (problem := signing.public_key_problem(key)) is not None:
            raise StoreError(f"sync_public_keys: {problem}", "bad-key")
    if not public_keys and not allow_unsigned and safe.lower().startswith("http://"):
        raise StoreError(
            f"refusing an unsigned sync over plain http:// from {safe}: anyone on the path "
            "could change the blocklist. Sign the export (markctl store export --sign-key) and "
            "set [store] sync_public_keys, use https://, or accept the risk with "
            "[store] sync_allow_unsigned = true; nothing changed",
            "unsigned-sync",
        )
    remote.no_downgrade = not public_keys and not allow_unsigned
    downloads = Path(store.path) / DOWNLOADS_DIR
    try:
        ownership.writable_directory(downloads, store.path)
    except OSError as exc:
        raise StoreError(f"cannot create {downloads}: {exc.strerror or exc}") from exc
    with remote, _sync_lock(downloads, store.path):
        info = store.info()
        before = info.version

        def result(action: str, **fields: Any) -> SyncResult:
            return SyncResult(
                url=safe,
                before_version=before,
                after_version=store.info().version,
                action=action,
                seconds=time.monotonic() - started,
                **fields,
            )

        # The stored ETag is only a valid shortcut when the last change of the list was a
        # sync from this very URL (a local import or delta sets another source).
        # With keys, only for a list a signed sync delivered (one synced before the keys were
        # configured must be replaced by signed data, not confirmed by an unchanged index).
        headers = {"Cache-Control": "no-cache"}
        trusted = info.source == safe and (info.signed or not public_keys)
        if info.sync_etag and info.sync_url == safe and trusted:
            headers["If-None-Match"] = info.sync_etag
        with remote.get(INDEX_NAME, headers, accept=(304,), limit=MAX_INDEX_BYTES + 1) as response:
            if response.status == 304:
                # Nothing new on the server: the list is as current as it was, no more.
                store.touch_sync(url=safe, confirm=False)
                return result("unchanged")
            etag = response.headers.get("etag", "")
            with remote.failures(INDEX_NAME):
                raw = _read_up_to(response, MAX_INDEX_BYTES + 1)
        if len(raw) > MAX_INDEX_BYTES:
            raise _bad_index(safe, f"larger than {MAX_INDEX_BYTES >> 20} MiB")
        data = _load_index(raw, safe)
        if public_keys:
            # Before anything else is read from it: only signed data decides what happens.
            signing.verify_index(data, public_keys, f"{safe}/{INDEX_NAME}")
        index = _index_from(data, safe)
        target = index["version"]
        as_of = index["list_synced_at"]
        # Versions only compare between lists of one origin: a list imported by hand or synced
        # from another URL is replaced by this server's snapshot, whatever its number. With
        # keys, so is a list no signed sync delivered (one synced unsigned before the keys were
        # configured may carry a forged version): only signed versions are ever compared.
        foreign = not trusted
        signed_version: int | None = None
        if public_keys:
            if target < info.signed_version and not allow_rollback:
                raise StoreError(
                    f"{safe} offers signed version {target}, but {store.path} has taken signed "
                    f"version {info.signed_version}: refusing to go back (an old index "
                    "replayed, or a rollback on the master?); nothing changed",
                    "stale-snapshot",
                )
            signed_version = target if allow_rollback else max(target, info.signed_version)

        def confirmed() -> None:
            """The store holds the index's list: record the sync (only if no other write
            changed the version meanwhile; Store.touch_sync)."""
            store.touch_sync(
                etag=etag,
                url=safe,
                source=safe,
                synced_at=as_of,
                signed_version=signed_version,
                expect_version=target,
            )

        if target == 0:
            # The master has never loaded a list: nothing to take, nothing confirmed.
            store.touch_sync(url=safe, confirm=False)
            return result("up-to-date")
        if target == before and not foreign:
            _clean_downloads(downloads, set())
            confirmed()
            return result("up-to-date")
        if target < before and not allow_rollback and not foreign:
            raise StoreError(
                f"{safe} offers version {target}, but {store.path} is at version {before}: "
                "refusing to go back (a rollback on the master?); nothing changed",
                "stale-snapshot",
            )
        chain = _chain(index["deltas"], before, target) if target > before and not foreign else None
        snapshot = None
        if chain is None:  # too far behind (or a rollback): the snapshot, then its deltas
            snapshot = index["snapshot"]
            chain = _chain(index["deltas"], snapshot["version"], target) or []
        _clean_downloads(
            downloads, {d["file"] for d in chain} | ({snapshot["file"]} if snapshot else set())
        )

        fetcher = _Downloader(
            remote,
            downloads,
            progress,
            signed=bool(public_keys),
            max_file_bytes=max_file_mb << 20,
        )
        fetcher.check_room(([snapshot] if snapshot is not None else []) + chain)
        # Every file is downloaded and verified before the store changes at all: a bad or
        # tampered delta must not leave the kiosk half-way (a snapshot in, its deltas not).
        snapshot_path = fetcher.fetch(snapshot) if snapshot is not None else None
        deltas = []
        for entry in chain:
            delta_path = fetcher.fetch(entry)
            with _discarding_on_refusal(fetcher, entry["file"]):
                delta = read_delta(delta_path)
            if (delta["version"], delta["previous"]) != (entry["version"], entry["previous"]):
                fetcher.discard(entry["file"])
                raise StoreError(
                    f"{entry['file']} from {safe} is delta {delta['previous']}→"
                    f"{delta['version']}, the index says {entry['previous']}→{entry['version']}",
                    "bad-download",
                )
            deltas.append((entry, delta))
        imported = None
        if snapshot is not None and snapshot_path is not None:
            with _discarding_on_refusal(fetcher, snapshot["file"]):
                imported = import_snapshot(
                    store,
                    snapshot_path,
                    snapshot["format"],
                    version=snapshot["version"],
                    source=safe,
                    # Not newer than ours only when the deltas after it bring the store past
                    # its version, or when a rollback was explicitly allowed.
                    force=foreign or snapshot["version"] <= before,
                    # An empty list is taken only when the master says it exported one.
                    allow_empty=snapshot["rows"] == 0,
                    synced_at=as_of,
                    progress=progress,
                )
            fetcher.discard(snapshot["file"])
        for entry, delta in deltas:
            apply_delta(store, delta, synced_at=as_of)
            fetcher.discard(entry["file"])
        confirmed()
        return result(
            "deltas" if snapshot is None else "snapshot",
            deltas_applied=len(chain),
            downloaded_bytes=fetcher.downloaded,
            resumed=fetcher.resumed,
            snapshot_rows=imported.rows if imported is not None else 0,
            import_seconds=imported.seconds if imported is not None else 0.0,
        )
