"""Nearby shops: GEO keys per type, GEOSEARCH order and distances vs a haversine reference."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select
from support.social import make_shop

from cache import geo
from models.entities import Shop

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)

EARTH_RADIUS_M = 6372797.560856  # the radius Redis' GEO commands use
CENTER = (120.149, 30.318)  # a demo-data district centre (Hangzhou)


def haversine(x1: float, y1: float, x2: float, y2: float) -> float:
    lon1, lat1, lon2, lat2 = map(math.radians, (x1, y1, x2, y2))
    a = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def close(measured: float, reference: float) -> bool:
    """Within 0.5 % (and 1 m for very short distances: geohash cells are ~0.6 m)."""
    return abs(measured - reference) <= max(0.005 * reference, 1.0)


def reference_page(services, type_id, x, y, radius, start, end):
    with services.db.sessions() as session:
        shops = session.execute(select(Shop.id, Shop.x, Shop.y).where(Shop.type_id == type_id))
        ranked = sorted((haversine(x, y, sx, sy), sid) for sid, sx, sy in shops)
    return [(sid, d) for d, sid in ranked if d <= radius][start:end]


def assert_matches_reference(found, reference):
    """Same shops, same order (up to near-ties), distances within tolerance."""
    assert [sid for sid, _ in found] == [sid for sid, _ in reference] or all(
        close(a[1], b[1]) for a, b in zip(found, reference, strict=True)
    )
    ref = dict(reference)
    for shop_id, distance in found:
        assert close(distance, ref[shop_id]), (shop_id, distance, ref[shop_id])
    distances = [d for _, d in found]
    assert distances == sorted(distances)


def test_search_orders_by_distance_and_pages(services, redis_client):
    points = [
        geo.ShopPoint(i, 1, CENTER[0] + 0.004 * (i % 7) - 0.012, CENTER[1] + 0.003 * (i % 5))
        for i in range(1, 41)
    ]
    points.append(geo.ShopPoint(99, 2, *CENTER))  # another type: never in type 1's answers
    points.append(geo.ShopPoint(98, 1, 0.0, 89.0))  # Redis cannot store it: skipped, not fatal
    assert geo.load(redis_client, points) == 41
    everything = geo.search(redis_client, 1, *CENTER, 50_000, 0, 100)
    assert len(everything) == 40 and 99 not in {sid for sid, _ in everything}
    by_id = {p.id: p for p in points}
    reference = sorted((haversine(*CENTER, by_id[s].x, by_id[s].y), s) for s, _ in everything)
    assert_matches_reference(everything, [(s, d) for d, s in reference])
    # Pages are consecutive slices of the same order.
    pages = [geo.search(redis_client, 1, *CENTER, 50_000, k, k + 5) for k in range(0, 40, 5)]
    assert [sid for page in pages for sid, _ in page] == [sid for sid, _ in everything]
    assert geo.search(redis_client, 1, *CENTER, 50_000, 40, 45) == []
    # The radius bounds the answer.
    near = geo.search(redis_client, 1, *CENTER, 1000, 0, 100)
    assert near and all(d <= 1000 for _, d in near)
    assert {s for s, _ in near} == {s for s, d in everything if d <= 1000}


def test_route_sorts_by_distance_after_the_seed(client, seeded):
    """post_seed indexed every shop; the route agrees with haversine on the DB rows."""
    services = seeded
    for type_id in range(1, 11):
        assert services.redis.exists(geo.geo_key(type_id))
    with services.db.sessions() as session:
        assert services.redis.zcard(geo.geo_key(3)) == len(
            list(session.scalars(select(Shop.id).where(Shop.type_id == 3)))
        )
    x, y = CENTER
    seen = []
    for current in range(1, 6):
        r = client.get(f"/shop/of/type?typeId=3&current={current}&x={x}&y={y}")
        assert r.status_code == 200 and r.json["success"]
        page = r.json["data"]
        assert len(page) <= 5
        assert all(s["typeId"] == 3 and "name" in s for s in page)
        found = [(s["id"], s["distance"]) for s in page]
        start = (current - 1) * 5
        assert_matches_reference(found, reference_page(services, 3, x, y, 5000, start, start + 5))
        seen += found
    assert len(seen) > 5  # more than one page near this centre
    assert [d for _, d in seen] == sorted(d for _, d in seen)
    # Without x, y: the database page, no distance.
    plain = client.get("/shop/of/type?typeId=3&current=1").json["data"]
    assert len(plain) == 5 and all("distance" not in s for s in plain)


def test_created_and_updated_shops_stay_in_step(client, services, redis_client, login_as):
    make_shop(services, 1, type_id=1, x=CENTER[0] + 0.01, y=CENTER[1])
    make_shop(services, 2, type_id=2, x=CENTER[0], y=CENTER[1])
    admin = login_as(1, role="admin")
    near = f"x={CENTER[0]}&y={CENTER[1]}"
    # First search of a type loads it from the database (never seeded here).
    assert [s["id"] for s in client.get(f"/shop/of/type?typeId=1&{near}").json["data"]] == [1]
    body = {"name": "new", "typeId": 1, "x": CENTER[0] + 0.001, "y": CENTER[1]}
    new_id = client.post("/shop", json=body, headers=admin).json["data"]
    got = client.get(f"/shop/of/type?typeId=1&{near}").json["data"]
    assert [s["id"] for s in got] == [new_id, 1]
    assert close(got[0]["distance"], haversine(*CENTER, CENTER[0] + 0.001, CENTER[1]))
    # Moving it far away takes it out of the radius; changing its type moves its key.
    r = client.put("/shop", json={"id": new_id, "x": CENTER[0] + 1.0}, headers=admin)
    assert r.status_code == 200
    assert [s["id"] for s in client.get(f"/shop/of/type?typeId=1&{near}").json["data"]] == [1]
    client.put("/shop", json={"id": new_id, "typeId": 2, "x": CENTER[0]}, headers=admin)
    assert redis_client.zscore(geo.geo_key(1), str(new_id)) is None
    assert {s["id"] for s in client.get(f"/shop/of/type?typeId=2&{near}").json["data"]} == {
        2,
        new_id,
    }


def test_a_lost_or_partial_geo_key_is_reloaded(client, services, redis_client):
    for i in range(1, 4):
        make_shop(services, i, type_id=1, x=CENTER[0] + 0.002 * i, y=CENTER[1])
    near = f"x={CENTER[0]}&y={CENTER[1]}"
    assert len(client.get(f"/shop/of/type?typeId=1&{near}").json["data"]) == 3
    redis_client.delete(geo.geo_key(1))  # evicted
    assert len(client.get(f"/shop/of/type?typeId=1&{near}").json["data"]) == 3
    # A key holding only one upserted shop (created before any load) is not "loaded".
    redis_client.delete(geo.geo_key(1), geo.LOADED_KEY.format(type_id=1))
    geo.upsert(redis_client, geo.ShopPoint(3, 1, CENTER[0] + 0.006, CENTER[1]))
    assert [s["id"] for s in client.get(f"/shop/of/type?typeId=1&{near}").json["data"]] == [
        1,
        2,
        3,
    ]


def test_shops_at_one_address_page_without_skip_or_repeat(redis_client):
    """Equal distances across a page cut: the order is (distance, id) on every page."""
    points = [geo.ShopPoint(i, 1, CENTER[0] + 0.01, CENTER[1]) for i in range(1, 13)]
    points += [geo.ShopPoint(i, 1, CENTER[0] + 0.02, CENTER[1]) for i in range(13, 20)]
    points += [geo.ShopPoint(20, 1, CENTER[0] + 0.005, CENTER[1])]
    geo.load(redis_client, points)
    for size in (3, 4, 5):
        pages = [
            geo.search(redis_client, 1, *CENTER, 5000, k, k + size) for k in range(0, 25, size)
        ]
        ids = [sid for page in pages for sid, _ in page]
        assert ids == [20, *range(1, 13), *range(13, 20)], size


BAD_QUERIES = [
    "typeId=1&x=120.1",  # y missing
    "typeId=1&y=30.2",  # x missing
    "typeId=1&x=180.5&y=30",
    "typeId=1&x=-181&y=30",
    "typeId=1&x=120&y=85.06",
    "typeId=1&x=120&y=-90",
    "typeId=1&x=abc&y=30",
    "typeId=1&x=nan&y=30",
    "typeId=1&x=inf&y=30",
    "typeId=1&x=120&y=30&current=0",
    "typeId=1&x=120&y=30&current=-3",
    "x=120&y=30",  # typeId missing
    "typeId=0&x=120&y=30",
]


def test_bad_positions_and_pages_are_400(client, services):
    for query in BAD_QUERIES:
        r = client.get(f"/shop/of/type?{query}")
        assert r.status_code == 400, (query, r.json)
        assert r.json["success"] is False and r.json["errorMsg"]


def test_edges_of_the_valid_range_are_accepted(client, services):
    for x, y in [(180, 85.05), (-180, -85.05), (0, 0)]:
        r = client.get(f"/shop/of/type?typeId=1&x={x}&y={y}")
        assert r.status_code == 200 and r.json["data"] == []
