"""Logical expiry end to end: the web sends "tasks.cache.refresh_shop" by name and a
real Celery worker process (queue "cache") refreshes the key; readers never wait."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from support.env import (
    ROOT,
    process_env,
)

from cache.region import decode_logical, encode_logical
from models.entities import Shop
from tasks.app import worker_argv


def queue_length(redis_client, queue: str) -> int:  # type: ignore[no-untyped-def]
    """Messages waiting in a kombu Redis queue (a list named after the queue)."""
    return redis_client.llen(queue)


def make_stale(redis_client, shop_id: int) -> str:  # type: ignore[no-untyped-def]
    key = f"cache:{{shop}}:logical:{shop_id}"
    _, data = decode_logical(redis_client.get(key))
    redis_client.set(key, encode_logical(data, time.time() - 1))
    return data


def rename_in_database(services, shop_id: int, name: str) -> None:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        session.get(Shop, shop_id).name = name


def hot_id(redis_client) -> int:  # type: ignore[no-untyped-def]
    return int(sorted(redis_client.smembers("cache:{shop}:hot:current"), key=int)[0])


def test_stale_reads_send_exactly_one_refresh_task_by_name(client, seeded, redis_client):
    shop_id = hot_id(redis_client)
    stale = make_stale(redis_client, shop_id)
    for _ in range(50):
        response = client.get(f"/shop/{shop_id}")
        assert response.status_code == 200
        assert response.get_data(as_text=True).find(stale) > 0  # the stale value, at once
    assert queue_length(redis_client, "cache") == 1  # one task for 50 stale reads
    assert "tasks.cache.refresh_shop" in redis_client.lindex("cache", 0)


@pytest.mark.process
@pytest.mark.slow
def test_a_real_worker_refreshes_the_expired_hot_shop(client, seeded, services, settings):
    redis_client = services.redis
    shop_id = hot_id(redis_client)
    make_stale(redis_client, shop_id)
    rename_in_database(services, shop_id, "refreshed by the worker")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            *worker_argv(queues="cache", pool="solo", loglevel="WARNING", standalone=True),
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=process_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = client.get(f"/shop/{shop_id}").json["data"]
        assert first["name"] != "refreshed by the worker"  # served stale, did not wait
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            expire_at, data = decode_logical(redis_client.get(f"cache:{{shop}}:logical:{shop_id}"))
            if expire_at > time.time():
                break
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            time.sleep(0.2)
        else:
            pytest.fail("the worker did not refresh the key in 90 s")
        assert '"name":"refreshed by the worker"' in data
        time.sleep(services.settings.near_cache_ttl)  # this process's L1 copy ages out
        assert client.get(f"/shop/{shop_id}").json["data"]["name"] == "refreshed by the worker"
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
