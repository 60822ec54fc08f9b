"""The whole order pipeline with real Celery worker processes.

Gate (Flask app) -> Stream + Celery message -> worker -> database, with the
failures the design is for: thousands of concurrent attempts, duplicate
messages, an unreachable broker, a worker SIGKILLed mid-drain, the database
unavailable for 30 s. Every test ends with the audit (verify) passing with
nothing left unsettled.
"""

from __future__ import annotations

import contextvars
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from support.seckill import (
    add_shop,
    create_seckill,
    db_orders,
    db_stock,
    order_count,
    stream_length,
    wait_for,
)
from support.tcp_proxy import TcpProxy
from support.workers import celery_worker, kill_group, log_tail, start_worker

from beat.order_jobs import JOB_NAME, run_recovery
from cache.order_stream import OrderEntry
from cache.seckill import SeckillGate
from cache.server import free_port
from services import Services
from web.order_dispatch import CelerySender
from web.orders import ORDER_TASK, flush_dispatch, verify_orders

# Locks of a killed worker expire fast; recovery by the worker treats 1 s as stuck.
# Batches of 20 (group commit): small enough that a kill or an outage lands mid-drain.
# Every test here starts processes of its own.
pytestmark = pytest.mark.process


WORKER_ENV = {
    "HMDP_ORDER_LOCK_LEASE_MS": "3000",
    "HMDP_ORDER_CLAIM_IDLE_MS": "1000",
    "HMDP_ORDER_SETTLE_BATCH": "20",
}


@pytest.fixture
def admin(services, login_as) -> dict:
    add_shop(services)
    return login_as(1, role="admin")


def _sessions(services, users: range) -> dict[int, dict]:
    """A real session hash per user, written in one pipeline (as login would)."""
    headers = {}
    pipe = services.redis.pipeline(transaction=False)
    for user in users:
        token = uuid.uuid4().hex
        pipe.hset(
            f"login:token:{token}",
            mapping={"id": user, "nickName": f"u{user}", "icon": "", "role": "user"},
        )
        headers[user] = {"authorization": token}
    pipe.execute()
    return headers


def _audit_drained(services, voucher_id: int) -> None:
    audit = verify_orders(services, voucher_id)
    assert audit.ok and audit.unsettled == 0, "\n".join(audit.lines())


def _recover_until_drained(settings, services, timeout: float, log: Path) -> None:
    """Run recovery in-process (the beat job's code) until the Stream is empty."""
    recovery = Services(settings.with_(order_claim_idle_ms=1000))
    try:

        def drained() -> bool:
            run_recovery(recovery)
            return stream_length(services) == 0

        wait_for(drained, timeout, interval=1.0, what=f"stream drained\n{log_tail(log)}")
    finally:
        recovery.close()


def _reserve_and_dispatch(app, services, voucher_id: int, users: range) -> list[OrderEntry]:
    """Many reservations through the gate, their tasks sent in batches (fast setup)."""
    gate = SeckillGate(services.redis, services.settings)
    entries = []
    for user, r in zip(users, gate.reserve_many(voucher_id, list(users)), strict=True):
        assert r.ok, r
        entries.append(OrderEntry(r.order_id, user, voucher_id, r.stream_id))
    send = CelerySender(app.extensions["hmdp_celery"], ORDER_TASK)
    try:
        for start in range(0, len(entries), 200):
            send(
                [(contextvars.copy_context(), e.to_payload()) for e in entries[start : start + 200]]
            )
    finally:
        send.close()
    return entries


# --- acceptance ----------------------------------------------------------------------------


