"""``markctl store …``: import, delta, stats, lookup, block/unblock, export, sync, keygen.

Every subcommand opens the store at ``[store] path`` from the configuration (``--config``,
default ``/etc/markd/markd.toml``) unless ``--store DIR`` names another directory.

The commands that write the store (import, delta, block, unblock, sync), run as root on a
store that belongs to another user (the service's ``markd``), become that user before opening
it, so the files they create belong to the service; when the system refuses the switch they
refuse too, giving the ``runuser`` command to use, and so they do on a store path through a
link another user could have placed (:mod:`markd.store.ownership`).

Exit status: 0 done; 2 the input was refused (bad rows or file, a delta out of order, an older
snapshot, a bad key, bad configuration) or the store's files need a person (``store-access``,
``store-owner``, ``store-symlink``: the ownership to fix, the command to use, or a link on
the store's path that another user could have placed); 1 the store or the network failed
(cannot open, disk full, server unreachable, hash mismatch); 3 a sync refused as untrusted
(an unsigned index where keys are configured, a bad signature, an unknown key, a file that
does not match the signed index, an unsigned sync over plain http://): nothing changed, and
a technician must look (docs/store.md, "Fleet keys").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from typing import Any, TextIO

from markd import config as config_module
from markd.errors import ConfigError, StoreError
from markd.store import Store
from markd.text import printable, printable_json


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help="configuration file (for [store])")
    common.add_argument("--store", metavar="DIR", help="store directory (overrides [store] path)")
    common.add_argument("--json", action="store_true", help="print the result as JSON")

    store = sub.add_parser("store", help="the local LMDB store (blocklist, sold journal, cache)")
    # With --json a failure is a JSON answer too ({"error": {"reason", "message"}} on stdout,
    # printed by markctl's main), so a script reads one object either way.
    store.set_defaults(json_errors=True)
    cmds = store.add_subparsers(dest="store_command", metavar="SUBCOMMAND")
    cmds.required = True

    p = cmds.add_parser("import", parents=[common], help="replace the blocklist with a snapshot")
    p.add_argument("file")
    p.add_argument(
        "--format",
        choices=("text", "csv", "jsonl", "markd"),
        help="default: from the name (.mbl: markd, .csv, .jsonl; anything else: text)",
    )
    p.add_argument("--version", type=int, help="snapshot version (default: current + 1)")
    p.add_argument("--source", help="where the list comes from (default: the file name)")
    p.add_argument("--reason", default="blocklist", help="reason for rows that give none")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad rows (counted) instead of refusing the whole file",
    )
    p.add_argument("--force", action="store_true", help="accept a version not newer than now")
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept a file with no row (empties the blocklist); refused by default",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "json", "none"),
        default="auto",
        help="progress on stderr: a bar on a terminal (auto), JSON lines, or nothing",
    )
    p.set_defaults(func=_import)

    p = cmds.add_parser("delta", parents=[common], help="apply a delta (JSON lines)")
    p.add_argument("file")
    p.set_defaults(func=_delta)

    p = cmds.add_parser("stats", parents=[common], help="counts, version, age, size on disk")
    p.set_defaults(func=_stats)

    p = cmds.add_parser("lookup", parents=[common], help="what the store knows about a code")
    p.add_argument("code", help="a КИ, a full marking code (\\u001d or <GS> for GS) or a GTIN")
    p.add_argument("--series", help="also check this series of the GTIN")
    p.set_defaults(func=_lookup)

    p = cmds.add_parser("block", parents=[common], help="block one КИ, GTIN or series by hand")
    p.add_argument("key", help="a КИ or a GTIN")
    p.add_argument("--series", help="block only this series of the GTIN")
    p.add_argument("--reason", required=True)
    p.add_argument("--source", default="manual")
    p.set_defaults(func=_block)

    p = cmds.add_parser("unblock", parents=[common], help="remove one entry added by hand")
    p.add_argument("key")
    p.add_argument("--series")
    p.set_defaults(func=_unblock)

    p = cmds.add_parser("export", parents=[common], help="write snapshot + deltas + index.json")
    p.add_argument("--to", required=True, metavar="DIR", help="directory a file server serves")
    p.add_argument(
        "--sign-key",
        metavar="FILE",
        help="sign the index with this private key (from markctl store keygen)",
    )
    p.add_argument(
        "--format",
        choices=("markd", "csv"),
        default="markd",
        help="snapshot format: markd (default; fast to import) or csv (also read by kiosks "
        "running a markd from before the markd format)",
    )
    p.set_defaults(func=_export)

    p = cmds.add_parser(
        "keygen", parents=[common], help="make a fleet signing key; print its public key"
    )
    p.add_argument(
        "--out", required=True, metavar="FILE", help="private key file to create (mode 0600)"
    )
    p.set_defaults(func=_keygen)

    p = cmds.add_parser("sync", parents=[common], help="fetch the blocklist from a file server")
    p.add_argument(
        "url",
        nargs="?",
        help="base URL of an export (index.json is fetched from it); default $MARKD_SYNC_URL, "
        "which keeps credentials in the URL off the command line",
    )
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto")
    p.add_argument(
        "--timeout", type=_seconds, default=30.0, help="seconds per HTTP request (0.1 to 3600)"
    )
    p.add_argument(
        "--allow-rollback",
        action="store_true",
        help="accept a server whose version is older than the store's",
    )
    p.add_argument(
        "--proxy",
        metavar="PROXY",
        help="online, direct, env or http://HOST:PORT (default: [store] sync_proxy); "
        "credentials come from the proxy-auth credential, never from here",
    )
    p.add_argument(
        "--public-key",
        action="append",
        metavar="ed25519:BASE64",
        help="accept an index signed by this key (repeatable); replaces [store] sync_public_keys",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="without public keys, allow a sync over plain http:// ([store] sync_allow_unsigned)",
    )
    p.add_argument(
        "--max-file-mb",
        type=_positive_mb,
        metavar="MIB",
        help="refuse a file the index lists larger than this (default: [store] sync_max_file_mb)",
    )
    p.set_defaults(func=_sync)


# ---------------------------------------------------------------------------------------------
# plumbing


def _positive_mb(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of MiB, not {text!r}") from None
    if not 1 <= value <= 1 << 20:
        raise argparse.ArgumentTypeError(f"from 1 to {1 << 20} MiB, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text} is outside 0.1 … 3600 seconds")
    return value


def _sync_proxy(args: argparse.Namespace) -> Any:
    """The sync's proxy: ``--proxy``, else ``[store] sync_proxy`` (domain.md §3.8)."""
    from dataclasses import replace

    from markd.service.wiring import sync_proxy_settings

    cfg = config_module.load(args.config)
    if args.proxy is not None:
        problem = config_module.sync_proxy_problem(args.proxy)
        if problem is not None:
            raise ConfigError(f"--proxy: {problem}")
        cfg = replace(cfg, store=replace(cfg.store, sync_proxy=args.proxy))
    settings = sync_proxy_settings(cfg)
    ignored = [
        name
        for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY")
        if os.environ.get(name, "").strip()
    ]
    if ignored and cfg.store.sync_proxy != "env":
        print(
            f"markctl: note: ${ignored[0]} is set but not followed; the sync uses "
            f"[store] sync_proxy = {cfg.store.sync_proxy!r} (--proxy env follows it)",
            file=sys.stderr,
        )
    return settings


