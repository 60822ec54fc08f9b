"""Shop routes: the cached GET /shop/{id}, admin create/update, lists, shop types.

GET /shop/{id} goes through the shop cache region (:mod:`cache.shops`): a
near-cache hit costs no Redis call, a Redis hit one round trip, and the JSON
stored in the cache is wrapped into the envelope as text, never re-encoded.
Writes go to the database first and THEN invalidate the cache (Redis keys and
every process's near-cache), in that order, before the response is sent; an
update whose cache steps fail after its commit is answered 202 and finished by
a task (cache/shop_sync.py), never failed.

``flask cache warm [--top N]`` (this blueprint's CLI group) rebuilds the Bloom
filter and warms the shop types and the hot shops, like ``flask seed`` does.
"""

from __future__ import annotations

import time
from datetime import tzinfo
from functools import partial
from typing import Annotated, Any, Optional

import click
from flask import Blueprint, Response, current_app
from pydantic import BaseModel, BeforeValidator, Field, create_model, model_validator
from sqlalchemy import select

from cache.region import RebuildTimeout
from cache.shop_source import SHOP_COLUMNS, SHOP_TIMES, shop_json
from cache.shop_sync import converge_shop, mark_converged
from cache.shops import (
    rebuild_shop_bloom,
    shop_bloom,
    shop_region,
    shop_types_json,
    warm_hot_shops,
    warm_shop_types,
)
from models.entities import MAX_ID, Shop, ShopType
from models.session import Database
from services import Services

from .auth import admin_required
from .contract import contract
from .envelope import ApiError, BadRequest, NotFound, envelope_around, json_response, ok
from .exchange import current_exchange
from .nearby import PositionQuery, load_all, shops_near
from .runtime import services
from .schemas import (
    Id,
    Page,
    Path,
    Query,
    QueryId,
    StrictBody,
    Timestamp,
    empty_as_none,
    integer,
    number,
    path_id,
    text,
    whole,
)
from .shop_cache import send_converge, shop_answer, shop_cache

bp = Blueprint("shops", __name__, cli_group="cache")

NAME_PAGE_SIZE = 10
TYPE_PAGE_SIZE = 5


class ShopPath(Path):
    shop_id: path_id("shop", out_of_range="400")


class NameQuery(Query):
    name: Annotated[text(128, strip=True) | None, BeforeValidator(empty_as_none)] = None
    current: Page = 1


class TypeQuery(PositionQuery):
    typeId: QueryId
    current: Page = 1


class ShopData(BaseModel):
    """hmdp's Shop (``distance`` in meters only in a search by position)."""

    id: int
    name: str
    typeId: int
    images: str
    area: str
    address: str
    x: float
    y: float
    avgPrice: int
    sold: int
    comments: int
    score: int
    openHours: str
    createTime: Timestamp
    updateTime: Timestamp
    distance: float | None = None


class ShopTypeData(BaseModel):
    id: int
    name: str
    icon: str
    sort: int
    createTime: Timestamp = None
    updateTime: Timestamp = None


# --- reads --------------------------------------------------------------------------


@bp.get("/shop/<shop_id>")
@contract(path=ShopPath, data=ShopData, errors={404: "shop not found"})
def get_shop(path: ShopPath) -> Response:
    """One shop, from the cache (503 if another request's rebuild is stuck).

    Mostly answered below Flask from the near-cache (web/fastpath.py).
    """
    ident = path.shop_id
    try:
        text = shop_cache().get(ident)
    except RebuildTimeout as exc:
        raise ApiError(
            f"shop is being loaded, retry shortly ({exc})", 503, {"Retry-After": 1}
        ) from None
    if text is None:
        raise NotFound("shop not found")
    return json_response(shop_answer(current_app, current_exchange(), ident, text))


@bp.get("/shop-type/list")
@contract(data=list[ShopTypeData])
def shop_types() -> Response:
    """All shop types ordered by sort, cached as one JSON text in cache:shop-type."""
    svc = services()
    return json_response(envelope_around(shop_types_json(svc.redis, svc.db, svc.settings)))