@pytest.mark.slow  # 10,000 requests through the app: a small load test
@pytest.mark.redis_cluster  # the whole sale on a real Redis Cluster too (RabbitMQ broker)
def test_2000_users_5_attempts_each_against_stock_100(app, services, settings, admin, tmp_path):
    voucher_id = create_seckill(app.test_client(), admin, stock=100)
    headers = _sessions(services, range(2, 2002))
    users = list(headers)
    log = tmp_path / "worker.log"
    with celery_worker(settings, log, **WORKER_ENV):
        start = threading.Barrier(50)

        def attempts(lane: int) -> list[tuple[int, int, str | None]]:
            client = app.test_client()
            start.wait()
            out = []
            for _ in range(5):  # every user of the lane, five times, interleaved
                for user in users[lane::50]:
                    r = client.post(f"/voucher-order/seckill/{voucher_id}", headers=headers[user])
                    out.append((user, r.status_code, (r.json or {}).get("data")))
            return out

        with ThreadPoolExecutor(50) as pool:
            results = [r for lane in pool.map(attempts, range(50)) for r in lane]
        assert flush_dispatch(app)
        wins = [(u, oid) for u, status, oid in results if status == 200]
        assert len(results) == 10_000
        assert {status for _, status, _ in results} == {200, 409}
        assert len(wins) == 100 and len({u for u, _ in wins}) == 100
        wait_for(
            lambda: order_count(services) == 100 and stream_length(services) == 0,
            60,
            what=f"100 rows\n{log_tail(log)}",
        )
    rows = db_orders(services, voucher_id)
    assert sorted(rows) == sorted((int(oid), u) for u, oid in wins)
    assert services.redis.get(f"seckill:stock:{{{voucher_id}}}") == "0"
    assert db_stock(services, voucher_id) == 0
    _audit_drained(services, voucher_id)


@pytest.mark.redis_cluster(single="waits on a Redis broker's queue and unacked hash")
def test_three_identical_messages_to_a_worker_give_one_row(
    app, services, settings, admin, tmp_path
):
    voucher_id = create_seckill(app.test_client(), admin, stock=10)
    gate = SeckillGate(services.redis, settings)
    r = gate.reserve(voucher_id, 77)
    payload = OrderEntry(r.order_id, 77, voucher_id, r.stream_id).to_payload()
    celery_app = app.extensions["hmdp_celery"]
    for _ in range(3):
        celery_app.send_task(ORDER_TASK, args=[dict(payload)])
    log = tmp_path / "worker.log"
    with celery_worker(settings, log, **WORKER_ENV):
        # all three consumed and acknowledged (acks_late: after they ran)
        wait_for(
            lambda: services.redis.llen("orders") == 0 and services.redis.hlen("unacked") == 0,
            60,
            what=f"messages processed\n{log_tail(log)}",
        )
    assert db_orders(services, voucher_id) == [(r.order_id, 77)]
    assert db_stock(services, voucher_id) == 9
    _audit_drained(services, voucher_id)


