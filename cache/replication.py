"""Acknowledged by a replica: run a script, then ``WAIT`` on the connection that ran it.

Redis answers a write once the master has it; a failover to a replica that had
not received it yet loses it. For the flash sale that loses an order the client
was told it has, so with ``HMDP_SECKILL_WAIT_REPLICAS`` > 0 a reservation is
answered only after ``WAIT n timeout`` said that ``n`` replicas have it.

``WAIT`` counts the writes of *its own connection* (it waits for the replication
offset of that client's last write), so it must go on the very connection that
ran the script: :func:`call_and_wait` takes one connection from the pool (on a
Redis Cluster, from the pool of the master of the script's slot), runs the
script on it (:func:`cache.scripts.run_on`) and, only when the reply says it
wrote what must survive (``needs_wait``: the gate reserved), sends ``WAIT`` on
it before it goes back to the pool. Answers that reserved nothing (sold out, already ordered) do not
wait. Sending ``EVALSHA`` and ``WAIT`` in one write would save a round trip,
but then every answer would wait: the fast path's script also pushes the
session's TTL back and charges the rate-limit bucket, both replicated writes,
so with a stalled replica even a sold-out answer would wait out the timeout.

A reply that ``WAIT`` confirmed for fewer than ``n`` replicas (a replica
stalled, partitioned or gone) is still the master's truth: the reservation
exists and settles as a row as long as the master lives. The caller decides
what the client is told (the gate's ``unconfirmed``: 503, retry to learn).

The settler's side is :func:`fence`: a worker may read a reservation from the
master's Stream before any replica has it (its client got ``unconfirmed``, or
its 200 still waits); written as a row and then lost by a failover, the
buyer's retry would be sold a second reservation under a new id that never
becomes a row. Replication is one ordered stream per master, so a write made
*after* the entries were read and acknowledged by ``WAIT`` on its connection
proves that the entries are on the replicas too: nothing is written to the
database for them before that.

On a cluster a ``MOVED`` reply (a failover moved the slot to another master)
refreshes redis-py's slot table and the call is tried once more on the new
master; a refused connection or a timeout refreshes it too and is raised (the
web's 503). A cluster that is failing over (``CLUSTERDOWN``, ``MASTERDOWN``,
``TRYAGAIN``, a slot nobody covers yet, a second ``MOVED``) or moving the slot
(``ASK``: this project never reshards a live sale) is raised as
``redis.ConnectionError``, the same 503: the client retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from settings import Settings

from .scripts import load_script, run_on

FENCE_TTL_MS = 10_000  # the fence key is only ever written, never read: it just expires


@dataclass(frozen=True)
class ReplicaWait:
    """How many replicas must have a write, and how long to wait for them (ms)."""

    replicas: int
    timeout_ms: int

    @classmethod
    def of(cls, settings: Settings) -> ReplicaWait | None:
        """The gate's wait (``HMDP_SECKILL_WAIT_*``), None when it is off."""
        if settings.seckill_wait_replicas <= 0:
            return None
        return cls(settings.seckill_wait_replicas, settings.seckill_wait_timeout_ms)


@dataclass(frozen=True)
class Waited:
    """A script's reply and, when it had to wait, how many replicas acknowledged it."""

    reply: Any
    acknowledged: int | None  # None: the reply needed no wait

    def confirmed(self, wait: ReplicaWait) -> bool:
        """Whether the reply needed no wait or enough replicas acknowledged it."""
        return self.acknowledged is None or self.acknowledged >= wait.replicas


def call_and_wait(
    script: Script,
    keys: list,
    args: list,
    wait: ReplicaWait,
    needs_wait: Callable[[Any], bool],
) -> Waited:
    """Run ``script`` on one connection and, if ``needs_wait(reply)``, ``WAIT`` on it.

    ``script`` is bound to its client (:func:`cache.scripts.load_script`): a
    single Redis or a :class:`RedisCluster` (then ``keys[0]`` names the slot).
    """

    def then(connection: Any, reply: Any) -> Waited:
        if not needs_wait(reply):
            return Waited(reply, None)
        connection.send_command("WAIT", wait.replicas, wait.timeout_ms)
        return Waited(reply, int(connection.read_response()))

    client = script.registered_client
    if not isinstance(client, RedisCluster):
        return run_on(client.connection_pool, script, keys, args, then)
    for attempt in (1, 2):
        try:
            node = client.get_node_from_key(keys[0])
        except SlotNotCoveredError as exc:
            _refresh(client)
            raise _failing_over(exc) from exc
        pool = client.get_redis_connection(node).connection_pool
        try:
            return run_on(pool, script, keys, args, then)
        except MovedError as exc:  # the slot has another master now (a failover)
            _refresh(client)
            if attempt == 2:
                raise _failing_over(exc) from exc
        except (AskError, ClusterDownError, TryAgainError) as exc:  # failing over, migrating
            _refresh(client)
            raise _failing_over(exc) from exc
        except (redis.ConnectionError, redis.TimeoutError):
            # The master is gone or stalled: the next call should find its successor.
            _refresh(client, failed=node.name)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


class NotReplicated(redis.ConnectionError):
    """A fence no replica acknowledged in time: an outside failure, like Redis unavailable.

    A ``redis.ConnectionError`` (so in ``cache.connection.UNAVAILABLE``): the order
    task retries it and the Stream's recovery counts nothing against the entries.
    """


def fence(client: redis.Redis | RedisCluster, key: str, wait: ReplicaWait | None) -> bool:
    """Whether the replicas have every write the master of ``key``'s slot made so far.

    A ``SET key PX`` (``lua/replica_fence.lua``) and ``WAIT`` on its connection
    (:func:`call_and_wait`): called after reading Stream entries of that slot and
    before writing them to the database, a True proves that a failover now keeps
    them. ``wait`` None (``HMDP_SECKILL_WAIT_REPLICAS=0``): True, nothing sent.
    Raises like :func:`call_and_wait` when the master is unavailable.
    """
    if wait is None:
        return True
    script = load_script(client, "replica_fence")
    return call_and_wait(script, [key], [FENCE_TTL_MS], wait, lambda _: True).confirmed(wait)


def _failing_over(exc: BaseException) -> redis.ConnectionError:
    """The slot's master is unavailable for now: what the web answers 503 to."""
    return redis.ConnectionError(f"the cluster is failing over or moving the slot: {exc}")


def _refresh(cluster: RedisCluster, failed: str | None = None) -> None:
    """Reload the slot table from a live node (redis-py's own refresh), best effort."""
    with contextlib.suppress(redis.RedisError, RedisClusterException):
        if failed is not None:
            cluster.nodes_manager.move_node_to_end_of_cached_nodes(failed)
            cluster.nodes_manager.initialize(last_failed_node_name=failed)
        else:
            cluster.nodes_manager.initialize()


def online_replicas(client: redis.Redis) -> int:
    """How many replicas of ``client``'s server are online (synced and streaming).

    For whoever starts replicas (the tests, ``bench --wait-replicas``): until they
    are, every reservation would wait out the timeout.
    """
    info = client.info("replication")
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )
