"""A Redis Cluster as configuration, on real servers.

The ``cluster`` backend (conftest): a 3-master EmbeddedCluster, and RabbitMQ on a
vhost of this run's own as Celery's broker.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from redis.cluster import RedisCluster
from support.backends import CLUSTER
from support.env import ROOT, process_env
from support.shops import add_shops

from cache.region import decode_logical
from cache.shops import shop_region
from services import Services
from tasks.app import create_celery, worker_argv
from web.metrics import StreamCollector

pytestmark = [pytest.mark.redis_cluster, pytest.mark.process]


@pytest.fixture
def cluster_settings(settings, backend):
    if backend != CLUSTER:
        pytest.skip("about the cluster backend only")
    return settings.with_(redis_socket_timeout=1.5, redis_connect_timeout=0.7)


def test_every_client_of_a_cluster_url_is_a_cluster_client_with_the_timeouts(cluster_settings):
    services = Services(cluster_settings)
    try:
        client = services.redis
        assert isinstance(client, RedisCluster)
        keys = [f"probe:{{{i}}}" for i in range(30)]
        for key in keys:
            client.set(key, "1")
        nodes = {client.get_node_from_key(key).name for key in keys}
        assert len(nodes) == 3  # the keys really are spread over the three masters
        for node in client.get_primaries():
            kwargs = node.redis_connection.connection_pool.connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 0.7)
        assert services.broker_url.startswith("amqp://")
        assert create_celery(cluster_settings, services).conf.broker_url.startswith("amqp://")
    finally:
        services.close()
    collector = StreamCollector(
        cluster_settings.with_(metrics_redis_timeout=1.0), lambda: cluster_settings.redis_url
    )
    assert isinstance(collector.client(), RedisCluster)


def test_a_task_crosses_rabbitmq_to_a_worker_that_writes_the_cluster(cluster_settings):
    """The broker of a cluster is RabbitMQ: the web sends, a real worker refreshes a shop."""
    services = Services(cluster_settings)
    worker = None
    try:
        (shop_id,) = add_shops(services.db, 1)
        region = shop_region(services.redis, services.db, cluster_settings)
        services.redis.sadd(region.hot_key, str(shop_id))  # hot: the refresh writes it
        key = region.logical_key(str(shop_id))
        assert not services.redis.exists(key)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                *worker_argv(queues="cache", pool="solo", loglevel="WARNING", standalone=True),
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=process_env(cluster_settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        celery = create_celery(cluster_settings, services)
        celery.send_task("tasks.cache.refresh_shop", args=[shop_id])
        deadline = time.monotonic() + 90
        while not services.redis.exists(key):
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            assert time.monotonic() < deadline, "no worker wrote the shop within 90 s"
            time.sleep(0.2)
        _, data = decode_logical(services.redis.get(key))
        assert f'"name":"shop{shop_id}"' in data
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        services.close()