def _open(args: argparse.Namespace, *, readonly: bool) -> Store:
    cfg = config_module.load(args.config).store
    if args.store:
        from dataclasses import replace

        cfg = replace(cfg, path=args.store)
    if not readonly:
        _write_as_owner(args, cfg.path)
    return Store.from_config(cfg, readonly=readonly)


def _write_as_owner(args: argparse.Namespace, store_path: str) -> None:
    """Run as root on a store that belongs to the service: become its owner before the store
    is opened, so every file written belongs to the service (docs/store.md, "Who owns the
    store"). Everything read as root (the configuration, secrets) was read before this."""
    from markd.store.ownership import act_as_owner

    command_line = getattr(args, "command_line", None) or sys.argv[1:]
    owner = act_as_owner(store_path, command_line)
    source = getattr(args, "file", None)
    if owner is not None and source is not None and not os.access(source, os.R_OK):
        raise StoreError(
            f"cannot read {source} as {owner.user}: markctl writes the store as its owner "
            f"{owner.user}, who may not read this file; copy it where {owner.user} can "
            f"(install -m 0644 {source} /var/tmp/) and give that copy",
            "bad-file",
        )


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        print(printable_json(data, ensure_ascii=False, default=str))
    else:
        print(text)


class ProgressPrinter:
    """Progress on stderr: a redrawn bar on a terminal, or one JSON object per line."""

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "none"
        self.mode = mode
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int | None, rows: int) -> None:
        if self.mode == "json":
            record = {"phase": phase, "done": done, "total": total, "rows": rows}
            print(printable_json(record), file=self.stream, flush=True)
            return
        if self.mode != "bar":
            return
        now = time.monotonic()
        if now - self._last < 0.2 and phase == "read":
            return
        self._last = now
        rate = rows / max(now - self.started, 1e-6)
        if total:
            filled = int(30 * min(done / total, 1.0))
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {100 * done / total:5.1f}%"
        else:
            bar = f"[{phase}]"
        # The bar's own \r, not data: past markctl's PrintableWriter as it is.
        write = getattr(self.stream, "write_raw", self.stream.write)
        write(f"\r{bar} {rows:,} rows {rate:,.0f}/s ")
        self.stream.flush()

    def done(self) -> None:
        if self.mode == "bar":
            self.stream.write("\n")
            self.stream.flush()


