"""A master SIGKILLed mid-sale loses no acknowledged order: a real Redis Cluster, real worker.

3 masters + 3 replicas (cluster-node-timeout 1 s), ``HMDP_SECKILL_WAIT_REPLICAS=1``
in the web and in a real Celery worker settling from RabbitMQ, a voucher on every
master. Buyers order every voucher from threads through the WSGI fast path and
retry each 503 (every answer recorded). A third of the way in, the race the
settler's fence closes is set up for real: the replica of a voucher's master is
SIGSTOPped and the master's replication stream made to stay in its own memory
(the loopback socket buffers filled), so its next reservations are on the
master only (503 unconfirmed); a recovery run (what beat runs) reads them; then
the master is SIGKILLed and its replica continued: promoted without them. While
the new master has no replica its answers are 503, retried; the old master,
started again, rejoins as its replica and the sale goes on to the end. Then
recovery until every Stream is drained, and the audit is exact: every id
answered 200, and every id a retry was told (409), is its buyer's row; no row
has an id nobody was told; every voucher sold exactly its stock (no oversell);
``verify_orders`` is clean (no drift, no dead letter). Without the settler's
fence the audit finds phantom rows, drift and oversell dead letters; without
the gate's fence on "already ordered" a retry is told an id that dies with the
master.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from redis.crc import key_slot
from support import rabbitmq
from support.seckill import add_shop, create_seckill, db_orders, db_stock, wait_for
from support.sessions import session_for
from support.workers import celery_worker, log_tail

from beat.order_jobs import recover_orders
from cache.redis_cluster import EmbeddedCluster
from cache.seckill import stock_key
from web.orders import flush_dispatch, verify_orders

pytestmark = [pytest.mark.process, pytest.mark.slow]

STOCK = 40
BUYERS = 60  # more than the stock: every voucher sells out
MASTERS = 3
THREADS = 6
RETRY_DEADLINE_S = 120.0  # a buyer retrying 503s longer than this fails the test
WAIT_TIMEOUT_MS = 500
CLAIM_IDLE_MS = 1000
WORKER_ENV = {
    "HMDP_SECKILL_WAIT_REPLICAS": "1",  # the worker's fence
    "HMDP_SECKILL_WAIT_TIMEOUT_MS": str(WAIT_TIMEOUT_MS),
    "HMDP_ORDER_LOCK_LEASE_MS": "3000",
    "HMDP_ORDER_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
    "HMDP_ORDER_SETTLE_BATCH": "20",
}


@pytest.fixture
def cluster(tmp_path):
    with EmbeddedCluster(
        tmp_path / "cluster", masters=MASTERS, replicas=1, node_timeout_ms=1000
    ) as formed:
        yield formed


def _slot(voucher_id: int) -> int:
    return key_slot(stock_key(voucher_id).encode())


def _replicas_caught_up(cluster: EmbeddedCluster) -> bool:
    """Every live master's replicas acknowledged all it wrote (the sessions, the stock)."""
    for node in cluster.nodes:
        if node.server.process is None:
            continue
        info = node.client().info("replication")
        if info["role"] != "master":
            continue
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        offset = int(info["master_repl_offset"])
        if not replicas or any(int(r["offset"]) < offset for r in replicas):
            return False
    return True


BALLAST_MB = 24  # more than the loopback socket buffers hold between master and replica


def _held_for_replica(master) -> int:  # type: ignore[no-untyped-def]
    """Bytes of replication stream the master holds in memory for its replica (not sent)."""
    (replica,) = master.client().client_list(_type="replica")
    return int(replica["omem"])


def _fill_replication_buffers(master, voucher_id: int) -> None:  # type: ignore[no-untyped-def]
    """Writes to a stopped replica until the master must keep its stream in memory."""
    client = master.client(timeout=30)
    try:
        for n in range(BALLAST_MB):
            client.set(f"test:ballast:{{{voucher_id}}}:{n}", b"x" * (1 << 20))
            if _held_for_replica(master) > 0:
                return
        raise AssertionError(f"{BALLAST_MB} MB written, all of it sent to the replica")
    finally:
        client.close()


