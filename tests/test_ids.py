"""The id layout (cache/ids.py) and the ids the seckill Lua script makes."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import pytest

from cache.ids import (
    DECIMAL_SPLIT,
    EPOCH,
    IdExhausted,
    compose,
    day_key,
    decode,
    id_base,
    id_parts,
)
from cache.order_stream import stream_key
from cache.seckill import EXHAUSTED, OK, SeckillGate, load_voucher


def _ts(text: str) -> float:
    return calendar.timegm(datetime.fromisoformat(text).timetuple())


def test_layout_is_seconds_since_2022_shifted_over_a_daily_counter():
    now = _ts("2022-01-01T00:00:10")
    assert _ts("2022-01-01T00:00:00") == EPOCH
    assert compose(now, 7) == (10 << 32) | 7
    moment, count = decode(compose(now, 7))
    assert moment == datetime(2022, 1, 1, 0, 0, 10, tzinfo=UTC) and count == 7
    assert day_key("order", now) == "icr:order:2022:01:01"
    assert id_parts(now) == divmod(10 << 32, DECIMAL_SPLIT)


def test_bad_counter_and_clock_are_refused():
    with pytest.raises(IdExhausted):
        compose(_ts("2025-01-01T00:00:00"), 1 << 32)
    with pytest.raises(IdExhausted):
        compose(_ts("2025-01-01T00:00:00"), 0)
    with pytest.raises(ValueError):
        id_base(EPOCH - 1)


def _seckill_voucher(redis_client, voucher_id: int = 1, stock: int = 100) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    load_voucher(redis_client, voucher_id, stock, now - timedelta(days=1), now + timedelta(days=1))


def test_lua_makes_the_ids_of_the_layout(redis_client, settings):
    _seckill_voucher(redis_client)
    gate = SeckillGate(redis_client, settings)
    now = _ts(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    result = gate.reserve(1, 42, now=now + 0.25)
    assert result.outcome == OK
    assert result.order_id == compose(now, 1)


def test_lua_carries_across_the_decimal_split_exactly(redis_client, settings):
    """Lua numbers are doubles: the id is built from two decimal halves; check the carry."""
    _seckill_voucher(redis_client)
    gate = SeckillGate(redis_client, settings)
    start = _ts(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    # a second whose low half is close enough to 10^10 for a 32-bit counter to carry
    now = next(s for s in range(int(start), int(start) + 600) if id_parts(s)[1] > 8 * 10**9)
    count = DECIMAL_SPLIT - id_parts(now)[1]  # low + count == 10^10 exactly
    assert 0 < count < (1 << 32) - 1
    redis_client.set(day_key("order", now), count - 1)
    result = gate.reserve(1, 7, now=now)
    assert result.order_id == compose(now, count)
    result = gate.reserve(1, 8, now=now)
    assert result.order_id == compose(now, count + 1)


def test_lua_refuses_when_the_daily_counter_is_exhausted(redis_client, settings):
    _seckill_voucher(redis_client, stock=5)
    gate = SeckillGate(redis_client, settings)
    now = _ts(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    redis_client.set(day_key("order", now), (1 << 32) - 1)
    assert gate.reserve(1, 9, now=now).outcome == EXHAUSTED
    assert redis_client.get("seckill:stock:{1}") == "5"  # nothing reserved
    assert redis_client.xlen(stream_key(settings, 1)) == 0
