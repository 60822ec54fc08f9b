"""TTL jitter: spread expiries so keys written together do not expire together.

A warm-up writes hundreds of keys in one second; with one fixed TTL they would
all expire in the same second and send that whole burst to the database at
once (cache avalanche). Every physical TTL goes through :func:`jittered`.
"""

from __future__ import annotations

import random


def jittered(ttl_seconds: float, fraction: float, rng: random.Random | None = None) -> int:
    """``ttl_seconds`` plus a random 0..fraction of it, in milliseconds (PX), at least 1."""
    base = ttl_seconds * 1000.0
    extra = base * fraction * (rng or random).random()
    return max(1, int(base + extra))
