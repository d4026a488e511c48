"""engine.io made lighter per socket (``server/engine.py``): the packet queue
keeps asyncio.Queue's behaviour where engine.io relies on it, in less memory.
The websocket class is held in tests/test_contract.py."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from notifylab.server.engine import SocketQueue


async def test_it_is_first_in_first_out_and_get_nowait_says_empty():
    queue = SocketQueue()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    for item in ("a", "b", None):  # engine.io puts None to stop its writer
        await queue.put(item)
    assert queue.qsize() == 3 and not queue.empty()
    assert [await queue.get(), queue.get_nowait(), await queue.get()] == ["a", "b", None]
    assert queue.empty()


async def test_a_waiting_get_wakes_on_put():
    queue = SocketQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    queue.put_nowait("packet")
    assert await asyncio.wait_for(getter, 1) == "packet"


async def test_a_get_that_times_out_takes_nothing():
    # engine.io's poll: wait_for(queue.get(), ping interval + timeout).
    queue = SocketQueue()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)
    queue.put_nowait("after")
    assert queue.get_nowait() == "after"


async def test_a_getter_woken_then_cancelled_passes_the_item_on():
    queue = SocketQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    queue.put_nowait("only")  # wakes the first ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == "only"
    assert first.cancelled() and queue.empty()


async def test_join_waits_for_a_task_done_per_item():
    queue = SocketQueue()
    await queue.join()  # nothing put: returns at once
    queue.put_nowait(1)
    queue.put_nowait(2)
    joined = asyncio.create_task(queue.join())
    queue.get_nowait()
    queue.task_done()
    await asyncio.sleep(0.01)
    assert not joined.done()
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        queue.task_done()


def test_an_empty_one_takes_a_fraction_of_an_asyncio_queue():
    def allocated(make) -> int:  # type: ignore[no-untyped-def]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = [make() for _ in range(1000)]
            size = tracemalloc.get_traced_memory()[0] - before
            del kept
            return size
        finally:
            tracemalloc.stop()

    ours, stock = allocated(SocketQueue), allocated(asyncio.Queue)
    assert ours * 4 < stock, (ours, stock)  # bytes for 1,000 empty queues