def _size(count: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never synced"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.0f} min"


# ---------------------------------------------------------------------------------------------
# commands


def _import(args: argparse.Namespace) -> int:
    from markd.store.importer import import_snapshot

    progress = ProgressPrinter(args.progress)
    with _open(args, readonly=False) as store:
        try:
            result = import_snapshot(
                store,
                args.file,
                args.format,
                version=args.version,
                source=args.source,
                reason=args.reason,
                skip_bad=args.skip_bad,
                force=args.force,
                allow_empty=args.allow_empty,
                progress=progress,
            )
        finally:
            progress.done()
    rate = result.rows / max(result.seconds, 1e-9)
    text = (
        f"imported {args.file}: version {result.version}, {result.rows:,} rows "
        f"({result.stored['ki']:,} КИ, {result.stored['gtin']:,} GTIN, "
        f"{result.stored['series']:,} series) in {result.seconds:.1f} s ({rate:,.0f} rows/s)"
        + ("" if result.sorted_input else ", input was unsorted")
    )
    if result.skipped:
        text += f"\nskipped {result.skipped} bad row(s):\n" + "\n".join(
            f"  {p}" for p in result.problems
        )
    _emit(args, asdict(result), text)
    return 0


def _delta(args: argparse.Namespace) -> int:
    from markd.store.importer import apply_delta

    with _open(args, readonly=False) as store:
        result = apply_delta(store, args.file)
    _emit(
        args,
        asdict(result),
        f"applied delta {result.version}: {result.added} added, {result.removed} removed, "
        f"{result.unchanged} unchanged",
    )
    return 0


def _stats(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as store:
        stats = store.stats()
    blocked = stats["blocked"]
    sold = stats["sold"] if stats["sold"] is not None else "(not counted)"
    cached = stats["cached_verdicts"] if stats["cached_verdicts"] is not None else "-"
    size, map_mib = _size(stats["size_bytes"]), stats["map_size_bytes"] >> 20
    lines = [
        f"store      {stats['path']}",
        f"version    {stats['version']} from {printable(stats['source']) or '-'}"
        + (" (signed)" if stats["signed"] else ""),
        f"age        {_age(stats['age_s'])}"
        + (f" (STALE: older than {stats['max_age_s'] / 3600:.0f} h)" if stats["stale"] else ""),
        f"blocked    {blocked['ki']:,} КИ, {blocked['gtin']:,} GTIN, {blocked['series']:,} series",
        f"sold here  {sold}",
        f"cached     {cached} online verdicts",
        f"deltas     {stats['deltas_kept']} kept for export",
        f"signed     highest signed version taken: {stats['signed_version'] or 'none'}",
        f"on disk    {size} (map {map_mib} MiB)",
    ]
    _emit(args, stats, "\n".join(lines))
    return 0


def _lookup(args: argparse.Namespace) -> int:
    with _open(args, readonly=True) as store:
        found = store.lookup(args.code, series=args.series)
    data = {
        "blocked": found.blocked.as_dict() if found.blocked else None,
        "sold": found.sold._asdict() if found.sold else None,
        "cached": found.cached._asdict() if found.cached else None,
        "deny_reason": found.deny_reason,
        "blocklist_version": found.blocklist_version,
        "blocklist_age_s": found.blocklist_age_s,
        "stale": found.stale,
    }
    lines = []
    if found.blocked:
        b = found.blocked
        lines.append(
            f"BLOCKED by {b.kind} {b.key}: {printable(b.reason)} "
            f"(source {printable(b.source)}, since "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(b.since))} UTC)"
        )
    if found.sold:
        lines.append(
            f"SOLD HERE on receipt {found.sold.receipt} at "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(found.sold.at))} UTC"
        )
    if found.cached:
        lines.append(
            f"cached online verdict ({'fresh' if found.cached.fresh else 'expired'}): "
            f"{printable_json(found.cached.facts, ensure_ascii=False)}"
        )
    if not lines:
        lines.append("nothing known: not blocked, not sold here, no cached verdict")
    lines.append(
        f"blocklist version {found.blocklist_version}, {_age(found.blocklist_age_s)}"
        + (" (stale: it can deny, never vouch)" if found.stale else "")
    )
    _emit(args, data, "\n".join(lines))
    return 0