@bp.get("/shop/of/name")
@contract(query=NameQuery, data=list[ShopData])
def shops_by_name(query: NameQuery) -> Response:
    """Shops whose name contains ``name``, 10 per page in id order (database, not cached).

    A missing or empty ``name`` lists all shops in the same order: hmdp's blog
    editor fills its shop picker on opening with ``?name=`` (an empty name).
    """
    name, current = query.name, query.current
    found = select(Shop)
    if name:
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        found = found.where(Shop.name.like(f"%{escaped}%", escape="\\"))
    found = found.order_by(Shop.id).offset((current - 1) * NAME_PAGE_SIZE).limit(NAME_PAGE_SIZE)
    svc = services()
    with svc.db.sessions() as session:
        return ok([shop_json(s, svc.settings.zone) for s in session.scalars(found)])


def shops_of_type_page(
    db: Database, type_id: int, current: int, zone: tzinfo
) -> list[dict[str, Any]]:
    """Page ``current`` (1-based, 5 per page) of a type's shops in id order.

    The database half of GET /shop/of/type; the distance-sorted (x, y) variant
    can sit beside it and the view chooses between them.
    """
    query = (
        select(Shop)
        .where(Shop.type_id == type_id)
        .order_by(Shop.id)
        .offset((current - 1) * TYPE_PAGE_SIZE)
        .limit(TYPE_PAGE_SIZE)
    )
    with db.sessions() as session:
        return [shop_json(s, zone) for s in session.scalars(query)]


@bp.get("/shop/of/type")
@contract(query=TypeQuery, data=list[ShopData])
def shops_by_type(query: TypeQuery) -> Response:
    """Shops of a type, 5 per page; with x and y nearest first, each with its ``distance``."""
    type_id, current = query.typeId, query.current
    position = query.position()  # x, y: sorted by distance through GEO (web/nearby.py)
    svc = services()
    zone = svc.settings.zone
    if position is not None:
        render = partial(shop_json, zone=zone)
        return ok(shops_near(type_id, current, *position, TYPE_PAGE_SIZE, render))
    return ok(shops_of_type_page(svc.db, type_id, current, zone))


# --- writes (admin) --------------------------------------------------------------------

# Each writable field's rule: every name of SHOP_COLUMNS but the id (the models
# below are built from SHOP_COLUMNS; a field without a rule fails at import).
SHOP_RULES: dict[str, Any] = {
    "name": text(128, min_length=1, strip=True, line=True),
    "typeId": integer(1, MAX_ID, strict=False),
    "images": text(1024, line=True),
    "area": text(128, line=True),
    "address": text(255, line=True),
    "x": number(-180, 180),
    "y": number(-90, 90),
    "avgPrice": integer(0, 10**12, strict=False),
    "sold": integer(0, 2**31 - 1, strict=False),
    "comments": integer(0, 2**31 - 1, strict=False),
    "score": integer(0, 50, strict=False),
    "openHours": text(32, line=True),
}
_READ_ONLY = (*SHOP_TIMES, "distance")  # a client may echo them: ignored
_REQUIRED_ON_CREATE = ("name", "typeId", "x", "y")


