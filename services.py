"""The connections one process holds, created on first use from its Settings.

The web app keeps one ``Services`` in ``app.extensions``; a Celery worker
process keeps one per process (see :mod:`tasks.app`). Nothing connects at
import time, so tests build their own with their own Settings.
"""

from __future__ import annotations

import contextlib
from functools import cached_property

import redis

from cache.connection import connect, resolve_redis_url
from models.session import Database
from settings import Settings


class Services:
    """Lazily created Redis client and database for one process."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def redis_url(self) -> str:
        return resolve_redis_url(self.settings)

    @cached_property
    def redis(self) -> redis.Redis:
        return connect(self.redis_url)

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
        return self.settings.celery_broker_url or self.redis_url

    def close(self) -> None:
        """Release pools (after fork, at shutdown, between tests)."""
        if "redis" in self.__dict__:
            with contextlib.suppress(Exception):
                self.redis.close()
                self.redis.connection_pool.disconnect()
            del self.__dict__["redis"]
        if "db" in self.__dict__:
            self.db.dispose()
            del self.__dict__["db"]
