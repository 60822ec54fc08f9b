"""Shared helpers of the seckill/order tests (no fixtures with side effects here)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from models.entities import SeckillVoucher, Shop, ShopType, VoucherOrder


def queued_orders(broker, queue: str = "orders") -> list[dict]:
    """The order payloads carried by the task messages waiting in a Redis broker's queue.

    The web sends one message per micro-batch: its one argument is the list of the
    batch's payloads (a message of one order, as tests and old senders publish it,
    is a payload alone).
    """
    payloads: list[dict] = []
    for raw in broker.lrange(queue, 0, -1):
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        payloads += args[0] if isinstance(args[0], list) else [args[0]]
    return payloads


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def add_shop(services, shop_id: int = 1) -> int:
    """One shop (and its type) straight into the database."""
    with services.db.session() as session:
        if session.get(ShopType, 1) is None:
            session.add(ShopType(id=1, name="food", icon="", sort=1))
            session.flush()
        session.add(Shop(id=shop_id, name=f"shop {shop_id}", type_id=1, x=120.1, y=30.2))
    return shop_id


def voucher_body(**overrides: object) -> dict:
    now = utc_now()
    body = {
        "shopId": 1,
        "title": "100 off",
        "subTitle": "weekdays",
        "rules": "no change given",
        "payValue": 8000,
        "actualValue": 10000,
        "stock": 100,
        "beginTime": iso(now - timedelta(hours=1)),
        "endTime": iso(now + timedelta(days=1)),
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def create_seckill(client, headers: dict, **overrides: object) -> int:
    """Create a seckill voucher through the admin API; returns its id."""
    response = client.post("/voucher/seckill", json=voucher_body(**overrides), headers=headers)
    assert response.status_code == 200, response.json
    return int(response.json["data"])


def db_orders(services, voucher_id: int) -> list[tuple[int, int]]:
    """(order id, user id) rows of a voucher."""
    with services.db.session() as session:
        rows = session.execute(
            select(VoucherOrder.id, VoucherOrder.user_id).where(
                VoucherOrder.voucher_id == voucher_id
            )
        ).all()
    return [(int(a), int(b)) for a, b in rows]


def db_stock(services, voucher_id: int) -> int:
    with services.db.session() as session:
        return int(session.get(SeckillVoucher, voucher_id).stock)


def order_count(services) -> int:
    with services.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(VoucherOrder)))


def wait_for(
    predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = ""
) -> object:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds.

    A liveness bound, not a speed assertion: timeouts are generous.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)
