"""Voucher routes: admin creation (ordinary and seckill) and a shop's voucher list.

A seckill voucher is written to the database first (voucher + seckill row in
one transaction) and then loaded into Redis for the gate (stock only if absent,
window always; see :func:`cache.seckill.load_voucher`); a voucher Redis lost is
loaded again by reconciliation (:mod:`cache.reconcile`), minus its unsettled
reservations. If the Redis step fails
the voucher still exists and the order route loads it on first use, so a
creation is never half-done in a way that needs repair. Every field is checked
before anything is written: bad input is a 400 with nothing stored.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import redis
from flask import Blueprint, Response
from sqlalchemy import select

from cache import order_stream
from cache.reconcile import MISSING, Reconciler
from cache.seckill import live_stocks, load_voucher
from models.entities import MAX_ID, SeckillVoucher, Shop, Voucher
from services import Services
from timestamps import InstantOutOfRange, iso_instant, parse_instant

from .auth import admin_required
from .envelope import BadRequest, NotFound, json_body, ok
from .runtime import services, settings
from .text import storable

log = logging.getLogger(__name__)

bp = Blueprint("vouchers", __name__)

MAX_MONEY = 10**12  # cents
MAX_STOCK = 100_000_000
MIN_YEAR, MAX_YEAR = 2000, 9999  # of a sale window, in UTC
TYPE_ORDINARY = 0
TYPE_SECKILL = 1


# --- validation ---------------------------------------------------------------------


def _int_field(body: dict, name: str, minimum: int, maximum: int) -> int:
    value = body.get(name)
    if value is None:
        raise BadRequest(f"'{name}' is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer")
    if not minimum <= value <= maximum:
        raise BadRequest(f"'{name}' must be between {minimum} and {maximum}")
    return value


def _str_field(body: dict, name: str, max_len: int, required: bool = False) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"'{name}' is required")
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    value = value.strip()
    if required and not value:
        raise BadRequest(f"'{name}' must not be empty")
    if len(value) > max_len:
        raise BadRequest(f"'{name}' must be at most {max_len} characters")
    return storable(name, value)


def _time_field(body: dict, name: str) -> datetime:
    """An ISO-8601 time as naive UTC; without an offset it is a time in HMDP_TIMEZONE.

    So a sale window means the same instant however it is written, and an
    admin who types "2024-06-18T10:00:00" means ten o'clock where the shop is.
    """
    value = body.get(name)
    if value is None:
        raise BadRequest(f"'{name}' is required")
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be an ISO-8601 string")
    out_of_range = BadRequest(f"'{name}' is out of range (years {MIN_YEAR} to {MAX_YEAR})")
    try:
        moment = parse_instant(value, settings().zone)
    except InstantOutOfRange:
        raise out_of_range from None
    except ValueError:
        raise BadRequest(f"'{name}' is not an ISO-8601 time: {value[:40]!r}") from None
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise out_of_range
    return moment.replace(microsecond=0)


def _voucher_fields(body: dict[str, Any]) -> dict[str, Any]:
    fields = {
        "shop_id": _int_field(body, "shopId", 1, MAX_ID),
        "title": _str_field(body, "title", 255, required=True),
        "sub_title": _str_field(body, "subTitle", 255),
        "rules": _str_field(body, "rules", 1024),
        "pay_value": _int_field(body, "payValue", 0, MAX_MONEY),
        "actual_value": _int_field(body, "actualValue", 0, MAX_MONEY),
    }
    if fields["pay_value"] > fields["actual_value"]:
        raise BadRequest("'payValue' must not exceed 'actualValue'")
    return fields


def _seckill_fields(body: dict[str, Any]) -> dict[str, Any]:
    fields = {
        "stock": _int_field(body, "stock", 1, MAX_STOCK),
        "begin_time": _time_field(body, "beginTime"),
        "end_time": _time_field(body, "endTime"),
    }
    if fields["end_time"] <= fields["begin_time"]:
        raise BadRequest("'endTime' must be after 'beginTime'")
    return fields


# --- writes ---------------------------------------------------------------------------


def _create(voucher: dict[str, Any], seckill: dict[str, Any] | None) -> int:
    svc = services()
    with svc.db.session() as session:
        if session.get(Shop, voucher["shop_id"]) is None:
            raise NotFound("shop not found")
        row = Voucher(**voucher, type=TYPE_SECKILL if seckill else TYPE_ORDINARY, status=1)
        session.add(row)
        session.flush()
        if seckill:
            session.add(SeckillVoucher(voucher_id=row.id, **seckill))
        voucher_id = row.id
    if seckill:
        _load_into_redis(svc, voucher_id, seckill)
    return voucher_id


def _load_into_redis(svc: Services, voucher_id: int, seckill: dict[str, Any]) -> None:
    try:
        load_voucher(
            svc.redis, voucher_id, seckill["stock"], seckill["begin_time"], seckill["end_time"]
        )
        order_stream.ensure_group(svc.redis, svc.settings)
    except (redis.RedisError, OSError) as exc:
        # The voucher is committed; the order route loads it on first use.
        log.warning("seckill voucher %s not loaded into Redis yet: %s", voucher_id, exc)


@bp.post("/voucher")
@admin_required
def create_voucher() -> Response:
    """Create an ordinary voucher; data = its id."""
    return ok(_create(_voucher_fields(json_body()), None))


@bp.post("/voucher/seckill")
@admin_required
def create_seckill_voucher() -> Response:
    """Create a seckill voucher and load its stock and window into Redis; data = id."""
    body = json_body()
    voucher, seckill = _voucher_fields(body), _seckill_fields(body)
    return ok(_create(voucher, seckill))


# --- reads -------------------------------------------------------------------------------


@bp.get("/voucher/list/<id:shop_id>")
def list_vouchers(shop_id: int) -> Response:
    """A shop's active vouchers; seckill ones with stock (live from Redis), begin, end."""
    svc = services()
    with svc.db.session() as session:
        if session.get(Shop, shop_id) is None:
            raise NotFound("shop not found")
        rows = session.execute(
            select(Voucher, SeckillVoucher)
            .outerjoin(SeckillVoucher, SeckillVoucher.voucher_id == Voucher.id)
            .where(Voucher.shop_id == shop_id, Voucher.status == 1)
            .order_by(Voucher.id)
        ).all()
    seckill_ids = [v.id for v, sv in rows if sv is not None]
    try:
        live = live_stocks(svc.redis, seckill_ids)
    except (redis.RedisError, OSError) as exc:  # the list is still useful with DB stock
        log.warning("live stock unavailable: %s", exc)
        live = {}
    zone = svc.settings.zone
    data = []
    for voucher, sv in rows:
        item: dict[str, Any] = {
            "id": voucher.id,
            "shopId": voucher.shop_id,
            "title": voucher.title,
            "subTitle": voucher.sub_title,
            "rules": voucher.rules,
            "payValue": voucher.pay_value,
            "actualValue": voucher.actual_value,
            "type": voucher.type,
            "status": voucher.status,
            "createTime": iso_instant(voucher.create_time, zone),
            "updateTime": iso_instant(voucher.update_time, zone),
        }
        if sv is not None:
            item["stock"] = live.get(voucher.id, sv.stock)
            item["beginTime"] = iso_instant(sv.begin_time, zone)
            item["endTime"] = iso_instant(sv.end_time, zone)
        data.append(item)
    return ok(data)


# --- seed ------------------------------------------------------------------------------------


def load_all_seckill_vouchers(svc: Services) -> int:
    """Load every seckill voucher Redis lacks (stock minus unsettled reservations); how many.

    Reconciliation's "missing" mode (:mod:`cache.reconcile`): a voucher whose
    stock and window are in Redis is left as it is (it may have sold).
    """
    with svc.db.session() as session:
        ids = list(session.scalars(select(SeckillVoucher.voucher_id)))
    Reconciler(svc.redis, svc.settings, svc.db).run(ids, mode=MISSING)
    order_stream.ensure_group(svc.redis, svc.settings)
    return len(ids)


def post_seed(svc: Services) -> None:
    """``flask seed``: make the seckill vouchers sellable and create the stream group.

    Idempotent: a voucher whose stock is already in Redis keeps it (it may have
    sold); only missing ones are loaded from the database.
    """
    load_all_seckill_vouchers(svc)
