"""engine.io made lighter per socket (``server/engine.py``): the packet queue
keeps asyncio.Queue's behaviour where engine.io relies on it, in less memory.
Its frames are aiohttp's, byte for byte, and its direct writes overtake
nothing; the websocket class is held in tests/test_contract.py."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from notifylab.server.engine import SocketQueue, text_frame


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


class _Transport:
    """What aiohttp's websocket writer writes to, recorded."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
async def test_a_text_frame_is_what_aiohttp_writes(size: int):
    """``text_frame`` builds the bytes aiohttp's own websocket writer sends
    for the same text message (every length encoding of RFC 6455)."""
    from unittest.mock import Mock

    from aiohttp._websocket.writer import WebSocketWriter
    from aiohttp.http_websocket import WSMsgType

    transport = _Transport()
    writer = WebSocketWriter(Mock(_paused=False), transport, use_mask=False)  # type: ignore[arg-type]
    payload = ("4" + "x" * size).encode()
    await writer.send_frame(payload, WSMsgType.TEXT)
    assert text_frame(payload) == transport.written


class _WebSocket:
    def __init__(self, accept: bool) -> None:
        self.accept, self.written = accept, []

    def write_now(self, encoded: str) -> bool:
        if self.accept:
            self.written.append(encoded)
        return self.accept


class _Packet:
    def __init__(self, text: str) -> None:
        self.text = text

    def encode(self) -> str:
        return self.text


async def test_send_now_writes_only_past_an_idle_writer():
    """A packet goes straight to the websocket only while a getter (engine.io's
    writer) waits with nothing queued; otherwise it queues behind what is
    there, so that nothing is overtaken."""
    queue, websocket = SocketQueue(), _WebSocket(accept=True)
    queue.websocket = websocket  # type: ignore[assignment]
    queue.send_now(_Packet("a"))  # nobody waits: queued
    writer = asyncio.create_task(queue.get())
    assert (await writer).text == "a"
    writer = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # the writer waits now
    queue.send_now(_Packet("b"))  # written at once, the writer left asleep
    assert websocket.written == ["b"] and not writer.done()
    queue.put_nowait(_Packet("c"))  # wakes the writer ...
    queue.send_now(_Packet("d"))  # ... so d queues behind c
    assert [(await writer).text, queue.get_nowait().text] == ["c", "d"]
    refusing = SocketQueue()
    refusing.websocket = _WebSocket(accept=False)  # type: ignore[assignment]
    writer = asyncio.create_task(refusing.get())
    await asyncio.sleep(0)
    refusing.send_now(_Packet("e"))  # a slow client, a closing socket: the writer sends it
    assert (await asyncio.wait_for(writer, 1)).text == "e"
