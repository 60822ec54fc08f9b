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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from settings import Settings

from .ids import ID_KEY_TTL, MAX_COUNT, counter_key, hash_slot, id_parts
from .login import TOKEN_KEY
from .order_stream import voucher_key
from .ratelimit import Decision, TokenBucket, TokenBucketLimiter, bucket_args
from .replication import ReplicaWait, call_and_wait, fence
from .scripts import call, load_composed, load_script, run_each

# A voucher's keys share its id as their hash tag (seckill:stock:{42}): the gate and
# the repair touch them together, so on a Redis Cluster a voucher lives on one slot.
STOCK_KEY = "seckill:stock:{{{voucher_id}}}"
WINDOW_KEY = "seckill:window:{{{voucher_id}}}"
ORDER_SET_KEY = "seckill:order:{{{voucher_id}}}"
ORDER_ID_KEY = "seckill:orderid:{{{voucher_id}}}"
FENCE_KEY = "seckill:fence:{{{voucher_id}}}"
ID_PREFIX = "order"

OK = "ok"
SOLD_OUT = "sold_out"
DUPLICATE = "duplicate"
NOT_STARTED = "not_started"
ENDED = "ended"
UNKNOWN = "unknown"
EXHAUSTED = "id_exhausted"
# Reserved on the master, but fewer replicas than HMDP_SECKILL_WAIT_REPLICAS acknowledged
# it within the timeout (cache/replication.py): the reservation exists on the master and
# settles from its Stream entry; the client is not told 200 (a failover now could lose
# it) and learns its id by retrying.
UNCONFIRMED = "unconfirmed"
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


def fence_key(voucher_id: int) -> str:
    """The settler's replication fence in the voucher's slot (cache.replication.fence)."""
    return FENCE_KEY.format(voucher_id=voucher_id)


def epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds of a datetime; naive means UTC (what the database stores)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class GateResult:
    """The gate's answer: an outcome, the buyer, and for ``ok`` the order and Stream ids.

    For DUPLICATE, ``order_id`` is the id issued to the buyer earlier (None when
    Redis does not know it any more). UNCONFIRMED carries what ``ok`` does.
    """

    outcome: str
    order_id: int | None = None
    stream_id: str | None = None
    user_id: int | None = None  # None only for NO_SESSION / ODD_SESSION

    @property
    def ok(self) -> bool:
        """True when a unit was reserved, as durably as asked (answered 200, dispatched)."""
        return self.outcome == OK