class _ShopBody(StrictBody):
    @model_validator(mode="before")
    @classmethod
    def _nulls_are_not_given(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    def columns(self) -> dict[str, object]:
        """The given fields as tb_shop column values."""
        given = self.model_fields_set - {"id", *_READ_ONLY}
        return {SHOP_COLUMNS[name]: getattr(self, name) for name in given}


class _NewShopBody(_ShopBody):
    @model_validator(mode="before")
    @classmethod
    def _no_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("id") is not None:
            raise whole("'id' is assigned by the server; leave it out")
        return data


def _shop_body(name: str, *, creating: bool) -> type[_ShopBody]:
    fields: dict[str, Any] = {}
    if not creating:
        fields["id"] = (Id, ...)
    for field in SHOP_COLUMNS:
        if field != "id":
            rule = SHOP_RULES[field]
            required = creating and field in _REQUIRED_ON_CREATE
            fields[field] = (rule, ...) if required else (Optional[rule], None)  # noqa: UP045
    for field in _READ_ONLY:
        fields[field] = (Any, Field(None, description="read-only: ignored"))
    base = _NewShopBody if creating else _ShopBody
    return create_model(name, __base__=base, **fields)


NewShopBody = _shop_body("NewShopBody", creating=True)
ShopUpdateBody = _shop_body("ShopUpdateBody", creating=False)


def _check_type(session: Any, values: dict[str, object]) -> None:
    type_id = values.get("type_id")
    if type_id is not None and session.get(ShopType, type_id) is None:
        raise BadRequest(f"unknown typeId {type_id}")


@bp.post("/shop")
@admin_required
@contract(body=NewShopBody, data=int, accepted=True)
def create_shop(body: _ShopBody) -> Response:
    """Create a shop; data = its id.

    200: readable through every cache and found by nearby search at once. 202:
    the row is committed and a cache step after it did not finish (as for
    ``PUT /shop``); a task finishes it. Either way the client has its id and
    must not repeat the create.
    """
    values = body.columns()
    svc = services()
    region = shop_cache()
    bloom = region.bloom if region.bloom is not None else shop_bloom(svc.redis, svc.settings)
    with svc.db.session() as session:
        _check_type(session, values)
        shop = Shop(**values)
        session.add(shop)
        session.flush()  # the id, before commit
        shop_id = shop.id
        # Into the Bloom filter BEFORE the commit: if Redis fails, the insert is
        # rolled back; if the commit fails, one extra bit is a harmless false positive.
        bloom.add(shop_id)
    # Committed: as for an update, nothing may fail the request from here on. The
    # convergence drops a null marker cached for this id (a Bloom false positive
    # looked up earlier) and puts the shop into the GEO index.
    if converge_shop(region, svc.db, shop_id).done:
        return ok(shop_id)
    send_converge(current_app, shop_id)
    return ok(shop_id, status=202)  # committed; the caches converge (tasks.cache.converge_shop)


@bp.put("/shop")
@admin_required
@contract(body=ShopUpdateBody, errors={404: "shop not found"}, accepted=True)
def update_shop(body: _ShopBody) -> Response:
    """Update a shop: database first, THEN every cache and the GEO index follow it.

    200: every cache shows the new row. 202: the row is committed, and a step
    after it did not finish in time (Redis failed, or a near-cache had not
    acknowledged within HMDP_REDIS_SOCKET_TIMEOUT / 2): a task finishes it, so
    every cache converges; the client must not repeat the write.
    """
    shop_id = body.id  # type: ignore[attr-defined]
    values = body.columns()
    svc = services()
    with svc.db.session() as session:
        shop = session.get(Shop, shop_id)
        if shop is None:
            raise NotFound("shop not found")
        _check_type(session, values)
        for column, value in values.items():
            setattr(shop, column, value)
    # Committed: from here on nothing may fail the request (cache/shop_sync.py).
    if converge_shop(shop_cache(), svc.db, shop_id).done:
        return ok()
    send_converge(current_app, shop_id)
    return ok(status=202)  # committed; the caches converge (tasks.cache.converge_shop)


# --- seeding and warm-up ---------------------------------------------------------------


def warm(svc: Services, top: int | None = None) -> dict[str, int]:
    """Rebuild the Bloom filter, cache the shop types, write the hot shops' logical keys."""
    settings = svc.settings
    bloom = rebuild_shop_bloom(svc.redis, svc.db, settings)
    warm_shop_types(svc.redis, svc.db, settings)
    region = shop_region(svc.redis, svc.db, settings)
    count = settings.hot_shop_count if top is None else top
    hot = warm_hot_shops(region, svc.db, count, settings.zone)
    return {"bloom": bloom, "hot": hot}


def post_seed(svc: Services) -> None:
    """After ``flask seed``: Bloom filter, shop types, hot shops and GEO ready before traffic."""
    started = time.time()  # every row read from here on is one the steps below cover
    warm(svc)
    load_all(svc)
    mark_converged(svc.redis, started)


@bp.cli.command("warm")
@click.option("--top", type=click.IntRange(min=0), default=None, help="Hot shops to warm.")
def warm_command(top: int | None) -> None:
    """Warm the shop cache now (Bloom filter, shop types, top-N hot shops)."""
    result = warm(services(), top)
    click.echo(f"bloom filter: {result['bloom']} shop ids; hot shops warmed: {result['hot']}")