def test_unreachable_broker_then_the_beat_job_on_a_worker_persists(
    services, settings, admin, login_as, tmp_path
):
    from web import create_app

    dead = create_app(settings.with_(celery_broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        client = dead.test_client()
        voucher_id = create_seckill(client, admin, stock=5)
        ids = []
        for user in (31, 32, 33):
            response = client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(user))
            assert response.status_code == 200
            ids.append(int(response.json["data"]))
        assert flush_dispatch(dead, 30)
    finally:
        dead.extensions["hmdp"].close()
    assert services.redis.llen("orders") == 0  # nothing reached the (real) broker
    log = tmp_path / "worker.log"
    with celery_worker(settings, log, **WORKER_ENV):
        time.sleep(1.1)  # the entries must be older than the worker's claim threshold
        good = create_app(settings)
        try:
            good.extensions["hmdp_celery"].send_task(JOB_NAME)
        finally:
            good.extensions["hmdp"].close()
        wait_for(lambda: order_count(services) == 3, 60, what=f"3 rows\n{log_tail(log)}")
    assert sorted(oid for oid, _ in db_orders(services, voucher_id)) == sorted(ids)
    assert db_stock(services, voucher_id) == 2
    _audit_drained(services, voucher_id)


@pytest.mark.slow
def test_worker_sigkilled_mid_drain_loses_and_duplicates_nothing(
    app, services, settings, admin, tmp_path
):
    total = 2000
    voucher_id = create_seckill(app.test_client(), admin, stock=total)
    entries = _reserve_and_dispatch(app, services, voucher_id, range(10_000, 10_000 + total))
    log = tmp_path / "worker.log"
    first = start_worker(settings, log, **WORKER_ENV)
    try:
        wait_for(lambda: order_count(services) >= 200, 60, 0.05, f"progress\n{log_tail(log)}")
    finally:
        kill_group(first)  # SIGKILL: main process and both children, mid-transaction
    done_at_kill = order_count(services)
    assert done_at_kill < total, "the drain finished before the kill: nothing was tested"
    with celery_worker(settings, log, **WORKER_ENV):
        # the queue drains; what the killed worker held unacknowledged is recovered
        wait_for(
            lambda: services.redis.llen("orders") == 0,
            90,
            what=f"queue drained\n{log_tail(log)}",
        )
        _recover_until_drained(settings, services, 60, log)
    rows = db_orders(services, voucher_id)
    assert len(rows) == total
    assert sorted(rows) == sorted((e.order_id, e.user_id) for e in entries)
    assert db_stock(services, voucher_id) == 0
    _audit_drained(services, voucher_id)


@pytest.mark.redis_cluster(
    single="the outage is made per database backend (sqlite lock, mysql proxy)"
)
@pytest.mark.slow
def test_database_unavailable_for_30s_during_a_drain_loses_nothing(
    app, services, settings, admin, backend, tmp_path
):
    total = 600
    voucher_id = create_seckill(app.test_client(), admin, stock=total)
    log = tmp_path / "worker.log"
    proxy = None
    worker_settings = settings
    if backend == "mysql":
        url = make_url(settings.effective_database_url)
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 3306).up()
        worker_settings = settings.with_(
            database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(
                hide_password=False
            )
        )
    outage = _Outage(backend, settings, proxy)
    try:
        with celery_worker(worker_settings, log, **WORKER_ENV):
            entries = _reserve_and_dispatch(
                app, services, voucher_id, range(20_000, 20_000 + total)
            )
            wait_for(lambda: order_count(services) >= 50, 60, 0.05, f"progress\n{log_tail(log)}")
            outage.begin()
            time.sleep(1)
            during = order_count(services)  # read directly, not through the outage
            assert during < total, "the drain finished before the outage: nothing was tested"
            time.sleep(29)
            assert order_count(services) == during, "the workers wrote during the outage"
            outage.end()
            wait_for(
                lambda: services.redis.llen("orders") == 0,
                90,
                what=f"queue drained\n{log_tail(log)}",
            )
            _recover_until_drained(settings, services, 60, log)
    finally:
        outage.end()
        if proxy is not None:
            proxy.down()
    rows = db_orders(services, voucher_id)
    assert sorted(rows) == sorted((e.order_id, e.user_id) for e in entries)
    assert db_stock(services, voucher_id) == 0
    _audit_drained(services, voucher_id)


class _Outage:
    """Make the database unavailable to the workers, really.

    SQLite: hold the write lock (BEGIN EXCLUSIVE) from this process, so every
    worker write waits and times out. MySQL: cut the TCP proxy the workers
    connect through (refused connects, dropped connections).
    """

    def __init__(self, backend: str, settings, proxy: TcpProxy | None):  # type: ignore[no-untyped-def]
        self.backend = backend
        self.settings = settings
        self.proxy = proxy
        self.conn: sqlite3.Connection | None = None
        self.active = False

    def begin(self) -> None:
        self.active = True
        if self.backend == "sqlite":
            path = make_url(self.settings.effective_database_url).database
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")
        else:
            assert self.proxy is not None
            self.proxy.down()

    def end(self) -> None:
        if not self.active:
            return
        self.active = False
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None
        if self.proxy is not None:
            self.proxy.up()
