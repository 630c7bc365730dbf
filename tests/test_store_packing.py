"""The store's clients pack commands with hiredis alone (aggregator/store/base.py `_Packer`):
what reaches Redis must be what redis-py's own packer sends, and what redis-py refuses must
still be refused."""

from __future__ import annotations

import random
import struct

import pytest
import redis
from redis._parsers.encoders import Encoder
from redis.connection import HiredisRespSerializer

from aggregator.store import Store
from aggregator.store.base import _LARGE, _PACKER

VALUES: list[object] = [
    "plain",
    "é 中文 \u2028",
    "",
    b"\x00\xff bytes",
    0,
    -1,
    2**63,
    -(2**70),
    1.5,
    -0.0,
    1e16,
    1e-7,
    123456789012345678.0,
    float("inf"),
    float("-inf"),
    memoryview(b"view"),
    bytearray(b"array"),
]


ENCODER = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]


def redis_py_packed(*args: object) -> bytes:
    packer = HiredisRespSerializer(None, ENCODER.encode)  # type: ignore[no-untyped-call]
    return b"".join(packer.pack(*args))  # type: ignore[arg-type]


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    rng = random.Random(7)
    floats = [struct.unpack("d", rng.randbytes(8))[0] for _ in range(2000)]
    floats += [rng.uniform(-2e9, 2e9) for _ in range(2000)]
    for value in [*VALUES, *floats]:
        assert b"".join(_PACKER.pack("HSET", "k", "f", value)) == redis_py_packed(
            "HSET", "k", "f", value
        ), value
    for name in ("SCRIPT LOAD", b"SCRIPT LOAD"):  # a command named in two words
        assert b"".join(_PACKER.pack(name, "return 1")) == redis_py_packed(name, "return 1")


@pytest.mark.parametrize("value", [True, None, object()])
def test_what_redis_py_refuses_is_refused(store: Store, value: object) -> None:
    with pytest.raises(redis.DataError):
        store.client.set("k", value)  # type: ignore[arg-type]
    assert store.client.exists("k") == 0


def test_values_reach_redis_as_redis_py_sends_them(store: Store) -> None:
    fields = {f"f{i}": v for i, v in enumerate(VALUES) if not isinstance(v, memoryview)}
    store.client.hset("h", mapping=fields)  # type: ignore[arg-type]
    stored = store.binary.hgetall("h")
    for name, value in fields.items():
        expected = bytes(ENCODER.encode(value))  # type: ignore[no-untyped-call]
        assert stored[name.encode()] == expected, (name, value)


def test_a_large_argument_is_sent_as_it_is(store: Store) -> None:
    """A bytes argument over `_LARGE` (a rendered feed) goes to redis-py's packer, which hands
    it to the socket uncopied: the same bytes reach Redis, beside the command's others."""
    large = random.Random(3).randbytes(_LARGE + 1)
    packed = _PACKER.pack("HSET", "k", "version", 7, "body", large, "etag", "é")
    assert any(part is large for part in packed)
    assert b"".join(packed) == redis_py_packed(
        "HSET", "k", "version", 7, "body", large, "etag", "é"
    )
    store.binary.hset("h", mapping={"version": 7, "body": large, "etag": "é"})
    assert store.binary.hgetall("h") == {b"version": b"7", b"body": large, b"etag": "é".encode()}
