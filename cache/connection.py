"""Redis connections: one pool per process, created when first asked for."""

from __future__ import annotations

import redis

from settings import Settings

from .server import shared_server_url


def resolve_redis_url(settings: Settings) -> str:
    """The given REDIS_URL, or the URL of the embedded server (started if needed)."""
    return settings.redis_url or shared_server_url(settings.var_dir)


def connect(url: str, max_connections: int = 200) -> redis.Redis:
    """A decoded-str client with a bounded pool; hiredis parses when installed.

    Bounded so that a burst cannot open more sockets than Redis' maxclients,
    and blocking so that a burst waits for a connection instead of failing.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        decode_responses=True,
        socket_keepalive=True,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
