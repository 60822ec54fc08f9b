"""Redis connections: one pool per process, created when first asked for.

A Redis that stops answering (SIGSTOP, a stuck host, a partition) must cost a
request one bounded wait, never a hung thread. So every client made here has
two timeouts from Settings, and the pool remembers a stall:

* ``HMDP_REDIS_SOCKET_TIMEOUT``: a reply not read within it fails the command
  with ``redis.TimeoutError`` (the web answers 503); ``HMDP_REDIS_CONNECT_TIMEOUT``
  bounds the TCP connect. A command that times out is **not retried**
  (:data:`~cache.server.NO_RETRY`): redis-py 8 gives a client built from host and
  port 10 retries with backoff by default, which would make a stall cost a
  request eleven timeouts; a pool built from a URL has none, and ours says so
  explicitly so a change of that default cannot multiply the wait.
* A **blocking** command (BLPOP, XREADGROUP BLOCK, WAIT ...) waits on the server
  on purpose: its reply is read with its own block time *plus* the socket
  timeout (:class:`StallAwareConnection`), so the socket timeout never cuts a
  wait short, and a stall during it still ends one socket timeout after the
  block would have.
* After a timeout the pool **fails fast** (:class:`StallBreaker`): for
  :data:`FAIL_FAST_S` every checkout raises ``redis.ConnectionError`` at once,
  then one caller probes with the normal timeouts while the others keep failing
  fast; the first reply closes the breaker. During a long stall each thread
  waits at most one timeout, and then the process answers 503 in microseconds
  instead of queueing every request behind the same wait. Only a timeout trips
  it (a refused or reset connection already fails at once, and redis-py
  reconnects on the next call); pub/sub polling never times out, so subscribers
  (cache/near.py, cache/lock_wait.py) notice a stall through their own checks.

:func:`client_options` gives the same two timeouts to clients made elsewhere
(the Celery transport, the metrics collector, the load-test scripts).

**Packing a command** costs less than redis-py's own way: its packer passes every
argument through the client's encoder in Python before hiredis packs them, about
1 µs an argument, 20 µs for the gate's EVALSHA of 22. :class:`HiredisPacker` hands
a command of plain arguments (str, bytes, int, float) to ``hiredis.pack_command``
whole, which encodes them the same way (UTF-8, ``repr`` of a number) in C; any
other command (a memoryview, a command name of two words, a bool the encoder
refuses) goes to redis-py's packer unchanged.

**A Redis Cluster** is a configuration: ``REDIS_URL=redis+cluster://host:port[,host:port...]``
(any reachable node is enough; the client learns the rest with ``CLUSTER SLOTS``) makes
:func:`connect` return a :class:`redis.cluster.RedisCluster` with the same timeouts,
connection class and one fail-fast breaker per node pool (:class:`ClusterNodePool`).
Pub/sub subscribers take a pool of their own (:func:`subscriber_pool`); on a
cluster its connection goes to any live node (classic PUBLISH is broadcast to
every node) and moves on when that node dies.

**Redis unavailable** is one fact, :data:`UNAVAILABLE`: the web answers it 503
(web/errors.py, the fast paths), the order task and the Stream's recovery retry
it. On a cluster it is more than a refused or silent connection: CLUSTERDOWN
(no quorum, a slot without a master), TRYAGAIN (a slot moving), a slot the
client's table lacks, and a topology that cannot be read at all
(:class:`ClusterUnavailable`). The cluster client retries such a command
``HMDP_REDIS_CLUSTER_RETRIES`` times after refreshing its slot table (redis-py's
10 would make each request of a failed cluster wait seconds: every CLUSTERDOWN
costs a 0.25 s sleep and a refresh before the retry).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, NodesManager, RedisCluster
from redis.connection import SENTINEL, AbstractConnection
from redis.exceptions import (
    ClusterError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

try:
    from hiredis import pack_command as hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    hiredis_pack = None

from settings import Settings, cluster_nodes, is_cluster_url

from .server import NO_RETRY, shared_server_url

FAIL_FAST_S = 1.0  # matches the Retry-After: 1 of the 503 the web answers

# Blocking commands and where their block time is: (argument index or "BLOCK"/"LAST",
# unit in seconds). Timeout 0 means "block forever", which they may ask for.
_BLOCKING: dict[str, tuple[int | str, float]] = {
    "BLPOP": ("LAST", 1.0),
    "BRPOP": ("LAST", 1.0),
    "BRPOPLPUSH": ("LAST", 1.0),
    "BLMOVE": ("LAST", 1.0),
    "BZPOPMIN": ("LAST", 1.0),
    "BZPOPMAX": ("LAST", 1.0),
    "BLMPOP": (1, 1.0),
    "BZMPOP": (1, 1.0),
    "XREAD": ("BLOCK", 0.001),
    "XREADGROUP": ("BLOCK", 0.001),
    "WAIT": ("LAST", 0.001),
    "WAITAOF": ("LAST", 0.001),
}


# What every client of ours is: a single Redis or a cluster, one API for both.
Client = redis.Redis | RedisCluster


class ClusterUnavailable(redis.ConnectionError):
    """The cluster's topology cannot be read: no node answers, or the slots are not all
    served (redis-py raises a bare RedisClusterException, the class of its usage errors
    too, so :class:`_Topology` gives these their own)."""


# Redis unavailable (module doc): answered 503 by the web, retried by tasks.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # refused, reset, the breaker's fail-fast, ClusterUnavailable
    redis.TimeoutError,  # no reply within HMDP_REDIS_SOCKET_TIMEOUT
    ClusterError,  # CLUSTERDOWN (ClusterDownError, MasterDownError), redirections exhausted
    TryAgainError,  # TRYAGAIN: the keys' slot is being moved
    SlotNotCoveredError,  # the client's slot table has no master for the key
)


def resolve_redis_url(settings: Settings) -> str:
    """The given REDIS_URL, or the URL of the embedded server (started if needed)."""
    return settings.redis_url or shared_server_url(
        settings.var_dir,
        settings.redis_appendfsync,
        settings.redis_server,
        unix_socket=settings.redis_unix_socket,
    )


def client_options(settings: Settings) -> dict[str, float]:
    """The two timeouts every Redis client of ours gets (redis-py keyword arguments)."""
    return {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
    }


def _word(arg: Any) -> Any:
    """A command word in upper case (redis-py sends some as bytes); other arguments as they are."""
    if isinstance(arg, bytes):
        arg = arg.decode(errors="replace")
    return arg.upper() if isinstance(arg, str) else arg


def block_seconds(args: tuple[Any, ...]) -> float | None:
    """How long the command ``args`` may block on the server (0: forever); None if it never does."""
    if not args:
        return None
    where = _BLOCKING.get(_word(args[0]))
    if where is None:
        return None
    place, unit = where
    try:
        if place == "LAST":
            raw = args[-1]
        elif place == "BLOCK":
            words = [_word(a) for a in args]
            if "BLOCK" not in words:
                return None  # XREAD without BLOCK answers at once
            raw = args[words.index("BLOCK") + 1]
        else:
            raw = args[place]
        return float(raw) * unit
    except (IndexError, TypeError, ValueError):
        return None


class StallBreaker:
    """Fails a pool's checkouts at once while its Redis is known to be stalled (module doc)."""

    def __init__(self, probe_window: float):
        self.probe_window = probe_window  # the longest one probe can take
        self.open_until = 0.0  # monotonic; 0 = closed
        self._lock = threading.Lock()

    def check(self) -> None:
        """Before a checkout: raise while open; after the pause let ONE caller probe."""
        until = self.open_until
        if not until:
            return
        now = time.monotonic()
        with self._lock:
            until = self.open_until
            if until and now < until:
                raise redis.ConnectionError(
                    "Redis did not answer within the socket timeout; "
                    f"failing fast for {until - now:.1f}s"
                )
            if until:  # the pause is over: this caller probes, the others wait for it
                self.open_until = now + self.probe_window

    def tripped(self) -> None:
        """A command or connect timed out: open for :data:`FAIL_FAST_S`."""
        self.open_until = time.monotonic() + FAIL_FAST_S

    def answered(self) -> None:
        """Redis replied: close (one attribute read when already closed)."""
        if self.open_until:
            self.open_until = 0.0


