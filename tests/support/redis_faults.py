"""Real Redis faults for one client of a test: its writes fail as on a connection reset.

:class:`WritesReset` pauses every write on the server (``CLIENT PAUSE ... WRITE``,
Redis >= 6.2: reads go on, writes wait in the server) and, until it is left,
``CLIENT KILL``s each connection of the named client that is waiting with a
write. The waiting command is dropped unexecuted and the caller gets a real
``redis.ConnectionError``, exactly what a Redis restart or a reset connection
does to a command in flight. Other clients' writes only wait, and run when the
pause ends (Redis also holds expiry during a pause).
"""

from __future__ import annotations

import threading
import time

import redis

PAUSE_MS = 30_000  # upper bound; leaving the block unpauses at once


def name_connections(client: redis.Redis, name: str) -> redis.Redis:
    """Make every connection of ``client``'s pool announce ``name`` (CLIENT SETNAME).

    Call before the client connects; returns the client.
    """
    client.connection_pool.connection_kwargs["client_name"] = name
    client.connection_pool.disconnect()
    return client


class WritesReset:
    """``with WritesReset(url, "victim"):`` the victim's writes fail until the block ends."""

    def __init__(self, url: str, victim: str):
        self.admin = redis.Redis.from_url(url, decode_responses=True)
        self.victim = victim
        self.killed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._kill_loop, daemon=True)

    def _kill_loop(self) -> None:
        while not self._stop.is_set():
            for client in self.admin.client_list():
                if client.get("name") == self.victim and "b" in client.get("flags", ""):
                    self.killed += self.admin.client_kill_filter(_id=client["id"])
            time.sleep(0.005)

    def start(self) -> None:
        """Begin the fault (again is a no-op), e.g. from an event hook at the right moment."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self.admin.client_pause(PAUSE_MS, all=False)
            self._thread.start()

    def stop(self) -> None:
        """End the fault: writes run again (again is a no-op)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
            self.admin.client_unpause()
        self.admin.close()

    def __enter__(self) -> WritesReset:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def command_calls(client: redis.Redis | redis.RedisCluster, command: str) -> int:
    """Calls of ``command`` since CONFIG RESETSTAT, summed over every node of a cluster."""
    if isinstance(client, redis.RedisCluster):
        per_node = client.info("commandstats", target_nodes=redis.RedisCluster.PRIMARIES)
        stats = list(per_node.values())
    else:
        stats = [client.info("commandstats")]
    return sum(s.get(f"cmdstat_{command}", {}).get("calls", 0) for s in stats)


def reset_stats(client: redis.Redis | redis.RedisCluster) -> None:
    """CONFIG RESETSTAT on the server (every primary of a cluster)."""
    if isinstance(client, redis.RedisCluster):
        client.config_resetstat(target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        client.config_resetstat()


def all_keys(client: redis.Redis | redis.RedisCluster, pattern: str = "*") -> list[str]:
    """Every key matching ``pattern`` (SCAN, every primary of a cluster), sorted."""
    return sorted(client.scan_iter(match=pattern, count=1000))


def kill_clients(client: redis.Redis | redis.RedisCluster, **filters: str) -> int:
    """CLIENT KILL with ``filters`` on the server (on every node of a cluster)."""
    if isinstance(client, redis.RedisCluster):
        killed = client.client_kill_filter(**filters, target_nodes=redis.RedisCluster.ALL_NODES)
        return sum(killed.values()) if isinstance(killed, dict) else int(killed)
    return int(client.client_kill_filter(**filters))
