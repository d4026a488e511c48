"""Pieces that need no service: settings, operation kinds, ids, start-up errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from notifylab.bus.managers import routing_key
from notifylab.config import ConfigError, Settings
from notifylab.errors import BadRequest
from notifylab.ids import id_after, parse_id
from notifylab.kinds import KINDS, get_kind


def test_settings_come_from_the_environment_and_flags_win():
    settings = Settings.from_env(
        {"NOTIFYLAB_PORT": "9000", "NOTIFYLAB_ROUTING": "fanout", "NOTIFYLAB_COOKIE_SECURE": "yes"}, port=9100
    )
    assert settings.port == 9100 and settings.routing == "fanout" and settings.cookie_secure
    assert settings.key("inbox", "ann") == "notifylab:inbox:ann"
    assert settings.instance_queue("a") == "notifylab.instance.a"


def test_the_secret_never_shows_in_the_repr():
    settings = Settings.from_env({"NOTIFYLAB_SECRET": "hunter2-hunter2"})
    assert settings.secret == "hunter2-hunter2" and "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"NOTIFYLAB_PORT": "eighty"}, "NOTIFYLAB_PORT"),
        ({"NOTIFYLAB_ROUTING": "carrier-pigeon"}, "NOTIFYLAB_ROUTING"),
        ({"NOTIFYLAB_PREFIX": "a b"}, "NOTIFYLAB_PREFIX"),
    ],
)
def test_bad_settings_name_the_variable(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


def test_kinds_fill_defaults_and_describe_their_parameters():
    assert get_kind("report").validate({}) == {"steps": 8, "step_seconds": 0.5}
    described = KINDS["train"].as_dict()
    assert described["params"]["steps"] == {
        "type": "int",
        "min": 1,
        "max": 100,
        "default": 20,
        "optional": False,
        "help": "how many steps the operation runs",
    }
    with pytest.raises(BadRequest) as error:
        get_kind("report").validate({"step_seconds": 0})
    assert error.value.field == "params.step_seconds"


def test_stream_ids_compare_as_numbers_not_strings():
    assert id_after("10-0", "9-5") and id_after("9-10", "9-9")
    assert not id_after("9-9", "9-9")
    assert parse_id("12-x") is None and parse_id(12) is None and parse_id("1-2-3") is None


def test_user_rooms_route_by_user_and_the_rest_to_every_instance():
    assert routing_key({"method": "emit", "room": "user:ann"}) == "user.ann"
    assert routing_key({"method": "emit", "room": "Xy12sid"}) == "control.emit"
    assert routing_key({"method": "disconnect", "sid": "Xy12sid"}) == "control.disconnect"


@pytest.mark.parametrize(
    "flag, service",
    [
        ("--broker-url=amqp://guest:secretpw@127.0.0.1:1/", "RabbitMQ"),
        ("--redis-url=redis://:secretpw@127.0.0.1:1/0", "Redis"),
    ],
)
def test_an_unreachable_service_at_start_is_one_line_naming_the_url(flag, service):
    result = subprocess.run(
        [sys.executable, "-m", "notifylab", "serve", "--port", "1", flag],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"cannot reach {service} at" in lines[0] and "127.0.0.1:1" in lines[0]
    assert "secretpw" not in lines[0] and "***" in lines[0]


def test_the_unknown_user_hash_costs_what_a_real_one_does():
    from argon2 import PasswordHasher

    from notifylab.store import accounts

    # Same parameters, so a login for an unknown name takes as long as a wrong password.
    assert not accounts._hasher.check_needs_rehash(accounts._DUMMY_HASH)
    assert PasswordHasher().verify(accounts._DUMMY_HASH, "not-a-real-password")


def test_the_codec_writes_what_the_standard_library_reads_and_back():
    """orjson on the hot path, the standard library for what orjson refuses
    (a client's lone surrogate, an integer past 64 bits): same JSON either way."""
    import json

    from notifylab import codec

    for value in [{"a": "é ✓", "n": [1, 2.5, None, True]}, {"big": 10**30}, {"s": "\ud800"}, [], "x"]:
        text = codec.dumps(value)
        assert json.loads(text) == value == codec.loads(codec.dumpb(value))
        text.encode()  # valid UTF-8, whatever went in
    assert codec.dumps({"a": [1, 2]}) == '{"a":[1,2]}'  # compact, as python-socketio writes it
    with pytest.raises(ValueError):
        codec.loads(b"{not json")
    # What clients send is read by engine.io's guarded reader, not orjson.
    with pytest.raises(ValueError):
        codec.SocketIOJSON.loads("1" * 101)


def test_the_event_loop_is_the_one_named():
    from notifylab import loop

    async def which() -> str:
        return loop.running()

    assert loop.run(which(), "uvloop") == "uvloop"
    assert loop.run(which(), "asyncio") == "asyncio"
    with pytest.raises(ConfigError, match="NOTIFYLAB_EVENT_LOOP"):
        Settings(event_loop="trio")
