"""Voucher creation/list and the seckill order route, through the Flask app."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from support.seckill import (
    add_shop,
    create_seckill,
    db_orders,
    db_stock,
    iso,
    order_count,
    queued_orders,
    stream_length,
    utc_now,
    voucher_body,
)
from support.social import make_users

from beat.order_jobs import run_recovery
from cache.order_stream import OrderEntry, stream_key
from cache.server import free_port
from models.entities import SeckillVoucher, Voucher
from services import Services
from tasks.orders import settle_order
from web.orders import ORDER_TASK, flush_dispatch, verify_orders
from web.vouchers import post_seed

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


@pytest.fixture
def admin(login_as, services):
    add_shop(services)
    return login_as(1, role="admin")


def _voucher_rows(services) -> tuple[int, int]:
    with services.db.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Voucher)),
            session.scalar(select(func.count()).select_from(SeckillVoucher)),
        )


# --- voucher creation ------------------------------------------------------------------


def test_admin_creates_a_seckill_voucher_loaded_into_redis(client, admin, services, settings):
    begin, end = utc_now() - timedelta(hours=1), utc_now() + timedelta(days=2)
    voucher_id = create_seckill(client, admin, stock=7, beginTime=iso(begin), endTime=iso(end))
    with services.db.session() as session:
        voucher = session.get(Voucher, voucher_id)
        seckill = session.get(SeckillVoucher, voucher_id)
        assert (voucher.type, voucher.shop_id, voucher.pay_value) == (1, 1, 8000)
        assert (seckill.stock, seckill.begin_time, seckill.end_time) == (
            7,
            begin.replace(microsecond=0),
            end.replace(microsecond=0),
        )
    r = services.redis
    assert r.get(f"seckill:stock:{{{voucher_id}}}") == "7"
    assert set(r.hgetall(f"seckill:window:{{{voucher_id}}}")) == {"begin", "end"}
    groups = r.xinfo_groups(stream_key(settings, voucher_id))  # its own stream, in its slot
    assert [g["name"] for g in groups] == [settings.order_group]


def test_times_with_an_offset_are_converted_to_utc(client, admin, services):
    voucher_id = create_seckill(
        client, admin, beginTime="2030-01-01T08:00:00+08:00", endTime="2030-01-02T00:00:00Z"
    )
    with services.db.session() as session:
        seckill = session.get(SeckillVoucher, voucher_id)
        assert seckill.begin_time.isoformat() == "2030-01-01T00:00:00"
        assert seckill.end_time.isoformat() == "2030-01-02T00:00:00"


def test_a_null_subtitle_or_rules_is_stored_empty_and_documented_as_allowed(
    client, admin, services
):
    """hmdp's front end sends null for an unset field: accepted, and the contract says so."""
    voucher_id = create_seckill(client, admin, subTitle=None, rules=None)
    with services.db.session() as session:
        voucher = session.get(Voucher, voucher_id)
        assert (voucher.sub_title, voucher.rules) == ("", "")
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    for name in ("VoucherBody", "SeckillVoucherBody"):
        fields = schemas[name]["properties"]
        for field, length in (("subTitle", 255), ("rules", 1024)):
            assert {"type": "null"} in fields[field]["anyOf"], (name, field)
            assert {"type": "string", "minLength": 0, "maxLength": length} in fields[field]["anyOf"]


def test_ordinary_voucher_and_the_shop_list(client, admin, services):
    body = voucher_body(stock=None, beginTime=None, endTime=None, title="plain")
    plain = client.post("/voucher", json=body, headers=admin)
    assert plain.status_code == 200
    seckill_id = create_seckill(client, admin, stock=5)
    other = create_seckill(client, admin, stock=7)  # another slot on a Redis Cluster
    assert services.redis.exists(f"seckill:stock:{{{plain.json['data']}}}") == 0
    client.post(f"/voucher-order/seckill/{seckill_id}", headers=client_login(services, 9))
    listed = client.get("/voucher/list/1")
    assert listed.status_code == 200
    by_id = {v["id"]: v for v in listed.json["data"]}
    assert by_id[plain.json["data"]]["type"] == 0 and "stock" not in by_id[plain.json["data"]]
    item = by_id[seckill_id]
    assert item["type"] == 1 and item["stock"] == 4  # live stock from Redis
    assert by_id[other]["stock"] == 7
    assert {"beginTime", "endTime", "payValue", "actualValue", "subTitle", "rules"} <= set(item)


def client_login(services, user_id: int) -> dict:
    import uuid

    token = uuid.uuid4().hex
    services.redis.hset(
        f"login:token:{token}", mapping={"id": user_id, "nickName": "u", "icon": "", "role": "user"}
    )
    return {"authorization": token}


