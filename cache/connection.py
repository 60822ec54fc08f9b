"""Redis connections: one pool per process, created when first asked for.

A Redis that stops answering (SIGSTOP, a stuck host, a partition) must cost a
request one bounded wait, never a hung thread. So every client made here has
two timeouts from Settings, and the pool remembers a stall:

* ``HMDP_REDIS_SOCKET_TIMEOUT``: a reply not read within it fails the command
  with ``redis.TimeoutError`` (the web answers 503); ``HMDP_REDIS_CONNECT_TIMEOUT``
  bounds the TCP connect. redis-py retries nothing here (no retry policy given).
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
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from redis.connection import SENTINEL, AbstractConnection

from settings import Settings

from .server import shared_server_url

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


def resolve_redis_url(settings: Settings) -> str:
    """The given REDIS_URL, or the URL of the embedded server (started if needed)."""
    return settings.redis_url or shared_server_url(settings.var_dir, settings.redis_appendfsync)


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


class _StallAware(AbstractConnection):
    """Reads blocking replies with their own timeout and feeds the breaker (module doc)."""

    def __init__(self, *args: Any, breaker: StallBreaker, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.breaker = breaker
        self._reply_timeout: float | None | object = SENTINEL

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


def connect(url: str, settings: Settings | None = None, max_connections: int = 200) -> redis.Redis:
    """A decoded-str client with a bounded pool and the timeouts of ``settings``.

    Bounded so that a burst cannot open more sockets than Redis' maxclients,
    and blocking so that a burst waits (at most 5 s) for a connection instead
    of failing. ``settings`` None: the declared defaults (scripts, tests).
    hiredis parses when installed.
    """
    options = client_options(settings or Settings())
    breaker = StallBreaker(options["socket_connect_timeout"] + options["socket_timeout"])
    pool = StallAwarePool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        decode_responses=True,
        socket_keepalive=True,
        health_check_interval=30,
        connection_class=_CONNECTION_CLASSES.get(url.split(":", 1)[0], StallAwareConnection),
        breaker=breaker,
        **options,
    )
    return redis.Redis(connection_pool=pool)
