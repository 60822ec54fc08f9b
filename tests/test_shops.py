"""The shop routes (web/shops.py) on seeded demo data, real Redis and database."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from cache.locks import SimpleLock
from cache.region import decode_logical
from models.entities import Shop, ShopType
from web import create_app

GOOD = {
    "name": "新店",
    "typeId": 2,
    "images": "https://img.example/1.jpg",
    "area": "西湖",
    "address": "西湖1号",
    "x": 120.15,
    "y": 30.25,
    "avgPrice": 80,
    "score": 45,
    "openHours": "10:00-22:00",
}


def shop_count(services) -> int:  # type: ignore[no-untyped-def]
    with services.db.sessions() as session:
        return session.scalar(select(func.count()).select_from(Shop))


@pytest.fixture
def admin(login_as):
    return login_as(1, role="admin")


@pytest.fixture
def user(login_as):
    return login_as(2)


# --- GET /shop/{id} ---------------------------------------------------------------------
def test_get_shop_in_hmdp_field_names(client, seeded):
    response = client.get("/shop/1")
    assert response.status_code == 200
    body = response.json
    assert body["success"] is True and body["errorMsg"] is None and body["total"] is None
    data = body["data"]
    assert list(data) == [
        "id",
        "name",
        "typeId",
        "images",
        "area",
        "address",
        "x",
        "y",
        "avgPrice",
        "sold",
        "comments",
        "score",
        "openHours",
        "createTime",
        "updateTime",
    ]
    assert data["id"] == 1 and data["typeId"] == 2
    # an instant with its offset (HMDP_TIMEZONE is UTC here: "Z"); test_timestamps has zones
    assert time.strptime(data["createTime"], "%Y-%m-%dT%H:%M:%SZ")
    assert client.get("/shop/1").json == body  # the cached copy is identical


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "1.5", "99999999999999999999", "１"])
def test_get_shop_bad_id_is_400(client, seeded, raw):
    response = client.get(f"/shop/{raw}")
    assert response.status_code == 400 and response.json["success"] is False


def test_get_unknown_shop_is_404_and_writes_nothing(client, seeded, redis_client):
    before = set(redis_client.keys())
    response = client.get("/shop/100000")
    assert response.status_code == 404 and response.json["errorMsg"] == "shop not found"
    # rejected by the Bloom filter: no null marker (the L1 listener may register itself)
    assert set(redis_client.keys()) - before <= {"cache:{shop}:near:members"}


def test_hot_shops_are_served_from_logical_keys(client, seeded, redis_client, services):
    hot = redis_client.smembers("cache:{shop}:hot:current")
    assert len(hot) == services.settings.hot_shop_count
    with services.db.sessions() as session:
        top = session.scalars(select(Shop.id).order_by(Shop.sold.desc(), Shop.id).limit(1)).one()
    assert str(top) in hot
    assert redis_client.ttl(f"cache:{{shop}}:logical:{top}") == -1
    assert client.get(f"/shop/{top}").json["data"]["id"] == top
    assert not redis_client.exists(f"cache:{{shop}}:{top}")  # no physical copy needed


def test_stuck_rebuild_is_a_503_json(settings, seeded):
    app = create_app(settings.with_(rebuild_wait=0.2))
    services = app.extensions["hmdp"]
    try:
        cold = next(
            i for i in range(1, 501) if not services.redis.exists(f"cache:{{shop}}:logical:{i}")
        )
        lock = SimpleLock(services.redis, f"lock:shop:{cold}", ttl_ms=10_000)
        assert lock.acquire()
        response = app.test_client().get(f"/shop/{cold}")
        assert response.status_code == 503 and response.json["success"] is False
        assert response.headers["Retry-After"] == "1"
        lock.release()
        assert app.test_client().get(f"/shop/{cold}").status_code == 200
    finally:
        services.close()


# --- POST /shop ------------------------------------------------------------------------------
def test_create_needs_admin(client, seeded, user):
    assert client.post("/shop", json=GOOD).status_code == 401
    assert client.post("/shop", json=GOOD, headers=user).status_code == 403


def test_create_then_readable_even_over_a_cached_null_marker(client, seeded, admin, redis_client):
    redis_client.set("cache:{shop}:501", "", ex=120)  # someone looked id 501 up before
    response = client.post("/shop", json=GOOD, headers=admin)
    assert response.status_code == 200, response.json
    shop_id = response.json["data"]
    assert shop_id == 501
    data = client.get(f"/shop/{shop_id}").json["data"]
    assert data["name"] == "新店" and data["typeId"] == 2 and data["sold"] == 0


BAD_BODIES = [
    {k: v for k, v in GOOD.items() if k != "name"},
    {**GOOD, "name": ""},
    {**GOOD, "name": "   "},
    {**GOOD, "name": "x" * 129},
    {**GOOD, "name": 5},
    {**GOOD, "typeId": True},
    {**GOOD, "typeId": "2"},
    {**GOOD, "typeId": 0},
    {**GOOD, "typeId": 99},  # no such type
    {**GOOD, "x": 180.5},
    {**GOOD, "y": -91},
    {**GOOD, "x": "120"},
    {**GOOD, "avgPrice": -1},
    {**GOOD, "avgPrice": 1.5},
    {**GOOD, "score": 51},
    {**GOOD, "openHours": "x" * 33},
    {**GOOD, "address": "a\nb"},
    {**GOOD, "owner": "me"},
    {**GOOD, "id": 7},
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_create_rejects_bad_bodies_and_creates_nothing(client, seeded, admin, services, body):
    before = shop_count(services)
    response = client.post("/shop", json=body, headers=admin)
    assert response.status_code == 400, response.json
    assert response.json["success"] is False and response.json["errorMsg"]
    assert shop_count(services) == before


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"', b"{"])
def test_create_rejects_non_object_bodies(client, seeded, admin, raw):
    response = client.post("/shop", data=raw, headers={**admin, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json["success"] is False


# --- PUT /shop ---------------------------------------------------------------------------------
def test_update_needs_admin(client, seeded, user):
    assert client.put("/shop", json={"id": 1, "name": "x"}).status_code == 401
    assert client.put("/shop", json={"id": 1, "name": "x"}, headers=user).status_code == 403


def test_update_unknown_and_bad_ids(client, seeded, admin):
    assert client.put("/shop", json={"id": 100000, "name": "x"}, headers=admin).status_code == 404
    for bad in [None, 0, -3, "1", True, 1.5]:
        response = client.put("/shop", json={"id": bad, "name": "x"}, headers=admin)
        assert response.status_code == 400, bad
    assert client.put("/shop", json={"name": "x"}, headers=admin).status_code == 400


def test_update_with_bad_fields_changes_nothing(client, seeded, admin):
    before = client.get("/shop/3").json["data"]
    response = client.put("/shop", json={"id": 3, "name": "ok", "x": 999}, headers=admin)
    assert response.status_code == 400
    assert client.get("/shop/3").json["data"] == before


def test_update_is_visible_at_once_for_cold_and_hot_shops(
    client, seeded, admin, redis_client, services
):
    hot = sorted(redis_client.smembers("cache:{shop}:hot:current"), key=int)[0]
    cold = next(
        i for i in range(1, 501) if str(i) not in redis_client.smembers("cache:{shop}:hot:current")
    )
    for shop_id in (int(hot), cold):
        assert client.get(f"/shop/{shop_id}").status_code == 200  # cached now
        body = {"id": shop_id, "name": f"改名{shop_id}", "score": 50, "createTime": "ignored"}
        response = client.put("/shop", json=body, headers=admin)
        assert response.status_code == 200, response.json
        data = client.get(f"/shop/{shop_id}").json["data"]
        assert data["name"] == f"改名{shop_id}" and data["score"] == 50
    # the hot shop got its logical key back from the new row
    _, text = decode_logical(redis_client.get(f"cache:{{shop}}:logical:{hot}"))
    assert f"改名{hot}" in text


# --- lists ---------------------------------------------------------------------------------------
def test_shops_by_name_pages_of_ten(client, seeded):
    first = client.get("/shop/of/name?name=1&current=1").json["data"]
    second = client.get("/shop/of/name?name=1&current=2").json["data"]
    assert len(first) == 10 and len(second) == 10
    assert {s["id"] for s in first}.isdisjoint({s["id"] for s in second})
    assert all("1" in s["name"] for s in first + second)
    assert client.get("/shop/of/name?name=1&current=1000").json["data"] == []
    assert client.get("/shop/of/name?name=%25").json["data"] == []  # % is literal


@pytest.mark.parametrize("query", ["", "?name=", "?name=%20%20", "?current=1", "?name=&current=1"])
def test_shops_by_name_without_a_name_is_the_first_page_of_all_shops(client, seeded, query):
    response = client.get(f"/shop/of/name{query}")
    assert response.status_code == 200, response.json
    assert [s["id"] for s in response.json["data"]] == list(range(1, 11))  # id order, 10


def test_shops_by_name_without_a_name_pages_like_a_name_search(client, seeded):
    pages = [client.get(f"/shop/of/name?name=&current={n}").json["data"] for n in (1, 2, 50)]
    assert [s["id"] for s in pages[1]] == list(range(11, 21))
    assert [s["id"] for s in pages[2]] == list(range(491, 501))  # the last of 500 shops
    assert client.get("/shop/of/name?current=51").json["data"] == []
    # the same fields as a name search answers
    named = client.get("/shop/of/name?name=1").json["data"][0]
    assert set(pages[0][0]) == set(named)


@pytest.mark.parametrize(
    "query", ["?name=a&current=0", "?name=a&current=x", "?current=0", "?name=" + "a" * 129]
)
def test_shops_by_name_bad_queries(client, seeded, query):
    assert client.get(f"/shop/of/name{query}").status_code == 400


def test_shops_by_type_pages_of_five(client, seeded):
    pages = [client.get(f"/shop/of/type?typeId=3&current={n}").json["data"] for n in (1, 2)]
    assert [len(p) for p in pages] == [5, 5]
    assert all(s["typeId"] == 3 for p in pages for s in p)
    assert pages[0][-1]["id"] < pages[1][0]["id"]
    assert client.get("/shop/of/type?typeId=3").json["data"] == pages[0]
    assert client.get("/shop/of/type?typeId=3&current=9999").json["data"] == []


@pytest.mark.parametrize(
    "query", ["", "?typeId=0", "?typeId=x", "?typeId=1&current=0", "?typeId=1&current=-2"]
)
def test_shops_by_type_bad_queries(client, seeded, query):
    assert client.get(f"/shop/of/type{query}").status_code == 400


def test_shop_types_ordered_by_sort_and_cached(client, seeded, services, redis_client):
    with services.db.session() as session:
        session.get(ShopType, 1).sort = 99  # move the first type last
    redis_client.delete("cache:shop-type")
    data = client.get("/shop-type/list").json["data"]
    assert len(data) == 10
    assert [t["sort"] for t in data] == sorted(t["sort"] for t in data)
    assert data[-1]["id"] == 1
    assert redis_client.pttl("cache:shop-type") > 0
    assert client.get("/shop-type/list").json["data"] == data


# --- warm-up and jobs ------------------------------------------------------------------------------
def test_flask_cache_warm_command(app, services, redis_client):
    from models.demo import DemoSize, load_demo_data

    load_demo_data(services.db, DemoSize.named("small"))
    result = app.test_cli_runner().invoke(args=["cache", "warm", "--top", "5"])
    assert result.exit_code == 0, result.output
    assert "500 shop ids" in result.output and "hot shops warmed: 5" in result.output
    assert redis_client.scard("cache:{shop}:hot:current") == 5
    assert redis_client.exists("bloom:{shop}", "cache:shop-type") == 2


def test_beat_jobs_and_refresh_task_run_on_the_worker_app(settings, seeded, redis_client):
    from tasks.app import create_celery

    celery_app = create_celery(settings)
    celery_app.loader.import_default_modules()
    redis_client.sadd("cache:{shop}:hot", "499")  # an operator's explicit hot shop
    warmed = celery_app.tasks["beat.cache_jobs.warm_hot_shops"].apply(kwargs={"top": 3}).get()
    assert warmed == 4 and "499" in redis_client.smembers("cache:{shop}:hot:current")
    # make one logical key about to expire: the refresh job rewrites it
    key = "cache:{shop}:logical:499"
    _, data = decode_logical(redis_client.get(key))
    redis_client.set(key, '{"expireTime":1.000,"data":' + data + "}")
    refreshed = celery_app.tasks["beat.cache_jobs.refresh_logical_expiry"].apply().get()
    assert refreshed >= 1
    assert decode_logical(redis_client.get(key))[0] > time.time() + 60
    assert celery_app.tasks["beat.cache_jobs.rebuild_shop_bloom"].apply().get() == 500
    redis_client.set(key, '{"expireTime":1.000,"data":' + data + "}")
    assert celery_app.tasks["tasks.cache.refresh_shop"].apply(args=[499]).get() is True
    assert decode_logical(redis_client.get(key))[0] > time.time() + 60
    celery_app.services.close()


def test_every_shop_field_but_the_id_is_validated_for_writes():
    from cache.shop_source import SHOP_COLUMNS
    from web.shops import SHOP_RULES

    assert set(SHOP_RULES) == set(SHOP_COLUMNS) - {"id"}
