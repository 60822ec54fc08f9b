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

# hmdp's name of each shop field -> its tb_shop column, in hmdp's order: the one
# list of a shop's fields (the JSON here; the columns the admin routes write,
# web/shops.py). The times are the database's, written out with their offset.
SHOP_COLUMNS: dict[str, str] = {
    "id": "id",
    "name": "name",
    "typeId": "type_id",
    "images": "images",
    "area": "area",
    "address": "address",
    "x": "x",
    "y": "y",
    "avgPrice": "avg_price",
    "sold": "sold",
    "comments": "comments",
    "score": "score",
    "openHours": "open_hours",
}
SHOP_TIMES: dict[str, str] = {"createTime": "create_time", "updateTime": "update_time"}


def shop_json(shop: Shop, zone: tzinfo) -> dict[str, Any]:
    """One shop in hmdp's field names, its times in ``zone`` with their offset."""
    data = {name: getattr(shop, column) for name, column in SHOP_COLUMNS.items()}
    for name, column in SHOP_TIMES.items():
        data[name] = iso_instant(getattr(shop, column), zone)
    return data


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
