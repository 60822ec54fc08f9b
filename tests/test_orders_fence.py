"""No row for a Stream entry until a replica has it: a real master and a real replica.

With ``HMDP_SECKILL_WAIT_REPLICAS=1`` the settle path (the order task, its
group commit, the Stream's recovery) writes a fence in the voucher's slot and
``WAIT``s for it before the database (cache.replication.fence). A SIGSTOPped
replica acknowledges nothing: the task raises an outside failure, no row is
written, the entry stays in the Stream with no failure counted against it;
once the replica is continued, recovery settles it: one row, the id the
buyer's retry is told. With the setting 0 the settle path sends no ``WAIT``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from support.redis_server import replicated_redis
from support.seckill import add_shop, create_seckill, db_orders
from support.sessions import session_for

from beat.order_jobs import recover_orders
from cache.order_stream import voucher_stream
from cache.replication import NotReplicated
from cache.seckill import fence_key, order_id_key
from tasks.orders import CREATED, DUPLICATE, run_order_task
from web.orders import verify_orders

pytestmark = pytest.mark.process

TIMEOUT_MS = 300
IDLE_MS = 200  # the recovery takes over an entry a task claimed once it idled this long


@pytest.fixture
def pair(tmp_path):
    """Before the app (named first): stopped after it, so the app closes on live servers."""
    with replicated_redis(tmp_path) as servers:
        yield servers


def _sale(app_with, master, **settings):  # type: ignore[no-untyped-def]
    app = app_with(
        redis_url=master.url,
        seckill_wait_timeout_ms=TIMEOUT_MS,
        order_claim_idle_ms=IDLE_MS,
        **settings,
    )
    services = app.extensions["hmdp"]
    client = app.test_client()
    add_shop(services)
    voucher_id = create_seckill(client, session_for(services, 1, "admin"), stock=5)
    return services, client, voucher_id


def _payload(services, voucher_id: int) -> dict:  # type: ignore[no-untyped-def]
    """The task payload of the voucher's one Stream entry, as the web dispatches it."""
    stream = voucher_stream(services.settings, voucher_id)
    ((stream_id, fields),) = services.redis.xrange(stream.key)
    return {**fields, "streamId": stream_id}


def _deliveries(services, voucher_id: int) -> list[int]:  # type: ignore[no-untyped-def]
    stream = voucher_stream(services.settings, voucher_id)
    pending = services.redis.xpending_range(stream.key, stream.group, "-", "+", 10)
    return [int(p["times_delivered"]) for p in pending]


def _recover(services):  # type: ignore[no-untyped-def]
    """A recovery run once the entries the task claimed idled past the claim idle time."""
    time.sleep(2 * IDLE_MS / 1000)
    return recover_orders(services)


def test_a_stalled_replica_keeps_the_entry_out_of_the_database_until_it_has_it(pair, app_with):
    master, replica = pair
    services, client, voucher_id = _sale(app_with, master, seckill_wait_replicas=1)
    buyer = session_for(services, 2)
    url = f"/voucher-order/seckill/{voucher_id}"
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        unconfirmed = client.post(url, headers=buyer)  # on the master only
        assert unconfirmed.status_code == 503, unconfirmed.json
        payload = _payload(services, voucher_id)
        with pytest.raises(NotReplicated):  # the group commit's batch
            run_order_task(services, payload)
        assert db_orders(services, voucher_id) == []
        recovery = _recover(services)  # one at a time
        assert not recovery.settled and recovery.dead_lettered == 0 and recovery.failed == 1
        assert db_orders(services, voucher_id) == []
        assert verify_orders(services, voucher_id).unsettled == 1  # still in the Stream
        assert _deliveries(services, voucher_id) == [1]  # no failure of its own counted
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)

    retry = client.post(url, headers=buyer)
    assert (retry.status_code, retry.json["errorMsg"]) == (409, "already ordered")
    issued = int(retry.json["data"])
    assert services.redis.hget(order_id_key(voucher_id), "2") == str(issued)
    recovery = _recover(services)
    assert recovery.settled == {CREATED: 1}, recovery
    assert db_orders(services, voucher_id) == [(issued, 2)]
    assert run_order_task(services, payload) == DUPLICATE
    audit = verify_orders(services, voucher_id)
    assert audit.ok and audit.unsettled == 0, audit.lines()
    reader = redis.Redis(port=replica.port, decode_responses=True)
    try:  # the fence went through the replica
        assert reader.exists(fence_key(voucher_id)) == 1
    finally:
        reader.close()


def test_with_the_setting_off_settling_sends_no_wait(pair, app_with):
    """HMDP_SECKILL_WAIT_REPLICAS=0: no fence key, no WAIT, a stopped replica stops nothing."""
    master, replica = pair
    services, client, voucher_id = _sale(app_with, master, seckill_wait_replicas=0)
    answer = client.post(f"/voucher-order/seckill/{voucher_id}", headers=session_for(services, 2))
    assert answer.status_code == 200, answer.json
    payload = _payload(services, voucher_id)
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        services.redis.config_resetstat()
        assert run_order_task(services, payload) == CREATED
        stats = services.redis.info("commandstats")
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert db_orders(services, voucher_id) == [(int(answer.json["data"]), 2)]
    assert "cmdstat_wait" not in stats and "cmdstat_xreadgroup" in stats, sorted(stats)
    assert services.redis.exists(fence_key(voucher_id)) == 0
