"""Globally unique, time-ordered 64-bit order ids made in Redis, one counter per hash slot.

An id is ``(seconds since 2022-01-01 UTC) << 32 | slot << 18 | n``: ``slot`` is
the Redis Cluster hash slot of the voucher (14 bits, its keys' tag ``{<id>}``)
and ``n`` is ``INCR icr:{prefix}:{<slot tag>}:<epoch second>`` (18 bits: at
most :data:`MAX_COUNT` ids per second per slot; beyond that the gate answers
"id exhausted" rather than repeat one).

Why the counter is per slot: the gate script must touch only keys of the
voucher's slot, so on a Redis Cluster the counter lives on the voucher's shard.
The *slot tag* is canonical per slot (:func:`slot_tag`: the smallest decimal
string hashing to it), so two vouchers on one slot share one counter, and their
ids never collide; vouchers on different slots differ in the slot bits. The same
code runs on a single Redis (the slot is then only a part of the id).

Why unique: two ids with the same high 32 bits and slot bits were made in the
same second on the same slot, so by the same counter key, and INCR never
repeats. Why time-ordered: the high bits are the second; within a second ids
sort by slot, then by counter. The second comes from the web host's clock
(the gate's ``now``), so a counter must outlive the seconds any host may still
name: :data:`ID_KEY_TTL` exceeds twice the tolerated skew :data:`CLOCK_SKEW_S`
(a host lagging by more than the TTL would recreate an expired counter at 1).

Why 64 bits: a BIGINT primary key that sorts by creation time (good for B-tree
inserts), 2^31 s (68 years) of range.

The seckill Lua script (``lua/seckill.lua``) makes the order ids inside the
script with :func:`counter_key` and :func:`id_parts` computed here;
:func:`compose` and :func:`decode` are the layout in Python (tests/test_ids.py
checks the script's ids against them; decode reads an id by hand).

JSON note: these ids exceed 2^53, so a JavaScript client would round them;
the HTTP API returns them as decimal strings.
"""

from __future__ import annotations

from binascii import crc_hqx
from datetime import UTC, datetime
from functools import cache

EPOCH = 1_640_995_200  # 2022-01-01T00:00:00Z
SECOND_SHIFT = 32
SLOT_BITS = 14
SLOTS = 1 << SLOT_BITS  # Redis Cluster's hash slots
COUNT_BITS = 18
MAX_COUNT = (1 << COUNT_BITS) - 1
CLOCK_SKEW_S = 60  # how far web hosts' clocks may disagree (NTP keeps them within ms)
ID_KEY_TTL = 2 * CLOCK_SKEW_S + 30  # a counter outlives every second a host may still name
KEY_FORMAT = "icr:{prefix}:{{{tag}}}:{second}"
# The Lua script cannot hold a 64-bit integer (Lua numbers are doubles, exact to
# 2^53), so the high part of an id is handed over split at 10^10 in decimal.
DECIMAL_SPLIT = 10**10


class IdExhausted(RuntimeError):
    """More than :data:`MAX_COUNT` ids in one second on one slot: refuse rather than collide."""


def hash_slot(tag: str) -> int:
    """The Redis Cluster slot of keys whose hash tag is ``tag`` (CRC16 mod 16384)."""
    return crc_hqx(tag.encode(), 0) % SLOTS


@cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the smallest decimal string hashing to it (~110,000 tries, once)."""
    tags: dict[int, str] = {}
    number = 0
    while len(tags) < SLOTS:
        tags.setdefault(hash_slot(str(number)), str(number))
        number += 1
    return tuple(tags[slot] for slot in range(SLOTS))


def slot_tag(slot: int) -> str:
    """The canonical hash tag of ``slot``: every counter of that slot is named with it."""
    return _slot_tags()[slot]


def counter_key(prefix: str, now: float, slot: int) -> str:
    """The counter of ``slot`` for the second of ``now`` (epoch seconds), in that slot."""
    return KEY_FORMAT.format(prefix=prefix, tag=slot_tag(slot), second=int(now))


def id_base(now: float, slot: int) -> int:
    """An id made at ``now`` on ``slot`` without its counter: ``seconds << 32 | slot << 18``."""
    seconds = int(now) - EPOCH
    if not 0 <= seconds < 1 << 31:
        raise ValueError(f"clock out of the id range: {now}")
    if not 0 <= slot < SLOTS:
        raise ValueError(f"not a hash slot: {slot}")
    return seconds << SECOND_SHIFT | slot << COUNT_BITS


def id_parts(now: float, slot: int) -> tuple[int, int]:
    """``id_base(now, slot)`` split as ``(high, low)`` decimal parts at 10^10, for Lua."""
    return divmod(id_base(now, slot), DECIMAL_SPLIT)


def compose(now: float, slot: int, count: int) -> int:
    """The id for the ``count``-th id of the second of ``now`` on ``slot``."""
    if not 1 <= count <= MAX_COUNT:
        raise IdExhausted(f"per-second id counter out of range: {count}")
    return id_base(now, slot) | count


def split(order_id: int) -> tuple[int, int, int]:
    """``(epoch second, slot, counter)`` of an id: what made it, for code."""
    seconds = order_id >> SECOND_SHIFT
    return EPOCH + seconds, (order_id >> COUNT_BITS) & (SLOTS - 1), order_id & MAX_COUNT


def decode(order_id: int) -> tuple[datetime, int, int]:
    """``(creation second as aware UTC datetime, slot, counter)`` of an id, for people."""
    second, slot, count = split(order_id)
    return datetime.fromtimestamp(second, UTC), slot, count