@dataclass
class Answers:
    """Every answer a buyer got for a voucher, in order (retries of 503 included)."""

    seen: dict[tuple[int, int], list[tuple[int, str, str | None]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, user: int, voucher_id: int, answer: tuple[int, str, str | None]) -> None:
        with self.lock:
            self.seen.setdefault((user, voucher_id), []).append(answer)

    def final(self) -> dict[tuple[int, int], tuple[int, str, str | None]]:
        with self.lock:
            return {key: got[-1] for key, got in self.seen.items() if got[-1][0] != 503}

    def unavailable(self, voucher_id: int) -> int:
        with self.lock:
            return sum(
                1
                for (_, v), got in self.seen.items()
                if v == voucher_id
                for status, _, _ in got
                if status == 503
            )


def _buy(app, vouchers: list[int], buyers: dict, users: list[int], answers: Answers) -> None:  # type: ignore[no-untyped-def]
    client = app.test_client()
    for user in users:
        for voucher_id in vouchers:
            deadline = time.monotonic() + RETRY_DEADLINE_S
            while True:
                reply = client.post(f"/voucher-order/seckill/{voucher_id}", headers=buyers[user])
                body = reply.json or {}
                answers.add(
                    user,
                    voucher_id,
                    (reply.status_code, body.get("errorMsg") or "", body.get("data")),
                )
                if reply.status_code != 503:
                    break
                if time.monotonic() > deadline:
                    answers.errors.append(f"user {user} voucher {voucher_id}: 503 until the end")
                    break
                time.sleep(0.05)


def _vouchers_on_every_master(client, admin, cluster: EmbeddedCluster) -> list[int]:  # type: ignore[no-untyped-def]
    """One voucher per master (created until each master serves one)."""
    chosen: dict[int, int] = {}
    for _ in range(50):
        voucher_id = create_seckill(client, admin, stock=STOCK)
        chosen.setdefault(cluster.master_of_slot(_slot(voucher_id)).port, voucher_id)
        if len(chosen) == MASTERS:
            return sorted(chosen.values())
    raise AssertionError(f"vouchers on {len(chosen)} masters only")


def test_a_master_killed_mid_sale_loses_no_acknowledged_order(
    cluster, settings, app_with, rabbitmq_vhost, tmp_path
):
    changes = {
        "redis_url": cluster.url,
        "celery_broker_url": rabbitmq.broker_url(rabbitmq_vhost),
        "seckill_wait_replicas": 1,
        "seckill_wait_timeout_ms": WAIT_TIMEOUT_MS,
        "order_claim_idle_ms": CLAIM_IDLE_MS,
        "rate_limit_enabled": False,
    }
    app = app_with(**changes)
    services = app.extensions["hmdp"]
    client = app.test_client()
    add_shop(services)
    admin = session_for(services, 1, "admin")
    vouchers = _vouchers_on_every_master(client, admin, cluster)
    buyers = {user: session_for(services, user) for user in range(2, 2 + BUYERS)}
    wait_for(lambda: _replicas_caught_up(cluster), 30, 0.05, "replicas caught up")
    victim = cluster.master_of_slot(_slot(vouchers[0]))
    replica = next(n for n in cluster.nodes if n.master_of == cluster.nodes.index(victim))
    log = tmp_path / "worker.log"
    answers = Answers()
    with celery_worker(settings.with_(**changes), log, **WORKER_ENV):
        users = sorted(buyers)
        threads = [
            threading.Thread(
                target=_buy, args=(app, vouchers, buyers, users[i::THREADS], answers), daemon=True
            )
            for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        third = BUYERS * len(vouchers) // 3
        wait_for(lambda: len(answers.final()) >= third, 120, 0.01, "a third of the sale")
        # The race to close: reservations on the victim that its replica does not have
        # (answered 503 unconfirmed) read by a settler (the recovery beat runs) before
        # the victim dies. Its replica is stalled, and the victim's replication stream
        # held in its own memory (the socket buffers full): what it writes now dies with it.
        assert replica.server.process is not None
        os.kill(replica.server.process.pid, signal.SIGSTOP)
        try:
            _fill_replication_buffers(victim, vouchers[0])
            before = answers.unavailable(vouchers[0])
            wait_for(
                lambda: answers.unavailable(vouchers[0]) >= before + 3,
                60,
                0.01,
                "unconfirmed reservations on the victim",
            )
            due = int(services.redis.time()[0]) * 1000 + CLAIM_IDLE_MS + 1000
            recover_orders(services, now_ms=due)  # every entry is due: theirs too
            assert _held_for_replica(victim) > 0  # the unconfirmed ones are not on the replica
            cluster.kill(victim)  # mid-sale: its replica takes over its slots
        finally:
            os.kill(replica.server.process.pid, signal.SIGCONT)
        cluster.wait_ready(30)
        assert cluster.master_of_slot(_slot(vouchers[0])) is not victim
        victim.server.start()  # back from its AOF, it rejoins as the new master's replica
        cluster.wait_ready(60)
        for thread in threads:
            thread.join(RETRY_DEADLINE_S * len(vouchers))
        assert not any(thread.is_alive() for thread in threads)
        assert not answers.errors, answers.errors[:5]
        assert flush_dispatch(app)

        def drained() -> bool:
            recover_orders(services)
            audit = verify_orders(services)
            return audit.unsettled == 0

        wait_for(drained, 120, 1.0, f"every stream drained\n{log_tail(log)}")

    final = answers.final()
    assert len(final) == BUYERS * len(vouchers)
    assert answers.unavailable(vouchers[0]) > 0  # the failover was met mid-sale
    audit = verify_orders(services)
    assert audit.ok and audit.unsettled == 0, audit.lines()
    for voucher_id in vouchers:
        rows = {user: order_id for order_id, user in db_orders(services, voucher_id)}
        mine = {u: a for (u, v), a in final.items() if v == voucher_id}
        ok = {u: int(data) for u, (status, _, data) in mine.items() if status == 200}
        told = {
            u: int(data)
            for u, (status, message, data) in mine.items()
            if status == 409 and message == "already ordered" and data is not None
        }
        assert {u: rows.get(u) for u in ok} == ok  # every id answered 200 is its buyer's row
        assert {u: rows.get(u) for u in told} == told  # and every id a retry was told
        assert rows == ok | told  # no row of an id nobody was told
        assert len(rows) == STOCK and db_stock(services, voucher_id) == 0  # no oversell
        statuses = Counter((status, message) for status, message, _ in mine.values())
        assert set(statuses) <= {(200, ""), (409, "already ordered"), (409, "sold out")}
        assert statuses[(409, "sold out")] == BUYERS - STOCK
