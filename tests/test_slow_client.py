"""A client that stops reading its websocket (a frozen tab, a phone in a
tunnel) while its user gets many notifications (issue 15).

An instance buffers for it what the kernel and ``WRITE_BUFFER_LIMIT`` hold,
then up to ``QUEUE_LIMIT`` packets in its queue (``server/engine.py``), and
then cuts its connection instead of holding its user's notifications without
bound; the client would reconnect and catch up from the stream. Meanwhile
the user's other session, on the same instance, gets every one, in order.
"""

from __future__ import annotations

import asyncio
import json

import aio_pika
import aiohttp
import redis.asyncio as aioredis

from notifylab import codec
from notifylab.bus.managers import emit_message
from notifylab.config import Settings
from notifylab.ids import now_ms
from notifylab.server.engine import QUEUE_LIMIT
from notifylab.store.inbox import Inbox
from support import BROKER, REDIS, servers

BIG = "x" * 8000  # a notification of about 8 KB: the kernel's buffers fill in a few hundred
COUNT = 2000  # well past what the buffers and QUEUE_LIMIT hold for one socket (about 16 MB)


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_client_that_stops_reading_is_cut_off_and_the_others_get_everything(make_lab, clients):
    lab = await make_lab(servers=1, workers=0)
    [url] = servers(lab)
    [server] = lab.processes
    reader = await clients(url)
    stuck = await clients(url, user=reader.user, connect=False)
    assert stuck.token is not None
    settings = Settings.from_env({"NOTIFYLAB_PREFIX": lab.env["NOTIFYLAB_PREFIX"]})
    redis = aioredis.from_url(REDIS, decode_responses=True)
    inbox = Inbox(redis, settings)
    broker = await aio_pika.connect(BROKER)
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        assert (await ws.receive_str()).startswith("0{")  # engine.io's open packet
        await ws.send_str("40" + json.dumps({"session": stuck.token}))
        while not (await ws.receive_str()).startswith('42["hello"'):
            pass
        # From here on it reads nothing: aiohttp stops taking data off the
        # connection once 64 KB wait unread, and the kernel's buffers fill.
        assert await metric(url, "notifylab_sockets_connected") == 2
        channel = await broker.channel()
        exchange = await channel.get_exchange(settings.events_exchange)
        ids = []
        for i in range(COUNT):  # as a worker does: append to the stream, then publish
            note = await inbox.append(
                reader.user, {"user": reader.user, "type": "bench.big", "n": i, "body": BIG, "ts": now_ms()}
            )
            ids.append(note["id"])
            await exchange.publish(
                aio_pika.Message(codec.dumpb(emit_message(note, host_id="test"))),
                routing_key=f"user.{reader.user}",
            )
        await reader.wait_for(lambda: len(reader.notifications) == COUNT, 60)
        assert [n["id"] for n in reader.notifications] == ids and reader.duplicates == 0
        async with asyncio.timeout(30):
            while await metric(url, "notifylab_sockets_connected") != 1:  # noqa: ASYNC110 (polling the server)
                await asyncio.sleep(0.2)
    await broker.close()
    await redis.aclose()
    assert server.log_path is not None
    log = server.log_path.read_text(errors="replace")
    assert log.count(f"a client stopped reading: {QUEUE_LIMIT} packets wait for it") == 1, log[-2000:]
