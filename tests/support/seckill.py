"""Shared helpers of the seckill/order tests (no fixtures with side effects here)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from cache import order_stream
from cache.stream_vouchers import all_vouchers
from models.entities import SeckillVoucher, Shop, ShopType, Voucher, VoucherOrder


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


def add_seckill_voucher(
    services,  # type: ignore[no-untyped-def]
    stock: int = 10,
    ends_in: timedelta = timedelta(days=1),
    shop_id: int = 1,
) -> int:
    """A seckill voucher straight into the database (not loaded into Redis); its id.

    Its sale began an hour before it ends (``ends_in`` negative: ended that long ago).
    """
    with services.db.session() as session:
        shop = session.get(Shop, shop_id)
    if shop is None:
        add_shop(services, shop_id)
    with services.db.session() as session:
        row = Voucher(shop_id=shop_id, title="t", pay_value=1, actual_value=2, type=1)
        session.add(row)
        session.flush()
        end = utc_now().replace(microsecond=0) + ends_in
        session.add(
            SeckillVoucher(
                voucher_id=row.id, stock=stock, begin_time=end - timedelta(hours=1), end_time=end
            )
        )
        return int(row.id)


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


def order_streams(services) -> list[order_stream.Stream]:  # type: ignore[no-untyped-def]
    """The orders stream of every seckill voucher of the database (and the legacy one)."""
    settings = services.settings
    streams = [order_stream.voucher_stream(settings, v) for v in all_vouchers(services.db)]
    return streams + order_stream.legacy_of(services.redis, settings)


def stream_length(services) -> int:  # type: ignore[no-untyped-def]
    """Unsettled reservations of every voucher: their streams' entries."""
    return order_stream.stream_stats(services.redis, order_streams(services)).length


def dead_letter_count(services) -> int:  # type: ignore[no-untyped-def]
    """Dead letters of every voucher."""
    return order_stream.stream_stats(services.redis, order_streams(services)).dead_letters


def stream_entries(services) -> list[tuple[str, dict]]:  # type: ignore[no-untyped-def]
    """Every entry of every voucher's orders stream (stream id, fields), voucher by voucher."""
    return [item for s in order_streams(services) for item in services.redis.xrange(s.key)]