def _block(args: argparse.Namespace) -> int:
    with _open(args, readonly=False) as store:
        store.block(args.key, args.reason, args.source, series=args.series)
    _emit(args, {"blocked": args.key, "series": args.series}, f"blocked {args.key}")
    return 0


def _unblock(args: argparse.Namespace) -> int:
    with _open(args, readonly=False) as store:
        removed = store.unblock(args.key, series=args.series)
    _emit(args, {"removed": removed}, "removed" if removed else "was not blocked")
    return 0


def _export(args: argparse.Namespace) -> int:
    from markd.store import fleet

    with _open(args, readonly=True) as store:
        index = fleet.export(store, args.to, sign_key=args.sign_key, fmt=args.format)
    signed = index.get("signature")
    _emit(
        args,
        index,
        f"exported version {index['version']} to {args.to}: snapshot "
        f"{index['snapshot']['file']} and {len(index['deltas'])} delta(s), "
        + (f"signed by {signed['key']}" if signed else "unsigned"),
    )
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from markd.store import signing

    public = signing.generate_key(args.out)
    _emit(
        args,
        {"private_key_file": args.out, "public_key": public},
        f"{public}\n(private key in {args.out}; keep it on the master only. Put the public "
        "key in [store] sync_public_keys on every kiosk.)",
    )
    return 0


def _sync(args: argparse.Namespace) -> int:
    from markd.store import fleet

    url = args.url or os.environ.get("MARKD_SYNC_URL", "")
    if not url:
        raise StoreError("no URL: give one or set MARKD_SYNC_URL", "bad-url")
    proxy = _sync_proxy(args)
    store_config = config_module.load(args.config).store
    progress = ProgressPrinter(args.progress)
    with _open(args, readonly=False) as store:
        try:
            result = fleet.sync(
                store,
                url,
                progress=progress,
                timeout=args.timeout,
                allow_rollback=args.allow_rollback,
                proxy=proxy,
                public_keys=(
                    tuple(args.public_key) if args.public_key else store_config.sync_public_keys
                ),
                allow_unsigned=args.allow_unsigned or store_config.sync_allow_unsigned,
                max_file_mb=args.max_file_mb or store_config.sync_max_file_mb,
            )
        finally:
            progress.done()
    _emit(args, asdict(result), result.summary())
    return 0
