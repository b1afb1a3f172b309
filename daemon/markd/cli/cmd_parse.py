"""``markctl parse CODE [--json] [--show-crypto]`` and ``markctl parse -`` (one code per line).

A code typed on a command line cannot hold a raw GS byte; write it as ``\\u001d``, ``<GS>``,
``[GS]`` or ``{GS}`` and the parser turns it back into 0x1D (and says so in ``repairs``).

Exit status: 0 when every code parsed, 2 when any did not (each bad code is still reported:
``{"error": {"reason": …, "message": …}}`` with ``--json``, a line on stderr otherwise).
The crypto tail is shown only with ``--show-crypto``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from markd.codes import CodesOptions, MarkingCode, parse
from markd.errors import CodeError
from markd.text import printable_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parse",
        help="parse and normalise marking codes",
        description="Parse marking codes and show КИ, GTIN, serial, shape, group and repairs.",
    )
    p.add_argument("code", help="the code, or '-' to read one code per line from stdin")
    p.add_argument("--json", action="store_true", help="print JSON (one object per line for '-')")
    p.add_argument(
        "--show-crypto", action="store_true", help="also print the crypto tail and the full code"
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="take the [codes] settings from this configuration file instead of the defaults",
    )
    p.set_defaults(func=run)


def _options(path: str | None) -> CodesOptions | None:
    if path is None:
        return None
    from markd import config

    return config.load(path).codes_options()


def _human(code: MarkingCode, show_crypto: bool) -> str:
    data = code.to_dict(show_crypto=show_crypto)
    lines = [f"КИ        {code.ki}"]
    lines.append(f"GTIN      {code.gtin}")
    lines.append(f"serial    {code.serial}")
    lines.append(f"shape     {code.shape}")
    group = code.group + (f" (id {code.group_id})" if code.group_id is not None else "")
    lines.append(f"group     {group}")
    if code.mrp_kopecks is not None:
        rub, kop = divmod(code.mrp_kopecks, 100)
        lines.append(f"MRP       {code.mrp_kopecks} kop ({rub}.{kop:02d} ₽)")
    for ai, value in code.extra.items():
        lines.append(f"AI {ai:<6} {value}")
    crypto = ", ".join(f"{k}={v}" for k, v in data["crypto"].items()) or "none"
    lines.append(f"crypto    {crypto}")
    if show_crypto:
        lines.append(f"КМ        {code.km.encode('unicode_escape').decode('ascii')}")
    if code.symbology:
        lines.append(f"symbology {code.symbology}")
    lines.append(f"repairs   {', '.join(code.repairs) or 'none'}")
    return "\n".join(lines)


def _emit(text: str, args: argparse.Namespace, out: TextIO, err: TextIO, options: Any) -> bool:
    try:
        code = parse(text, options)
    except CodeError as exc:
        if args.json:
            print(printable_json({"error": exc.as_dict()}, ensure_ascii=False), file=out)
        else:
            print(f"markctl: {exc.reason}: {exc.message}", file=err)
        return False
    if args.json:
        print(
            printable_json(code.to_dict(show_crypto=args.show_crypto), ensure_ascii=False), file=out
        )
    else:
        print(_human(code, args.show_crypto), file=out)
    return True


def _lines(stream: TextIO) -> Iterable[str]:
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip():  # blank lines separate nothing and are skipped
            yield line


def run(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    out, err = sys.stdout, sys.stderr
    options = _options(args.config)
    if args.code != "-":
        return 0 if _emit(args.code, args, out, err, options) else 2
    stream = stdin if stdin is not None else sys.stdin
    # Scanner dumps may hold bytes that are not UTF-8; the parser reports them per line.
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="surrogateescape")
    ok = True
    first = True
    for line in _lines(stream):
        if not args.json and not first:
            print(file=out)
        first = False
        ok = _emit(line, args, out, err, options) and ok
    return 0 if ok else 2
