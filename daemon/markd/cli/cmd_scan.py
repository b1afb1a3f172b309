"""``markctl scan-test`` and ``markctl decode``: what a scanner sends and what markd makes of it.

``markctl scan-test [SCANNER] [--count N] [--timeout S] [--save FILE] [--config PATH]``
    Opens the scanner (a name from the configuration's ``[scanners]``, or a URL; without
    SCANNER the only configured one) with the daemon's own backend and shows, for each scan,
    the raw reports or bytes, the decoded text, whether GS arrived and how, what the parser
    makes of it, and advice. Stop markd first: it holds the scanner. Ends after N scans
    (default 1) or S seconds (default 60). ``--save FILE`` writes everything read as a
    capture for ``markctl decode``. Exit status 0 when N scans arrived, 1 otherwise, 2 for a
    bad SCANNER or configuration. The codes are printed to the terminal (that is the point),
    never to the journal.

``markctl decode (--hid-kbd FILE | --hid-pos FILE | --serial FILE) [--escape] ...``
    Decodes a capture (HID: one report per line in hex, or ``usbhid-dump`` output; serial: the
    raw bytes; ``-`` reads stdin) with the daemon's decoder and framer, and prints the framed
    codes, one per line and nothing else, GS as the raw byte or, with ``--escape``, as the text
    ``\\u001d``. Problems (dropped floods, unreadable reports, a code without its terminator at
    the end) go to stderr. Exit status 0, or 2 when the file is not a capture, 1 when it cannot
    be read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from typing import Any, BinaryIO, TextIO

from markd.codes import CodeError, CodesOptions, parse
from markd.errors import ScannerError
from markd.scanners import (
    RawRead,
    Scan,
    ScannerEvent,
    ScannerState,
    ScannerURL,
    ScanOverflow,
    open_scanner,
    parse_url,
)
from markd.scanners.base import DEFAULT_GAP_MS
from markd.scanners.capture import CaptureError, read_hid_capture, write_hid_capture
from markd.scanners.framing import DEFAULT_MAX_LENGTH, TERMINATORS
from markd.scanners.hid_keyboard import DEFAULT_GS_KEY, GS_KEY_NAMES
from markd.scanners.replay import Decoded, decode_hid_keyboard, decode_hid_pos, decode_serial
from markd.text import printable

GS = 0x1D

MODES = {
    "serial": 'serial (CDC-ACM "USB-COM" or RS-232): bytes arrive as the scanner sends them, '
    "GS intact",
    "hid-kbd": "USB HID keyboard, read with pyusb (layout-independent); GS arrives only if the "
    "scanner types it as Ctrl+], Alt+0029 or a function key",
    "hid-pos": "USB HID-POS (usage page 0x8C): binary-safe, GS intact, symbology reported",
    "virtual": "virtual (fed in-process; nothing to scan here)",
}

GS_METHOD_TEXT = {"ctrl+]": "Ctrl+]", "alt+0029": "Alt+0029 (keypad)"}

ADVICE_GS_MISSING = (
    "GS missing: switch the scanner to HID-POS or serial mode, or enable Alt-code output "
    "(Alt+0029), Ctrl+] or F8 for GS in its setup"
)

#: Raw lines shown per scan before the rest is summarised.
MAX_RAW_LINES = 48


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan-test",
        help="show what a scanner sends (reports, text, GS) with advice",
        description="Open a scanner as the daemon would and show, for each scan, the raw "
        "reports or bytes, the decoded text, whether GS arrived and how, and advice. "
        "Stop markd first.",
    )
    p.add_argument(
        "scanner",
        nargs="?",
        metavar="SCANNER",
        help="a name from [scanners] or a scanner URL (default: the only configured scanner)",
    )
    p.add_argument("--config", metavar="PATH", help="configuration file to take names from")
    p.add_argument("--count", type=int, default=1, metavar="N", help="stop after N scans")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="stop after S seconds")
    p.add_argument("--save", metavar="FILE", help="write everything read as a capture file")
    p.set_defaults(func=run_scan_test)

    d = sub.add_parser(
        "decode",
        help="decode a scanner capture into codes, as the daemon would",
        description="Decode a capture with the daemon's decoder and framer; print one framed "
        "code per line on stdout and nothing else.",
    )
    source = d.add_mutually_exclusive_group(required=True)
    source.add_argument("--hid-kbd", metavar="FILE", help="keyboard reports, hex, one per line")
    source.add_argument("--hid-pos", metavar="FILE", help="HID-POS reports, hex, one per line")
    source.add_argument("--serial", metavar="FILE", help="raw serial bytes")
    d.add_argument("--escape", action="store_true", help="print GS as the text \\u001d")
    d.add_argument(
        "--terminator",
        choices=list(TERMINATORS),
        default="cr",
        help="the scanner's suffix (default cr)",
    )
    d.add_argument(
        "--gs-key",
        choices=GS_KEY_NAMES,
        default=DEFAULT_GS_KEY,
        help=f"the key a keyboard-mode scanner presses for GS (default {DEFAULT_GS_KEY})",
    )
    d.add_argument("--gap-ms", type=int, default=DEFAULT_GAP_MS, metavar="MS")
    d.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, metavar="N")
    d.set_defaults(func=run_decode)


# --------------------------------------------------------------------------------------------
# decode


def escape(data: bytes) -> bytes:
    """Control characters as ``\\u00XX`` text (GS becomes ``\\u001d``, which parse() reads)."""
    out = bytearray()
    for byte in data:
        if byte < 0x20 or byte == 0x7F:
            out += f"\\u{byte:04x}".encode("ascii")
        else:
            out.append(byte)
    return bytes(out)


def _shown(data: bytes) -> bytes:
    """A decoded code for a terminal: C0 controls as ``\\u001d`` (:func:`escape`), then every
    other control character (C1, bidi) and any byte that is not UTF-8 escaped too."""
    text = escape(data).decode("utf-8", errors="backslashreplace")
    return printable(text).encode("utf-8")


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as handle:
        return handle.read()


def run_decode(
    args: argparse.Namespace, stdout: BinaryIO | None = None, stderr: TextIO | None = None
) -> int:
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr
    path = args.hid_kbd or args.hid_pos or args.serial
    if not 1 <= args.max_length <= 65536 or not 5 <= args.gap_ms <= 5000:
        print("markctl: --max-length must be 1..65536 and --gap-ms 5..5000", file=err)
        return 2
    try:
        raw = _read_input(path)
    except OSError as exc:
        print(f"markctl: cannot read {path}: {exc.strerror or exc}", file=err)
        return 1
    options: dict[str, Any] = {
        "terminator": args.terminator,
        "max_length": args.max_length,
        "gap_ms": args.gap_ms,
    }
    try:
        if args.serial is not None:
            results = decode_serial(raw, **options)
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                print(f"markctl: {path}: not a text capture (use --serial for raw bytes)", file=err)
                return 2
            capture = read_hid_capture(text)
            if args.hid_kbd is not None:
                results = decode_hid_keyboard(capture, gs_key=args.gs_key, **options)
            else:
                results = decode_hid_pos(capture, **options)
    except (CaptureError, ScannerError) as exc:
        print(f"markctl: {path}: {exc}", file=err)
        return 2

    # Raw codes (GS as the byte) only into a pipe or a file: on a terminal they are escaped,
    # like everything else markctl shows (markd.text.printable).
    escaped = args.escape or out.isatty()
    for item in results:
        if item.kind == "code":
            out.write((_shown(item.data) if escaped else item.data) + b"\n")
        else:
            print(f"markctl: {path}: {_problem_text(item)}", file=err)
    out.flush()
    return 0


def _problem_text(item: Decoded) -> str:
    where = f"line {item.line}: " if item.line else ""
    if item.kind == "dropped":
        return f"{where}dropped {item.detail} without a terminator (a flood, or wrong --terminator)"
    if item.kind == "bad-report":
        return f"{where}unreadable report: {item.detail}"
    if item.kind == "unplug":
        return f"{where}device unplugged, {item.detail} dropped"
    if item.kind == "incomplete":
        return f"{item.detail} at the end without a terminator (try --terminator none)"
    return f"{where}{item.kind} {item.detail}"


# --------------------------------------------------------------------------------------------
# scan-test


def _resolve(
    spec: str | None, config_path: str | None
) -> tuple[str, ScannerURL, CodesOptions | None]:
    """(name, URL, parser options) for a SCANNER argument: a URL, or a name from the
    configuration (whose ``[codes]`` settings then judge the scans, as in the daemon)."""
    from markd import config as markd_config

    if spec is not None and "://" in spec:
        options = markd_config.load(config_path).codes_options() if config_path else None
        return "scan-test", parse_url(spec), options
    cfg = markd_config.load(config_path)
    names = sorted(cfg.scanners)
    if spec is None:
        if len(names) != 1:
            raise ScannerError(
                f"{len(names)} scanners are configured ({', '.join(names) or 'none'}); "
                "name one, or give a URL",
                "unknown-scanner",
            )
        spec = names[0]
    if spec not in cfg.scanners:
        raise ScannerError(
            f"no scanner {spec!r} in the configuration (configured: {', '.join(names)}); "
            "give a name or a URL such as hid-kbd://0c2e:0b61",
            "unknown-scanner",
        )
    return spec, parse_url(cfg.scanners[spec].url), cfg.codes_options()


def show_text(data: bytes) -> str:
    """The decoded text for a terminal: GS as ``<GS>``, other controls as ``\\xNN``."""
    parts = []
    for byte in data:
        if byte == GS:
            parts.append("<GS>")
        elif 0x20 <= byte < 0x7F:
            parts.append(chr(byte))
        else:
            parts.append(f"\\x{byte:02x}")
    return "".join(parts)


class _Report:
    """Collects what the reader thread shows the monitor; the asyncio side takes it per scan."""

    def __init__(self) -> None:
        self.pending: list[RawRead] = []
        self.all: list[RawRead] = []

    def __call__(self, read: RawRead) -> None:
        # list.append is atomic; the asyncio side only pops from the front.
        self.pending.append(read)
        self.all.append(read)

    def take_until(self, moment: float) -> list[RawRead]:
        taken = []
        while self.pending and self.pending[0].at <= moment:
            taken.append(self.pending.pop(0))
        return taken


def _raw_lines(url: ScannerURL, reads: list[RawRead]) -> list[str]:
    if url.scheme in ("hid-kbd", "hid-pos"):
        lines = [r.raw.hex(" ") for r in reads]
    else:
        data = b"".join(r.raw for r in reads)
        lines = [data[i : i + 16].hex(" ") for i in range(0, len(data), 16)]
    if len(lines) > MAX_RAW_LINES:
        hidden = len(lines) - MAX_RAW_LINES
        lines = lines[:MAX_RAW_LINES] + [f"… {hidden} more"]
    return lines


def describe_scan(
    url: ScannerURL, scan: Scan, reads: list[RawRead], options: CodesOptions | None = None
) -> list[str]:
    """The lines scan-test prints for one scan, advice last."""
    unit = "reports" if url.scheme in ("hid-kbd", "hid-pos") else "bytes"
    count = len(reads) if unit == "reports" else sum(len(r.raw) for r in reads)
    lines = [f"raw       {count} {unit}" + (":" if reads else " (same read as before)")]
    lines += [f"  {line}" for line in _raw_lines(url, reads)]
    lines.append(f"text      {show_text(scan.data)}")
    lines.append(f"length    {len(scan.data)} bytes")
    if scan.symbology:
        lines.append(f"symbology {scan.symbology}")

    methods: Counter[str] = Counter()
    for read in reads:
        for note in read.notes:
            if note.startswith("gs:"):
                methods[note[3:]] += 1
    gs_count = scan.data.count(bytes([GS]))
    advice: list[str] = []
    if gs_count and methods:
        how = ", ".join(f"{GS_METHOD_TEXT.get(m, m.upper())} ×{n}" for m, n in methods.items())
        lines.append(f"GS        {gs_count}, typed as {how}")
    elif gs_count:
        lines.append(f"GS        {gs_count}, as the byte 0x1D")
    else:
        lines.append("GS        none arrived")

    try:
        code = parse(scan.data, options)
    except CodeError as exc:
        lines.append(f"parsed    no: {exc.reason}: {exc.message}")
        if exc.reason == "ambiguous-lost-gs":
            advice.append(ADVICE_GS_MISSING)
        elif exc.reason in ("invalid-characters", "not-a-marking-code"):
            advice.append("not a marking code: scan the DataMatrix on the pack (Честный ЗНАК)")
        else:
            advice.append("scan again; if it repeats, check the scanner's prefix/suffix settings")
    else:
        repairs = ", ".join(code.repairs) or "none"
        lines.append(f"parsed    КИ {code.ki} ({code.shape}, {code.group}), repairs: {repairs}")
        if "lost-gs-recovered" in code.repairs:
            advice.append(
                ADVICE_GS_MISSING + " (this code could be repaired from its fixed lengths; "
                "others will be refused)"
            )
        if {"gs-token", "gs-escape"} & set(code.repairs):
            advice.append(
                "GS arrived as a text stand-in; markd accepts it, but HID-POS or serial mode "
                "sends the real byte"
            )
        if "cyrillic-layout" in code.repairs:
            advice.append("the text was typed under a Russian layout; use hid-kbd:// or serial")
        if "suffix-stripped" in code.repairs:
            advice.append("spaces or control characters around the code: check ?terminator=")
    if url.scheme == "hid-kbd" and gs_count:
        advice.append(
            "keyboard mode works with this scanner's GS setting; HID-POS or serial mode is "
            "still the sturdier choice"
        )
    lines += [f"advice    {a}" for a in advice] or ["advice    none: this scanner is set up well"]
    return lines


def _overflow_advice(event: ScanOverflow) -> str:
    if event.reason == "bad-report":
        return (
            f"dropped {event.dropped} bytes of unreadable reports: is the URL's mode the "
            "scanner's mode (hid-kbd vs hid-pos)?"
        )
    so_far = "" if event.ended else " so far (dropping until the next terminator)"
    return (
        f"dropped {event.dropped} bytes without a terminator{so_far}: the scanner's suffix "
        "does not match ?terminator= (set the scanner to add CR, or use terminator=none)"
    )


async def _scan_session(
    name: str,
    url: ScannerURL,
    args: argparse.Namespace,
    out: TextIO,
    options: CodesOptions | None,
) -> tuple[int, _Report, Any]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[ScannerEvent] = asyncio.Queue()
    report = _Report()
    scanner = open_scanner(name, url)
    scanner.monitor = report
    scanner.start(loop, queue)
    deadline = loop.time() + args.timeout
    scans = 0
    try:
        while scans < args.count:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                event = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            if isinstance(event, ScannerState):
                if event.present:
                    print(f"device    present: {event.detail}", file=out)
                    print(f"waiting   for {args.count - scans} scan(s) …", file=out, flush=True)
                else:
                    print(f"device    absent: {event.detail}", file=out, flush=True)
            elif isinstance(event, ScanOverflow):
                report.take_until(loop.time() + 1e9)
                print(f"dropped   {_overflow_advice(event)}", file=out, flush=True)
            elif isinstance(event, Scan):
                scans += 1
                print(f"── scan {scans} " + "─" * 40, file=out)
                reads = report.take_until(event.received)
                for line in describe_scan(url, event, reads, options):
                    print(line, file=out)
                out.flush()
    finally:
        await loop.run_in_executor(None, scanner.close)
    return scans, report, scanner


def _save(path: str, url: ScannerURL, report: _Report, scanner: Any) -> None:
    if url.scheme in ("hid-kbd", "hid-pos"):
        previous: float | None = None
        pairs = []
        for read in report.all:
            pairs.append((read.raw, 0.0 if previous is None else read.at - previous))
            previous = read.at
        # A keyboard's descriptor only when its reports follow it (a report ID ahead of the
        # keys, report protocol); boot-protocol reports have no ID whatever it says.
        layout = getattr(scanner, "layout", None)
        keep = url.scheme == "hid-pos" or getattr(layout, "report_id", None) is not None
        text = write_hid_capture(
            pairs,
            descriptor=getattr(scanner, "report_descriptor", None) if keep else None,
            comment=f"markd capture of {url.text} ({url.scheme}); decode with markctl decode "
            f"--{url.scheme} FILE",
        )
        data = text.encode("utf-8")
    else:
        data = b"".join(read.raw for read in report.all)
    with open(path, "wb") as handle:
        handle.write(data)


def run_scan_test(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = sys.stderr
    # A SCANNER that is no URL and no configured name is bad input (unknown-scanner,
    # bad-scanner-url: 2); a scanner that fails once opened is a failure (1).
    name, url, options = _resolve(args.scanner, args.config)
    if args.count < 1 or args.timeout <= 0:
        print("markctl: --count must be at least 1 and --timeout positive", file=err)
        return 2
    print(f"scanner   {name}: {url.text}", file=out)
    print(f"mode      {MODES.get(url.scheme, url.scheme)}", file=out, flush=True)
    scans, report, scanner = asyncio.run(_scan_session(name, url, args, out, options))
    session = getattr(scanner, "last_session", None)
    if session is not None and session.reattach_error:
        print(
            f"warning   the kernel driver could not be re-attached ({session.reattach_error}); "
            "replug the scanner to type into the console again",
            file=out,
        )
    if args.save:
        try:
            _save(args.save, url, report, scanner)
        except OSError as exc:
            print(f"markctl: cannot write {args.save}: {exc.strerror or exc}", file=err)
            return 1
        print(f"saved     {len(report.all)} reads to {os.fspath(args.save)}", file=out)
    if scans < args.count:
        print(f"result    {scans} of {args.count} scan(s) within {args.timeout:g} s", file=out)
        return 1
    return 0
