"""Nearby shops: one GEO key per shop type, ``shop:geo:{typeId}`` (member = shop id).

Loaded from the database after seeding (pipelined GEOADD batches) and kept in
step by :func:`upsert` after each shop create/update (a type change moves the
member between keys in one MULTI). A full load also sets
``shop:geo:{typeId}:loaded``: a GEO key without that marker (created by an
upsert before any load) or a marker without its GEO key (evicted) means
"incomplete", and :func:`ensure` reloads that type from the database (GEOADD
is idempotent, so a reload racing an upsert loses nothing it added).
Searches use GEOSEARCH FROMLONLAT BYRADIUS ... ASC COUNT end+1 WITHDIST
(Redis >= 6.2), and the page is sliced out of those nearest shops (see
:func:`search` for how equal distances are kept in a stable order).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

# Every type's key shares the hash tag {geo}: a shop changing type moves between
# two types' keys in one MULTI, so on a Redis Cluster the (small) index is one slot.
GEO_KEY = "shop:{{geo}}:{type_id}"
LOADED_KEY = "shop:{{geo}}:{type_id}:loaded"
MAX_LONGITUDE = 180.0
MAX_LATITUDE = 85.05112878  # what Redis' GEO (Web Mercator) can store
LOAD_BATCH = 1000  # members per GEOADD


def geo_key(type_id: int) -> str:
    """The Redis key holding the shops of one type."""
    return GEO_KEY.format(type_id=type_id)


@dataclass(frozen=True)
class ShopPoint:
    """What the GEO index needs of a shop: id, type and position (x = lon, y = lat)."""

    id: int
    type_id: int
    x: float
    y: float


def storable(x: float, y: float) -> bool:
    """Whether Redis GEO can store this longitude/latitude (others are skipped)."""
    return -MAX_LONGITUDE <= x <= MAX_LONGITUDE and -MAX_LATITUDE <= y <= MAX_LATITUDE


def load(client: redis.Redis, points: Iterable[ShopPoint], batch: int = LOAD_BATCH) -> int:
    """GEOADD every point into its type's key in pipelined batches; returns points stored.

    ``points`` must be ALL the shops of every type they mention (each such
    type is marked loaded at the end). Idempotent (GEOADD overwrites a
    member's position). Points Redis cannot store (latitude beyond +-85.05)
    are skipped with a warning, not fatal.
    """
    stored = 0
    seen: set[int] = set()
    groups: dict[int, list[object]] = {}
    pending = 0
    pipe = client.pipeline(transaction=False)

    def flush() -> None:
        nonlocal pending
        for type_id, values in groups.items():
            pipe.geoadd(geo_key(type_id), values)
        groups.clear()
        pipe.execute()
        pending = 0

    for point in points:
        if not storable(point.x, point.y):
            log.warning("shop %s not indexed: position %s,%s", point.id, point.x, point.y)
            continue
        seen.add(point.type_id)
        groups.setdefault(point.type_id, []).extend((point.x, point.y, str(point.id)))
        pending += 1
        stored += 1
        if pending >= batch:
            flush()
    if pending:
        flush()
    for type_id in seen:
        pipe.set(LOADED_KEY.format(type_id=type_id), "1")
    if len(pipe):
        pipe.execute()
    return stored


def upsert(client: redis.Redis, point: ShopPoint, other_type_ids: Iterable[int] = ()) -> None:
    """Index a created or updated shop (call after the database commit).

    The member is removed from ``other_type_ids``' keys in the same MULTI (a
    type change moves it, and no search ever finds it under two types); a
    position Redis cannot store unindexes it.
    """
    pipe = client.pipeline(transaction=True)
    for type_id in other_type_ids:
        if type_id != point.type_id:
            pipe.zrem(geo_key(type_id), str(point.id))
    if storable(point.x, point.y):
        pipe.geoadd(geo_key(point.type_id), (point.x, point.y, str(point.id)))
    else:
        pipe.zrem(geo_key(point.type_id), str(point.id))
    pipe.execute()


def forget(client: redis.Redis, type_ids: Iterable[int]) -> None:
    """Mark types as not loaded, so the next search reloads them from the database."""
    keys = [LOADED_KEY.format(type_id=t) for t in type_ids]
    if keys:
        client.delete(*keys)


def ensure(client: redis.Redis, type_id: int, load_type: Callable[[], Iterable[ShopPoint]]) -> None:
    """Reload one type from ``load_type()`` (the database) unless it is fully loaded.

    A type without shops has no GEO key, so it is "reloaded" (an empty query)
    on each search: cheap, and it keeps the rule simple.
    """
    if client.exists(geo_key(type_id), LOADED_KEY.format(type_id=type_id)) < 2:
        load(client, load_type())


def _geosearch(
    client: redis.Redis, type_id: int, x: float, y: float, radius_m: float, count: int | None
) -> list[tuple[float, int]]:
    found = client.geosearch(
        geo_key(type_id),
        longitude=x,
        latitude=y,
        radius=radius_m,
        unit="m",
        sort="ASC",
        count=count,
        withdist=True,
    )
    # Redis' own order among equal distances depends on COUNT (partial sort):
    # ours is (distance, id), the same for every page.
    return sorted((float(dist), int(member)) for member, dist in found)


def search(
    client: redis.Redis,
    type_id: int,
    x: float,
    y: float,
    radius_m: float,
    start: int,
    end: int,
) -> list[tuple[int, float]]:
    """Shops of a type within ``radius_m`` of (x, y), nearest first, items [start:end).

    Returns (shop id, distance in meters), ordered by (distance, id). Redis
    returns the ``end + 1`` nearest (COUNT), and the page is the tail of the
    first ``end``: deeper pages cost more, as in hmdp. When the cut falls
    inside a group of equal distances (shops at one address), which of them
    COUNT kept is arbitrary, so every shop up to that distance is fetched and
    the tie is broken by id: pages never skip or repeat a shop.
    """
    if end <= start:
        return []
    ranked = _geosearch(client, type_id, x, y, radius_m, end + 1)
    if len(ranked) > end and ranked[end - 1][0] == ranked[end][0]:
        cut = min(ranked[end][0] + 0.001, radius_m)
        ranked = _geosearch(client, type_id, x, y, cut, None)
    return [(shop_id, dist) for dist, shop_id in ranked[start:end]]
