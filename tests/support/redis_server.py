"""A redis-server of one test's own, for the tests that inject faults into it.

Never the run's shared server: a test that pauses, stops or kills a server
owns it, so no other test sees the fault.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from cache.replication import online_replicas
from cache.server import EmbeddedRedis


@contextlib.contextmanager
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test only (it gets stopped), always continued and stopped after."""
    server = EmbeddedRedis(tmp_path / "stalled-redis").start()
    try:
        yield server
    finally:
        _continue_and_stop(server)


def _continue_and_stop(server: EmbeddedRedis) -> None:
    """SIGCONT first: a test may have left the server stopped, which would not shut down."""
    if server.process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def replication_ready(master: EmbeddedRedis, replicas: int = 1) -> bool:
    """Whether ``master`` has ``replicas`` replicas online (synced, streaming)."""
    client = redis.Redis(port=master.port, socket_timeout=2, decode_responses=True)
    try:
        return online_replicas(client) >= replicas
    finally:
        client.close()


@contextlib.contextmanager
def replicated_redis(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    """A master and one replica (``--replicaof``) of this test only, the replica online.

    Both are continued (a test may SIGSTOP either) and stopped after.
    """
    master = EmbeddedRedis(tmp_path / "master").start()
    # No AOF on the replica: a replica rewrites its AOF after every full sync and
    # refuses SHUTDOWN meanwhile, and its copy is the replication stream anyway.
    replica = EmbeddedRedis(
        tmp_path / "replica",
        appendonly=False,
        extra_args=("--replicaof", "127.0.0.1", str(master.port)),
    )
    try:
        replica.start()
        deadline = time.monotonic() + 30
        while not replication_ready(master):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica never came online")
            time.sleep(0.05)
        yield master, replica
    finally:
        for server in (replica, master):
            _continue_and_stop(server)
