"""The seckill gate: one atomic Lua call decides a flash-sale order in Redis.

Redis holds, per seckill voucher: ``seckill:stock:{id}`` (remaining stock, a
string), ``seckill:window:{id}`` (hash ``begin``/``end`` in epoch ms) and
``seckill:order:{id}`` (the set of buyers: hmdp's key, read by its tooling)
with ``seckill:orderid:{id}`` beside it (hash buyer -> the order id issued to
them, so a buyer refused as "already ordered" is told that id).
``lua/seckill.lua`` checks window, duplicate and stock, then reserves: the
order id, the Stream entry, the stock decrement and the buyer's two records
happen together or not at all, so no number of concurrent requests can sell
more than the stock or twice to one user.

The database stays the source of truth for voucher *definitions*: a voucher
is loaded at its creation (:func:`load_voucher`), and one missing in Redis is
loaded on demand by :mod:`cache.reconcile` (stock only if absent, minus the
reservations not settled yet, so sold stock is never sold again). Persisting the reservation is the
job of the order task (see :mod:`cache.order_stream`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from redis.commands.core import Script

from settings import Settings

from .ids import ID_KEY_TTL, day_key, id_parts
from .login import TOKEN_KEY
from .order_stream import voucher_key
from .ratelimit import Decision, TokenBucket, bucket_args
from .scripts import call, load_composed

# A voucher's keys share its id as their hash tag (seckill:stock:{42}): the gate and
# the repair touch them together, so on a Redis Cluster a voucher lives on one slot.
STOCK_KEY = "seckill:stock:{{{voucher_id}}}"
WINDOW_KEY = "seckill:window:{{{voucher_id}}}"
ORDER_SET_KEY = "seckill:order:{{{voucher_id}}}"
ORDER_ID_KEY = "seckill:orderid:{{{voucher_id}}}"
ID_PREFIX = "order"

OK = "ok"
SOLD_OUT = "sold_out"
DUPLICATE = "duplicate"
NOT_STARTED = "not_started"
ENDED = "ended"
UNKNOWN = "unknown"
EXHAUSTED = "id_exhausted"
# Only from reserve_for_session: no session behind the token, or one whose user id the
# script does not judge (not a plain positive decimal: the web's auth code decides).
NO_SESSION = "no_session"
ODD_SESSION = "odd_session"
_CODES = {
    0: OK,
    1: SOLD_OUT,
    2: DUPLICATE,
    3: NOT_STARTED,
    4: ENDED,
    5: UNKNOWN,
    6: EXHAUSTED,
    7: NO_SESSION,
    8: ODD_SESSION,
}


def stock_key(voucher_id: int) -> str:
    """Remaining stock (hmdp's key name, so existing tooling reads it)."""
    return STOCK_KEY.format(voucher_id=voucher_id)


def window_key(voucher_id: int) -> str:
    """Sale window hash, so the script checks time without a database read."""
    return WINDOW_KEY.format(voucher_id=voucher_id)


def order_set_key(voucher_id: int) -> str:
    """Buyers of a voucher: the one-order-per-user rule lives here."""
    return ORDER_SET_KEY.format(voucher_id=voucher_id)


def order_id_key(voucher_id: int) -> str:
    """Buyer -> issued order id: what a retried order is told, what audits check rows against."""
    return ORDER_ID_KEY.format(voucher_id=voucher_id)


def epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds of a datetime; naive means UTC (what the database stores)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class GateResult:
    """The gate's answer: an outcome, the buyer, and for ``ok`` the order and Stream ids.

    For DUPLICATE, ``order_id`` is the id issued to the buyer earlier (None when
    Redis does not know it any more).
    """

    outcome: str
    order_id: int | None = None
    stream_id: str | None = None
    user_id: int | None = None  # None only for NO_SESSION / ODD_SESSION

    @property
    def ok(self) -> bool:
        """True when a unit was reserved (and must be dispatched)."""
        return self.outcome == OK


class SeckillGate:
    """Runs ``lua/seckill.lua`` for one Redis client (create once per process)."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.client = client
        self.stream = settings.order_stream
        self.script = load_composed(client, "seckill", ("session_user",))
        self._charged: Script | None = None

    def _keys_args(
        self,
        voucher_id: int,
        user_id: int | str,
        now: float,
        session: tuple[str, int] | None = None,
    ) -> tuple[list[str], list[object]]:
        high, low = id_parts(now)
        keys = [
            stock_key(voucher_id),
            window_key(voucher_id),
            order_set_key(voucher_id),
            voucher_key(self.stream, voucher_id),
            day_key(ID_PREFIX, now),
            order_id_key(voucher_id),
        ]
        args: list[object] = [user_id, voucher_id, int(now * 1000), high, low, ID_KEY_TTL]
        if session is not None:  # user_id is '': the script reads the session
            keys.append(TOKEN_KEY.format(token=session[0]))
            args.append(session[1])
        return keys, args

    def _call(  # type: ignore[no-untyped-def]
        self,
        voucher_id: int,
        user_id: int | str,
        now: float,
        client=None,
        session: tuple[str, int] | None = None,
    ):
        keys, args = self._keys_args(voucher_id, user_id, now, session)
        if client is None:
            return call(self.script, keys, args)
        return self.script(keys=keys, args=args, client=client)

    @staticmethod
    def _result(reply: list) -> GateResult:
        outcome = _CODES[int(reply[0])]
        user_id = int(reply[1]) if reply[1] else None
        if outcome == DUPLICATE:
            known = reply[2] if len(reply) > 2 else ""
            return GateResult(outcome, int(known) if known else None, user_id=user_id)
        if outcome != OK:
            return GateResult(outcome, user_id=user_id)
        return GateResult(OK, int(reply[2]), str(reply[3]), user_id)

    def reserve(self, voucher_id: int, user_id: int, now: float | None = None) -> GateResult:
        """Try to reserve one unit of ``voucher_id`` for ``user_id``: ONE Redis call."""
        now = time.time() if now is None else now
        return self._result(self._call(voucher_id, user_id, now))

    def reserve_for_session(
        self, voucher_id: int, token: str, session_ttl: int, now: float | None = None
    ) -> GateResult:
        """Like :meth:`reserve` for the user of login session ``token``: still ONE call.

        The session is read in the script as the web's auth hook reads it (TTL pushed
        back to ``session_ttl``, then its id), before anything else: NO_SESSION if the
        token has none, ODD_SESSION if its id is not a plain positive decimal (the
        caller's own auth code must judge that one). Saves the web fast path the
        separate session round trip.
        """
        now = time.time() if now is None else now
        return self._result(self._call(voucher_id, "", now, session=(token, session_ttl)))

    def reserve_charged(
        self,
        voucher_id: int,
        token: str,
        session_ttl: int,
        bucket_prefix: str,
        bucket: TokenBucket,
        now: float | None = None,
    ) -> tuple[Decision | None, GateResult | None]:
        """:meth:`reserve_for_session` behind the user's token bucket: still ONE call.

        What the web's auth hook, its per-user rate limit and :meth:`reserve` do
        in three calls (``lua/seckill_charged.lua``): the session is read first
        (NO_SESSION / ODD_SESSION as :meth:`reserve_for_session`, with no
        decision: nothing charged), then the user's bucket, ``bucket_prefix``
        followed by the user id, is charged one token, and only if it admits the
        request the gate runs (the gate result is None when the bucket refused:
        nothing reserved, nothing charged).
        """
        now = time.time() if now is None else now
        if self._charged is None:
            self._charged = load_composed(
                self.client, "seckill_charged", ("session_user", "token_bucket", "seckill")
            )
        keys, args = self._keys_args(voucher_id, "", now)
        reply = call(
            self._charged,
            [TOKEN_KEY.format(token=token), *keys],
            [session_ttl, bucket_prefix, "", 1, *bucket_args(bucket), *args[1:]],
        )
        code = int(reply[0])
        if code:
            return None, GateResult(_CODES[code])
        decision = Decision.from_reply(reply[2:6], bucket.limit)
        return decision, (self._result(reply[6:]) if decision.allowed else None)

    def reserve_many(
        self, voucher_id: int, user_ids: list[int], now: float | None = None
    ) -> list[GateResult]:
        """One attempt per user in one pipeline (bulk tools, tests); each stays atomic."""
        now = time.time() if now is None else now
        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            self._call(voucher_id, user_id, now, client=pipe)
        return [self._result(reply) for reply in pipe.execute()]


def load_voucher(
    client: redis.Redis, voucher_id: int, stock: int, begin: datetime, end: datetime
) -> bool:
    """Make a NEW seckill voucher known to the gate; True if the stock was loaded now.

    For a voucher nobody ordered yet (its creation): the stock is written only
    when absent (never reset after sales), the window always (the database is
    the authority on it). One MULTI, so the gate never sees stock without a
    window. A voucher that may have unsettled reservations is loaded by
    :mod:`cache.reconcile` instead, which subtracts them (loading the database
    stock as it is would sell those units again).
    """
    pipe = client.pipeline(transaction=True)
    pipe.set(stock_key(voucher_id), int(stock), nx=True)
    pipe.hset(window_key(voucher_id), mapping={"begin": epoch_ms(begin), "end": epoch_ms(end)})
    loaded, _ = pipe.execute()
    return bool(loaded)


@dataclass(frozen=True)
class RedisSnapshot:
    """Redis' view of one voucher, read atomically (for audits)."""

    stock: int | None  # None: not loaded
    buyers: frozenset[int]
    issued: dict[int, int] = field(default_factory=dict)  # buyer -> order id issued to them


def redis_snapshot(client: redis.Redis, voucher_id: int) -> RedisSnapshot:
    """Stock, buyer set and issued ids in one MULTI, so ``stock + len(buyers)`` is consistent."""
    pipe = client.pipeline(transaction=True)
    pipe.get(stock_key(voucher_id))
    pipe.smembers(order_set_key(voucher_id))
    pipe.hgetall(order_id_key(voucher_id))
    stock, members, issued = pipe.execute()
    return RedisSnapshot(
        None if stock is None else int(stock),
        frozenset(int(m) for m in members),
        {int(user): int(order_id) for user, order_id in issued.items()},
    )


def live_stocks(client: redis.Redis, voucher_ids: list[int]) -> dict[int, int]:
    """Current Redis stock of each loaded voucher (one MGET)."""
    if not voucher_ids:
        return {}
    values = client.mget([stock_key(v) for v in voucher_ids])
    return {v: int(s) for v, s in zip(voucher_ids, values, strict=True) if s is not None}


class MissingVouchers:
    """A small in-process memory of ids the database does not know.

    A flood of orders for a nonexistent voucher would otherwise cost one
    database query each. Only consulted after the gate said "unknown", so a
    voucher created meanwhile (loaded into Redis at creation) is never hidden.
    """

    def __init__(self, ttl: float = 5.0, max_size: int = 10_000):
        self.ttl = ttl
        self.max_size = max_size
        self._until: dict[int, float] = {}
        self._lock = threading.Lock()

    def __contains__(self, voucher_id: int) -> bool:
        until = self._until.get(voucher_id)
        return until is not None and until > time.monotonic()

    def add(self, voucher_id: int) -> None:
        """Remember ``voucher_id`` as missing for ``ttl`` seconds."""
        with self._lock:
            if len(self._until) >= self.max_size:
                now = time.monotonic()
                self._until = {k: u for k, u in self._until.items() if u > now}
                if len(self._until) >= self.max_size:
                    self._until.clear()
            self._until[voucher_id] = time.monotonic() + self.ttl