BAD_BODIES = [
    ({"shopId": None}, 400),
    ({"shopId": "1"}, 400),
    ({"shopId": True}, 400),
    ({"shopId": 0}, 400),
    ({"title": ""}, 400),
    ({"title": "   "}, 400),
    ({"title": 5}, 400),
    ({"title": "x" * 256}, 400),
    ({"payValue": -1}, 400),
    ({"payValue": 1.5}, 400),
    ({"payValue": 20000}, 400),  # more than actualValue
    ({"stock": 0}, 400),
    ({"stock": -5}, 400),
    ({"stock": "10"}, 400),
    ({"stock": 10.0}, 400),
    ({"stock": None}, 400),
    ({"beginTime": "yesterday"}, 400),
    ({"beginTime": 1700000000}, 400),
    ({"endTime": None}, 400),
    ({"beginTime": "2030-01-02T00:00:00", "endTime": "2030-01-01T00:00:00"}, 400),
    ({"beginTime": "2030-01-01T00:00:00", "endTime": "2030-01-01T00:00:00"}, 400),
    ({"shopId": 999}, 404),
]


@pytest.mark.parametrize(("changes", "status"), BAD_BODIES)
def test_bad_seckill_bodies_are_refused_and_write_nothing(client, admin, services, changes, status):
    response = client.post("/voucher/seckill", json=voucher_body(**changes), headers=admin)
    assert response.status_code == status, response.json
    assert response.json["success"] is False and response.json["errorMsg"]
    assert _voucher_rows(services) == (0, 0)
    assert services.redis.keys("seckill:*") == []


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"', b"{"])
def test_non_object_bodies_are_400(client, admin, services, raw):
    for path in ("/voucher", "/voucher/seckill"):
        response = client.post(
            path, data=raw, headers={**admin, "Content-Type": "application/json"}
        )
        assert response.status_code == 400 and response.json["success"] is False
    assert _voucher_rows(services) == (0, 0)


def test_only_admins_create_vouchers(client, services, login_as):
    add_shop(services)
    make_users(services, 1, start=5)  # a user, no admin (web/auth.is_admin reads the row)
    for path in ("/voucher", "/voucher/seckill"):
        assert client.post(path, json=voucher_body()).status_code == 401
        assert client.post(path, json=voucher_body(), headers=login_as(5)).status_code == 403
    assert _voucher_rows(services) == (0, 0)


def test_list_of_unknown_or_bad_shop(client, services):
    add_shop(services)
    assert client.get("/voucher/list/1").json["data"] == []
    assert client.get("/voucher/list/2").status_code == 404
    for bad in ("abc", "-1", "0", str(2**63)):
        assert client.get(f"/voucher/list/{bad}").status_code == 404


def test_post_seed_loads_missing_stock_only_and_creates_the_group(
    client, admin, services, settings, login_as
):
    voucher_id = create_seckill(client, admin, stock=5)
    client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(3))
    services.redis.delete(stream_key(settings, voucher_id))  # no group, and a voucher Redis forgot:
    other = create_seckill(client, admin, stock=9)
    services.redis.delete(f"seckill:stock:{{{other}}}", f"seckill:window:{{{other}}}")
    post_seed(services)
    post_seed(services)
    assert services.redis.get(f"seckill:stock:{{{voucher_id}}}") == "4"  # sold stock kept
    assert services.redis.get(f"seckill:stock:{{{other}}}") == "9"
    for voucher in (voucher_id, other):
        groups = services.redis.xinfo_groups(stream_key(settings, voucher))
        assert [g["name"] for g in groups] == [settings.order_group]


# --- the order route -------------------------------------------------------------------------


@pytest.mark.redis_cluster(single="reads the task message in a Redis broker's queue")
def test_order_success_answers_the_id_as_a_string_and_dispatches(
    client, admin, services, settings, login_as
):
    voucher_id = create_seckill(client, admin, stock=2)
    response = client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(5))
    assert response.status_code == 200
    order_id = response.json["data"]
    assert isinstance(order_id, str) and int(order_id) > 2**53
    entry = services.redis.xrange(stream_key(settings, voucher_id))[0][1]
    assert entry == {"orderId": order_id, "userId": "5", "voucherId": str(voucher_id)}
    assert flush_dispatch(client.application)
    # the task message sits in the "orders" queue of the broker (the same Redis here)
    message = services.redis.lindex("orders", 0)
    assert message is not None and ORDER_TASK in message and order_id in message


def test_order_refusals(client, admin, services, login_as):
    voucher_id = create_seckill(client, admin, stock=1)
    path = f"/voucher-order/seckill/{voucher_id}"
    first = client.post(path, headers=login_as(5))
    assert first.status_code == 200
    again = client.post(path, headers=login_as(5))
    assert (again.status_code, again.json["errorMsg"]) == (409, "already ordered")
    assert again.json["data"] == first.json["data"]  # a retried order learns its id
    sold = client.post(path, headers=login_as(6))
    assert (sold.status_code, sold.json["errorMsg"]) == (409, "sold out")
    assert sold.json["data"] is None
    later = create_seckill(
        client,
        admin,
        beginTime=iso(utc_now() + timedelta(hours=1)),
        endTime=iso(utc_now() + timedelta(hours=2)),
    )
    early = client.post(f"/voucher-order/seckill/{later}", headers=login_as(5))
    assert (early.status_code, early.json["errorMsg"]) == (409, "not started")
    past = create_seckill(
        client,
        admin,
        beginTime=iso(utc_now() - timedelta(hours=2)),
        endTime=iso(utc_now() - timedelta(hours=1)),
    )
    ended = client.post(f"/voucher-order/seckill/{past}", headers=login_as(5))
    assert (ended.status_code, ended.json["errorMsg"]) == (409, "ended")
    assert services.redis.get(f"seckill:stock:{{{later}}}") == "100"


