"""Shops for the cache tests: rows in the database, a counting loader, a region over them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC

from cache.region import CacheRegion
from cache.shop_source import load_shop
from cache.shops import shop_bloom, shop_region_config
from models.entities import Shop, ShopType
from models.session import Database
from services import Services


def add_shops(db: Database, count: int, start: int = 1, type_id: int = 1) -> list[int]:
    """Insert a shop type (if needed) and ``count`` shops with ids start..start+count-1."""
    with db.session() as session:
        if session.get(ShopType, type_id) is None:
            session.add(ShopType(id=type_id, name=f"type{type_id}", icon="", sort=type_id))
            session.flush()
        for i in range(start, start + count):
            session.add(
                Shop(id=i, name=f"shop{i}", type_id=type_id, x=120.1, y=30.2, sold=i, score=40)
            )
    return list(range(start, start + count))


def rename_shop(db: Database, shop_id: int, name: str) -> None:
    with db.session() as session:
        session.get(Shop, shop_id).name = name


class CountingLoader:
    """Wraps the real loader and counts calls; ``gate`` (if set) blocks each load."""

    def __init__(self, db: Database, gate: threading.Event | None = None):
        self.db = db
        self.gate = gate
        self.calls = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> dict | None:
        with self._lock:
            self.calls += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        return load_shop(self.db, key, UTC)


def make_region(
    services: Services, loader: Callable, bloom: bool = True, **changes: object
) -> CacheRegion:
    settings = services.settings.with_(**changes) if changes else services.settings
    return CacheRegion(
        services.redis,
        loader,
        shop_region_config(settings),
        bloom=shop_bloom(services.redis, settings) if bloom else None,
    )
