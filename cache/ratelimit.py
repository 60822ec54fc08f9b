"""Rate limiters whose state lives in Redis, so every process shares one budget.

Two strategies behind one interface (as in the ``limits`` package, one class
per strategy): :class:`TokenBucketLimiter` (burst = capacity, sustained rate =
refill) and :class:`SlidingWindowLimiter` (an exact log of admitted requests).
``hit(key, rule)`` charges one key; ``hit_all([(key, rule), ...])`` charges
several keys at once, all or nothing, in ONE script call (e.g. per phone AND
per IP). Each call is one EVALSHA of ``lua/token_bucket.lua`` or
``lua/sliding_window.lua``, atomic in Redis, so concurrent processes can never
admit more than the rule allows.

Time: with ``now=None`` the scripts read Redis ``TIME`` (one clock for all
processes); tests pass ``now`` (seconds) to drive the clock themselves. Keys
expire on their own once they would be back to full, so idle clients cost no
memory.

Rules are written as short specs (see :func:`parse_rule`): ``"10,5/s"`` is a
token bucket of 10 with 5 tokens a second; ``"100/10min"`` is a sliding window
of 100 requests per 10 minutes; ``"off"`` disables the limit.
"""

from __future__ import annotations

import math
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import redis
from redis.commands.core import Script

from .scripts import load_script

KEY_PREFIX = "ratelimit"


@dataclass(frozen=True)
class TokenBucket:
    """A bucket of ``capacity`` tokens (the burst) refilled at ``rate`` tokens/second."""

    capacity: int
    rate: float

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("a token bucket needs a capacity of at least 1")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError("a token bucket needs a positive, finite refill rate")

    @property
    def limit(self) -> int:
        return self.capacity


@dataclass(frozen=True)
class SlidingWindow:
    """At most ``limit`` requests in any ``window`` seconds (exact, not approximated)."""

    limit: int
    window: float

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("a sliding window needs a limit of at least 1")
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError("a sliding window needs a positive, finite length")


Rule = TokenBucket | SlidingWindow