def test_a_refused_buyer_whose_id_redis_lost_is_told_the_id_of_their_row(
    client, admin, services, login_as
):
    voucher_id = create_seckill(client, admin, stock=5)
    path = f"/voucher-order/seckill/{voucher_id}"
    first = client.post(path, headers=login_as(5)).json["data"]
    unsettled = client.post(path, headers=login_as(6)).json["data"]
    (entry,) = [
        OrderEntry.from_fields(fields, sid)
        for sid, fields in services.redis.xrange(stream_key(services.settings, voucher_id))
        if fields["orderId"] == first
    ]
    assert settle_order(services, entry) == "created"
    services.redis.delete(f"seckill:orderid:{{{voucher_id}}}")  # Redis lost the ids, not the buyers
    again = client.post(path, headers=login_as(5))
    assert (again.status_code, again.json["data"]) == (409, first)  # from the database row
    # no row yet (the reservation is still in the Stream): the 409 has no id
    other = client.post(path, headers=login_as(6))
    assert (other.status_code, other.json["errorMsg"], other.json["data"]) == (
        409,
        "already ordered",
        None,
    )
    assert unsettled != first


def test_order_bad_input(client, admin, services, login_as):
    voucher_id = create_seckill(client, admin)
    assert client.post(f"/voucher-order/seckill/{voucher_id}").status_code == 401
    bad_token = {"authorization": "no-such-token"}
    assert client.post(f"/voucher-order/seckill/{voucher_id}", headers=bad_token).status_code == 401
    user = login_as(5)
    unknown = client.post("/voucher-order/seckill/424242", headers=user)
    assert (unknown.status_code, unknown.json["errorMsg"]) == (404, "voucher not found")
    plain = client.post("/voucher", json=voucher_body(stock=None), headers=admin).json["data"]
    assert client.post(f"/voucher-order/seckill/{plain}", headers=user).status_code == 404
    for bad in ("abc", "-1", "0", "1.5", str(2**63), "%00"):
        response = client.post(f"/voucher-order/seckill/{bad}", headers=user)
        assert response.status_code == 404 and response.json["success"] is False
    assert client.get(f"/voucher-order/seckill/{voucher_id}", headers=user).status_code == 405
    assert services.redis.get(f"seckill:stock:{{{voucher_id}}}") == "100"
    assert stream_length(services) == 0


def test_voucher_missing_in_redis_is_loaded_from_the_database(client, admin, services, login_as):
    voucher_id = create_seckill(client, admin, stock=3)
    services.redis.delete(f"seckill:stock:{{{voucher_id}}}", f"seckill:window:{{{voucher_id}}}")
    response = client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(5))
    assert response.status_code == 200
    assert services.redis.get(f"seckill:stock:{{{voucher_id}}}") == "2"


def _dispatch_failures() -> float:
    return REGISTRY.get_sample_value("hmdp_order_dispatch_failures_total") or 0.0


def test_dispatch_failure_still_sells_and_recovery_persists(settings, login_as, services):
    """Broker unreachable: the sale succeeds, the failure is counted, recovery persists it."""
    from web import create_app

    add_shop(services)
    dead = settings.with_(celery_broker_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(dead)
    try:
        client = app.test_client()
        voucher_id = create_seckill(client, login_as(1, role="admin"), stock=3)
        before = _dispatch_failures()
        response = client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(5))
        assert response.status_code == 200
        order_id = int(response.json["data"])
        assert flush_dispatch(app, 30)
        assert _dispatch_failures() >= before + 1
        # a second sale while the dispatcher is paused is dropped at once, still a success
        assert client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(6)).json[
            "success"
        ]
    finally:
        app.extensions["hmdp"].close()
    assert order_count(services) == 0
    recovery = Services(settings.with_(order_claim_idle_ms=0))
    try:
        report = run_recovery(recovery)
    finally:
        recovery.close()
    assert report["settled"] == {"created": 2}
    assert order_id in {oid for oid, _ in db_orders(services, voucher_id)}
    assert db_stock(services, voucher_id) == 1
    audit = verify_orders(services, voucher_id)
    assert audit.ok and audit.unsettled == 0, audit.lines()


@pytest.mark.redis_cluster(single="reads the task messages in a Redis broker's queue")
def test_many_logged_in_users_against_small_stock_through_the_route(
    client, admin, services, login_as
):
    voucher_id = create_seckill(client, admin, stock=10)
    headers = [login_as(u) for u in range(2, 42)]
    codes = [
        client.post(f"/voucher-order/seckill/{voucher_id}", headers=h).status_code
        for h in headers
        for _ in range(2)
    ]
    assert codes.count(200) == 10 and codes.count(409) == 70
    assert flush_dispatch(client.application)
    assert len(queued_orders(services.redis)) == 10
