"""REDIS_URL may name a Unix socket (``unix:///path?db=N``), the cheaper way to a Redis
on the same host: the web tier, the order worker and Celery's broker (kombu spells the
same socket ``redis+socket://``) all reach it, and a flash-sale order settles.

The server is a real redis-server of this module's own, listening on a socket only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.procs import celery_worker, http, web_server
from support.seckill import add_shop, create_seckill, db_orders, wait_for

from cache.server import EmbeddedRedis
from services import Services, kombu_url
from settings import Settings

pytestmark = pytest.mark.process


@pytest.fixture
def socket_redis(tmp_path: Path) -> Iterator[Path]:
    """A redis-server that listens on a Unix socket and on no TCP port."""
    path = tmp_path / "redis.sock"
    server = EmbeddedRedis(
        tmp_path / "socket-redis",
        extra_args=("--unixsocket", str(path), "--unixsocketperm", "700"),
    ).start()
    # The socket is the only way in from here on (EmbeddedRedis waits on the port).
    redis.Redis(port=server.port).config_set("port", "0")
    try:
        yield path
    finally:
        redis.Redis(unix_socket_path=str(path)).shutdown(nosave=True)
        server.stop()


@pytest.fixture
def settings(settings: Settings, socket_redis: Path) -> Settings:
    """The backend's database, with Redis (and so Celery's broker) on the socket."""
    if settings.celery_broker_url:
        pytest.skip("a Unix socket is one Redis, not a cluster")
    return settings.with_(redis_url=f"unix://{socket_redis}?db=3")


def test_kombu_url_spells_the_socket_the_way_kombu_reads_it():
    assert kombu_url("unix:///run/r.sock?db=3") == "redis+socket:///run/r.sock?virtual_host=3"
    assert kombu_url("unix://:pw@/run/r.sock") == "redis+socket://:pw@/run/r.sock?virtual_host=0"
    assert kombu_url("redis://10.0.0.5:6380/2") == "redis://10.0.0.5:6380/2"


def test_web_worker_and_broker_over_a_unix_socket_settle_an_order(
    settings: Settings, app, services: Services, login_as, tmp_path: Path
):
    assert services.broker_url.startswith("redis+socket://")
    add_shop(services)
    voucher = create_seckill(app.test_client(), login_as(1, "admin"), stock=5)
    headers = login_as(7)
    with (
        celery_worker(settings, tmp_path / "worker.log"),
        web_server(settings, tmp_path / "web.log") as (base, _),
    ):
        status, _, body = http(
            f"{base}/voucher-order/seckill/{voucher}", method="POST", headers=headers
        )
        assert status == 200, body
        order_id = int(json.loads(body)["data"])
        wait_for(lambda: db_orders(services, voucher), 60, what="the order row")
    assert db_orders(services, voucher) == [(order_id, 7)]
    # The same database index the URL names: Redis' db 3 holds the gate's state.
    assert services.redis.connection_pool.connection_kwargs["db"] == 3
