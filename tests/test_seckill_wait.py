"""A reservation is answered 200 only once a replica has it: a real master and a real replica.

With ``HMDP_SECKILL_WAIT_REPLICAS=1`` every request path of the order (the WSGI
fast path with the session read in the gate, the fast path with the user's
token bucket charged in the same call, the Flask route) runs the gate through
``WAIT``. A SIGSTOPped replica acknowledges nothing: the order is answered 503
with ``Retry-After: 1`` (in the hmdp compat envelope too), the reservation stays
on the master, a retry while the replica is stopped is 503 too (the id it would
be told is not on a replica), the retry after is told 409 "already ordered"
with its id, and once settled it is exactly one row with that id.
"""

from __future__ import annotations

import os
import signal

import pytest
import redis
from support.redis_server import replicated_redis
from support.seckill import add_shop, create_seckill, db_orders
from support.sessions import session_for

from beat.order_jobs import recover_orders
from cache.seckill import order_id_key
from web.orders import verify_orders

pytestmark = pytest.mark.process

TIMEOUT_MS = 300
PATHS = {
    "fast path": {},  # SeckillGate.reserve_for_session
    "fast path with the bucket": {"rate_limit_enabled": True},  # reserve_charged
    "flask route": {"seckill_fast_path": False},  # reserve
}


@pytest.fixture
def pair(tmp_path):
    """Before the app (named first): stopped after it, so the app closes on live servers."""
    with replicated_redis(tmp_path) as servers:
        yield servers


@pytest.mark.parametrize("path", sorted(PATHS))
def test_an_unconfirmed_reservation_is_a_503_and_its_retry_a_409_with_its_id(
    pair, app_with, path: str
):
    master, replica = pair
    app = app_with(
        redis_url=master.url,
        seckill_wait_replicas=1,
        seckill_wait_timeout_ms=TIMEOUT_MS,
        **PATHS[path],
    )
    services = app.extensions["hmdp"]
    client = app.test_client()
    add_shop(services)
    voucher_id = create_seckill(client, session_for(services, 1, "admin"), stock=5)
    url = f"/voucher-order/seckill/{voucher_id}"
    buyers = {user: session_for(services, user) for user in (2, 3, 4)}
    reader = redis.Redis(port=replica.port, decode_responses=True)
    try:
        confirmed = client.post(url, headers=buyers[2])
        assert confirmed.status_code == 200, confirmed.json
        # answered once the replica had it
        assert reader.hget(order_id_key(voucher_id), "2") == confirmed.json["data"]
    finally:
        reader.close()

    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        stalled = client.post(url, headers=buyers[3])
        compat = client.post(url, headers={**buyers[4], "X-Hmdp-Compat": "1"})
        # the retry is not told the id while no replica can have it (the gate's fence)
        early = client.post(url, headers=buyers[3])
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert stalled.status_code == 503 and stalled.headers["Retry-After"] == "1"
    assert stalled.json["success"] is False and stalled.json["data"] is None
    assert "not confirmed by a replica" in stalled.json["errorMsg"]
    assert compat.status_code == 200 and compat.headers["X-Hmdp-Status"] == "503"
    assert compat.headers["Retry-After"] == "1" and compat.json["success"] is False
    assert early.status_code == 503 and early.json["data"] is None, early.json

    # the reservations stay on the master; the retries learn their ids
    issued = services.redis.hgetall(order_id_key(voucher_id))
    assert set(issued) == {"2", "3", "4"}
    for user in (3, 4):
        retry = client.post(url, headers=buyers[user])
        assert (retry.status_code, retry.json["errorMsg"]) == (409, "already ordered")
        assert retry.json["data"] == issued[str(user)]

    # settled from the Stream (the unconfirmed ones were not dispatched): one row each
    now_ms = int(services.redis.time()[0]) * 1000 + services.settings.order_claim_idle_ms + 1000
    recover_orders(services, now_ms=now_ms)
    rows = {user: order_id for order_id, user in db_orders(services, voucher_id)}
    assert rows == {int(user): int(order_id) for user, order_id in issued.items()}
    audit = verify_orders(services, voucher_id)
    assert audit.ok and audit.unsettled == 0, audit.lines()


def test_without_the_setting_nothing_waits_for_a_stopped_replica(pair, app_with):
    """HMDP_SECKILL_WAIT_REPLICAS=0 (the default): the gate's answer is the master's."""
    master, replica = pair
    app = app_with(redis_url=master.url)
    services = app.extensions["hmdp"]
    client = app.test_client()
    add_shop(services)
    voucher_id = create_seckill(client, session_for(services, 1, "admin"), stock=5)
    buyer = session_for(services, 2)
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        answer = client.post(f"/voucher-order/seckill/{voucher_id}", headers=buyer)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert answer.status_code == 200, answer.json