@dataclass(frozen=True)
class Decision:
    """The answer for one request, with what a client needs to back off politely.

    ``reset_after``: seconds until the limit is fully restored; ``retry_after``:
    seconds until this request would be admitted (0 when allowed).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float

    @classmethod
    def from_reply(cls, reply: Sequence[object], limit: int) -> Decision:
        """One key's four numbers of a limiter script: allowed, left, ms to full, ms to allowed."""
        allowed, remaining, to_full, wait = (int(value) for value in reply[:4])  # type: ignore[call-overload]
        return cls(bool(allowed), limit, remaining, to_full / 1000.0, wait / 1000.0)

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` (Reset in seconds from now) and, when refused, ``Retry-After``."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_after)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


def limit_key(group: object, *parts: object) -> str:
    """The Redis key of one limited subject of ``group``, e.g. ``ratelimit:{login}:phone:138...``.

    The group is the hash tag: a request charges all its keys (user, phones,
    address) of one group in ONE script, so on a Redis Cluster they must share a
    slot. The cost: one group's limits live on one shard.
    """
    return ":".join((KEY_PREFIX, f"{{{group}}}", *(str(p) for p in parts)))


class Limiter(ABC):
    """One strategy: charges keys against rules in one atomic script call."""

    script_name: ClassVar[str]
    rule_type: ClassVar[type]

    def __init__(self, client: redis.Redis):
        self.client = client
        self._script: Script = load_script(client, self.script_name)

    def hit(self, key: str, rule: Rule, now: float | None = None) -> Decision:
        """Charge one request to ``key``; refused requests are not charged."""
        return self.hit_all([(key, rule)], now)

    def hit_all(self, items: Sequence[tuple[str, Rule]], now: float | None = None) -> Decision:
        """Charge one request to every key, or to none if any key is over its rule.

        The decision reported is the binding one: when refused, the key that
        makes the client wait longest; when allowed, the key with least left.
        """
        if not items:
            raise ValueError("hit_all needs at least one (key, rule)")
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError("hit_all got the same key twice")
        args: list[object] = ["" if now is None else repr(now * 1000.0), self._extra_arg()]
        for _, rule in items:
            if not isinstance(rule, self.rule_type):
                raise TypeError(f"{type(self).__name__} cannot apply {rule!r}")
            args.extend(self._rule_args(rule))
        reply = self._script(keys=keys, args=args)
        results = [
            Decision.from_reply(reply[i * 4 : i * 4 + 4], rule.limit)
            for i, (_, rule) in enumerate(items)
        ]
        if not results[0].allowed:
            worst = max(results, key=lambda d: d.retry_after)
            return Decision(
                False,
                worst.limit,
                worst.remaining,
                worst.reset_after,
                max(worst.retry_after, 0.001),
            )
        tightest = min(results, key=lambda d: (d.remaining, -d.reset_after))
        return Decision(True, tightest.limit, tightest.remaining, tightest.reset_after, 0.0)

    def _extra_arg(self) -> str:
        return ""

    @abstractmethod
    def _rule_args(self, rule: Rule) -> list[object]: ...


class TokenBucketLimiter(Limiter):
    """Burst up to the capacity, then the sustained refill rate (lua/token_bucket.lua)."""

    script_name = "token_bucket"
    rule_type = TokenBucket

    def _extra_arg(self) -> str:
        return "1"  # tokens per request

    def _rule_args(self, rule: Rule) -> list[object]:
        assert isinstance(rule, TokenBucket)
        return bucket_args(rule)


def bucket_args(rule: TokenBucket) -> list[object]:
    """A bucket's ARGV pair in lua/token_bucket.lua (also used by cache/seckill.py)."""
    return [rule.capacity, repr(float(rule.rate))]


class SlidingWindowLimiter(Limiter):
    """At most N admitted requests in any window (lua/sliding_window.lua)."""

    script_name = "sliding_window"
    rule_type = SlidingWindow

    def _extra_arg(self) -> str:
        return secrets.token_hex(8)  # makes this request's log entry unique

    def _rule_args(self, rule: Rule) -> list[object]:
        assert isinstance(rule, SlidingWindow)
        return [rule.limit, repr(rule.window * 1000.0)]


LIMITERS: dict[type, type[Limiter]] = {
    TokenBucket: TokenBucketLimiter,
    SlidingWindow: SlidingWindowLimiter,
}


def limiter_for(client: redis.Redis, rule: Rule) -> Limiter:
    """The limiter that applies ``rule``'s strategy."""
    return LIMITERS[type(rule)](client)


_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_SPEC = re.compile(
    r"(?P<first>\d+)\s*(?:,\s*(?P<second>\d+(?:\.\d+)?))?\s*/\s*(?P<count>\d*)\s*(?P<unit>[a-z]+?)s?",
    re.ASCII,
)


def parse_rule(spec: str) -> Rule | None:
    """Parse a rule spec from configuration; ``None`` means no limit.

    ``"BURST,SUSTAINED/UNIT"`` is a token bucket (capacity BURST, refilled with
    SUSTAINED tokens per UNIT); ``"N/UNIT"`` is a sliding window of N requests
    per UNIT. UNIT is s, min, h or d, optionally with a count (``10min``).
    ``"off"`` (or empty) disables the limit. Raises ValueError on anything else,
    so a typo stops the app at start-up instead of silently not limiting.
    """
    text = spec.strip().lower()
    if text in {"", "off", "none", "0"}:
        return None
    match = _SPEC.fullmatch(text)
    if not match or match["unit"] not in _UNITS:
        raise ValueError(
            f"bad rate limit {spec!r}: use 'BURST,SUSTAINED/UNIT' (token bucket), "
            "'N/UNIT' (sliding window) or 'off'; UNIT is s, min, h or d"
        )
    period = int(match["count"] or 1) * _UNITS[match["unit"]]
    if period <= 0:
        raise ValueError(f"bad rate limit {spec!r}: the period must be positive")
    first = int(match["first"])
    if match["second"] is None:
        return SlidingWindow(limit=first, window=float(period))
    return TokenBucket(capacity=first, rate=float(match["second"]) / period)
