"""Unique visitors: HyperLogLog per shop per day, fed from GET /shop/{id} through a buffer."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.social import make_shop, make_users

from cache import uv

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)

# Keys expire settings.uv_retention_days after their day, so tests use recent days.
NOW = datetime.now(UTC).replace(hour=12)
DAY = NOW.date()
NEXT_DAY = DAY + timedelta(days=1)


def test_thousand_distinct_visitors_estimate_within_two_percent(redis_client):
    buffer = uv.UvBuffer(lambda: redis_client, interval=60)
    for i in range(1000):
        assert buffer.record(5, DAY, f"u:{i}")
    for i in range(500):  # every visitor again: counts once
        buffer.record(5, DAY, f"u:{i}")
    assert buffer.pending() == 1000  # repeats are not even buffered twice
    assert buffer.flush() == 1000
    estimate = uv.count(redis_client, 5, DAY)
    assert abs(estimate - 1000) <= 20, estimate
    # Visiting again after the flush changes nothing either (HyperLogLog).
    for i in range(1000):
        buffer.record(5, DAY, f"u:{i}")
    buffer.flush()
    assert uv.count(redis_client, 5, DAY) == estimate
    # Other shops and other days are other keys.
    assert uv.count(redis_client, 6, DAY) == 0
    assert uv.count(redis_client, 5, NEXT_DAY) == 0
    assert redis_client.ttl(uv.uv_key(5, DAY)) > 0
    buffer.close()


def test_same_visitor_twice_counts_once(redis_client):
    buffer = uv.UvBuffer(lambda: redis_client, interval=60)
    buffer.record(1, DAY, "ip:10.0.0.1")
    buffer.flush()
    buffer.record(1, DAY, "ip:10.0.0.1")
    buffer.flush()
    assert uv.count(redis_client, 1, DAY) == 1
    buffer.close()


def test_the_flusher_thread_sends_without_being_asked(redis_client):
    buffer = uv.UvBuffer(lambda: redis_client, interval=0.05)
    buffer.record(3, DAY, "u:1")
    buffer.record(3, DAY, "u:2")
    deadline = time.monotonic() + 10  # a bound for a hung thread, not a speed check
    while uv.count(redis_client, 3, DAY) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.count(redis_client, 3, DAY) == 2
    assert buffer.pending() == 0
    buffer.close()


def test_a_full_buffer_drops_instead_of_growing(redis_client):
    buffer = uv.UvBuffer(lambda: redis_client, interval=60, max_pending=10)
    results = [buffer.record(2, DAY, f"u:{i}") for i in range(15)]
    assert results == [True] * 10 + [False] * 5
    assert buffer.pending() == 10
    buffer.close()
    assert uv.count(redis_client, 2, DAY) == 10


def test_a_failed_flush_loses_the_batch_but_never_raises():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    buffer = uv.UvBuffer(lambda: dead, interval=60)
    buffer.record(1, DAY, "u:1")
    assert buffer.flush() == 0
    assert buffer.pending() == 0
    buffer.close()


def test_shop_reads_feed_uv_and_the_route_reports_it(app, client, services, login_as):
    make_users(services, 3)
    make_shop(services, 1)
    make_shop(services, 2)
    app.extensions["hmdp"].clock = lambda: NOW
    for user_id in (1, 2, 3, 1, 2):
        assert client.get("/shop/1", headers=login_as(user_id)).status_code == 200
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.1"):
        assert client.get("/shop/1", environ_base={"REMOTE_ADDR": ip}).status_code == 200
    client.get("/shop/2")
    assert client.get("/shop/999").status_code == 404  # unknown shops count nothing
    r = client.get(f"/shop/1/uv?date={DAY.isoformat()}")
    assert r.status_code == 200
    assert r.json["data"] == {"shopId": 1, "date": DAY.isoformat(), "uv": 5}
    assert client.get("/shop/1/uv").json["data"]["uv"] == 5  # default: today (app clock)
    assert client.get("/shop/2/uv").json["data"]["uv"] == 1
    assert client.get(f"/shop/1/uv?date={NEXT_DAY.isoformat()}").json["data"]["uv"] == 0
    assert services.redis.pfcount(uv.uv_key(999, DAY)) == 0


def test_uv_route_bad_inputs(client, services):
    make_shop(services, 1)
    for query in (
        "date=2024-13-01",
        "date=abc",
        "date=2024-6-1",
        "date=20240601",
        "date=2024-W22-6",
    ):
        r = client.get(f"/shop/1/uv?{query}")
        assert r.status_code == 400, query
        assert r.json["success"] is False
    assert client.get("/shop/999/uv").status_code == 404
    assert client.get("/shop/0/uv").status_code == 404
    assert client.get("/shop/abc/uv").status_code == 400
