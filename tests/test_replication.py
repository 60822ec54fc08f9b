"""WAIT after a script, on the connection that ran it: a real master and a real replica.

cache/replication.py: a write waits until the replica has it; a stopped replica
(SIGSTOP) makes the wait run out with fewer acknowledgements; a reply that wrote
nothing does not wait; a master that lost its script cache gets the script again
on the same connection. The script is lua/counter_floor.lua (it writes only when
it raises the counter: -1 means nothing written).

On a Redis Cluster (3 masters + 3 replicas) the wait goes to the master of the
key's slot, and follows the slot to its new master after a SIGKILL.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import redis
from support.redis_server import replicated_redis

from cache.connection import connect, disconnect
from cache.redis_cluster import EmbeddedCluster
from cache.replication import ReplicaWait, Waited, call_and_wait
from cache.scripts import load_script
from settings import Settings

pytestmark = pytest.mark.process

TIMEOUT_MS = 300
WAIT = ReplicaWait(1, TIMEOUT_MS)


def wrote(reply) -> bool:  # type: ignore[no-untyped-def]
    return int(reply) != -1


def raise_to(script, key: str, floor: int) -> Waited:  # type: ignore[no-untyped-def]
    return call_and_wait(script, [key], [floor, 60], WAIT, wrote)


@pytest.fixture
def pair(tmp_path):
    with replicated_redis(tmp_path) as servers:
        yield servers


def test_a_write_is_answered_once_the_replica_has_it(pair):
    master, replica = pair
    client = connect(master.url)
    reader = redis.Redis(port=replica.port, decode_responses=True)
    script = load_script(client, "counter_floor")
    try:
        key = f"floor:{uuid.uuid4().hex}"
        waited = raise_to(script, key, 5)
        assert waited == Waited(0, 1) and waited.confirmed(WAIT)
        assert reader.get(key) == "5"  # on the replica when the call returns
        waited = raise_to(script, key, 3)  # below the counter: nothing written, no wait
        assert waited == Waited(-1, None) and waited.confirmed(WAIT)
    finally:
        client.connection_pool.disconnect()
        reader.close()


def test_a_stopped_replica_leaves_the_write_unconfirmed_after_the_timeout(pair):
    master, replica = pair
    client = connect(master.url, Settings(redis_socket_timeout=2.0))
    script = load_script(client, "counter_floor")
    key = f"floor:{uuid.uuid4().hex}"
    raise_to(script, key, 1)  # every pooled connection has written once, confirmed
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        waited = raise_to(script, key, 7)
        elapsed = time.monotonic() - started
        # The WAIT counted this connection's write, which the stopped replica never
        # acknowledged (on another connection it would count an older offset).
        assert waited == Waited(1, 0) and not waited.confirmed(WAIT)
        assert TIMEOUT_MS / 1000 * 0.9 <= elapsed < 2.0
        assert client.get(key) == "7"  # the master has it: the caller decides what to say

        started = time.monotonic()
        assert raise_to(script, key, 2) == Waited(-1, None)  # wrote nothing: no wait
        assert time.monotonic() - started < TIMEOUT_MS / 1000 / 2
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    # Back: the replica catches up and the next write is confirmed again.
    assert raise_to(script, key, 9) == Waited(7, 1)
    client.connection_pool.disconnect()


def test_a_master_that_forgot_the_script_gets_it_on_the_same_connection(pair):
    master, _ = pair
    client = connect(master.url)
    script = load_script(client, "counter_floor")
    try:
        client.script_flush()
        key = f"floor:{uuid.uuid4().hex}"
        assert raise_to(script, key, 4) == Waited(0, 1)
        assert client.script_exists(script.sha) == [True]  # EVAL cached it again
        assert raise_to(script, key, 8) == Waited(4, 1)
    finally:
        client.connection_pool.disconnect()


# --- on a Redis Cluster: the master of the key's slot, and after its failover ------------


def test_on_a_cluster_the_wait_follows_the_slot_to_its_new_master(tmp_path):
    """3 masters + 3 replicas: the write waits on the slot's master for its replica; the
    master SIGKILLed: the call fails (503) and refreshes the slot table; once the replica
    is promoted the call goes there (MOVED or the refreshed table), unconfirmed while it
    has no replica; the old master restarted rejoins as its replica: confirmed again."""
    with EmbeddedCluster(
        tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=1000
    ) as cluster:
        client = connect(cluster.url)
        try:
            script = load_script(client, "counter_floor")
            key = "floor:{42}"
            assert raise_to(script, key, 5) == Waited(0, 1)
            victim = cluster.master_of_slot(client.keyslot(key))
            replica = next(n for n in cluster.nodes if n.master_of == cluster.nodes.index(victim))
            reader = redis.Redis(port=replica.port, single_connection_client=True)
            reader.execute_command("READONLY")  # a cluster replica serves reads when asked
            assert reader.get(key) == b"5"  # the replica had it
            reader.close()
            cluster.kill(victim)
            with pytest.raises(redis.ConnectionError):
                raise_to(script, key, 6)
            cluster.wait_ready(30)
            deadline = time.monotonic() + 30
            while True:  # until the client's table names the promoted replica
                try:
                    waited = raise_to(script, key, 7)
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            assert waited == Waited(5, 0)  # the new master has no replica yet: no confirmation
            assert cluster.master_of_slot(client.keyslot(key)) is replica
            victim.server.start()  # back from its AOF, it rejoins as the replica
            cluster.wait_ready(60)
            assert raise_to(script, key, 8) == Waited(7, 1)
            assert victim.client().execute_command("ROLE")[0] == "slave"
        finally:
            disconnect(client)
