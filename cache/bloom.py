"""A Bloom filter of existing ids, stored as a Redis bitmap (SETBIT/GETBIT).

Guards the cache against penetration: an id the filter has never seen is
answered "not found" without touching the cache or the database, and without
writing a null marker, so a scan of random ids grows nothing in Redis.

Sizing follows the textbook formulas for ``n`` expected items and false
positive rate ``p``: ``m = -n ln p / (ln 2)^2`` bits and ``k = (m / n) ln 2``
hashes. The ``k`` positions come from one blake2b digest split into two 64-bit
halves ``h1, h2`` (Kirsch-Mitzenmacher double hashing: ``h1 + i*h2 mod m``).

Rebuilds (beat) build a new bitmap offline and RENAME it over the live key in
one Lua call; inserts during a rebuild also go to the key being built, so none
is lost (see ``lua/bloom_add.lua``). A missing filter lets everything through.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import redis

from .scripts import load_script

# A crashed rebuild's half-built key disappears by itself after this long.
BUILDING_TTL_MS = 60 * 60 * 1000


def bloom_size(expected: int, fp_rate: float) -> tuple[int, int]:
    """(m bits, k hashes) for ``expected`` items at false-positive rate ``fp_rate``."""
    if expected < 1 or not 0 < fp_rate < 1:
        raise ValueError("expected must be >= 1 and 0 < fp_rate < 1")
    m = math.ceil(-expected * math.log(fp_rate) / (math.log(2) ** 2))
    k = max(1, round(m / expected * math.log(2)))
    return m, k


class BloomFilter:
    """One Redis bitmap key plus the arithmetic to address it.

    The rebuild's keys are ``key`` + ``:building`` / ``:scratch``, swapped in by
    one script: give ``key`` a hash tag (``bloom:{shop}``) so that on a Redis
    Cluster all three share its slot.
    """

    def __init__(self, client: redis.Redis, key: str, expected: int, fp_rate: float = 0.01):
        self.client = client
        self.key = key
        self.building_key = f"{key}:building"
        self.scratch_key = f"{key}:scratch"
        self.m, self.k = bloom_size(expected, fp_rate)
        self._check = load_script(client, "bloom_check")
        self._add = load_script(client, "bloom_add")
        self._swap = load_script(client, "bloom_swap")

    def offsets(self, item: object) -> list[int]:
        """The k bit positions of ``item`` (its ``str()``), by double hashing."""
        digest = hashlib.blake2b(str(item).encode(), digest_size=16).digest()
        h1 = int.from_bytes(digest[:8], "little")
        h2 = int.from_bytes(digest[8:], "little") | 1  # odd: never a zero stride
        m = self.m
        return [(h1 + i * h2) % m for i in range(self.k)]

    def might_contain(self, item: object) -> bool:
        """False only when ``item`` was surely never added (or True if not built)."""
        return self._check(keys=[self.key], args=self.offsets(item)) != 0

    def exists(self) -> bool:
        """Whether the filter has been built."""
        return bool(self.client.exists(self.key))

    def add(self, item: object) -> None:
        """Add one item (an insert); a no-op until the filter is first built."""
        self._add(keys=[self.key, self.building_key], args=self.offsets(item))

    def begin_rebuild(self) -> None:
        """Create the key being built BEFORE the caller scans its source of ids.

        From now on :meth:`add` also writes there, so an insert committed after
        the scan started is in the new filter even if the scan missed it.
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.building_key, self.scratch_key)
        pipe.setbit(self.building_key, self.m - 1, 0)  # allocate all m bits now
        pipe.pexpire(self.building_key, BUILDING_TTL_MS)
        pipe.execute()

    def finish_rebuild(self, items: Iterable[object]) -> int:
        """Set the bits of ``items`` offline, then swap the new filter in atomically.

        Returns how many items went in. The bitmap is computed in Python and
        sent as one value (Redis bit order: bit 0 is the high bit of byte 0),
        which is far cheaper than one SETBIT per bit.
        """
        bits = bytearray((self.m + 7) // 8)
        count = 0
        for item in items:
            for offset in self.offsets(item):
                bits[offset >> 3] |= 0x80 >> (offset & 7)
            count += 1
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.scratch_key, bytes(bits), px=BUILDING_TTL_MS)
        pipe.execute()
        if not self._swap(keys=[self.building_key, self.scratch_key, self.key]):
            raise RuntimeError(f"bloom rebuild of {self.key!r} lost its building key")
        return count
