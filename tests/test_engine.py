"""engine.io made lighter per socket (``server/engine.py``): the packet queue
keeps asyncio.Queue's behaviour where engine.io relies on it, in less memory.
Its frames are aiohttp's, byte for byte, and its direct writes overtake
nothing. Our ``Socket`` polls and pings as engine.io's ``AsyncSocket`` does,
each scenario run on both, without a task of its own. The websocket class,
and engine.io filing its sockets as ours, are held in tests/test_contract.py."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from typing import Any
from unittest.mock import Mock

import engineio
import pytest
from engineio import exceptions, packet
from engineio.async_socket import AsyncSocket

from notifylab.server.engine import Socket, SocketQueue, Sockets, text_frame


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


class _Server:
    """What an engine.io socket uses of its server, with short waits."""

    reason = engineio.AsyncServer.reason

    def __init__(self, ping_interval: float = 0.05, ping_timeout: float = 0.05) -> None:
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.logger = Mock()

    def create_queue(self) -> SocketQueue:
        return SocketQueue()

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> asyncio.Future:
        return asyncio.ensure_future(target(*args, **kwargs))  # engine.io's, for asyncio

    async def _trigger_event(self, *args: Any, **kwargs: Any) -> None:
        return None


BOTH = pytest.mark.parametrize("cls", [AsyncSocket, Socket], ids=["engineio", "ours"])


def _texts(packets: list[Any]) -> list[Any]:
    return [p if p is None else p.encode() for p in packets]


def _queued(queue: SocketQueue) -> list[Any]:
    return _texts(list(queue._items))


def _ping(text: str = "") -> packet.Packet:
    return packet.Packet(packet.MESSAGE, text)


@BOTH
async def test_poll_returns_what_was_queued_together(cls: type[AsyncSocket]):
    socket = cls(_Server(), "s")
    for text in ("a", "b", "c"):
        socket.queue.put_nowait(_ping(text))
    assert _texts(await socket.poll()) == ["4a", "4b", "4c"]
    await asyncio.wait_for(socket.queue.join(), 1)  # each one taken is done


@BOTH
async def test_poll_waits_for_the_first_packet_then_takes_the_rest(cls: type[AsyncSocket]):
    socket = cls(_Server(ping_interval=5, ping_timeout=5), "s")
    polling = asyncio.create_task(socket.poll())
    await asyncio.sleep(0.01)
    assert not polling.done()
    socket.queue.put_nowait(_ping("a"))
    socket.queue.put_nowait(_ping("b"))  # queued before the poll runs again: with it
    assert _texts(await asyncio.wait_for(polling, 1)) == ["4a", "4b"]


@BOTH
async def test_a_none_ends_the_poll_and_one_behind_packets_goes_last(cls: type[AsyncSocket]):
    socket = cls(_Server(), "s")
    socket.queue.put_nowait(None)
    assert await socket.poll() == []  # the writer stops
    for item in (_ping("a"), None, _ping("b")):
        socket.queue.put_nowait(item)
    # engine.io puts the None back behind what followed it: b goes out first.
    assert _texts(await socket.poll()) == ["4a"]
    assert _queued(socket.queue) == ["4b", None]
    assert _texts(await socket.poll()) == ["4b"]
    assert _queued(socket.queue) == [None]
    assert await socket.poll() == []
    assert socket.queue.empty()


@BOTH
async def test_a_poll_that_waits_too_long_or_is_cancelled_raises_queue_empty(cls: type[AsyncSocket]):
    socket = cls(_Server(ping_interval=0.05, ping_timeout=0.05), "s")
    started = time.monotonic()
    with pytest.raises(exceptions.QueueEmpty):
        await socket.poll()
    assert 0.09 < time.monotonic() - started < 1  # ping_interval + ping_timeout
    socket.queue.put_nowait(_ping("after"))  # the timed-out wait took nothing
    assert _texts(await socket.poll()) == ["4after"]
    socket.server.ping_interval = 5
    polling = asyncio.create_task(socket.poll())
    await asyncio.sleep(0.01)
    polling.cancel()
    with pytest.raises(exceptions.QueueEmpty):
        await polling


async def test_a_waiting_poll_holds_no_task_of_its_own():
    """The saving itself: engine.io's poll, on Python 3.11, waits in a task
    ``wait_for`` makes around ``queue.get()``; ours in the writer's task."""
    for cls, extra in ((AsyncSocket, 1), (Socket, 0)):
        socket = cls(_Server(ping_interval=5, ping_timeout=5), "s")
        before = asyncio.all_tasks()
        polling = asyncio.create_task(socket.poll())
        await asyncio.sleep(0.01)
        # Only tasks waiting on the queue's get: other tests' background
        # tasks may come and go meanwhile.
        getting = [
            t for t in asyncio.all_tasks() - before - {polling} if t.get_coro().__qualname__.endswith(".get")
        ]
        assert len(getting) == extra, (cls, getting)
        socket.queue.put_nowait(_ping("a"))
        assert _texts(await polling) == ["4a"]


