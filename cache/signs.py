"""Daily sign-in: one BITMAP per user per month, ``sign:{userId}:{yyyyMM}``.

Bit ``day - 1`` is set when the user signed on that day (31 bits = 4 bytes a
month). The streak reads the month up to today with one ``BITFIELD GET
u{dayOfMonth} 0``: today is the lowest bit of that number, so the streak is
the count of trailing 1 bits. If every day of the month so far is signed, the
streak continues into the previous month's key from its last day (and so on).

Semantics (hmdp's): the streak is counted *ending today*; if today is not
signed yet the streak is 0, even if yesterday was signed.

"Today" is always passed in (a ``date``), never read from the clock here, so
callers decide the time zone and tests can place themselves at any month edge.
"""

from __future__ import annotations

from datetime import date, timedelta

import redis

SIGN_KEY = "sign:{user_id}:{month}"


def sign_key(user_id: int, day: date) -> str:
    """The key of ``user_id``'s bitmap for the month of ``day`` (``sign:7:202402``)."""
    return SIGN_KEY.format(user_id=user_id, month=day.strftime("%Y%m"))


def sign(client: redis.Redis, user_id: int, today: date) -> bool:
    """Set today's bit; True if this signed the user in, False if already signed today."""
    previous = client.setbit(sign_key(user_id, today), today.day - 1, 1)
    return previous == 0


def trailing_ones(bits: int, width: int) -> int:
    """How many consecutive 1 bits end ``bits`` (at most ``width``)."""
    count = 0
    while count < width and bits & 1:
        bits >>= 1
        count += 1
    return count


def streak(client: redis.Redis, user_id: int, today: date) -> int:
    """Consecutive signed days ending ``today`` (0 if today is not signed).

    One BITFIELD per month visited: a month that is fully signed up to its
    last day sends the count on to the month before, so the loop ends at the
    first unsigned day (at the latest, the first month the user never signed).
    """
    total = 0
    day = today
    while True:
        width = day.day  # bits 0..day-1 of this month's map
        bits = client.bitfield(sign_key(user_id, day)).get(f"u{width}", 0).execute()[0] or 0
        run = trailing_ones(int(bits), width)
        total += run
        if run < width:
            return total
        day = day.replace(day=1) - timedelta(days=1)  # last day of the previous month
