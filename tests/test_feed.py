"""The follow feed: push on publish, scroll pagination by score, exact under ties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete
from support.social import make_shop, make_users

from cache import feed
from models.entities import Blog
from web import create_app

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)

# 25 blogs in groups sharing one score, including groups larger than a page.
GROUPS = [4, 1, 6, 3, 1, 5, 2, 3]
assert sum(GROUPS) == 25


def tied_scores() -> list[int]:
    scores = []
    for i, size in enumerate(GROUPS):
        scores += [1_700_000_000_000 + 1000 * (len(GROUPS) - i)] * size
    return scores


def scroll_all(next_page, first_last_id=None) -> list[int]:
    """Follow the cursor from the first page until an empty one; every id returned."""
    seen: list[int] = []
    last_id, offset = first_last_id, 0
    for _ in range(100):
        ids, last_id, offset = next_page(last_id, offset)
        if not ids:
            return seen
        seen += ids
    raise AssertionError("scrolling never ended")


@pytest.mark.parametrize("page_size", [1, 2, 3, 4, 5, 7])
def test_scroll_with_tied_scores_never_skips_or_repeats(redis_client, page_size):
    scores = tied_scores()
    for blog_id, score in enumerate(scores, start=1):
        feed.push(redis_client, [42], blog_id, score, inbox_size=1000)
    expected = [int(m) for m in redis_client.zrevrangebyscore(feed.feed_key(42), "+inf", 0)]
    assert sorted(expected) == list(range(1, 26))

    def next_page(last_id, offset):
        page = feed.scroll(redis_client, 42, last_id, offset, page_size)
        return page.ids, page.min_time, page.offset

    assert scroll_all(next_page) == expected
    # A client starting from "now" (a score above all) gets the same sequence.
    assert scroll_all(next_page, first_last_id=max(scores) + 5000) == expected


def test_cursor_rule_counts_ties_and_carries_the_offset():
    entries = [("9", 30.0), ("8", 20.0), ("7", 20.0)]
    assert feed.next_cursor(entries, None, 0) == (20, 2)
    # Whole page at the lastId we came from: the skipped ones are added.
    assert feed.next_cursor([("5", 20.0), ("4", 20.0)], 20, 2) == (20, 4)
    # Page ends on a new score: the incoming offset no longer matters.
    assert feed.next_cursor([("3", 20.0), ("2", 10.0)], 20, 4) == (10, 1)
    assert feed.next_cursor([], 10, 1) == (10, 1)


@pytest.fixture
def authors(services):
    make_users(services, 6)
    make_shop(services, 1)
    return services


def follow(client, headers, target):
    assert client.put(f"/follow/{target}/true", headers=headers).status_code == 200


@pytest.mark.parametrize("page_size", [3, 4])
def test_feed_route_scrolls_published_blogs_with_tied_times(settings, authors, login_as, page_size):
    """Publish 25 blogs (two authors, groups sharing a millisecond); the follower scrolls all."""
    app = create_app(settings.with_(feed_page_size=page_size))
    try:
        client = app.test_client()
        moment = {"t": datetime(2024, 3, 1, tzinfo=UTC)}
        app.extensions["hmdp"].clock = lambda: moment["t"]
        reader = login_as(3)
        follow(client, reader, 1)
        follow(client, reader, 2)
        published = []  # (score, blog id)
        for group, size in enumerate(GROUPS):
            moment["t"] = datetime(2024, 3, 1, tzinfo=UTC) + timedelta(milliseconds=group)
            for k in range(size):
                author = login_as(1 + (k % 2))
                r = client.post(
                    "/blog",
                    json={"shopId": 1, "title": f"g{group}", "content": "c"},
                    headers=author,
                )
                published.append((group, r.json["data"]))
        # Newest first; within one millisecond Redis orders by member (descending).
        expected = [b for _, b in sorted(published, key=lambda p: (p[0], str(p[1])), reverse=True)]

        def next_page(last_id, offset):
            query = f"offset={offset}" + ("" if last_id is None else f"&lastId={last_id}")
            r = client.get(f"/blog/of/follow?{query}", headers=reader)
            assert r.status_code == 200, r.json
            data = r.json["data"]
            assert len(data["list"]) <= page_size
            return [b["id"] for b in data["list"]], data["minTime"], data["offset"]

        assert scroll_all(next_page) == expected
        first = client.get("/blog/of/follow", headers=reader).json["data"]["list"][0]
        assert first["name"] in ("user_1", "user_2") and first["isLike"] is False
    finally:
        app.extensions["hmdp"].close()


def test_publish_reaches_followers_only(client, authors, redis_client, login_as):
    follow(client, login_as(3), 1)
    follow(client, login_as(4), 1)
    follow(client, login_as(4), 2)
    blog_id = client.post(
        "/blog", json={"shopId": 1, "title": "t", "content": "c"}, headers=login_as(1)
    ).json["data"]
    for user_id, has in [(3, True), (4, True), (5, False), (1, False)]:
        ids = [
            b["id"]
            for b in client.get("/blog/of/follow", headers=login_as(user_id)).json["data"]["list"]
        ]
        assert (blog_id in ids) is has, user_id
    # Unfollowing stops new pushes (what is already in the inbox stays, as in hmdp).
    assert client.put("/follow/1/false", headers=login_as(3)).status_code == 200
    later = client.post(
        "/blog", json={"shopId": 1, "title": "t2", "content": "c"}, headers=login_as(1)
    ).json["data"]
    ids = [b["id"] for b in client.get("/blog/of/follow", headers=login_as(3)).json["data"]["list"]]
    assert ids == [blog_id] and later not in ids


def test_inbox_is_trimmed_to_its_bound(settings, authors, login_as):
    app = create_app(settings.with_(feed_inbox_size=5))
    try:
        client = app.test_client()
        follow(client, login_as(3), 1)
        tick = {"ms": 0}

        def clock():
            tick["ms"] += 1
            return datetime(2024, 3, 1, tzinfo=UTC) + timedelta(milliseconds=tick["ms"])

        app.extensions["hmdp"].clock = clock
        ids = [
            client.post(
                "/blog", json={"shopId": 1, "title": f"{i}", "content": "c"}, headers=login_as(1)
            ).json["data"]
            for i in range(8)
        ]
        redis = app.extensions["hmdp"].redis
        assert redis.zcard(feed.feed_key(3)) == 5
        got = client.get("/blog/of/follow", headers=login_as(3)).json["data"]["list"]
        assert [b["id"] for b in got] == ids[::-1][:5]
    finally:
        app.extensions["hmdp"].close()


def test_deleted_blogs_are_skipped_but_the_cursor_advances(client, authors, redis_client, login_as):
    follow(client, login_as(3), 1)
    ids = [
        client.post(
            "/blog", json={"shopId": 1, "title": "t", "content": "c"}, headers=login_as(1)
        ).json["data"]
        for _ in range(3)
    ]
    with authors.db.session() as session:
        session.execute(delete(Blog).where(Blog.id == ids[1]))
    data = client.get("/blog/of/follow", headers=login_as(3)).json["data"]
    assert [b["id"] for b in data["list"]] == [ids[2], ids[0]]
    assert data["minTime"] == int(redis_client.zscore(feed.feed_key(3), ids[0]))


def test_feed_bad_inputs(client, authors, login_as):
    me = login_as(3)
    assert client.get("/blog/of/follow").status_code == 401
    for query in ("lastId=-1", "lastId=abc", "offset=-1", "offset=x", "offset=1001", "lastId=1e3"):
        r = client.get(f"/blog/of/follow?{query}", headers=me)
        assert r.status_code == 400, query
        assert r.json["success"] is False
    r = client.get("/blog/of/follow?lastId=0&offset=0", headers=me)
    assert r.status_code == 200
    assert r.json["data"] == {"list": [], "minTime": 0, "offset": 0}
