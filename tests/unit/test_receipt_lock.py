"""The one lock of receipt operations: the task holding it may take it again (the sale desk
holds it across a sequence, the session's methods take it inside), any other task waits, in
the order it came."""

from __future__ import annotations

import asyncio

import pytest

from markd.fiscal.session import ReceiptLock


async def test_the_holder_enters_again_and_others_wait_their_turn() -> None:
    lock = ReceiptLock()
    order: list[str] = []

    async def other(name: str) -> None:
        async with lock:
            order.append(name)

    async with lock:
        first = asyncio.create_task(other("first"))
        second = asyncio.create_task(other("second"))
        async with lock:  # the holder again: no deadlock
            order.append("inner")
        await asyncio.sleep(0.01)
        assert lock.locked() and order == ["inner"]  # still held: the others wait
        order.append("outer")
    await asyncio.gather(first, second)
    assert order == ["inner", "outer", "first", "second"]
    assert not lock.locked()


async def test_a_bounded_wait_gives_up_without_taking_the_lock() -> None:
    lock = ReceiptLock()
    held = asyncio.Event()
    done = asyncio.Event()

    async def holder() -> None:
        async with lock:
            held.set()
            await done.wait()

    task = asyncio.create_task(holder())
    await held.wait()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await lock.acquire()
    done.set()
    await task
    await lock.acquire()  # free again: the gave-up wait left nothing behind
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