def _ping_logs(server: _Server) -> list[Any]:
    return [c for c in server.logger.info.call_args_list if "Sending packet" in c.args[0]]


@pytest.mark.parametrize("state", ["open", "upgrading", "upgraded", "closing", "closed"])
async def test_a_ping_goes_out_as_engineio_sends_it(state: str):
    """``schedule_ping`` on ours and on engine.io's, in each state a socket
    can be in when the ping is due: the same packets queued, ``last_ping``
    the same, the same log line; and a second ``schedule_ping`` before the
    ping is answered schedules none (engine.io's rule)."""
    seen = {}
    for cls in (AsyncSocket, Socket):
        server = _Server(ping_interval=0.05)
        socket = cls(server, "s")
        if state != "open":
            setattr(socket, state, True)
        before = asyncio.all_tasks()
        scheduled_at = time.time()
        socket.schedule_ping()
        socket.schedule_ping()  # a ping is out already: nothing more
        assert socket.last_ping is None
        if cls is Socket:
            assert not asyncio.all_tasks() - before  # a timer, no task
        await asyncio.sleep(0.02)
        assert socket.queue.empty()  # not before ping_interval
        await asyncio.sleep(0.1)
        last_ping = socket.last_ping
        # Not before ping_interval; how late is the machine's load, not the code's.
        sent_in_time = last_ping is not None and 0.04 < last_ping - scheduled_at
        seen[cls.__name__] = (_queued(socket.queue), last_ping is None, sent_in_time, _ping_logs(server))
    assert seen["Socket"] == seen["AsyncSocket"]
    pinged = state not in ("closing", "closed")
    assert seen["Socket"][:3] == ((["2"], False, True) if pinged else ([], True, False))


async def test_a_ping_not_answered_in_time_closes_the_socket_as_engineio_does():
    """After our ping, engine.io's own check (its service task's, or the
    next send's) closes a socket whose client did not answer in time."""
    socket = Socket(_Server(ping_interval=0.01, ping_timeout=0.05), "s")
    socket.schedule_ping()
    await asyncio.sleep(0.03)
    assert await socket.check_ping_timeout()  # within ping_timeout: still open
    await asyncio.sleep(0.05)
    assert not await socket.check_ping_timeout()
    assert socket.closed
    # The ping only: engine.io's close sends a CLOSE through send(), which
    # its own ping check refuses then.
    assert _queued(socket.queue) == ["2"]


async def test_sockets_files_engineios_socket_as_ours_and_nothing_else():
    sockets, server = Sockets(), _Server()
    sockets["a"] = AsyncSocket(server, "a")
    assert type(sockets["a"]) is Socket
    other = type("Other", (AsyncSocket,), {})(server, "b")
    sockets["b"] = other  # someone else's subclass keeps its own methods
    assert type(sockets["b"]) is type(other)
