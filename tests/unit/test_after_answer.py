"""Work a check leaves for after its caller's answer (markd.checks.after_answer): run at once
without a collector; with one, collected in order and run once, one failure not stopping the
rest; the verdict's journal record is never deferred (markd.service.listeners.Notifier), and
the Mark Unit front's repeat cache keeps an answer only once it is out, and never one that a
commit overtook."""

from __future__ import annotations

import asyncio

from markd.checks.after_answer import AFTER_ANSWER, AfterAnswer, after_answer
from markd.checks.verdict import Verdict
from markd.fronts.mark_unit.desk import RepeatCache
from markd.fronts.mark_unit.protocol import parse_document
from markd.service.listeners import CheckedScan, JournalListener, Notifier

ALLOW = Verdict("allow", "allowed", "Продажа разрешена", "cdn", "mark-unit")


def test_without_a_collector_the_work_runs_at_once() -> None:
    done: list[int] = []
    after_answer(done.append, 1)
    assert done == [1]


def test_a_collector_runs_its_work_in_order_once_and_survives_a_failure() -> None:
    done: list[int] = []
    later = AfterAnswer()
    with later.collecting():
        after_answer(done.append, 1)
        after_answer(lambda: 1 / 0)
        after_answer(done.append, 2)
    assert AFTER_ANSWER.get() is None
    assert done == [] and len(later) == 3
    later.run()
    later.run()
    assert done == [1, 2]


class Recorder:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    def on_verdict(self, checked: CheckedScan) -> None:
        self.seen.append(self.name)


class Journal(JournalListener):
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def on_verdict(self, checked: CheckedScan) -> None:
        self.seen.append(self.name)


def test_only_the_journal_record_is_written_before_the_answer() -> None:
    seen: list[str] = []
    notifier = Notifier(
        [Journal(seen), Recorder("event", seen), Recorder("counts", seen)],
        on_error=lambda what, exc: None,
    )
    later = AfterAnswer()
    with later.collecting():
        notifier.notify(CheckedScan(ALLOW, for_sale=False))
    assert seen == ["verdict record"]
    later.run()
    assert seen == ["verdict record", "event", "counts"]
    # Without a collector (markd's own scans) every listener gets it at once.
    seen.clear()
    notifier.notify(CheckedScan(ALLOW))
    assert seen == ["verdict record", "event", "counts"]


DOCUMENT = b'{"action":"check","type":"receipt","positions":[]}'


async def test_the_repeat_cache_keeps_an_answer_once_it_is_out() -> None:
    cache = RepeatCache(10.0)
    document = parse_document(DOCUMENT)
    asked = 0

    async def compute() -> tuple[dict[str, int], tuple[bytes, ...]]:
        nonlocal asked
        asked += 1
        await asyncio.sleep(0)
        return {"code": 0}, ()

    later = AfterAnswer()
    with later.collecting():
        first = await cache.answer("10.0.0.1", document, compute, size=len(DOCUMENT))
    assert len(cache) == 0
    # Until it is kept, the finished check answers a repeat.
    assert await cache.answer("10.0.0.1", document, compute) == first and asked == 1
    later.answer_size = 100  # the bytes the caller wrote: not encoded again
    later.run()
    assert len(cache) == 1 and cache.size == len(DOCUMENT) + 100
    assert await cache.answer("10.0.0.1", document, compute) == first and asked == 1


async def test_an_answer_a_commit_overtook_is_not_kept() -> None:
    cache = RepeatCache(10.0)
    started = asyncio.Event()
    go = asyncio.Event()

    async def compute() -> tuple[dict[str, int], tuple[bytes, ...]]:
        started.set()
        await go.wait()
        return {"code": 0}, ()

    task = asyncio.create_task(cache.answer("10.0.0.1", parse_document(DOCUMENT), compute))
    await started.wait()
    cache.forget()  # a commit while the check is under way
    go.set()
    await task
    assert len(cache) == 0