# The argument types hiredis packs exactly as the encoder of our clients (UTF-8, strict).
_PLAIN = frozenset({str, bytes, int, float})


class HiredisPacker:
    """Packs a command of plain arguments in one hiredis call, others as redis-py would."""

    def __init__(self, fallback: Any):
        self.fallback = fallback  # redis-py's packer of the same connection

    def pack(self, *args: Any) -> list[bytes]:
        """The command's bytes: the fast path of the module doc, or redis-py's."""
        name = args[0]
        if type(name) is str and " " not in name and _PLAIN.issuperset(map(type, args)):
            assert hiredis_pack is not None
            return [hiredis_pack(args)]
        return self.fallback.pack(*args)


class _StallAware(AbstractConnection):
    """Reads blocking replies with their own timeout and feeds the breaker (module doc)."""

    def __init__(self, *args: Any, breaker: StallBreaker, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.breaker = breaker
        self._reply_timeout: float | None | object = SENTINEL

    def _construct_command_packer(self, packer: Any) -> Any:
        own = super()._construct_command_packer(packer)
        plain_utf8 = (self.encoder.encoding, self.encoder.encoding_errors) == ("utf-8", "strict")
        if packer is None and hiredis_pack is not None and plain_utf8:
            return HiredisPacker(own)
        return own

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        block = block_seconds(args)
        if block is None:
            self._reply_timeout = SENTINEL  # the socket timeout
        elif block == 0 or self.socket_timeout is None:
            self._reply_timeout = None  # asked to block forever
        else:
            self._reply_timeout = block + self.socket_timeout
        super().send_command(*args, **kwargs)

    def read_response(self, *args: Any, timeout: Any = SENTINEL, **kwargs: Any) -> Any:
        if timeout is SENTINEL:
            timeout, self._reply_timeout = self._reply_timeout, SENTINEL
        try:
            response = super().read_response(*args, timeout=timeout, **kwargs)
        except redis.TimeoutError:
            self.breaker.tripped()
            raise
        except redis.ResponseError:  # an error reply is a reply
            self.breaker.answered()
            raise
        self.breaker.answered()
        return response

    def _connect(self) -> Any:
        try:
            return super()._connect()
        except TimeoutError:  # socket.timeout: no TCP handshake within the connect timeout
            self.breaker.tripped()
            raise


class StallAwareConnection(_StallAware, redis.Connection):
    """TCP (``redis://``)."""


class StallAwareSSLConnection(_StallAware, redis.SSLConnection):
    """TLS (``rediss://``)."""


class StallAwareUnixConnection(_StallAware, redis.UnixDomainSocketConnection):
    """A Unix socket (``unix://``)."""


_CONNECTION_CLASSES = {
    "rediss": StallAwareSSLConnection,
    "unix": StallAwareUnixConnection,
}


class StallAwarePool(redis.BlockingConnectionPool):
    """A bounded, blocking pool whose checkouts consult the breaker first."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.connection_kwargs["breaker"].check()
        return super().get_connection()


class ClusterNodePool(StallAwarePool):
    """One cluster node's pool: redis-py builds it from keyword arguments that cannot
    carry a breaker, so each node's pool makes its own (a stalled node fails fast, the
    others keep serving their slots)."""

    def __init__(self, **kwargs: Any):
        if "breaker" not in kwargs:
            window = (kwargs.get("socket_connect_timeout") or 1.0) + (
                kwargs.get("socket_timeout") or 1.0
            )
            kwargs["breaker"] = StallBreaker(window)
        super().__init__(**kwargs)


def connect(url: str, settings: Settings | None = None, max_connections: int = 200) -> Client:
    """A decoded-str client with a bounded pool and the timeouts of ``settings``.

    Bounded so that a burst cannot open more sockets than Redis' maxclients,
    and blocking so that a burst waits (at most 5 s) for a connection instead
    of failing. ``settings`` None: the declared defaults (scripts, tests).
    hiredis parses when installed. A cluster URL gives a :class:`RedisCluster`
    (one such pool per node).
    """
    if is_cluster_url(url):
        return connect_cluster(url, settings, max_connections)
    options: dict[str, Any] = dict(client_options(settings or Settings()))
    connection_class = _CONNECTION_CLASSES.get(url.split(":", 1)[0], StallAwareConnection)
    if connection_class is not StallAwareUnixConnection:
        options["socket_keepalive"] = True  # TCP only: a Unix socket has no keepalive
    breaker = StallBreaker(options["socket_connect_timeout"] + options["socket_timeout"])
    pool = StallAwarePool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        decode_responses=True,
        health_check_interval=30,
        connection_class=connection_class,
        breaker=breaker,
        retry=NO_RETRY,
        **options,
    )
    return redis.Redis(connection_pool=pool)


def connect_cluster(
    url: str, settings: Settings | None = None, max_connections: int = 200
) -> RedisCluster:
    """A :class:`RedisCluster` for a ``redis+cluster://`` URL, pools as :func:`connect`'s.

    redis-py takes the first node as a URL (so that it builds each node's pool
    from ``connection_pool_class``) and the others as startup nodes; its own
    retries follow a failover (MOVED, topology refresh).
    """
    settings = settings or Settings()
    auth, nodes = cluster_nodes(url)
    (host, port), others = nodes[0], nodes[1:]
    try:
        client = RedisCluster(
            url=f"redis://{auth}{host}:{port}/0",
            startup_nodes=[ClusterNode(h, p) for h, p in others],
            connection_pool_class=ClusterNodePool,
            connection_class=StallAwareConnection,
            max_connections=max_connections,
            timeout=5,
            decode_responses=True,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), settings.redis_cluster_retries),
            **client_options(settings),
        )
    except RedisClusterException as exc:  # the first topology read failed
        if isinstance(exc, ClusterUnavailable):
            raise
        raise ClusterUnavailable(f"Redis Cluster {url}: {exc}") from exc
    client.nodes_manager.__class__ = _Topology
    return client


class _Topology(NodesManager):
    """redis-py's slot table, whose failures to read the topology are ClusterUnavailable.

    A refresh runs inside the client's error handling (after a refused
    connection, CLUSTERDOWN, MOVED ...); when no node answers or the slots are
    not all served, redis-py raises a bare RedisClusterException from there,
    which would reach the web as a 500. The client's manager is given this class
    once built (redis-py offers no hook to choose it).
    """

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().initialize(*args, **kwargs)
        except ClusterUnavailable:
            raise
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc


class FollowingConnection(StallAwareConnection):
    """A connection to *some* node of a cluster, chosen anew at every (re)connect.

    For pub/sub subscribers: classic PUBLISH reaches every node's subscribers
    (replicas too), so any live node serves, and a subscriber whose node died
    (SIGKILL, failover) reconnects to the next one instead of the dead address.
    """

    def __init__(self, *args: Any, locate: Callable[[], tuple[str, int]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.locate = locate

    def _connect(self) -> Any:
        self.host, self.port = self.locate()
        return super()._connect()


class NodeRotation:
    """Each call the next node the cluster client knows (by name), starting anywhere."""

    def __init__(self, cluster: RedisCluster):
        self.cluster = cluster
        self.turn = 0

    def __call__(self) -> tuple[str, int]:
        nodes = sorted(self.cluster.get_nodes(), key=lambda node: node.name)
        node = nodes[self.turn % len(nodes)] if nodes else self.cluster.get_default_node()
        self.turn += 1
        return node.host, node.port


def subscriber_pool(client: Client, **overrides: Any) -> redis.ConnectionPool:
    """A small pool of its own for a pub/sub subscriber of ``client``'s Redis.

    Its own, so a subscription never holds a connection of the application's
    bounded pool; same timeouts and options (``overrides`` changed). On a
    cluster its connections follow the live nodes (:class:`FollowingConnection`).
    """
    if isinstance(client, RedisCluster):
        base = client.get_default_node().redis_connection.connection_pool
        kwargs = {**base.connection_kwargs, **overrides}
        kwargs["breaker"] = StallBreaker(
            (kwargs.get("socket_connect_timeout") or 1.0) + (kwargs.get("socket_timeout") or 1.0)
        )
        kwargs["locate"] = NodeRotation(client)
        return redis.ConnectionPool(connection_class=FollowingConnection, **kwargs)
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, **overrides}
    return redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)


def subscriber_client(client: Client) -> redis.Redis:
    """What a pub/sub subscriber of ``client``'s Redis subscribes through.

    A single Redis: ``client`` itself. A cluster: a plain client on a
    :func:`subscriber_pool`, whose connection follows the live nodes (a cluster
    client's pub/sub stays on the node its slot map named when it subscribed).
    """
    if isinstance(client, RedisCluster):
        return redis.Redis(connection_pool=subscriber_pool(client))
    return client


def server_of(client: Client) -> Any:
    """What identifies ``client``'s Redis within this process (its pool; a cluster client itself)."""
    return client if isinstance(client, RedisCluster) else client.connection_pool


def disconnect(client: Client) -> None:
    """Close every pooled connection of ``client`` (after fork, at shutdown)."""
    client.close()
    if isinstance(client, RedisCluster):
        for node in client.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
    else:
        client.connection_pool.disconnect()
