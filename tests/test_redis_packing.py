"""Commands are packed by hiredis in one call, byte for byte as redis-py packs them.

cache/connection.py's HiredisPacker skips redis-py's per-argument encoding on the
hot paths (the gate's EVALSHA has 22 arguments). What it sends must be exactly
what redis-py would send, what it does not take must reach redis-py's packer
unchanged (with redis-py's errors), and every client of ours must use it.
"""

from __future__ import annotations

import pytest
import redis
from redis.connection import Encoder, PythonRespSerializer

from cache.connection import HiredisPacker

ENCODER = Encoder("utf-8", "strict", decode_responses=True)


class CountingPacker:
    """redis-py's own packer, counting the commands it was given."""

    def __init__(self) -> None:
        self.own = PythonRespSerializer(6000, ENCODER.encode)
        self.calls = 0

    def pack(self, *args: object) -> list[bytes]:
        self.calls += 1
        return self.own.pack(*args)


PLAIN = [
    ("GET", "k"),
    ("SET", "ключ", "värde ✓"),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", 0, -7, 2**70, 0.1, 1e20, -0.0, "", b"\x00\xff\r\n"),
    ("HSET", b"raw-key", "f", float("inf")),
]


@pytest.mark.parametrize("args", PLAIN, ids=lambda a: str(a[0]))
def test_a_plain_command_is_packed_whole_and_byte_for_byte_as_redis_py(args: tuple) -> None:
    fallback = CountingPacker()
    packed = HiredisPacker(fallback).pack(*args)
    assert fallback.calls == 0
    assert len(packed) == 1
    assert packed[0] == b"".join(fallback.own.pack(*args))


@pytest.mark.parametrize(
    "args",
    [
        ("CONFIG GET", "maxmemory"),  # a command name of two words, split by redis-py
        ("SET", "k", memoryview(b"value")),
        ("SET", "k", bytearray(b"value")),
    ],
    ids=["two-word name", "memoryview", "bytearray"],
)
def test_anything_else_goes_to_redis_py_unchanged(args: tuple) -> None:
    fallback = CountingPacker()
    assert HiredisPacker(fallback).pack(*args) == fallback.own.pack(*args)
    assert fallback.calls == 1


@pytest.mark.parametrize("bad", [True, None, object()], ids=["bool", "None", "object"])
def test_an_argument_redis_py_refuses_is_still_refused(bad: object) -> None:
    with pytest.raises(redis.DataError):
        HiredisPacker(CountingPacker()).pack("SET", "k", bad)


def test_our_clients_pack_with_it_against_a_real_server(redis_client: redis.Redis) -> None:
    """The app's client (cache.connection.connect) through every kind of call."""
    client = redis_client
    connection = client.connection_pool.get_connection()
    try:
        assert isinstance(connection._command_packer, HiredisPacker)
    finally:
        client.connection_pool.release(connection)
    try:
        client.set("packing:ключ", "värde ✓")
        client.hset("packing:h", mapping={"f": 0.1, "n": 2**70})
        assert client.get("packing:ключ") == "värde ✓"
        assert client.hgetall("packing:h") == {"f": "0.1", "n": str(2**70)}
        assert client.eval("return {ARGV[1], ARGV[2]}", 0, "ü", 1e20) == ["ü", "1e+20"]
        pipe = client.pipeline(transaction=True)
        pipe.incrbyfloat("packing:x", 1.5).get("packing:x")
        assert pipe.execute() == [1.5, "1.5"]
        assert client.config_get("maxclients")  # two words: through redis-py's packer
    finally:
        client.delete("packing:ключ", "packing:h", "packing:x")
