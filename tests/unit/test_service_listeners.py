"""The verdict fan-out (markd.service.listeners): one list, each listener isolated, and what
each listener takes."""

from __future__ import annotations

from collections import Counter

from conftest import RecordingEventLog
from markd.checks.verdict import Verdict
from markd.codes import parse
from markd.service.listeners import (
    CheckedScan,
    CountingListener,
    JournalListener,
    Notifier,
    SaleDeskListener,
    SinkListener,
    log_internal_error,
)

WATER = "0104680029460908215jcmHzLmkdPML\x1d938p9E"

ALLOW = Verdict(
    decision="allow",
    reason="store-only-not-blocked",
    message_ru="Продажа разрешена",
    source="store",
    scanner="front",
    ki="0104680029460908215jcmHzLmkdPML",
)


class Recorder:
    def __init__(self, name: str, seen: list[str], fail: bool = False) -> None:
        self.name = name
        self.seen = seen
        self.fail = fail

    def on_verdict(self, checked: CheckedScan) -> None:
        self.seen.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} broke")


def test_every_listener_gets_the_verdict_in_order_even_after_one_fails() -> None:
    log = RecordingEventLog()
    seen: list[str] = []
    notifier = Notifier(
        [Recorder("first", seen), Recorder("broken", seen, fail=True), Recorder("last", seen)],
        on_error=lambda what, exc: log_internal_error(log, what, exc),
    )

    notifier.notify(CheckedScan(ALLOW))

    assert seen == ["first", "broken", "last"]
    assert log.kinds() == ["service-error"]
    # An unexpected exception is named by type and place, never by its text (it is not vetted
    # for secrets or a code's crypto tail).
    message = log.events[0][1]
    assert message.startswith("broken failed: RuntimeError at test_service_listeners:")
    assert "broken broke" not in message


def test_listeners_join_and_leave_the_one_list() -> None:
    seen: list[str] = []
    later = Recorder("later", seen)
    notifier = Notifier([Recorder("first", seen)], on_error=lambda what, exc: None)
    notifier.add_listener(later)
    notifier.notify(CheckedScan(ALLOW))
    notifier.remove_listener(later)
    notifier.remove_listener(later)  # not on the list any more: ignored
    notifier.notify(CheckedScan(ALLOW))
    assert seen == ["first", "later", "first"]


def test_the_journal_gets_every_verdict_and_the_sink_only_those_of_scans() -> None:
    log = RecordingEventLog()
    sunk: list[Verdict] = []
    counts: Counter[str] = Counter()
    changes: list[int] = []
    notifier = Notifier(
        [
            JournalListener(log),
            CountingListener(counts, lambda: changes.append(1)),
            SinkListener(sunk.append),
        ],
        on_error=lambda what, exc: None,
    )

    notifier.notify(CheckedScan(ALLOW))
    notifier.notify(CheckedScan(ALLOW, for_sale=False))  # a question through the API

    assert log.kinds() == ["verdict", "verdict"]
    assert counts == Counter({"allow": 2}) and len(changes) == 2
    assert sunk == [ALLOW]


class Desk:
    def __init__(self) -> None:
        self.taken: list[tuple[Verdict, str]] = []

    def take(self, verdict: Verdict, code: object) -> None:
        self.taken.append((verdict, code.ki))  # type: ignore[attr-defined]


def test_the_sale_desk_gets_scanned_units_with_their_code_only() -> None:
    desk = Desk()
    listener = SaleDeskListener(desk)  # type: ignore[arg-type]
    code = parse(WATER)

    listener.on_verdict(CheckedScan(ALLOW, code))
    listener.on_verdict(CheckedScan(ALLOW, code, for_sale=False))  # API: not for sale
    listener.on_verdict(CheckedScan(ALLOW))  # no code (stopping, or did not parse)

    assert desk.taken == [(ALLOW, code.ki)]
