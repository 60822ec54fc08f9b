"""The local Redis Cluster harness (cache/redis_cluster.py): real redis-server processes."""

from __future__ import annotations

import time

import pytest
import redis
from redis.cluster import ClusterNode as Startup
from redis.cluster import RedisCluster

from cache.redis_cluster import EmbeddedCluster

pytestmark = pytest.mark.process


def test_three_masters_with_replicas_serve_every_slot_and_fail_over(tmp_path):
    with EmbeddedCluster(tmp_path, masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        assert cluster.url.startswith("redis+cluster://127.0.0.1:")
        assert len(cluster.url.split(",")) == 6
        client = RedisCluster(
            startup_nodes=[Startup("127.0.0.1", node.port) for node in cluster.nodes],
            decode_responses=True,
        )
        try:
            keys = [f"harness:{{{i}}}" for i in range(30)]
            for i, key in enumerate(keys):
                client.set(key, i)
            owners = {cluster.master_of_slot(client.keyslot(key)).port for key in keys}
            assert len(owners) == 3  # the keys really are spread over the three masters
            with pytest.raises(redis.RedisClusterException, match="same key slot"):
                client.eval("return 1", 2, "a{1}", "b{2}")

            victim = cluster.master_of_slot(client.keyslot(keys[0]))
            client.wait(1, 1000)  # what replicated before the crash survives it
            cluster.kill(victim)
            cluster.wait_ready(30)
            promoted = cluster.master_of_slot(client.keyslot(keys[0]))
            assert promoted.port != victim.port and promoted.master_of is not None
            deadline = time.monotonic() + 10
            while True:  # the client finds the new master by itself (MOVED / refresh)
                try:
                    assert client.get(keys[0]) == "0"
                    break
                except (redis.ConnectionError, redis.exceptions.ClusterDownError):
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        finally:
            client.close()
