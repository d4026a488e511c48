"""Processes stop cleanly: SIGTERM ends a server with sockets open, and a worker."""

from __future__ import annotations

import pytest

from support import servers


@pytest.mark.parametrize("routing", ["topic", "fanout"])
async def test_sigterm_stops_server_and_worker_cleanly_with_sockets_open(make_lab, clients, routing):
    lab = await make_lab(servers=1, workers=1, NOTIFYLAB_ROUTING=routing)
    me = await clients(servers(lab)[0])
    op = await me.start("report", steps=2, step_seconds=0.02)
    await me.wait_operation(op["id"])

    server, worker = lab.processes
    for proc in (server, worker):
        await proc.stop(timeout=8)  # kills after 8 s: a -9 below means it hung
        assert proc.process.returncode == 0, proc.log_tail()
        log = proc.log_path.read_text()
        assert "Traceback" not in log and "Task was destroyed" not in log, log
    await me.wait_for(lambda: not me.connected, 10)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_servers_and_workers_run_on_the_event_loop_configured(make_lab, clients, loop):
    """uvloop by default, asyncio's own loop with NOTIFYLAB_EVENT_LOOP=asyncio:
    an operation goes end to end on either, and each process says which it runs."""
    lab = await make_lab(servers=1, workers=1, NOTIFYLAB_EVENT_LOOP=loop)
    me = await clients(servers(lab)[0])
    op = await me.start("report", steps=2, step_seconds=0.02)
    await me.wait_operation(op["id"])
    for proc in lab.processes:
        assert f"(event loop: {loop})" in proc.log_path.read_text(), proc.log_tail()
