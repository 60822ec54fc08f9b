"""Blogs: publish, read, like toggles (ZSET + SQL counter), likers, hot and per-user lists."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from support.social import make_blog, make_shop, make_upload, make_users

from cache.likes import count as zcard
from cache.likes import liked_key
from models.entities import Blog

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


@pytest.fixture
def world(services):
    make_users(services, 30)
    make_shop(services, 1)
    return services


def blog_count(services) -> int:
    with services.db.sessions() as session:
        return session.scalar(select(func.count()).select_from(Blog))


def db_liked(services, blog_id: int) -> int:
    with services.db.sessions() as session:
        return session.get(Blog, blog_id).liked


def test_publish_and_read(client, world, login_as):
    me = login_as(3)
    photo = make_upload(world, 3)
    body = {
        "shopId": 1,
        "title": " Great noodles ",
        "content": "Try the beef.",
        "images": "/imgs" + photo,  # as hmdp's editor sends it
    }
    r = client.post("/blog", json=body, headers=me)
    assert r.status_code == 200 and r.json["success"]
    blog_id = r.json["data"]
    assert isinstance(blog_id, int)
    r = client.get(f"/blog/{blog_id}")
    assert r.status_code == 200
    data = r.json["data"]
    assert data["id"] == blog_id and data["userId"] == 3 and data["shopId"] == 1
    assert data["title"] == "Great noodles" and data["content"] == "Try the beef."
    assert data["name"] == "user_3" and data["icon"] == "" and data["isLike"] is False
    assert data["liked"] == 0 and data["images"] == "/imgs" + photo and data["createTime"]
    # A list of images is stored comma-joined, as hmdp does, each as the page shows it.
    a, b = make_upload(world, 4), make_upload(world, 4, "png")
    r = client.post("/blog", json={**body, "images": [a, "/imgs" + b]}, headers=login_as(4))
    assert client.get(f"/blog/{r.json['data']}").json["data"]["images"] == f"/imgs{a},/imgs{b}"


BAD_BODIES = [
    (None, 400),
    ([1, 2], 400),
    ({"title": "t", "content": "c"}, 400),  # no shopId
    ({"shopId": "1", "title": "t", "content": "c"}, 400),
    ({"shopId": True, "title": "t", "content": "c"}, 400),
    ({"shopId": 1.5, "title": "t", "content": "c"}, 400),
    ({"shopId": 1, "content": "c"}, 400),  # no title
    ({"shopId": 1, "title": "   ", "content": "c"}, 400),
    ({"shopId": 1, "title": 5, "content": "c"}, 400),
    ({"shopId": 1, "title": "x" * 256, "content": "c"}, 400),
    ({"shopId": 1, "title": "t"}, 400),  # no content
    ({"shopId": 1, "title": "t", "content": "c" * 5001}, 400),
    ({"shopId": 1, "title": "t", "content": "c", "images": 7}, 400),
    ({"shopId": 1, "title": "t", "content": "c", "images": ["a", 1]}, 400),
    ({"shopId": 1, "title": "t", "content": "c", "images": "x" * 2049}, 400),
    ({"shopId": 999, "title": "t", "content": "c"}, 404),
    ({"shopId": 0, "title": "t", "content": "c"}, 404),
]


def test_publish_rejects_bad_bodies_without_writing(client, world, login_as):
    headers = login_as(3)
    for body, status in BAD_BODIES:
        if body is None:
            r = client.post(
                "/blog", data="not json", headers=headers, content_type="application/json"
            )
        else:
            r = client.post("/blog", json=body, headers=headers)
        assert r.status_code == status, (body, r.json)
        assert r.json["success"] is False and r.json["errorMsg"]
    assert blog_count(world) == 0


def test_publish_needs_login(client, world):
    r = client.post("/blog", json={"shopId": 1, "title": "t", "content": "c"})
    assert r.status_code == 401
    assert blog_count(world) == 0


def test_unknown_and_malformed_blog_ids(client, world, login_as):
    me = login_as(1)
    for path in ("/blog/999", "/blog/likes/999"):
        assert client.get(path).status_code == 404
    assert client.put("/blog/like/999", headers=me).status_code == 404
    for path in ("/blog/abc", "/blog/likes/-1"):
        assert client.get(path).status_code == 400
    assert client.put("/blog/like/1x", headers=me).status_code == 400
    assert client.put("/blog/like/1").status_code == 401
    assert client.get("/blog/99999999999999999999").status_code == 404


def test_like_toggle_keeps_zset_and_counter_equal(client, world, redis_client, login_as):
    blog_id = make_blog(world, user_id=2)
    me, other = login_as(5), login_as(6)
    r = client.put(f"/blog/like/{blog_id}", headers=me)
    assert r.status_code == 200 and r.json["data"] == {"isLike": True}
    assert db_liked(world, blog_id) == 1 == zcard(redis_client, blog_id)
    assert client.get(f"/blog/{blog_id}", headers=me).json["data"]["isLike"] is True
    assert client.get(f"/blog/{blog_id}", headers=other).json["data"]["isLike"] is False
    assert client.get(f"/blog/{blog_id}").json["data"]["isLike"] is False  # anonymous
    assert client.get(f"/blog/{blog_id}").json["data"]["liked"] == 1
    r = client.put(f"/blog/like/{blog_id}", headers=me)
    assert r.json["data"] == {"isLike": False}
    assert db_liked(world, blog_id) == 0 == zcard(redis_client, blog_id)
    assert redis_client.exists(liked_key(blog_id)) == 0


def test_likers_are_the_first_five_in_like_order(app, client, world, login_as):
    blog_id = make_blog(world, user_id=2)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    tick = itertools.count()
    app.extensions["hmdp"].clock = lambda: start + timedelta(seconds=next(tick))
    order = [9, 4, 17, 3, 12, 8, 21]  # not id order: like order must win
    for user_id in order:
        assert client.put(f"/blog/like/{blog_id}", headers=login_as(user_id)).status_code == 200
    r = client.get(f"/blog/likes/{blog_id}")
    assert r.status_code == 200
    assert r.json["data"] == [{"id": u, "nickName": f"user_{u}", "icon": ""} for u in order[:5]]
    # Unliking removes a user from the list; the next one moves up.
    client.put(f"/blog/like/{blog_id}", headers=login_as(4))
    assert [u["id"] for u in client.get(f"/blog/likes/{blog_id}").json["data"]] == [
        9,
        17,
        3,
        12,
        8,
    ]
    assert client.get(f"/blog/likes/{make_blog(world, user_id=2)}").json["data"] == []


def test_hot_orders_by_likes_and_pages_by_ten(client, world, redis_client, login_as):
    ids = {likes: make_blog(world, user_id=2, liked=likes) for likes in range(13)}
    redis_client.zadd(liked_key(ids[7]), {"5": 1})  # user 5 likes the 7-like blog
    page1 = client.get("/blog/hot", headers=login_as(5)).json["data"]
    assert [b["liked"] for b in page1] == list(range(12, 2, -1))
    assert [b["isLike"] for b in page1] == [b["id"] == ids[7] for b in page1]
    assert all(b["name"] == "user_2" for b in page1)
    page2 = client.get("/blog/hot?current=2").json["data"]
    assert [b["liked"] for b in page2] == [2, 1, 0]
    assert client.get("/blog/hot?current=3").json["data"] == []
    for bad in ("0", "-1", "x", "1.5"):
        r = client.get(f"/blog/hot?current={bad}")
        assert r.status_code == 400 and r.json["success"] is False


def test_blogs_of_me_and_of_user(client, world, login_as):
    mine = [make_blog(world, user_id=3, title=f"m{i}") for i in range(12)]
    make_blog(world, user_id=4)
    me = login_as(3)
    r = client.get("/blog/of/me", headers=me)
    assert [b["id"] for b in r.json["data"]] == mine[::-1][:10]
    assert [b["id"] for b in client.get("/blog/of/me?current=2", headers=me).json["data"]] == [
        mine[1],
        mine[0],
    ]
    assert client.get("/blog/of/me").status_code == 401
    assert client.get("/blog/of/me?current=0", headers=me).status_code == 400
    r = client.get("/blog/of/user?id=3&current=2")
    assert [b["id"] for b in r.json["data"]] == [mine[1], mine[0]]
    assert client.get("/blog/of/user?id=5").json["data"] == []
    assert client.get("/blog/of/user?id=999").status_code == 404
    assert client.get("/blog/of/user").status_code == 400
    assert client.get("/blog/of/user?id=abc").status_code == 400
    assert client.get("/blog/of/user?id=3&current=0").status_code == 400


def test_concurrent_toggles_keep_counter_equal_to_zcard(app, world, redis_client, login_as):
    """20 users toggle the same blog at once, each 1-4 times: the SQL counter equals ZCARD."""
    blog_id = make_blog(world, user_id=1)
    users = list(range(2, 22))
    toggles = {u: u % 4 + 1 for u in users}
    headers = {u: login_as(u) for u in users}
    barrier = threading.Barrier(len(users))
    statuses: list[int] = []

    def worker(user_id: int) -> None:
        client = app.test_client()
        barrier.wait()
        for _ in range(toggles[user_id]):
            statuses.append(
                client.put(f"/blog/like/{blog_id}", headers=headers[user_id]).status_code
            )

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * sum(toggles.values())
    expected = {u for u in users if toggles[u] % 2 == 1}
    assert {int(m) for m in redis_client.zrange(liked_key(blog_id), 0, -1)} == expected
    assert db_liked(world, blog_id) == zcard(redis_client, blog_id) == len(expected)


def test_same_user_racing_toggles_never_drift(app, world, redis_client, login_as):
    """Even one user's concurrent toggles (double clicks) each move the counter once."""
    blog_id = make_blog(world, user_id=1)
    headers = login_as(7)
    barrier = threading.Barrier(9)

    def worker() -> None:
        client = app.test_client()
        barrier.wait()
        assert client.put(f"/blog/like/{blog_id}", headers=headers).status_code == 200

    threads = [threading.Thread(target=worker) for _ in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 9 toggles: odd, so liked.
    assert zcard(redis_client, blog_id) == 1 == db_liked(world, blog_id)
