"""A Redis Cluster losing a master (SIGKILL) while locks wait on it: real processes.

3 masters + 3 replicas (cluster-node-timeout 1 s): the killed master's replica is
promoted, and what waited on the dead node carries on.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from cache.connection import connect, disconnect
from cache.lock_wait import listener_for
from cache.locks import RLock
from cache.near import NearCache, invalidation_message
from cache.redis_cluster import EmbeddedCluster
from settings import Settings

pytestmark = pytest.mark.process

LEASE_S = 30  # a waiter woken by its TTL fallback would wait this long


@pytest.fixture
def cluster(tmp_path):
    with EmbeddedCluster(tmp_path, masters=3, replicas=1, node_timeout_ms=1000) as formed:
        yield formed


@pytest.fixture
def near(cluster):
    """A started near-cache on the cluster, its listener subscribed."""
    client = connect(cluster.url, Settings())
    cache = NearCache(
        client,
        channel="cache:{shop}:invalidate",
        members_key="cache:{shop}:near:members",
        size=100,
        ttl=60.0,
    )
    try:
        cache.start()
        assert cache.subscribed.wait(10)
        yield cache
    finally:
        cache.stop()
        disconnect(client)


def _retry(action, seconds: float = 30):  # type: ignore[no-untyped-def]
    """Run ``action`` until the cluster answers it (a failover in progress refuses)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.exceptions.ClusterDownError, redis.TimeoutError):
            assert time.monotonic() < deadline
            time.sleep(0.2)


def _wait_in_thread(client, name: str) -> tuple[threading.Thread, dict]:  # type: ignore[no-untyped-def]
    out: dict = {}

    def body() -> None:
        # When the dead node was also the lock's master, the attempt the listener's
        # failure woke up raises: a caller (the order task) retries it, as here.
        started = time.monotonic()
        out["got"] = _retry(lambda: RLock(client, name).acquire(wait_timeout=LEASE_S + 10))
        out["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def test_lock_wake_ups_survive_the_death_of_the_node_the_listener_is_on(cluster):
    client = connect(cluster.url, Settings())
    try:
        holder = RLock(client, "lock:failover:1")
        assert holder.acquire(lease=LEASE_S)
        thread, out = _wait_in_thread(client, "lock:failover:1")
        listener = listener_for(client)
        deadline = time.monotonic() + 10
        while listener.pubsub.connection is None or not listener.channels:
            assert time.monotonic() < deadline, "the waiter never subscribed"
            time.sleep(0.05)
        dead_port = listener.pubsub.connection.port
        victim = next(node for node in cluster.nodes if node.port == dead_port)
        client.wait(1, 1000)  # the lock reached the replicas before the crash
        cluster.kill(victim)
        cluster.wait_ready(30)
        _retry(holder.release)
        thread.join(LEASE_S + 15)
        assert out.get("got") is True
        assert out["elapsed"] < LEASE_S / 2  # woken by the release, not by the lease

        # After the failover a new wait is woken by its release too: the listener
        # lives on a live node now.
        assert listener.pubsub.connection.port != dead_port
        second = RLock(client, "lock:failover:2")
        assert _retry(lambda: second.acquire(lease=LEASE_S))
        thread, out = _wait_in_thread(client, "lock:failover:2")
        time.sleep(0.5)
        assert thread.is_alive()
        second.release()
        thread.join(LEASE_S + 15)
        assert out.get("got") is True and out["elapsed"] < LEASE_S / 2
    finally:
        disconnect(client)


def test_the_near_cache_stops_serving_when_its_node_dies_and_resubscribes_after_the_failover(
    cluster, near
):
    client = near.client
    assert near.put("1", "cached", near.generation, time.monotonic())
    victim = cluster.master_of_slot(client.keyslot(near.members_key))
    client.wait(1, 1000)
    cluster.kill(victim)
    deadline = time.monotonic() + 30
    while near.serving():  # a listener that lost its node must not serve
        assert time.monotonic() < deadline, "the L1 kept serving without its listener"
        time.sleep(0.05)
    assert near.get("1") is None
    cluster.wait_ready(30)
    assert near.subscribed.wait(30), "the listener never came back after the failover"
    assert near.put("1", "cached again", near.generation, time.monotonic())
    assert near.get("1") == "cached again"
    _retry(lambda: client.publish(near.channel, invalidation_message("ack:{shop}:1", ["1"])))
    deadline = time.monotonic() + 10
    while near.get("1") is not None:  # the invalidation reaches the new subscription
        assert time.monotonic() < deadline, "the invalidation never arrived"
        time.sleep(0.05)


def _subscribed_on(cluster: EmbeddedCluster, channel: str):  # type: ignore[no-untyped-def]
    """The live node holding a subscription to ``channel`` (PUBSUB NUMSUB), or None."""
    for node in cluster.nodes:
        if node.server.process is None:  # killed
            continue
        with node.client() as admin:
            if admin.pubsub_numsub(channel)[0][1]:
                return node
    return None


def test_the_near_cache_resubscribes_elsewhere_when_the_node_of_its_subscription_dies(
    cluster, near
):
    """Whatever node it was: a replica (no failover follows) or a master.

    The cluster client's node list still names the dead node until something
    refreshes it; the listener must not keep reconnecting to that address.
    """
    client = near.client
    victim = _subscribed_on(cluster, near.channel)
    assert victim is not None
    client.wait(1, 1000)
    cluster.kill(victim)
    cluster.wait_ready(30)
    deadline = time.monotonic() + 20
    while (node := _subscribed_on(cluster, near.channel)) is None or not near.serving():
        assert time.monotonic() < deadline, "the listener never subscribed on a live node"
        time.sleep(0.1)
    assert node.port != victim.port
