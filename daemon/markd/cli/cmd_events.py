"""``markctl events``: follow the running daemon's event stream (``GET /v1/events``).

One line per event: the time, the event's id, the kind and what happened — for a verdict the
decision, the КИ, the scanner and the reason; for anything else the event's message. ``--json``
prints each event as the API sends it (``{"id", "seq", "kind", "time", "data"}``), one per
line. ``--kinds`` narrows the stream (``verdict,scanner``: a name without a suffix takes its
whole family, ``scanner-present`` and ``scanner-absent``). ``--count N`` stops after N events.
``--since ID`` first shows the events after the one with that id, as far as the daemon still
keeps them; when it cannot (it restarted since, the id is too old, or not an id) a ``gap``
line says so and why, then the live events follow.

Exit status: 0 after ``--count`` events or Ctrl+C (130), 1 when the daemon is not running or
the stream ends (the daemon stopped), 2 for a bad configuration or an unknown kind.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from markd import config as config_module
from markd.api.client import ControlClient
from markd.text import printable_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("events", help="follow the daemon's events (scans, verdicts, devices)")
    p.add_argument("--config", metavar="PATH", help="configuration file (for [api] socket)")
    p.add_argument(
        "--socket", metavar="PATH", help="the daemon's control socket (default: [api] socket)"
    )
    p.add_argument(
        "--kinds", metavar="LIST", help="comma-separated kinds or families (verdict,scanner)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument(
        "--since",
        metavar="ID",
        help="first the events after the one with this id (from an earlier line), if still kept",
    )
    p.set_defaults(func=_events)


def format_event(event: dict[str, Any]) -> str:
    """One human line for an event."""
    data = event.get("data") or {}
    kind = event.get("kind", "?")
    if kind == "verdict":
        subject = data.get("ki") or "(not a code)"
        what = (
            f"{str(data.get('decision', '?')).upper()} {subject} from {data.get('scanner')}: "
            f"{data.get('reason')} «{data.get('message')}»"
        )
    elif kind == "scan":
        what = f"scan from {data.get('scanner')} ({data.get('length')} bytes)"
    elif kind == "gap":
        oldest = data.get("oldest")
        kept = f"oldest kept: {oldest}" if oldest else "none kept"
        what = f"MISSED EVENTS ({data.get('reason')}): {data.get('message')} ({kept})"
    else:
        what = str(data.get("message") or printable_json(data, ensure_ascii=False, default=str))
    return f"{event.get('time', '')} {event.get('id', '')} {kind:<16} {what}"


def _events(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        print("markctl: --count takes a positive number", file=sys.stderr)
        return 2
    socket_path = args.socket
    if socket_path is None:
        socket_path = config_module.load(args.config).api.socket
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    seen = 0
    # An unknown kind comes back from the daemon as the reason unknown-kind: bad input, 2.
    for event in ControlClient(socket_path).events(kinds, since=args.since):
        if args.json:
            print(printable_json(event, ensure_ascii=False), flush=True)
        else:
            print(format_event(event), flush=True)
        seen += 1
        if args.count is not None and seen >= args.count:
            return 0
    print("markctl: the daemon ended the event stream (stopped?)", file=sys.stderr)
    return 1
