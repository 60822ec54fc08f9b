"""A flash sale on a Redis Cluster loses no order answered 200 when a master dies: real processes.

3 masters + 3 replicas (cluster-node-timeout 1 s), ``HMDP_SECKILL_WAIT_REPLICAS=1``,
RabbitMQ as the broker. Buyers order from threads through the WSGI fast path; a
third of the way in, the master of a voucher's slot is SIGKILLed. Its replica is
promoted; while it has no replica of its own its reservations are unconfirmed
(503, retried), and the old master, started again, rejoins as its replica: the
sale goes on to the end. Then every entry is settled and the audit is exact:
every id answered 200 (and every id a retry was told) is the buyer's row, the
stock sold is the stock, and ``flask orders verify``'s checks are clean.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from redis.crc import key_slot
from support import rabbitmq
from support.seckill import add_shop, create_seckill, db_orders, db_stock
from support.sessions import session_for

from beat.order_jobs import recover_orders
from cache.redis_cluster import EmbeddedCluster
from cache.seckill import stock_key
from web.orders import verify_orders

pytestmark = [pytest.mark.process, pytest.mark.slow]

STOCK = 60
BUYERS = 90  # more than the stock: every voucher sells out
VOUCHERS = 3
THREADS = 6
SALE_DEADLINE_S = 120.0


@pytest.fixture
def cluster(tmp_path):
    with EmbeddedCluster(
        tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=1000
    ) as formed:
        yield formed


def _replicas_caught_up(cluster: EmbeddedCluster) -> bool:
    """Every live master's replicas have acknowledged all it wrote (the sessions, the stock)."""
    for node in cluster.nodes:
        if node.server.process is None:
            continue
        info = node.client().info("replication")
        if info["role"] != "master":
            continue
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        if not replicas or any(
            int(r["offset"]) < int(info["master_repl_offset"]) for r in replicas
        ):
            return False
    return True


class Sale:
    """Buyers ordering every voucher from threads, each retrying a 503 until it is answered."""

    def __init__(self, app, vouchers: list[int], buyers: dict[int, dict[str, str]]):  # type: ignore[no-untyped-def]
        self.app = app
        self.vouchers = vouchers
        self.buyers = buyers
        self.answers: dict[tuple[int, int], tuple[int, str, str | None]] = {}
        self.retried: Counter[int] = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _buy(self, users: list[int]) -> None:
        client = self.app.test_client()
        for user in users:
            for voucher_id in self.vouchers:
                deadline = time.monotonic() + SALE_DEADLINE_S
                while True:
                    answer = client.post(
                        f"/voucher-order/seckill/{voucher_id}", headers=self.buyers[user]
                    )
                    if answer.status_code != 503:
                        break
                    with self._lock:
                        self.retried[voucher_id] += 1
                    if time.monotonic() > deadline:
                        self.errors.append(f"user {user} voucher {voucher_id}: 503 until the end")
                        break
                    time.sleep(0.05)
                body = answer.json
                with self._lock:
                    self.answers[(user, voucher_id)] = (
                        answer.status_code,
                        body["errorMsg"] or "",
                        body["data"],
                    )

    def start(self) -> list[threading.Thread]:
        users = sorted(self.buyers)
        threads = [
            threading.Thread(target=self._buy, args=(users[i::THREADS],), daemon=True)
            for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        return threads

    def answered(self) -> int:
        with self._lock:
            return len(self.answers)


def test_a_master_killed_mid_sale_loses_no_order_answered_200(cluster, app_with, rabbitmq_vhost):
    app = app_with(
        redis_url=cluster.url,
        celery_broker_url=rabbitmq.broker_url(rabbitmq_vhost),
        seckill_wait_replicas=1,
        seckill_wait_timeout_ms=500,
    )
    services = app.extensions["hmdp"]
    client = app.test_client()
    add_shop(services)
    admin = session_for(services, 1, "admin")
    vouchers = [create_seckill(client, admin, stock=STOCK) for _ in range(VOUCHERS)]
    buyers = {user: session_for(services, user) for user in range(2, 2 + BUYERS)}
    deadline = time.monotonic() + 30
    while not _replicas_caught_up(cluster):  # the sessions are on the replicas too
        assert time.monotonic() < deadline, "replicas never caught up"
        time.sleep(0.05)
    victim = cluster.master_of_slot(key_slot(stock_key(vouchers[0]).encode()))

    sale = Sale(app, vouchers, buyers)
    threads = sale.start()
    deadline = time.monotonic() + SALE_DEADLINE_S
    while sale.answered() < BUYERS * VOUCHERS // 3:
        assert time.monotonic() < deadline, "the sale never got a third of the way"
        time.sleep(0.01)
    cluster.kill(victim)  # mid-sale: its replica takes over its slots
    cluster.wait_ready(30)
    assert cluster.master_of_slot(key_slot(stock_key(vouchers[0]).encode())) is not victim
    victim.server.start()  # back from its AOF, it rejoins as the new master's replica
    cluster.wait_ready(60)
    for thread in threads:
        thread.join(SALE_DEADLINE_S)
    assert not any(thread.is_alive() for thread in threads)
    assert not sale.errors, sale.errors[:5]
    assert len(sale.answers) == BUYERS * VOUCHERS
    assert sale.retried[vouchers[0]] > 0  # the failover was met mid-sale

    # settle everything the Stream holds (the unconfirmed reservations were not dispatched)
    for _ in range(10):
        now_ms = int(services.redis.time()[0]) * 1000 + services.settings.order_claim_idle_ms
        recover_orders(services, now_ms=now_ms + 1000)
        if verify_orders(services).ok:
            break
    audit = verify_orders(services)
    assert audit.ok and audit.unsettled == 0, audit.lines()

    for voucher_id in vouchers:
        rows = {user: order_id for order_id, user in db_orders(services, voucher_id)}
        answered = {u: a for (u, v), a in sale.answers.items() if v == voucher_id}
        ok = {u: int(data) for u, (status, _, data) in answered.items() if status == 200}
        told = {
            u: int(data)
            for u, (status, message, data) in answered.items()
            if status == 409 and message == "already ordered" and data is not None
        }
        assert {u: rows.get(u) for u in ok} == ok  # every id answered 200 is that buyer's row
        assert {u: rows.get(u) for u in told} == told  # and every id a retry was told
        assert len(rows) == STOCK and db_stock(services, voucher_id) == 0
        statuses = Counter((status, message) for status, message, _ in answered.values())
        assert set(statuses) <= {(200, ""), (409, "already ordered"), (409, "sold out")}
        assert statuses[(409, "sold out")] == BUYERS - len(rows)
