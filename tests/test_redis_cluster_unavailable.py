"""A Redis Cluster that cannot serve answers 503, never 500, and order tasks retry it.

Real 3-master clusters of our own (the run's shared cluster is never broken):

* every master gives up one slot (``CLUSTER DELSLOTS`` on each node): with
  ``cluster-require-full-coverage yes`` every node answers CLUSTERDOWN and the
  client's topology refresh finds the slots not all served;
* a master without a replica is SIGKILLed and the others agree on
  ``cluster_state:fail``;
* every node is SIGKILLed: no node to read the topology from.

Shop, login and seckill routes (the WSGI fast paths included) then answer the
503 envelope with ``Retry-After``; the autouse guard of conftest fails the test
on any 500. A real Celery worker's order task meets the outage, retries, and
settles once the slot is served again. Each request's time is printed: it is
bounded by HMDP_REDIS_CLUSTER_RETRIES (cache/connection.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from support import rabbitmq
from support.procs import celery_worker, json_lines, wait_for
from support.seckill import voucher_body
from support.sessions import session_for

from cache.redis_cluster import SLOTS, EmbeddedCluster
from models.entities import VoucherOrder
from models.migrate import upgrade
from settings import Settings
from tasks.app import create_celery
from tasks.orders import TASK_NAME
from web.errors import REDIS_DOWN

pytestmark = pytest.mark.process

SHOP_ID = 1
USER_ID = 5
PHONE = "13800000009"


@pytest.fixture
def cluster(tmp_path) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path / "cluster", masters=3, node_timeout_ms=500) as formed:
        yield formed


@pytest.fixture
def cluster_settings(cluster, tmp_path, rabbitmq_vhost) -> Settings:
    url = f"sqlite:///{tmp_path / 'hmdp.db'}"
    upgrade(url)
    return Settings(
        redis_url=cluster.url,
        celery_broker_url=rabbitmq.broker_url(rabbitmq_vhost),
        database_url=url,
        var_dir=tmp_path / "var",
        rate_limit_enabled=False,
        code_sender="log",
        admin_phones=("13900000000",),
    )


@pytest.fixture
def cluster_app(cluster_settings):
    from web import close_app, create_app

    app = create_app(cluster_settings)
    app.config["TESTING"] = True
    yield app
    close_app(app)


def _first_slots(cluster: EmbeddedCluster) -> dict[int, int]:
    """node index -> the first slot it serves (one per master)."""
    per_master = SLOTS // cluster.masters
    return {index: index * per_master for index in range(cluster.masters)}


def _del_slots(cluster: EmbeddedCluster, slots: dict[int, int]) -> None:
    """Every node forgets the slots (DELSLOTS acts on the receiving node's table only)."""
    for node in cluster.nodes:
        for slot in slots.values():
            node.client().execute_command("CLUSTER", "DELSLOTS", slot)
    _wait_state(cluster, "fail")


def _add_slots(cluster: EmbeddedCluster, slots: dict[int, int]) -> None:
    """Each slot back to its master; the others learn it from its heartbeats."""
    for index, slot in slots.items():
        cluster.nodes[index].client().execute_command("CLUSTER", "ADDSLOTS", slot)
    cluster.wait_ready()


def _wait_state(cluster: EmbeddedCluster, state: str) -> None:
    def every_live_node() -> bool:
        return all(
            f"cluster_state:{state}" in str(node.client().execute_command("CLUSTER", "INFO"))
            for node in cluster.nodes
            if node.server.process is not None
        )

    wait_for(every_live_node, 30, f"cluster_state:{state} on every live node")


def _prepare(app, services) -> tuple[dict[str, str], int]:
    """A shop row, a seckill voucher (through the admin route) and a buyer's session."""
    from support.seckill import add_shop

    add_shop(services, SHOP_ID)
    admin = session_for(services, 1, role="admin")
    client = app.test_client()
    created = client.post("/voucher/seckill", json=voucher_body(shopId=SHOP_ID), headers=admin)
    assert created.status_code == 200, created.get_json()
    return session_for(services, USER_ID), int(created.get_json()["data"])


def _requests(token: dict[str, str], voucher_id: int) -> list[tuple[str, str, dict]]:
    """(method, path, keyword arguments of the test client) touching Redis each."""
    return [
        ("GET", f"/shop/{SHOP_ID}", {}),  # never read before: no near-cache entry
        ("GET", "/shop-type/list", {}),
        ("POST", f"/user/code?phone={PHONE}", {}),
        ("POST", "/user/login", {"json": {"phone": PHONE, "code": "123456"}}),
        ("GET", "/user/me", {"headers": token}),
        ("POST", f"/voucher-order/seckill/{voucher_id}", {"headers": token}),  # fast path
        ("POST", "/user/sign", {"headers": token}),
        ("PUT", "/follow/7/true", {"headers": token}),
    ]


def _assert_unavailable(app, token: dict[str, str], voucher_id: int) -> dict[str, float]:
    """Every request answers the 503 envelope; returns how long each took (s)."""
    client = app.test_client()
    took = {}
    for method, path, kwargs in _requests(token, voucher_id):
        started = time.monotonic()
        response = client.open(path, method=method, **kwargs)
        took[f"{method} {path}"] = time.monotonic() - started
        assert response.status_code == 503, (path, response.status_code, response.data[:300])
        assert response.headers["Retry-After"] == "1", path
        assert response.mimetype == "application/json", path
        body = json.loads(response.data)
        assert body["success"] is False and body["errorMsg"] == REDIS_DOWN, (path, body)
    return took


def _print_times(what: str, took: dict[str, float]) -> None:
    print(f"{what}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in took.items()))


def test_uncovered_slots_answer_503_and_the_app_recovers_when_they_are_served(
    cluster, cluster_app, cluster_settings
):
    services = cluster_app.extensions["hmdp"]
    token, voucher_id = _prepare(cluster_app, services)
    client = cluster_app.test_client()
    assert client.get("/shop-type/list").status_code == 200  # the client knows the topology
    slots = _first_slots(cluster)
    _del_slots(cluster, slots)
    try:
        _print_times("slots uncovered", _assert_unavailable(cluster_app, token, voucher_id))
        _print_times("again", _assert_unavailable(cluster_app, token, voucher_id))
    finally:
        _add_slots(cluster, slots)
    # The same client finds the served topology again: no restart needed.
    wait_for(
        lambda: client.get(f"/shop/{SHOP_ID}").status_code == 200,
        30,
        "GET /shop/1 to answer 200 after the slots are served again",
    )
    assert client.get("/user/me", headers=token).status_code == 200


def test_a_dead_master_without_replica_answers_503(cluster, cluster_app):
    services = cluster_app.extensions["hmdp"]
    token, voucher_id = _prepare(cluster_app, services)
    assert cluster_app.test_client().get("/shop-type/list").status_code == 200
    cluster.kill(cluster.nodes[1])
    # Once the others agree it failed, every node refuses (CLUSTERDOWN) and its own slots
    # refuse connections: every route is 503, whichever node its keys live on.
    _wait_state(cluster, "fail")
    _print_times("cluster_state:fail", _assert_unavailable(cluster_app, token, voucher_id))


def test_an_order_task_retries_while_the_cluster_is_down_then_settles(
    cluster, cluster_app, cluster_settings, tmp_path
):
    services = cluster_app.extensions["hmdp"]
    _, voucher_id = _prepare(cluster_app, services)
    order_id = 10**15 + 7
    payload = {"orderId": str(order_id), "userId": USER_ID, "voucherId": voucher_id}
    log = tmp_path / "worker.log"
    slots = _first_slots(cluster)
    with celery_worker(cluster_settings, log, concurrency=1):
        _del_slots(cluster, slots)
        try:
            create_celery(cluster_settings, services).send_task(
                TASK_NAME, args=[payload], task_id=str(uuid.uuid4())
            )

            def retried() -> bool:
                return any(
                    "retry" in str(e.get("msg", "")).lower() and TASK_NAME in str(e.get("msg"))
                    for e in json_lines(log)
                )

            wait_for(retried, 60, "the order task to retry", log=log)
        finally:
            _add_slots(cluster, slots)

        def settled() -> bool:
            with services.db.engine.connect() as conn:
                return bool(
                    conn.execute(
                        sa.select(VoucherOrder.id).where(VoucherOrder.id == order_id)
                    ).first()
                )

        wait_for(settled, 90, "the retried order task to write the order row", log=log)
    # Celery's line for a task that failed (its exception not retried) never appears.
    failed = [e for e in json_lines(log) if "raised unexpected" in str(e.get("msg"))]
    assert not failed, failed[:3]


def test_a_cluster_with_no_node_left_answers_503(cluster, cluster_app):
    """No node to read the topology from: redis-py's bare RedisClusterException is a 503."""
    services = cluster_app.extensions["hmdp"]
    token, voucher_id = _prepare(cluster_app, services)
    assert cluster_app.test_client().get("/shop-type/list").status_code == 200
    for node in cluster.nodes:
        cluster.kill(node)
    _print_times("every node killed", _assert_unavailable(cluster_app, token, voucher_id))
