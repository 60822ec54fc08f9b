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
from typing import Any

import redis
from flask import Blueprint, Response
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from cache import stream_vouchers
from cache.reconcile import MISSING, Reconciler
from cache.seckill import live_stocks, load_voucher
from models.entities import SeckillVoucher, Shop, Voucher
from services import Services
from timestamps import iso_instant

from .auth import admin_required
from .contract import contract
from .envelope import NotFound, ok
from .runtime import services
from .schemas import Body, Id, Instant, Path, Timestamp, integer, text, text_or_null, whole

log = logging.getLogger(__name__)

bp = Blueprint("vouchers", __name__)

MAX_MONEY = 10**12  # cents
MAX_STOCK = 100_000_000
TYPE_ORDINARY = 0
TYPE_SECKILL = 1


# --- schemas -----------------------------------------------------------------------


Money = integer(0, MAX_MONEY)


class VoucherBody(Body):
    shopId: Id
    title: text(255, min_length=1, strip=True)
    subTitle: text_or_null(255, strip=True) = ""
    rules: text_or_null(1024, strip=True) = ""
    payValue: Money = Field(description="cents")
    actualValue: Money = Field(description="cents")

    @model_validator(mode="after")
    def _pays_at_most_its_value(self) -> VoucherBody:
        if self.payValue > self.actualValue:
            raise whole("'payValue' must not exceed 'actualValue'")
        return self

    def columns(self) -> dict[str, Any]:
        return {
            "shop_id": self.shopId,
            "title": self.title,
            "sub_title": self.subTitle,
            "rules": self.rules,
            "pay_value": self.payValue,
            "actual_value": self.actualValue,
        }


class SeckillVoucherBody(VoucherBody):
    stock: integer(1, MAX_STOCK)
    beginTime: Instant
    endTime: Instant

    @model_validator(mode="after")
    def _ends_after_it_begins(self) -> SeckillVoucherBody:
        if self.endTime <= self.beginTime:
            raise whole("'endTime' must be after 'beginTime'")
        return self

    def seckill_columns(self) -> dict[str, Any]:
        return {"stock": self.stock, "begin_time": self.beginTime, "end_time": self.endTime}


class ShopVouchersPath(Path):
    shop_id: Id


class VoucherData(BaseModel):
    """hmdp's Voucher; a seckill one (type 1) with its live stock and sale window."""

    id: int
    shopId: int
    title: str
    subTitle: str
    rules: str
    payValue: int
    actualValue: int
    type: int = Field(description="0 ordinary, 1 seckill")
    status: int
    createTime: Timestamp
    updateTime: Timestamp
    stock: int | None = None
    beginTime: Timestamp = None
    endTime: Timestamp = None


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
        stream_vouchers.prepare(svc.redis, svc.settings, [voucher_id])
    except (redis.RedisError, OSError) as exc:
        # The voucher is committed; the order route loads it on first use.
        log.warning("seckill voucher %s not loaded into Redis yet: %s", voucher_id, exc)


@bp.post("/voucher")
@admin_required
@contract(body=VoucherBody, data=int, errors={404: "shop not found"})
def create_voucher(body: VoucherBody) -> Response:
    """Create an ordinary voucher; data = its id."""
    return ok(_create(body.columns(), None))


@bp.post("/voucher/seckill")
@admin_required
@contract(body=SeckillVoucherBody, data=int, errors={404: "shop not found"})
def create_seckill_voucher(body: SeckillVoucherBody) -> Response:
    """Create a seckill voucher and load its stock and window into Redis; data = id."""
    return ok(_create(body.columns(), body.seckill_columns()))


# --- reads -------------------------------------------------------------------------------


@bp.get("/voucher/list/<id:shop_id>")
@contract(path=ShopVouchersPath, data=list[VoucherData], errors={404: "shop not found"})
def list_vouchers(path: ShopVouchersPath) -> Response:
    """A shop's active vouchers; seckill ones with stock (live from Redis), begin, end."""
    shop_id = path.shop_id
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
    stream_vouchers.prepare(svc.redis, svc.settings, ids)
    return len(ids)


def post_seed(svc: Services) -> None:
    """``flask seed``: make the seckill vouchers sellable and create the stream group.

    Idempotent: a voucher whose stock is already in Redis keeps it (it may have
    sold); only missing ones are loaded from the database.
    """
    load_all_seckill_vouchers(svc)
