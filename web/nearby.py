"""Nearby shops: the GEO side of ``GET /shop/of/type?typeId&current&x&y``.

Not a blueprint: web/shops.py owns the shop routes and calls in here:

* :class:`PositionQuery` declares ``x`` (longitude, -180..180) and ``y``
  (latitude, -85.05..85.05) of a query: both or neither;
* :func:`shops_near` answers one page sorted by distance, each shop with
  ``distance`` in meters (GEOSEARCH within settings.geo_radius_m);

:func:`load_all` (after ``flask seed``, from the shops blueprint) loads every
shop into ``shop:{geo}:{typeId}`` (pipelined GEOADD), and a type whose key is
missing is rebuilt from the database on first search.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from pydantic import Field, model_validator
from sqlalchemy import select

from cache import geo
from models.entities import Shop
from models.session import Database
from services import Services

from .runtime import services, settings
from .schemas import Query, whole

MAX_LATITUDE = 85.05  # the documented bound (Redis itself stops at 85.05112878)


def shop_points(db: Database, type_id: int | None = None) -> Iterator[geo.ShopPoint]:
    """Every shop's (id, type, x, y), streamed from the database (optionally one type)."""
    query = select(Shop.id, Shop.type_id, Shop.x, Shop.y).order_by(Shop.id)
    if type_id is not None:
        query = query.where(Shop.type_id == type_id)
    with db.sessions() as session:
        for row in session.execute(query.execution_options(yield_per=5000)):
            yield geo.ShopPoint(row.id, row.type_id, row.x, row.y)


def load_all(svc: Services) -> None:
    """Every shop in its type's GEO key (after ``flask seed``, before traffic arrives)."""
    geo.load(svc.redis, shop_points(svc.db))


class PositionQuery(Query):
    """The caller's position in a query: both ``x`` and ``y``, or neither."""

    x: Annotated[float | None, Field(ge=-180, le=180, allow_inf_nan=False)] = Field(
        None, description="longitude"
    )
    y: Annotated[float | None, Field(ge=-MAX_LATITUDE, le=MAX_LATITUDE, allow_inf_nan=False)] = (
        Field(None, description="latitude")
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> PositionQuery:
        if (self.x is None) != (self.y is None):
            raise whole("query parameters 'x' and 'y' go together")
        return self

    def position(self) -> tuple[float, float] | None:
        """(x, y), or None when the query gives no position."""
        return None if self.x is None or self.y is None else (self.x, self.y)


def shops_near(
    type_id: int,
    current: int,
    x: float,
    y: float,
    page_size: int,
    to_json: Callable[[Shop], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Page ``current`` of a type's shops within the radius, nearest first, with ``distance``.

    ``to_json`` renders a shop row (web/shops.py passes its own, so both list
    variants look alike). Shops deleted from the database since they were
    indexed are left out.
    """
    svc = services()
    geo.ensure(svc.redis, type_id, lambda: shop_points(svc.db, type_id))
    start = (current - 1) * page_size
    found = geo.search(svc.redis, type_id, x, y, settings().geo_radius_m, start, start + page_size)
    if not found:
        return []
    with svc.db.sessions() as session:
        rows = {
            s.id: s for s in session.scalars(select(Shop).where(Shop.id.in_([i for i, _ in found])))
        }
        page = []
        for shop_id, distance in found:
            shop = rows.get(shop_id)
            if shop is not None:
                page.append({**to_json(shop), "distance": round(distance, 2)})
        return page