class SeckillGate:
    """Runs ``lua/seckill.lua`` for one Redis client (create once per process).

    On a single Redis the fast paths fuse their calls into one script (session +
    gate; session + bucket + gate). A Redis Cluster cannot: a script's keys must
    share a slot, and the session, the user's bucket and the voucher live on
    different ones. There the same methods make the calls they must, in the
    same order and with the same answers: the session (``lua/session_user.lua``
    alone), the bucket (:class:`~cache.ratelimit.TokenBucketLimiter`), then the
    gate. Which one is decided here, once, by the client's type.

    With ``HMDP_SECKILL_WAIT_REPLICAS`` > 0 every script call that can reserve
    (the gate's, fused or not) runs through :func:`cache.replication.call_and_wait`:
    a reservation fewer replicas acknowledged within the timeout is UNCONFIRMED,
    and so is an "already ordered" whose id a fence could not confirm.
    """

    def __init__(self, client: redis.Redis | RedisCluster, settings: Settings):
        self.client = client
        self.stream = settings.order_stream
        self.script = load_composed(client, "seckill", ("session_user",))
        self._charged: Script | None = None
        self.fused = not isinstance(client, RedisCluster)
        self._session: Script | None = None if self.fused else load_script(client, "session_user")
        self._buckets = None if self.fused else TokenBucketLimiter(client)
        self.wait = ReplicaWait.of(settings)

    def keys_args(
        self,
        voucher_id: int,
        user_id: int | str,
        now: float,
        session: tuple[str, int] | None = None,
    ) -> tuple[list[str], list[object]]:
        """The KEYS and ARGV of one reservation by ``lua/seckill.lua`` (``self.script``).

        Public for whoever runs the script without this class (``bench gate-lua``
        feeding redis-benchmark): these are exactly what the gate sends. With
        ``session`` (token, TTL) and an empty ``user_id``, the script reads the
        user from the login session (the fused single-Redis path).
        """
        slot = voucher_slot(voucher_id)
        high, low = id_parts(now, slot)
        keys = [
            stock_key(voucher_id),
            window_key(voucher_id),
            order_set_key(voucher_id),
            voucher_key(self.stream, voucher_id),
            counter_key(ID_PREFIX, now, slot),
            order_id_key(voucher_id),
        ]
        args: list[object] = [
            user_id,
            voucher_id,
            int(now * 1000),
            high,
            low,
            ID_KEY_TTL,
            MAX_COUNT,
        ]
        if session is not None:  # user_id is '': the script reads the session
            keys.append(TOKEN_KEY.format(token=session[0]))
            args.append(session[1])
        return keys, args

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

    def _gate(
        self,
        voucher_id: int,
        user_id: int | str,
        now: float,
        session: tuple[str, int] | None = None,
    ) -> GateResult:
        keys, args = self.keys_args(voucher_id, user_id, now, session)
        reply, confirmed = self._run(self.script, keys, args, _gate_reserved)
        return self._confirmed(voucher_id, self._result(reply), confirmed)

    def _confirmed(self, voucher_id: int, result: GateResult, confirmed: bool) -> GateResult:
        """``result``, or UNCONFIRMED when the replicas may not have what it tells.

        A reservation is confirmed by the ``WAIT`` after its script. A DUPLICATE
        tells the id issued earlier, maybe by a reservation that was itself
        unconfirmed: the script wrote nothing now, so the replicas' having it is
        proven by a fence (:func:`cache.replication.fence`) before the id is told.
        """
        if confirmed and result.outcome == DUPLICATE and result.order_id is not None:
            confirmed = fence(self.client, fence_key(voucher_id), self.wait)
        return result if confirmed else replace(result, outcome=UNCONFIRMED)

    def _run(
        self, script: Script, keys: list, args: list, reserved: Callable[[list], bool]
    ) -> tuple[list, bool]:
        """A script call that may reserve: its reply, and whether enough replicas have it."""
        if self.wait is None:
            return call(script, keys, args), True
        waited = call_and_wait(script, keys, args, self.wait, reserved)
        return waited.reply, waited.confirmed(self.wait)

    def reserve(self, voucher_id: int, user_id: int, now: float | None = None) -> GateResult:
        """Try to reserve one unit of ``voucher_id`` for ``user_id``: ONE Redis call."""
        now = time.time() if now is None else now
        return self._gate(voucher_id, user_id, now)

    def _session_user(self, token: str, session_ttl: int) -> int | GateResult:
        """The split path's session read: the user id, or the NO_SESSION / ODD_SESSION answer."""
        assert self._session is not None
        reply = call(self._session, [TOKEN_KEY.format(token=token)], [session_ttl])
        code = int(reply[0])
        return int(reply[1]) if code == 0 else GateResult(_CODES[code])

    def reserve_for_session(
        self, voucher_id: int, token: str, session_ttl: int, now: float | None = None
    ) -> GateResult:
        """Like :meth:`reserve` for the user of login session ``token``.

        The session is read as the web's auth hook reads it (TTL pushed back to
        ``session_ttl``, then its id), before anything else: NO_SESSION if the
        token has none, ODD_SESSION if its id is not a plain positive decimal
        (the caller's own auth code must judge that one). On a single Redis in
        the gate's script: ONE call, saving the web fast path the separate
        session round trip; on a cluster the session's call, then the gate's.
        """
        now = time.time() if now is None else now
        if self.fused:
            return self._gate(voucher_id, "", now, session=(token, session_ttl))
        user = self._session_user(token, session_ttl)
        if isinstance(user, GateResult):
            return user
        return self._gate(voucher_id, user, now)

    def reserve_charged(
        self,
        voucher_id: int,
        token: str,
        session_ttl: int,
        bucket_prefix: str,
        bucket: TokenBucket,
        now: float | None = None,
    ) -> tuple[Decision | None, GateResult | None]:
        """:meth:`reserve_for_session` behind the user's token bucket.

        What the web's auth hook, its per-user rate limit and :meth:`reserve` do
        in three calls: the session is read first (NO_SESSION / ODD_SESSION as
        :meth:`reserve_for_session`, with no decision: nothing charged), then
        the user's bucket, ``bucket_prefix`` followed by the user id, is charged
        one token, and only if it admits the request the gate runs (the gate
        result is None when the bucket refused: nothing reserved). On a single
        Redis ONE call (``lua/seckill_charged.lua``); on a cluster those three.
        """
        now = time.time() if now is None else now
        if not self.fused:
            assert self._buckets is not None
            user = self._session_user(token, session_ttl)
            if isinstance(user, GateResult):
                return None, user
            decision = self._buckets.hit(f"{bucket_prefix}{user}", bucket)
            return decision, (self._gate(voucher_id, user, now) if decision.allowed else None)
        if self._charged is None:
            self._charged = load_composed(
                self.client, "seckill_charged", ("session_user", "token_bucket", "seckill")
            )
        keys, args = self.keys_args(voucher_id, "", now)
        reply, confirmed = self._run(
            self._charged,
            [TOKEN_KEY.format(token=token), *keys],
            [session_ttl, bucket_prefix, "", 1, *bucket_args(bucket), *args[1:]],
            _charged_reserved,
        )
        code = int(reply[0])
        if code:
            return None, GateResult(_CODES[code])
        decision = Decision.from_reply(reply[2:6], bucket.limit)
        if not decision.allowed:
            return decision, None
        return decision, self._confirmed(voucher_id, self._result(reply[6:]), confirmed)

    def reserve_many(
        self, voucher_id: int, user_ids: list[int], now: float | None = None
    ) -> list[GateResult]:
        """One attempt per user in one pipeline (bulk tools, tests); each stays atomic.

        No replica wait: its callers are not clients that must be told the truth.
        """
        now = time.time() if now is None else now
        calls = [self.keys_args(voucher_id, user_id, now) for user_id in user_ids]
        return [self._result(reply) for reply in run_each(self.client, self.script, calls)]


def _gate_reserved(reply: list) -> bool:
    """Whether a reply of lua/seckill.lua reserved (what must reach a replica)."""
    return int(reply[0]) == 0


def _charged_reserved(reply: list) -> bool:
    """Whether a reply of lua/seckill_charged.lua got past the bucket and reserved."""
    return int(reply[0]) == 0 and len(reply) > 6 and int(reply[6]) == 0


@lru_cache(maxsize=65_536)
def voucher_slot(voucher_id: int) -> int:
    """The hash slot of a voucher's keys (their tag is its id): its order ids carry it."""
    return hash_slot(str(voucher_id))


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


def live_stocks(client: redis.Redis | RedisCluster, voucher_ids: list[int]) -> dict[int, int]:
    """Current Redis stock of each loaded voucher: one pipeline of GETs (one round trip).

    Not one MGET: vouchers are on different slots, which a cluster (or a client of
    one of its nodes) refuses in one command; a cluster pipeline is one round trip
    per node.
    """
    if not voucher_ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for v in voucher_ids:
        pipe.get(stock_key(v))
    values = pipe.execute()
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
