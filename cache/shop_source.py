"""Shops as the cache stores them: database reads that return hmdp's JSON dicts.

The one place that turns ``tb_shop`` rows into hmdp's camelCase JSON. The web
routes, the refresh task and the beat jobs all load through here (each with
its own :class:`models.session.Database`), so a cached value and a freshly
loaded one can never differ in shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import tzinfo
from typing import Any

from sqlalchemy import select

from models.entities import Shop, ShopType
from models.session import Database
from timestamps import iso_instant

SHOP_FIELDS = (
    "id",
    "name",
    "typeId",
    "images",
    "area",
    "address",
    "x",
    "y",
    "avgPrice",
    "sold",
    "comments",
    "score",
    "openHours",
    "createTime",
    "updateTime",
)


def shop_json(shop: Shop, zone: tzinfo) -> dict[str, Any]:
    """One shop in hmdp's field names, its times in ``zone`` with their offset."""
    return {
        "id": shop.id,
        "name": shop.name,
        "typeId": shop.type_id,
        "images": shop.images,
        "area": shop.area,
        "address": shop.address,
        "x": shop.x,
        "y": shop.y,
        "avgPrice": shop.avg_price,
        "sold": shop.sold,
        "comments": shop.comments,
        "score": shop.score,
        "openHours": shop.open_hours,
        "createTime": iso_instant(shop.create_time, zone),
        "updateTime": iso_instant(shop.update_time, zone),
    }


def load_shop(db: Database, shop_id: int | str, zone: tzinfo) -> dict[str, Any] | None:
    """The shop with this id as JSON, or None (the cache's loader)."""
    try:
        ident = int(shop_id)
    except (TypeError, ValueError):
        return None
    with db.sessions() as session:
        shop = session.get(Shop, ident)
        return None if shop is None else shop_json(shop, zone)


def load_shops(
    db: Database, shop_ids: Iterable[int | str], zone: tzinfo
) -> dict[str, dict[str, Any]]:
    """Several shops at once, keyed by str(id) (warm-up); missing ids are absent."""
    ids = sorted({int(i) for i in shop_ids})
    found: dict[str, dict[str, Any]] = {}
    with db.sessions() as session:
        for start in range(0, len(ids), 500):
            rows = session.scalars(select(Shop).where(Shop.id.in_(ids[start : start + 500])))
            for shop in rows:
                found[str(shop.id)] = shop_json(shop, zone)
    return found


def top_shop_ids(db: Database, count: int) -> list[int]:
    """The ``count`` best-selling shop ids (ties by id): the hot set's default."""
    if count <= 0:
        return []
    with db.sessions() as session:
        query = select(Shop.id).order_by(Shop.sold.desc(), Shop.id).limit(count)
        return list(session.scalars(query))


def iter_shop_ids(db: Database, batch: int = 10_000) -> Iterator[int]:
    """Every shop id in id order, read in batches (Bloom filter rebuilds)."""
    last = 0
    with db.sessions() as session:
        while True:
            query = select(Shop.id).where(Shop.id > last).order_by(Shop.id).limit(batch)
            ids = list(session.scalars(query))
            if not ids:
                return
            yield from ids
            last = ids[-1]


def load_shop_types(db: Database, zone: tzinfo) -> list[dict[str, Any]]:
    """All shop types ordered by ``sort`` (then id), in hmdp's field names."""
    with db.sessions() as session:
        rows = session.scalars(select(ShopType).order_by(ShopType.sort, ShopType.id))
        return [
            {
                "id": t.id,
                "name": t.name,
                "icon": t.icon,
                "sort": t.sort,
                "createTime": iso_instant(t.create_time, zone),
                "updateTime": iso_instant(t.update_time, zone),
            }
            for t in rows
        ]
