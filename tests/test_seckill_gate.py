"""The seckill gate (lua/seckill.lua through cache/seckill.py) on a real Redis and a real cluster."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import redis
from support.redis_faults import command_calls, reset_stats

from cache.ids import decode
from cache.login import TOKEN_KEY
from cache.order_stream import stream_key
from cache.ratelimit import TokenBucket
from cache.seckill import (
    DUPLICATE,
    ENDED,
    NO_SESSION,
    NOT_STARTED,
    ODD_SESSION,
    OK,
    SOLD_OUT,
    UNKNOWN,
    SeckillGate,
    epoch_ms,
    load_voucher,
    redis_snapshot,
)

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def gate(redis_client, settings) -> SeckillGate:
    return SeckillGate(redis_client, settings)


def _load(redis_client, voucher_id=1, stock=3, begin=None, end=None) -> None:
    begin = begin or _now() - timedelta(hours=1)
    end = end or _now() + timedelta(hours=1)
    load_voucher(redis_client, voucher_id, stock, begin, end)


def test_success_reserves_everything_in_one_step(gate, redis_client, settings):
    _load(redis_client, stock=3)
    result = gate.reserve(1, 42)
    assert result.outcome == OK and result.order_id and result.stream_id
    assert redis_client.get("seckill:stock:{1}") == "2"
    assert redis_client.smembers("seckill:order:{1}") == {"42"}
    assert redis_client.hgetall("seckill:orderid:{1}") == {"42": str(result.order_id)}
    entries = redis_client.xrange(stream_key(settings, 1))  # the voucher's own stream
    assert entries == [
        (result.stream_id, {"orderId": str(result.order_id), "userId": "42", "voucherId": "1"})
    ]
    assert stream_key(settings, 1) == "stream.orders:{1}"  # hmdp's name, the voucher's tag
    made_at, _, count = decode(result.order_id)
    assert abs((made_at.replace(tzinfo=None) - _now()).total_seconds()) < 60 and count == 1


def test_refusals_change_nothing(gate, redis_client, settings):
    _load(redis_client, stock=1)
    first = gate.reserve(1, 1)
    assert first.outcome == OK
    before = redis_client.xlen(stream_key(settings, 1))
    again = gate.reserve(1, 1)
    assert (again.outcome, again.order_id) == (DUPLICATE, first.order_id)
    assert gate.reserve(1, 2).outcome == SOLD_OUT
    assert redis_client.get("seckill:stock:{1}") == "0"
    assert redis_client.smembers("seckill:order:{1}") == {"1"}
    assert redis_client.xlen(stream_key(settings, 1)) == before


def test_window_is_checked_against_now(gate, redis_client):
    begin, end = _now() + timedelta(hours=1), _now() + timedelta(hours=2)
    _load(redis_client, stock=5, begin=begin, end=end)
    assert gate.reserve(1, 1).outcome == NOT_STARTED
    assert gate.reserve(1, 1, now=epoch_ms(begin) / 1000).outcome == OK
    assert gate.reserve(1, 2, now=epoch_ms(end) / 1000).outcome == ENDED
    assert gate.reserve(1, 2, now=epoch_ms(end) / 1000 - 0.001).outcome == OK
    assert redis_client.get("seckill:stock:{1}") == "3"


def test_unknown_voucher_and_missing_window(gate, redis_client):
    assert gate.reserve(99, 1).outcome == UNKNOWN
    redis_client.set("seckill:stock:{98}", 10)  # stock without a window: not usable
    assert gate.reserve(98, 1).outcome == UNKNOWN
    assert redis_client.get("seckill:stock:{98}") == "10"


def test_loading_never_resets_sold_stock(gate, redis_client):
    _load(redis_client, stock=3)
    gate.reserve(1, 1)
    new_end = _now() + timedelta(days=3)
    assert not load_voucher(redis_client, 1, 3, _now() - timedelta(hours=1), new_end)
    assert redis_client.get("seckill:stock:{1}") == "2"
    assert int(redis_client.hget("seckill:window:{1}", "end")) == epoch_ms(new_end)


def test_concurrent_gate_sells_exactly_the_stock_once_per_user(gate, redis_client, settings):
    """200 users x 5 attempts each from 32 threads against stock 50."""
    _load(redis_client, stock=50)
    start = threading.Barrier(32)

    def attempts(worker: int) -> list[tuple[int, str, int | None]]:
        start.wait()
        out = []
        for user in range(worker, 200, 32):
            for _ in range(5):
                r = gate.reserve(1, user + 1)
                out.append((user + 1, r.outcome, r.order_id))
        return out

    with ThreadPoolExecutor(32) as pool:
        results = [r for chunk in pool.map(attempts, range(32)) for r in chunk]
    wins = [(u, oid) for u, outcome, oid in results if outcome == OK]
    assert len(wins) == 50
    assert len({u for u, _ in wins}) == 50 and len({oid for _, oid in wins}) == 50
    assert {o for _, o, _ in results} == {OK, DUPLICATE, SOLD_OUT}
    snap = redis_snapshot(redis_client, 1)
    assert snap.stock == 0 and snap.buyers == {u for u, _ in wins}
    stream = redis_client.xrange(stream_key(settings, 1))
    assert sorted(int(f["orderId"]) for _, f in stream) == sorted(oid for _, oid in wins)


def test_keys_args_are_what_the_script_reserves_with(gate, redis_client, settings):
    """Run outside the class (as bench gate-lua feeds redis-benchmark), they reserve."""
    _load(redis_client, stock=2)
    keys, args = gate.keys_args(1, 7, time.time())
    reply = redis_client.eval(gate.script.script, len(keys), *keys, *args)
    assert int(reply[0]) == 0 and redis_client.smembers("seckill:order:{1}") == {"7"}
    assert redis_client.get("seckill:stock:{1}") == "1"
    assert gate.reserve(1, 7).outcome == DUPLICATE


def test_reserve_many_is_one_attempt_per_user_in_a_pipeline(gate, redis_client, settings):
    _load(redis_client, stock=3)
    results = gate.reserve_many(1, [1, 2, 2, 3, 4])
    assert [r.outcome for r in results] == [OK, OK, DUPLICATE, OK, SOLD_OUT]
    assert len({r.order_id for r in results if r.ok}) == 3
    assert redis_client.xlen(stream_key(settings, 1)) == 3


# --- the gate with the session read in the script -------------------------------------------


@pytest.fixture
def session_gate(services):  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    load_voucher(services.redis, 1, 3, now - timedelta(hours=1), now + timedelta(hours=1))
    return SeckillGate(services.redis, services.settings)


def test_reserve_for_session_reads_the_user_from_the_session(
    session_gate, login_as, services, settings
):
    token = login_as(42)["authorization"]
    key = TOKEN_KEY.format(token=token)
    services.redis.expire(key, 5)
    result = session_gate.reserve_for_session(1, token, 900)
    assert result.outcome == OK and result.user_id == 42 and result.order_id
    assert 5 < services.redis.ttl(key) <= 900
    assert services.redis.sismember("seckill:order:{1}", "42")
    fields = services.redis.xrange(stream_key(settings, 1))[-1][1]
    assert fields["userId"] == "42"
    again = session_gate.reserve_for_session(1, token, 900)
    assert (again.outcome, again.user_id) == ("duplicate", 42)


def test_reserve_for_session_without_a_session_reserves_nothing(session_gate, services, settings):
    assert session_gate.reserve_for_session(1, "nobody", 900).outcome == NO_SESSION
    services.redis.hset(TOKEN_KEY.format(token="noid"), mapping={"nickName": "x"})
    assert session_gate.reserve_for_session(1, "noid", 900).outcome == NO_SESSION
    services.redis.hset(TOKEN_KEY.format(token="odd"), mapping={"id": "1.5"})
    assert session_gate.reserve_for_session(1, "odd", 900).outcome == ODD_SESSION
    assert not services.redis.exists(TOKEN_KEY.format(token="nobody"))
    assert services.redis.get("seckill:stock:{1}") == "3"
    assert services.redis.xlen(stream_key(settings, 1)) == 0


def test_reserve_charged_reserves_only_what_the_bucket_admits(
    session_gate, login_as, services, settings
):
    tokens = {user: login_as(user)["authorization"] for user in (5, 6)}
    tight = TokenBucket(capacity=1, rate=0.001)  # one order per user, then refused
    decisions = [
        session_gate.reserve_charged(1, tokens[user], 900, "ratelimit:t:user:", tight)
        for user in (5, 6, 5)
    ]
    assert [d.allowed for d, _ in decisions] == [True, True, False]  # type: ignore[union-attr]
    assert decisions[2][1] is None and decisions[2][0].retry_after > 0  # type: ignore[union-attr]
    assert [(r.outcome, r.user_id) for _, r in decisions[:2]] == [(OK, 5), (OK, 6)]  # type: ignore[union-attr]
    # the bucket is the session's user's, the key limit_key names
    assert services.redis.exists("ratelimit:t:user:5", "ratelimit:t:user:6") == 2
    assert services.redis.smembers("seckill:order:{1}") == {"5", "6"}
    assert services.redis.get("seckill:stock:{1}") == "1"
    assert services.redis.xlen(stream_key(settings, 1)) == 2
    # a roomier bucket lets user 5 through to the gate, which refuses the second order
    roomy = TokenBucket(capacity=2, rate=0.001)
    decision, again = session_gate.reserve_charged(1, tokens[5], 900, "ratelimit:u:user:", roomy)
    assert decision is not None and decision.allowed and decision.remaining == 1
    assert again is not None and again.outcome == DUPLICATE and again.user_id == 5


def test_reserve_charged_without_a_session_charges_and_reserves_nothing(
    session_gate, services, settings
):
    bucket = TokenBucket(capacity=2, rate=0.001)
    services.redis.hset(TOKEN_KEY.format(token="odd"), mapping={"id": "0x5"})
    for token, outcome in (("nobody", NO_SESSION), ("odd", ODD_SESSION)):
        decision, result = session_gate.reserve_charged(1, token, 900, "ratelimit:t:user:", bucket)
        assert decision is None and result is not None and result.outcome == outcome
    assert services.redis.keys("ratelimit:*") == []
    assert not services.redis.exists(TOKEN_KEY.format(token="nobody"))
    assert services.redis.get("seckill:stock:{1}") == "3"
    assert services.redis.xlen(stream_key(settings, 1)) == 0


def test_one_call_on_one_redis_and_the_calls_it_must_on_a_cluster(session_gate, login_as, services):
    """Fused: session + gate, and session + bucket + gate, are one script call each.

    On a cluster the session, the bucket and the voucher are in different slots:
    the session's call, the bucket's, then the gate's, with the same answers.
    """
    single = not isinstance(services.redis, redis.RedisCluster)
    assert session_gate.fused is single
    token = login_as(8)["authorization"]
    bucket = TokenBucket(capacity=5, rate=0.001)
    # every script known to the nodes of these keys first (NOSCRIPT would add calls)
    decision, first = session_gate.reserve_charged(1, token, 900, "ratelimit:t:user:", bucket)
    assert first is not None and (first.outcome, first.user_id) == (OK, 8)
    reset_stats(services.redis)
    again = session_gate.reserve_for_session(1, token, 900)
    assert (again.outcome, again.user_id, again.order_id) == (DUPLICATE, 8, first.order_id)
    assert command_calls(services.redis, "evalsha") == (1 if single else 2)
    reset_stats(services.redis)
    decision, again = session_gate.reserve_charged(1, token, 900, "ratelimit:t:user:", bucket)
    assert decision is not None and decision.allowed and decision.remaining == 3
    assert again is not None and (again.outcome, again.user_id) == (DUPLICATE, 8)
    assert command_calls(services.redis, "evalsha") == (1 if single else 3)
    assert command_calls(services.redis, "eval") == 0
