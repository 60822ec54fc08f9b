"""A real Redis Cluster from plain redis-server processes, on one machine.

For the tests and for ``manage.py cluster --redis-cluster N``: no Docker and no
``redis-cli --cluster``, only the server binary (:func:`cache.server.find_redis_server`)
and the cluster commands, sent from Python:

1. start every node with ``cluster-enabled yes`` on a free loopback port, each with
   its own data directory (AOF on, like the single embedded server);
2. give each master its share of the 16,384 slots (``CLUSTER ADDSLOTS``), introduce
   every node to the first (``CLUSTER MEET``), then make the replicas replicate their
   master (``CLUSTER REPLICATE``);
3. wait until every node reports ``cluster_state:ok`` and agrees on the topology.

``node_timeout_ms`` is the cluster's failure detector: a master silent for that long
is failed over to its replica; tests keep it small.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from .server import EmbeddedRedis, free_port

SLOTS = 16384
URL_SCHEME = "redis+cluster"
BUS_OFFSET = 10000  # each node's cluster bus listens on its port + 10000
MEET_AGAIN_S = 1.0  # how often a node that has not joined yet is told to MEET again


def node_port() -> int:
    """A free port whose cluster-bus port (+10,000) is free too and exists."""
    for _ in range(200):
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def cluster_url(nodes: list[tuple[str, int]]) -> str:
    """The REDIS_URL form naming a cluster by some of its nodes (any one is enough)."""
    return f"{URL_SCHEME}://" + ",".join(f"{host}:{port}" for host, port in nodes)


@dataclass
class ClusterNode:
    """One redis-server of the cluster and what the cluster calls it."""

    server: EmbeddedRedis
    node_id: str = ""
    master_of: int | None = None  # index of the master it replicates; None for a master

    @property
    def port(self) -> int:
        return self.server.port

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A plain client of this node alone (cluster commands, INFO)."""
        return redis.Redis(
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )


@dataclass
class EmbeddedCluster:
    """``masters`` masters, each with ``replicas`` replicas, formed and ready on start()."""

    data_dir: Path
    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    appendfsync: str = "everysec"
    binary: str | None = None  # Settings.redis_server; None: find_redis_server's choice
    nodes: list[ClusterNode] = field(default_factory=list)
    _met_at: float = field(default=float("-inf"), init=False, repr=False)  # the last MEET sent

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,...`` with every node (the settings' REDIS_URL)."""
        return cluster_url([("127.0.0.1", node.port) for node in self.nodes])

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        """Start the processes, form the cluster, wait until it serves every slot."""
        if self.masters < 1:
            raise ValueError("a cluster needs at least one master")
        total = self.masters * (1 + self.replicas)
        for index in range(total):
            master_of = None if index < self.masters else (index - self.masters) % self.masters
            server = EmbeddedRedis(
                Path(self.data_dir) / f"node-{index}",
                node_port(),
                appendfsync=self.appendfsync,
                binary=self.binary,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    # A replica serves reads of its slots only when asked (READONLY);
                    # failover needs nothing else from it.
                    "--cluster-require-full-coverage",
                    "yes",
                ),
            )
            self.nodes.append(ClusterNode(server, master_of=master_of))
        try:
            for node in self.nodes:
                node.server.start()
                node.node_id = node.client().execute_command("CLUSTER", "MYID")
            self._form(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, deadline: float) -> None:
        masters = self.nodes[: self.masters]
        for index, node in enumerate(masters):
            first = index * SLOTS // self.masters
            last = (index + 1) * SLOTS // self.masters
            node.client().execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
        self._wait(deadline, "every node to know every other", self._met)
        for node in self.nodes[self.masters :]:
            master = self.nodes[node.master_of or 0]
            node.client().execute_command("CLUSTER", "REPLICATE", master.node_id)
        self._wait(deadline, "cluster_state:ok on every node", self._ready)

    def _met(self) -> bool:
        """Whether every node knows every other; if not, each node MEETs the nodes it does
        not know yet (at most once per second): a handshake that does not finish within the
        node timeout is dropped, never retried by Redis, and on a loaded box that happens;
        gossip through one seed node is not enough when the seed itself lost a handshake."""
        ports = {node.port for node in self.nodes}
        missing = {node.port: ports - self._known_ports(node) for node in self.nodes}
        if not any(missing.values()):
            return True
        now = time.monotonic()
        if now - self._met_at >= MEET_AGAIN_S:
            self._met_at = now
            for node in self.nodes:
                for port in sorted(missing[node.port]):
                    with contextlib.suppress(redis.ResponseError):  # a handshake in progress
                        node.client().execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        return False

    @staticmethod
    def _known_ports(node: ClusterNode) -> set[int]:
        """The ports of the nodes ``node`` knows, itself included (handshakes not finished
        left out). A ``CLUSTER NODES`` line: ``<id> <ip:port@cport> <flags> ...``."""
        with node.client() as client:
            known = client.execute_command("CLUSTER", "NODES")
        ports = set()
        for line in str(known).splitlines():
            fields = line.split()
            if len(fields) < 3 or "handshake" in fields[2].split(","):
                continue
            ports.add(int(fields[1].split("@", 1)[0].rsplit(":", 1)[1]))
        return ports

    def _live(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.server.process is not None]

    def _ready(self) -> bool:
        """Every live node says ok, every slot's master is alive, every replica is in sync."""
        live = self._live()
        live_ports = {node.port for node in live}
        for node in live:
            client = node.client()
            if "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                return False
            role = client.execute_command("ROLE")
            if role[0] == "slave" and role[3] != "connected":
                return False
        slots = live[0].client().execute_command("CLUSTER", "SLOTS")
        return sum(last - first + 1 for first, last, *_ in slots) == SLOTS and all(
            int(primary[1]) in live_ports for _, _, primary, *_ in slots
        )

    @staticmethod
    def _wait(deadline: float, what: str, ready) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster: timed out waiting for {what}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the live nodes report the cluster ok (after a failover, say)."""
        self._wait(time.monotonic() + timeout, "cluster_state:ok on every node", self._ready)

    def master_of_slot(self, slot: int) -> ClusterNode:
        """The node serving ``slot`` now (asks a live node)."""
        live = self._live()[0]
        for first, last, primary, *_ in live.client().execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                port = int(primary[1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node (a crash: nothing flushed, no goodbye to the cluster)."""
        proc, node.server.process = node.server.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        """Stop every node that still runs."""
        for node in self.nodes:
            node.server.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
