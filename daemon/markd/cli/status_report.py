"""``markctl status`` for people: the daemon's status (``GET /v1/status``, or the in-process
probe's report) as a few aligned lines with a state word each, and the rule that makes the
command's exit status.

Pure functions of the status dict (no I/O), so each shape of a status is tested directly.

Each part gets one state word:

=========  =================================================================================
ok         working as configured
degraded   working, but something needs a look (a stale blocklist, a Local Module behind on
           its sync, a printer asking for paper, a CDN host list never fetched …)
down       not working (the Local Module or the printer unreachable, the store unreadable,
           a scanner absent)
off        not configured (no printer while ``[sale] mode`` is ``off``)
unknown    not seen yet (a scanner not opened yet, a Local Module not polled yet)
=========  =================================================================================

The daemon is **degraded** (exit status 1) when any part is ``degraded`` or ``down``, or the
service is not ``ready`` yet; ``off`` and ``unknown`` never count. :func:`problems` lists
why, one short phrase each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from markd.text import printable_json

OK, DEGRADED, DOWN, OFF, UNKNOWN = "ok", "degraded", "down", "off", "unknown"
#: The states that make the command's exit status 1.
BAD_STATES = frozenset({DEGRADED, DOWN})
#: The labels' column is at least this wide (longer scanner names widen it).
LABEL_WIDTH = 14

#: The check sources as people name them, in the order they are shown.
SOURCE_NAMES = {"online": "online CDN", "local_module": "Local Module", "tspiot": "ТС ПИоТ"}


def ago(seconds: float | None) -> str:
    """An age as people say it: ``just now``, ``45 s ago``, ``3 min ago``, ``2 h ago``,
    ``4 d ago`` (``never`` for None)."""
    if seconds is None:
        return "never"
    if seconds < 10:
        return "just now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86_400:.0f} d ago"


def duration(seconds: float) -> str:
    """A length of time without ``ago``: ``4 s``, ``12 min``, ``5 h``, ``3 d``."""
    if seconds < 10:
        return f"{seconds:.0f} s"
    return ago(seconds).removesuffix(" ago")


def milliseconds(value: float | None) -> str:
    """A latency rounded to whole milliseconds (``12 ms``; ``<1 ms`` below one)."""
    if value is None:
        return "no latency yet"
    return "<1 ms" if value < 0.5 else f"{value:.0f} ms"


def units(count: int) -> str:
    """``1 unit``, ``2 units``."""
    return f"{count} unit" if count == 1 else f"{count} units"


# -- one state per part ------------------------------------------------------------------------


def online_state(online: dict[str, Any]) -> tuple[str, str]:
    """The CDN client: down without a usable host, degraded with a token alert or a failing
    proxy."""
    hosts = online.get("hosts") or []
    usable = [h for h in hosts if not h.get("quarantined")]
    proxy = f"; proxy {online['proxy']}" if online.get("proxy") else ""
    if online.get("proxy_error"):
        proxy += f"; PROXY FAILING: {online['proxy_error']}"
    if not hosts:
        error = online.get("last_error") or "not fetched yet"
        return DOWN, f"no host list ({error}){proxy}"
    listed = f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}"
    age = online.get("list_age_s")
    listed += f", list {online.get('hosts_from')} {ago(age) if age is not None else ''}".rstrip()
    if not usable:
        return DOWN, f"{listed}; every host quarantined{proxy}"
    best = usable[0]
    text = f"{listed}; first {best['url']} ({milliseconds(best.get('latency_ms'))}){proxy}"
    if online.get("alert"):
        return DEGRADED, f"{text}; ALERT {online['alert']}"
    if online.get("proxy_error"):
        return DEGRADED, text
    return OK, text


def local_module_state(lm: dict[str, Any]) -> tuple[str, str]:
    """The Local Module: unknown before the first poll, down when unreachable, degraded when
    not ``ready`` or behind on its sync with Честный ЗНАК (``sync_alert``)."""
    if not lm.get("polled"):
        return UNKNOWN, f"{lm.get('url')}, no status read yet"
    text = f"{lm.get('url')}, state {lm.get('state')}"
    if lm.get("version"):
        text += f", version {lm['version']}"
    hours = lm.get("last_sync_age_hours")
    text += ", never synced" if hours is None else f", synced {ago(hours * 3600)}"
    if lm.get("reachable") is False:
        error = lm.get("error") or {}
        return DOWN, f"{text}; unreachable: {error.get('detail') or error.get('kind') or '?'}"
    if lm.get("sync_alert"):
        return DEGRADED, f"{text}; sync {lm['sync_alert'].upper()}"
    if lm.get("state") != "ready" or lm.get("error"):
        return DEGRADED, text
    return OK, text


def tspiot_state(tspiot: dict[str, Any]) -> tuple[str, str]:
    """The ТС ПИоТ: degraded after a failed check or an answer given offline."""
    text = f"{tspiot.get('url')}"
    if tspiot.get("version"):
        text += f", API {tspiot['version']}"
    if tspiot.get("last_latency_ms") is not None:
        text += f", last answer {milliseconds(tspiot['last_latency_ms'])}"
    error = tspiot.get("last_error")
    if error:
        return DEGRADED, f"{text}; last failure {error.get('kind')}: {error.get('detail')}"
    if tspiot.get("last_offline"):
        return DEGRADED, f"{text}; last answer given OFFLINE"
    return OK, text


def source_state(name: str, status: Any) -> tuple[str, str]:
    if not isinstance(status, dict):
        return UNKNOWN, str(status)
    if name == "online":
        return online_state(status)
    if name == "local_module":
        return local_module_state(status)
    if name == "tspiot":
        return tspiot_state(status)
    return UNKNOWN, printable_json(status, ensure_ascii=False, default=str)


def scanner_state(scanner: dict[str, Any]) -> tuple[str, str]:
    present = scanner.get("present")
    if present is None:
        return UNKNOWN, f"{scanner.get('url')}, not seen yet"
    if present:
        return OK, str(scanner.get("url"))
    return DOWN, f"{scanner.get('url')}, ABSENT"


def printer_state(printer: dict[str, Any] | None) -> tuple[str, str]:
    """The sale desk's printer: off without one, down when unreachable or stopped, degraded
    with a device problem (``attention``), a fiscal health warning, a blocked Web Requests
    queue or a receipt waiting for recovery."""
    if printer is None:
        return OFF, "no printer ([sale] mode off)"
    text = f"{printer.get('url')}, sale {printer.get('mode')}, {printer.get('state')}"
    device = printer.get("device") or {}
    notes = [*(device.get("problems") or []), *(printer.get("health_warnings") or [])]
    if printer.get("queue_blocked"):
        notes.append("Web Requests queue BLOCKED")
    if printer.get("recovery_pending"):
        notes.append("a receipt waits for recovery")
    error = printer.get("last_error")
    if printer.get("state") in ("unreachable", "stopped"):
        if error:
            notes.append(f"{error.get('reason')}: {error.get('message')}")
        return DOWN, text + (f"; {', '.join(notes)}" if notes else "")
    if notes:
        return DEGRADED, f"{text}; {', '.join(notes)}"
    return (OK if printer.get("state") == "ready" else DEGRADED), text


def store_state(store: dict[str, Any] | None) -> tuple[str, str]:
    """The blocklist: down when unreadable, degraded when stale or its last fleet sync was
    refused (``sync_refused``)."""
    if store is None:
        return DOWN, "not open"
    if "error" in store and "version" not in store:
        return DOWN, f"ERROR {store['error']}"
    age = store.get("age_s")
    synced = "never synced" if store.get("synced_at") is None else f"synced {ago(age)}"
    text = f"version {store.get('version')}, {synced}"
    if store.get("max_age_s") is not None:
        text += f" (stale after {duration(store['max_age_s'])})"
    notes = []
    if store.get("stale"):
        notes.append("STALE")
    refused = store.get("sync_refused")
    if refused:
        notes.append(f"sync REFUSED ({refused.get('reason')}: {refused.get('message')})")
    if notes:
        return DEGRADED, f"{text}; {'; '.join(notes)}"
    return OK, f"{text}; sync ok"


# -- the report --------------------------------------------------------------------------------


def parts(report: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(label, state, text)`` of each part of ``report`` the status has, in display order."""
    sources = report.get("sources", report)
    for name, label in SOURCE_NAMES.items():
        if name in sources:
            yield (label, *source_state(name, sources[name]))
    for name, error in (report.get("errors") or {}).items():
        yield (SOURCE_NAMES.get(name, name), DOWN, f"probe failed: {error}")
    for name, scanner in (report.get("scanners") or {}).items():
        yield (f"scanner {name}", *scanner_state(scanner))
    if "printer" in report:
        yield ("printer", *printer_state(report["printer"]))
    if "store" in report:
        yield ("blocklist", *store_state(report["store"]))


