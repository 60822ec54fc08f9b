"""Every timestamp we write carries its UTC offset, in the zone HMDP_TIMEZONE names.

Unit tests of timestamps.py, then every JSON answer that holds a time, from an
app in Asia/Shanghai (+08:00, no DST) and one in UTC ("Z"), including the shop
JSON the cache stores in Redis; the sale window of a voucher means the same
instant however it is written.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from support.seckill import create_seckill
from support.social import make_blog, make_users

from cache.region import decode_logical
from models.demo import DemoSize, load_demo_data
from models.entities import Blog, SeckillVoucher, Shop, UserInfo
from timestamps import iso_instant, parse_instant

SHANGHAI = ZoneInfo("Asia/Shanghai")
WITH_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$")


# --- the one function each way ----------------------------------------------------------


def test_a_stored_time_is_written_in_the_zone_with_its_offset():
    stored = datetime(2024, 5, 1, 12, 0, 0, 123456)  # naive UTC, as the database holds it
    assert iso_instant(stored, SHANGHAI) == "2024-05-01T20:00:00+08:00"
    assert iso_instant(stored, UTC) == "2024-05-01T12:00:00Z"
    assert iso_instant(stored, ZoneInfo("America/New_York")) == "2024-05-01T08:00:00-04:00"
    # winter in New York, and a zero offset that is not the UTC zone itself
    assert iso_instant(datetime(2024, 1, 1), ZoneInfo("America/New_York")).endswith("-05:00")
    assert iso_instant(datetime(2024, 1, 1), ZoneInfo("Europe/London")) == "2024-01-01T00:00:00Z"
    assert iso_instant(None, SHANGHAI) is None


def test_an_aware_time_keeps_its_instant():
    aware = datetime(2024, 5, 1, 20, 0, tzinfo=SHANGHAI)
    assert iso_instant(aware, UTC) == "2024-05-01T12:00:00Z"
    assert iso_instant(aware, SHANGHAI) == "2024-05-01T20:00:00+08:00"


@pytest.mark.parametrize(
    "text, zone, stored",
    [
        ("2030-01-01T08:00:00+08:00", UTC, datetime(2030, 1, 1, 0, 0)),
        ("2030-01-01T08:00:00+08:00", SHANGHAI, datetime(2030, 1, 1, 0, 0)),
        ("2030-01-01T00:00:00Z", SHANGHAI, datetime(2030, 1, 1, 0, 0)),
        ("2030-01-01T08:00:00", SHANGHAI, datetime(2030, 1, 1, 0, 0)),  # no offset: the zone's
        ("2030-01-01T08:00:00", UTC, datetime(2030, 1, 1, 8, 0)),
        (" 2030-01-01 08:00 ", SHANGHAI, datetime(2030, 1, 1, 0, 0)),
    ],
)
def test_input_is_read_as_the_instant_it_names(text, zone, stored):
    assert parse_instant(text, zone) == stored


def test_the_round_trip_is_the_same_instant():
    for zone in (UTC, SHANGHAI, ZoneInfo("America/New_York"), timezone(timedelta(hours=-3))):
        stored = datetime(2031, 7, 9, 3, 4, 5)
        assert parse_instant(iso_instant(stored, zone), ZoneInfo("Asia/Tokyo")) == stored


def test_not_a_time_is_a_value_error():
    with pytest.raises(ValueError):
        parse_instant("yesterday", UTC)


# --- every answer that holds a time ----------------------------------------------------------


def _times(value: object, path: str = "") -> dict[str, object]:
    """Every value under a key ending in 'Time' (createTime, beginTime ...), by its path."""
    found: dict[str, object] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("Time") and key != "minTime":  # minTime: the feed's ms cursor
                found[f"{path}.{key}"] = item
            found.update(_times(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.update(_times(item, f"{path}[{index}]"))
    return found


@pytest.fixture(params=["Asia/Shanghai", "UTC"])
def zoned(request, app_with, login_as):
    """An app in the zone, its demo data seeded by its own post-seed steps (cache warm-up)."""
    app = app_with(timezone=request.param)
    svc = app.extensions["hmdp"]
    load_demo_data(svc.db, DemoSize.named("small"))
    for step in app.extensions["hmdp_post_seed"]:
        step(svc)
    return app, svc, request.param


def _expected(stored: datetime, zone_name: str) -> str:
    return iso_instant(stored, ZoneInfo(zone_name))


def test_every_time_in_every_answer_carries_the_offset(zoned, login_as):
    app, svc, zone_name = zoned
    suffix = "+08:00" if zone_name == "Asia/Shanghai" else "Z"
    client = app.test_client()
    make_users(svc, 2, start=90_001)
    blog_id = make_blog(svc, 90_001, shop_id=1)
    admin = login_as(1, role="admin")
    voucher = create_seckill(
        client, admin, beginTime="2030-01-01T08:00:00+08:00", endTime="2030-02-01T00:00:00Z"
    )
    answers = {
        "shop": client.get("/shop/1"),
        "shop again (cached)": client.get("/shop/1"),
        "types": client.get("/shop-type/list"),
        "by name": client.get("/shop/of/name?name=1"),
        "by type": client.get("/shop/of/type?typeId=2"),
        "nearby": client.get("/shop/of/type?typeId=2&x=120.15&y=30.3"),
        "blog": client.get(f"/blog/{blog_id}"),
        "hot blogs": client.get("/blog/hot"),
        "user info": client.get("/user/info/2"),
        "vouchers": client.get("/voucher/list/1"),
    }
    for name, response in answers.items():
        assert response.status_code == 200, (name, response.json)
        times = _times(response.json["data"])
        assert times, f"{name}: no timestamps found"
        for path, text in times.items():
            assert isinstance(text, str) and WITH_OFFSET.match(text), (name, path, text)
            assert text.endswith(suffix), (name, path, text)
    with svc.db.sessions() as session:
        shop = session.get(Shop, 1)
        blog = session.get(Blog, blog_id)
        info = session.get(UserInfo, 2)
        window = session.get(SeckillVoucher, voucher)
    assert answers["shop"].json["data"]["createTime"] == _expected(shop.create_time, zone_name)
    assert answers["blog"].json["data"]["updateTime"] == _expected(blog.update_time, zone_name)
    assert answers["user info"].json["data"]["createTime"] == _expected(info.create_time, zone_name)
    listed = {v["id"]: v for v in answers["vouchers"].json["data"]}[voucher]
    assert listed["beginTime"] == _expected(window.begin_time, zone_name)
    assert parse_instant(listed["beginTime"], UTC) == datetime(2030, 1, 1, 0, 0)


def test_the_cached_shop_json_in_redis_carries_the_offset(zoned):
    app, svc, zone_name = zoned
    suffix = "+08:00" if zone_name == "Asia/Shanghai" else "Z"
    client = app.test_client()
    hot = sorted(svc.redis.smembers("cache:{shop}:hot:current"), key=int)[0]  # warmed by the seed
    cold = next(i for i in range(1, 501) if str(i) not in svc.redis.smembers("cache:{shop}:hot"))
    _, logical_text = decode_logical(svc.redis.get(f"cache:{{shop}}:logical:{hot}"))
    assert re.search(r'"createTime":"[^"]+' + re.escape(suffix) + '"', logical_text)
    assert client.get(f"/shop/{cold}").status_code == 200  # fills the physical key
    physical = svc.redis.get(f"cache:{{shop}}:{cold}")
    assert re.search(r'"updateTime":"[^"]+' + re.escape(suffix) + '"', physical)
    types_text = svc.redis.get("cache:shop-type")
    assert re.search(r'"createTime":"[^"]+' + re.escape(suffix) + '"', types_text)


def test_a_sale_window_without_an_offset_is_read_in_hmdp_timezone(zoned, login_as):
    app, svc, zone_name = zoned
    client = app.test_client()
    admin = login_as(1, role="admin")
    voucher = create_seckill(
        client, admin, beginTime="2030-01-01T08:00:00", endTime="2030-01-01T20:00:00+08:00"
    )
    with svc.db.sessions() as session:
        window = session.get(SeckillVoucher, voucher)
    offset = timedelta(hours=8) if zone_name == "Asia/Shanghai" else timedelta(0)
    assert window.begin_time == datetime(2030, 1, 1, 8, 0) - offset  # stored as UTC
    assert window.end_time == datetime(2030, 1, 1, 12, 0)  # an offset is that instant anywhere
    listed = {v["id"]: v for v in client.get("/voucher/list/1").json["data"]}[voucher]
    if zone_name == "Asia/Shanghai":
        assert listed["beginTime"] == "2030-01-01T08:00:00+08:00"
        assert listed["endTime"] == "2030-01-01T20:00:00+08:00"
    else:
        assert listed["beginTime"] == "2030-01-01T08:00:00Z"
        assert listed["endTime"] == "2030-01-01T12:00:00Z"
    # the gate's window in Redis is the same instant (Unix ms)
    begin = int(svc.redis.hget(f"seckill:window:{{{voucher}}}", "begin"))
    assert begin == int((datetime(2030, 1, 1, 8, 0, tzinfo=UTC) - offset).timestamp()) * 1000
