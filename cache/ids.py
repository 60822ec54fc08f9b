"""Globally unique, time-ordered 64-bit ids made in Redis: the layout of hmdp's ``RedisIdWorker``.

An id is ``(seconds since 2022-01-01 UTC) << 32 | counter`` where the counter
is ``INCR icr:{prefix}:{yyyy:MM:dd}`` (UTC day; the key expires after ~31 days).
Why unique: the day key is derived from the same second as the high bits, so
two ids with the same high bits share one counter, and INCR never repeats.
Why 64 bits: a BIGINT primary key that sorts by creation time (good for
B-tree inserts), 2^31 s (68 years) of range and 2^32 ids per day.

The seckill Lua script (``lua/seckill.lua``) makes the order ids inside the
script with this key and this layout, from :func:`id_parts` computed here;
:func:`compose` and :func:`decode` are the layout in Python (tests/test_ids.py
checks the script's ids against them; decode reads an id by hand).

JSON note: these ids exceed 2^53, so a JavaScript client would round them;
the HTTP API returns them as decimal strings.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

EPOCH = 1_640_995_200  # 2022-01-01T00:00:00Z
COUNT_BITS = 32
MAX_COUNT = (1 << COUNT_BITS) - 1
ID_KEY_TTL = 31 * 24 * 3600  # a day key is useless after its day; keep a month for audits
KEY_FORMAT = "icr:{prefix}:{day}"
# The Lua script cannot hold a 64-bit integer (Lua numbers are doubles, exact to
# 2^53), so the high part of an id is handed over split at 10^10 in decimal.
DECIMAL_SPLIT = 10**10


class IdExhausted(RuntimeError):
    """More than 2^32 ids in one day for one prefix: refuse rather than collide."""


def day_key(prefix: str, now: float) -> str:
    """The counter key for the UTC day of ``now`` (epoch seconds)."""
    day = time.strftime("%Y:%m:%d", time.gmtime(int(now)))
    return KEY_FORMAT.format(prefix=prefix, day=day)


def id_base(now: float) -> int:
    """The high 32 bits of an id made at ``now``: seconds since EPOCH, shifted."""
    seconds = int(now) - EPOCH
    if not 0 <= seconds < 1 << 31:
        raise ValueError(f"clock out of the id range: {now}")
    return seconds << COUNT_BITS


def id_parts(now: float) -> tuple[int, int]:
    """``id_base(now)`` split as ``(high, low)`` decimal parts at 10^10, for Lua."""
    return divmod(id_base(now), DECIMAL_SPLIT)


def compose(now: float, count: int) -> int:
    """The id for the ``count``-th id of the day at ``now``."""
    if not 1 <= count <= MAX_COUNT:
        raise IdExhausted(f"daily id counter out of range: {count}")
    return id_base(now) | count


def decode(order_id: int) -> tuple[datetime, int]:
    """``(creation second as aware UTC datetime, daily counter)`` of an id (debugging)."""
    seconds, count = order_id >> COUNT_BITS, order_id & MAX_COUNT
    return datetime.fromtimestamp(EPOCH + seconds, UTC), count
