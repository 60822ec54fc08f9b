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

import math
from datetime import tzinfo
from functools import partial
from typing import Any

import click
from flask import Blueprint, Response, current_app, request
from sqlalchemy import select

from cache.region import RebuildTimeout
from cache.shop_source import SHOP_COLUMNS, SHOP_TIMES, shop_json
from cache.shop_sync import converge_shop
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
from .envelope import (
    ApiError,
    BadRequest,
    NotFound,
    envelope_around,
    int_arg,
    json_body,
    json_response,
    ok,
)
from .exchange import current_exchange
from .nearby import index_shop, load_all, position_args, shops_near
from .runtime import services
from .shop_cache import send_converge, shop_answer, shop_cache
from .text import storable

bp = Blueprint("shops", __name__, cli_group="cache")

NAME_PAGE_SIZE = 10
TYPE_PAGE_SIZE = 5
MAX_PAGE = 10_000


def _shop_id(raw: object, from_path: bool = False) -> int:
    """A positive 64-bit id from a path segment (str) or a JSON number, else 400."""
    if isinstance(raw, bool):
        raise BadRequest("id must be a positive integer")
    if isinstance(raw, int):
        value = raw
    elif from_path and isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        value = int(raw)
    else:
        raise BadRequest("id must be a positive integer")
    if not 1 <= value <= MAX_ID:
        raise BadRequest("id must be a positive integer")
    return value


# --- reads --------------------------------------------------------------------------


@bp.get("/shop/<shop_id>")
def get_shop(shop_id: str) -> Response:
    """One shop, from the cache (503 if another request's rebuild is stuck)."""
    ident = _shop_id(shop_id, from_path=True)
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
def shop_types() -> Response:
    """All shop types ordered by sort, cached as one JSON text in cache:shop-type."""
    svc = services()
    return json_response(envelope_around(shop_types_json(svc.redis, svc.db, svc.settings)))


@bp.get("/shop/of/name")
def shops_by_name() -> Response:
    """Shops whose name contains ``name``, 10 per page in id order (database, not cached).

    A missing or empty ``name`` lists all shops in the same order: hmdp's blog
    editor fills its shop picker on opening with ``?name=`` (an empty name).
    """
    name = storable("name", (request.args.get("name") or "").strip())
    if len(name) > 128:
        raise BadRequest("query parameter 'name' is too long (max 128)")
    current = int_arg("current", default=1, minimum=1, maximum=MAX_PAGE)
    query = select(Shop)
    if name:
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Shop.name.like(f"%{escaped}%", escape="\\"))
    query = query.order_by(Shop.id).offset((current - 1) * NAME_PAGE_SIZE).limit(NAME_PAGE_SIZE)
    svc = services()
    with svc.db.sessions() as session:
        return ok([shop_json(s, svc.settings.zone) for s in session.scalars(query)])


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
def shops_by_type() -> Response:
    """Shops of a type, 5 per page."""
    type_id = int_arg("typeId", minimum=1, maximum=MAX_ID)
    current = int_arg("current", default=1, minimum=1, maximum=MAX_PAGE)
    position = position_args()  # x, y: sorted by distance through GEO (web/nearby.py)
    svc = services()
    zone = svc.settings.zone
    if position is not None:
        render = partial(shop_json, zone=zone)
        return ok(shops_near(type_id, current, *position, TYPE_PAGE_SIZE, render))
    return ok(shops_of_type_page(svc.db, type_id, current, zone))


# --- writes (admin) --------------------------------------------------------------------

# Writable field (SHOP_COLUMNS but the id) -> (kind, min, max): lengths for
# strings, values for numbers.
_FIELDS: dict[str, tuple[str, float, float]] = {
    "name": ("str", 1, 128),
    "typeId": ("int", 1, MAX_ID),
    "images": ("str", 0, 1024),
    "area": ("str", 0, 128),
    "address": ("str", 0, 255),
    "x": ("num", -180, 180),
    "y": ("num", -90, 90),
    "avgPrice": ("int", 0, 10**12),
    "sold": ("int", 0, 2**31 - 1),
    "comments": ("int", 0, 2**31 - 1),
    "score": ("int", 0, 50),
    "openHours": ("str", 0, 32),
}
_COLUMNS = {name: SHOP_COLUMNS[name] for name in _FIELDS}  # every field but the id
_IGNORED = {*SHOP_TIMES, "distance"}  # read-only: a client may echo them
_REQUIRED_ON_CREATE = ("name", "typeId", "x", "y")


def _field(name: str, value: object) -> object:
    kind, low, high = _FIELDS[name]
    if kind == "str":
        if not isinstance(value, str):
            raise BadRequest(f"'{name}' must be a string")
        if name == "name":
            value = value.strip()
        if not low <= len(value) <= high:
            raise BadRequest(f"'{name}' must be {int(low)} to {int(high)} characters")
        if any(ord(c) < 32 for c in value):
            raise BadRequest(f"'{name}' must not contain control characters")
        return storable(name, value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"'{name}' must be a number")
    if kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise BadRequest(f"'{name}' must be an integer")
            value = int(value)
    elif not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a finite number")
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g}")
    return value


def _shop_fields(body: dict[str, Any], *, creating: bool) -> dict[str, object]:
    """Validated column values from a shop body; unknown fields are a 400."""
    unknown = sorted(set(body) - set(_FIELDS) - _IGNORED - {"id"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    values: dict[str, object] = {}
    for name in _FIELDS:
        if name in body and body[name] is not None:
            values[_COLUMNS[name]] = _field(name, body[name])
    if creating:
        missing = [n for n in _REQUIRED_ON_CREATE if _COLUMNS[n] not in values]
        if missing:
            raise BadRequest(f"missing field(s): {', '.join(missing)}")
    return values


def _check_type(session: Any, values: dict[str, object]) -> None:
    type_id = values.get("type_id")
    if type_id is not None and session.get(ShopType, type_id) is None:
        raise BadRequest(f"unknown typeId {type_id}")


@bp.post("/shop")
@admin_required
def create_shop() -> Response:
    """Create a shop; data = its id. It is readable through the cache at once."""
    body = json_body()
    if body.get("id") is not None:
        raise BadRequest("'id' is assigned by the server; leave it out")
    values = _shop_fields(body, creating=True)
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
    # A null marker cached for this id (an earlier lookup) must go.
    region.invalidate(shop_id)
    index_shop(shop_id)  # GEO index (web/nearby.py)
    return ok(shop_id)


@bp.put("/shop")
@admin_required
def update_shop() -> Response:
    """Update a shop: database first, THEN every cache and the GEO index follow it.

    200: every cache shows the new row. 202: the row is committed, and a step
    after it did not finish in time (Redis failed, or a near-cache had not
    acknowledged within HMDP_REDIS_SOCKET_TIMEOUT / 2): a task finishes it, so
    every cache converges; the client must not repeat the write.
    """
    body = json_body()
    if "id" not in body:
        raise BadRequest("'id' is required")
    shop_id = _shop_id(body["id"])
    values = _shop_fields(body, creating=False)
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
    warm(svc)
    load_all(svc)


@bp.cli.command("warm")
@click.option("--top", type=click.IntRange(min=0), default=None, help="Hot shops to warm.")
def warm_command(top: int | None) -> None:
    """Warm the shop cache now (Bloom filter, shop types, top-N hot shops)."""
    result = warm(services(), top)
    click.echo(f"bloom filter: {result['bloom']} shop ids; hot shops warmed: {result['hot']}")
