"""``notifylab up``: N instances and a worker, with nginx in front on request.

It runs for real here, as a subprocess against the machine's RabbitMQ and
Redis under a fresh prefix: users who log in through the balancer spread
over the instances and stick to theirs, a user's sessions get every
notification of an operation, and SIGINT stops every process it started.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from notifylab.lab import Client, free_port, verdict
from support import PASSWORD, new_prefix, new_username, running_kit, wait_ports_free

UP = re.compile(r"Ctrl-C stops everything")


async def test_up_runs_n_instances_behind_the_balancer(services):
    ports = [free_port() for _ in range(3)]
    lb = free_port()
    args = ["--instances", "3", "--ports", ",".join(map(str, ports)), "--balancer", str(lb)]
    with running_kit(*args, "--prefix", new_prefix(), command="up") as up:
        await asyncio.to_thread(up.wait_for, UP, 60)
        assert f"balancer   http://127.0.0.1:{lb}" in up.output
        assert up.output.count("notifylab instance ") == 3
        url = f"http://127.0.0.1:{lb}"

        # Logins spread over the instances; each one's socket goes where its requests go.
        clients = []
        try:
            for _ in range(12):
                client = Client(url, reconnect=False)
                clients.append(client)
                await client.register(new_username(), PASSWORD)
                await client.connect()
                await client.wait_for(lambda c=client: c.hello is not None, 10)
            where = {c.instance for c in clients}
            assert len(where) >= 2, where
            # More sessions of one user, through the balancer: each goes where
            # its own login cookie hashes, some to another instance than the
            # first, and every one gets the whole operation.
            first, others = clients[0], []
            while len({first.instance, *(c.instance for c in others)}) < 2:
                assert len(others) < 10, "every session of the user landed on one instance"
                other = Client(url, reconnect=False)
                clients.append(other)
                others.append(other)
                await other.login(first.user, PASSWORD)
                await other.connect()
                await other.wait_for(lambda o=other: o.hello is not None, 10)
            op = await first.start("report", steps=3, step_seconds=0.02)
            for client in (first, *others):
                await client.wait_operation(op["id"], timeout=30)
            (await verdict(first, *others)).assert_clean()
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

        up.descendants()
        assert any("nginx" in " ".join(p.cmdline()) for p in up.seen)
        assert await asyncio.to_thread(up.interrupt) == 0
        assert await asyncio.to_thread(up.alive_after) == []
        assert await asyncio.to_thread(wait_ports_free, [*ports, lb]) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--instances", "2", "--ports", "18101,18102,18103"], "--instances 2 but --ports names 3"),
        (["--instances", "0"], "--instances 0: at least one instance"),
        (["--ports", "18101,eighty"], "want comma-separated port numbers"),
    ],
)
def test_up_refuses_instances_and_ports_that_disagree(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "notifylab", "up", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert message in result.stderr
