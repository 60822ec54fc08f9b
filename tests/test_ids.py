"""The id layout (cache/ids.py) and the ids the seckill Lua script makes, on both backends."""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime, timedelta

import pytest
from redis.crc import key_slot

from cache.ids import (
    DECIMAL_SPLIT,
    EPOCH,
    MAX_COUNT,
    SLOTS,
    IdExhausted,
    compose,
    counter_key,
    decode,
    hash_slot,
    id_base,
    id_parts,
    slot_tag,
    split,
)
from cache.seckill import EXHAUSTED, OK, SeckillGate, load_voucher, stock_key, voucher_slot

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


def _ts(text: str) -> float:
    return calendar.timegm(datetime.fromisoformat(text).timetuple())


def _this_second() -> int:
    return int(time.time())


def _same_slot_as(voucher_id: int) -> int:
    """Another voucher id whose keys hash to the slot of ``voucher_id``'s."""
    slot = voucher_slot(voucher_id)
    return next(v for v in range(voucher_id + 1, 10_000_000) if voucher_slot(v) == slot)


def test_layout_is_seconds_then_slot_then_a_per_second_counter():
    now = _ts("2022-01-01T00:00:10")
    assert _ts("2022-01-01T00:00:00") == EPOCH
    assert compose(now, 5, 7) == (10 << 32) | (5 << 18) | 7
    assert compose(now, SLOTS - 1, MAX_COUNT) == (11 << 32) - 1  # the fields never overlap
    assert split(compose(now, 5, 7)) == (EPOCH + 10, 5, 7)
    assert decode(compose(now, 5, 7)) == (datetime(2022, 1, 1, 0, 0, 10, tzinfo=UTC), 5, 7)
    assert counter_key("order", now + 0.9, 5) == f"icr:order:{{{slot_tag(5)}}}:{EPOCH + 10}"
    assert id_parts(now, 5) == divmod((10 << 32) | (5 << 18), DECIMAL_SPLIT)


def test_a_slot_tag_is_the_smallest_decimal_of_its_slot():
    for slot in (0, 1, 866, 9189, SLOTS - 1):
        tag = slot_tag(slot)
        assert key_slot(tag.encode()) == slot  # redis-py's own CRC16
        assert all(hash_slot(str(n)) != slot for n in range(int(tag)))


def test_a_vouchers_counter_is_in_the_vouchers_slot():
    for voucher_id in (1, 2, 42, 1000, 123_456_789):
        counter = counter_key("order", time.time(), voucher_slot(voucher_id))
        assert key_slot(counter.encode()) == key_slot(stock_key(voucher_id).encode())


def test_bad_counter_and_clock_are_refused():
    now = _ts("2025-01-01T00:00:00")
    with pytest.raises(IdExhausted):
        compose(now, 0, MAX_COUNT + 1)
    with pytest.raises(IdExhausted):
        compose(now, 0, 0)
    with pytest.raises(ValueError):
        id_base(EPOCH - 1, 0)
    with pytest.raises(ValueError):
        id_base(now, SLOTS)


def _seckill_voucher(redis_client, voucher_id: int = 1, stock: int = 100) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    load_voucher(redis_client, voucher_id, stock, now - timedelta(days=1), now + timedelta(days=1))


def test_lua_makes_the_ids_of_the_layout(redis_client, settings):
    _seckill_voucher(redis_client)
    gate = SeckillGate(redis_client, settings)
    now = _this_second()
    result = gate.reserve(1, 42, now=now + 0.25)
    assert result.outcome == OK
    assert result.order_id == compose(now, voucher_slot(1), 1)
    assert decode(result.order_id)[1] == key_slot(stock_key(1).encode())


def test_two_vouchers_on_one_slot_share_its_counter(redis_client, settings):
    other = _same_slot_as(1)
    _seckill_voucher(redis_client, 1)
    _seckill_voucher(redis_client, other)
    gate = SeckillGate(redis_client, settings)
    now = _this_second()
    first = gate.reserve(1, 7, now=now)
    second = gate.reserve(other, 7, now=now)
    third = gate.reserve(1, 8, now=now)
    slot = voucher_slot(1)
    assert [r.order_id for r in (first, second, third)] == [
        compose(now, slot, 1),
        compose(now, slot, 2),
        compose(now, slot, 3),
    ]


def test_vouchers_on_different_slots_differ_in_their_slot_bits(redis_client, settings):
    vouchers = [1, 2, 3]
    assert len({voucher_slot(v) for v in vouchers}) == 3
    for v in vouchers:
        _seckill_voucher(redis_client, v)
    gate = SeckillGate(redis_client, settings)
    now = _this_second()
    ids = [gate.reserve(v, 7, now=now).order_id for v in vouchers]
    assert ids == [compose(now, voucher_slot(v), 1) for v in vouchers]
    assert len(set(ids)) == 3
    later = gate.reserve(1, 8, now=now + 1).order_id  # a new second: a new counter
    assert later == compose(now + 1, voucher_slot(1), 1) and later > max(ids)


def _near_the_split(start: int) -> tuple[int, int, int]:
    """A second, a slot (whose tag is a voucher id) and a count whose id carries at 10^10."""
    for second in range(start, start + 600):
        base = id_base(second, 0)
        split_at = (base // DECIMAL_SPLIT + 1) * DECIMAL_SPLIT
        slot = (split_at - base - 2) >> 18  # the last slot whose ids start below the split
        if slot >= SLOTS or slot_tag(slot) == "0":
            continue
        count = DECIMAL_SPLIT - id_parts(second, slot)[1]  # low + count == 10^10 exactly
        if 1 < count < MAX_COUNT:
            return second, slot, count
    raise AssertionError("no id near the decimal split in 10 minutes")


def test_lua_carries_across_the_decimal_split_exactly(redis_client, settings):
    """Lua numbers are doubles: the id is built from two decimal halves; check the carry."""
    second, slot, count = _near_the_split(_this_second())
    voucher_id = int(slot_tag(slot))
    assert voucher_slot(voucher_id) == slot
    _seckill_voucher(redis_client, voucher_id)
    gate = SeckillGate(redis_client, settings)
    redis_client.set(counter_key("order", second, slot), count - 1)
    result = gate.reserve(voucher_id, 7, now=second)
    assert result.order_id == compose(second, slot, count)
    result = gate.reserve(voucher_id, 8, now=second)
    assert result.order_id == compose(second, slot, count + 1)


def test_lua_refuses_when_the_seconds_counter_is_exhausted(redis_client, settings):
    _seckill_voucher(redis_client, stock=5)
    gate = SeckillGate(redis_client, settings)
    now = _this_second()
    redis_client.set(counter_key("order", now, voucher_slot(1)), MAX_COUNT - 1)
    assert gate.reserve(1, 8, now=now).order_id == compose(now, voucher_slot(1), MAX_COUNT)
    assert gate.reserve(1, 9, now=now).outcome == EXHAUSTED
    assert redis_client.get("seckill:stock:{1}") == "4"  # nothing reserved for user 9
    assert redis_client.smembers("seckill:order:{1}") == {"8"}
    assert gate.reserve(1, 9, now=now + 1).outcome == OK  # the next second has ids again
