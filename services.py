"""The connections one process holds, created on first use from its Settings.

The web app keeps one ``Services`` in ``app.extensions``; a Celery worker
process keeps one per process (see :mod:`tasks.app`). Nothing connects at
import time, so tests build their own with their own Settings.

``Services.clock`` is the process's time: "today" is the date in
``settings.timezone`` (HMDP_TIMEZONE, default UTC), so sign-in days and UV days
start at the same local midnight; tests set a fixed clock instead of sleeping
to a month boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from functools import cached_property
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from cache.connection import Client, connect, disconnect, resolve_redis_url
from models.session import Database
from settings import Settings

Clock = Callable[[], datetime]


def system_clock(timezone: str, utc_now: Clock | None = None) -> Clock:
    """The real time (or ``utc_now()``, for tests) seen in ``timezone`` (an IANA name)."""
    zone = ZoneInfo(timezone)
    if utc_now is None:
        return lambda: datetime.now(zone)
    source = utc_now
    return lambda: source().astimezone(zone)


def kombu_url(redis_url: str) -> str:
    """The broker URL kombu reads for ``redis_url``.

    redis-py spells a Unix socket ``unix:///path?db=N``; kombu has no ``unix``
    transport and spells the same socket ``redis+socket:///path?virtual_host=N``.
    Any other URL is the same for both.
    """
    parts = urlsplit(redis_url)
    if parts.scheme != "unix":
        return redis_url
    userinfo = parts.netloc.rpartition("@")[0]
    db = parse_qs(parts.query).get("db", ["0"])[0]
    credentials = f"{userinfo}@" if userinfo else ""
    return f"redis+socket://{credentials}{parts.path}?virtual_host={db}"


class Services:
    """Lazily created Redis client and database for one process, and its clock."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.clock: Clock = system_clock(settings.timezone)  # aware, in settings.timezone

    @cached_property
    def redis_url(self) -> str:
        return resolve_redis_url(self.settings)

    @cached_property
    def redis(self) -> Client:
        return connect(self.redis_url, self.settings)

    @cached_property
    def db(self) -> Database:
        return Database(
            self.settings.effective_database_url,
            pool_size=self.settings.db_pool_size,
            max_overflow=self.settings.db_max_overflow,
        )

    @property
    def broker_url(self) -> str:
        """Celery's broker: CELERY_BROKER_URL, else the app's own Redis."""
        return self.settings.celery_broker_url or kombu_url(self.redis_url)

    def close(self) -> None:
        """Release pools (after fork, at shutdown, between tests)."""
        if "redis" in self.__dict__:
            with contextlib.suppress(Exception):
                disconnect(self.redis)
            del self.__dict__["redis"]
        if "db" in self.__dict__:
            self.db.dispose()
            del self.__dict__["db"]