def problems(report: dict[str, Any]) -> list[str]:
    """Why the daemon is degraded (empty: healthy): the service not ready, and each part in
    state ``degraded`` or ``down``."""
    found = []
    service = report.get("service")
    if service is not None and service.get("state") != "ready":
        found.append(f"markd {service.get('state')}")
    found += [f"{label} {state}" for label, state, _ in parts(report) if state in BAD_STATES]
    return found


def receipt_line(printer: dict[str, Any] | None) -> str | None:
    receipt = None if printer is None else printer.get("receipt")
    if not receipt:
        return None
    total = receipt.get("total_kopecks") or 0
    return (
        f"{receipt.get('kind')} {receipt.get('id')}, {receipt.get('state')}, "
        f"{units(int(receipt.get('units') or 0))}, {total // 100}.{total % 100:02d} RUB"
    )


def format_report(report: dict[str, Any], via: str) -> list[str]:
    """The human lines of ``markctl status`` (``via``: where the report came from)."""
    lines = []
    found = problems(report)
    width = max([LABEL_WIDTH, *(len(label) for label, _, _ in parts(report))])
    service = report.get("service")
    if service is not None:
        verdict = "healthy" if not found else "DEGRADED: " + ", ".join(found)
        lines.append(
            f"{'markd':<{width}} {service['state']}, {verdict}; pid {service['pid']}, "
            f"up {duration(service['uptime_s'])}, version {service['version']}"
        )
    elif found:
        lines.append(f"{'problems':<{width}} " + ", ".join(found))
    lines.append(f"{'check mode':<{width}} {report.get('mode')}")
    for label, state, text in parts(report):
        lines.append(f"{label:<{width}} {state:<9} {text}")
    receipt = receipt_line(report.get("printer"))
    if receipt is not None:
        lines.append(f"{'receipt':<{width}} {'open':<9} {receipt}")
    lines.append(f"{'via':<{width}} {via}")
    return lines
