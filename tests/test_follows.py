"""Follows: PUT /follow/{id}/{isFollow}, GET /follow/or/not/{id}, GET /follow/common/{id}.

Real Redis and database: the set follows:{userId} must agree with tb_follow
after every call, including concurrent ones and after the set was lost.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select
from support.social import make_users

from cache.follows import MARKER, follows_key
from models.entities import Follow, UserInfo

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


def counters(services, user_id: int) -> tuple[int, int]:
    with services.db.sessions() as session:
        info = session.get(UserInfo, user_id)
        return info.followee, info.fans


def db_follows(services, user_id: int) -> set[int]:
    with services.db.sessions() as session:
        return set(session.scalars(select(Follow.follow_user_id).where(Follow.user_id == user_id)))


def redis_follows(redis_client, user_id: int) -> set[int] | None:
    key = follows_key(user_id)
    if not redis_client.exists(key):
        return None
    members = redis_client.smembers(key)
    assert MARKER in members
    return {int(m) for m in members if m != MARKER}


@pytest.fixture
def users(services):
    return make_users(services, 8)


def test_follow_unfollow_round_trip_keeps_db_redis_and_counters_in_step(
    client, services, redis_client, users, login_as
):
    me = login_as(1)
    r = client.put("/follow/2/true", headers=me)
    assert r.status_code == 200 and r.json["success"] and r.json["data"] is True
    assert db_follows(services, 1) == {2}
    assert counters(services, 1) == (1, 0) and counters(services, 2) == (0, 1)
    # Repeating changes nothing (idempotent), and says so.
    r = client.put("/follow/2/true", headers=me)
    assert r.status_code == 200 and r.json["data"] is False
    assert counters(services, 1) == (1, 0) and counters(services, 2) == (0, 1)
    assert client.get("/follow/or/not/2", headers=me).json["data"] is True
    assert redis_follows(redis_client, 1) == {2}
    assert client.get("/follow/or/not/3", headers=me).json["data"] is False

    r = client.put("/follow/2/false", headers=me)
    assert r.status_code == 200 and r.json["data"] is True
    assert client.put("/follow/2/false", headers=me).json["data"] is False
    assert db_follows(services, 1) == set()
    assert redis_follows(redis_client, 1) == set()
    assert counters(services, 1) == (0, 0) and counters(services, 2) == (0, 0)
    assert client.get("/follow/or/not/2", headers=me).json["data"] is False


def test_bad_inputs(client, users, login_as):
    me = login_as(1)
    assert client.put("/follow/2/true").status_code == 401
    assert client.get("/follow/or/not/2").status_code == 401
    assert client.get("/follow/common/2").status_code == 401
    for path, status in [
        ("/follow/2/yes", 400),
        ("/follow/2/TRUE", 400),
        ("/follow/abc/true", 400),
        ("/follow/-2/true", 400),
        ("/follow/2.5/true", 400),
        ("/follow/1/true", 400),  # yourself
        ("/follow/999/true", 404),
        ("/follow/0/true", 404),
        ("/follow/99999999999999999999/true", 404),
    ]:
        r = client.put(path, headers=me)
        assert r.status_code == status, (path, r.json)
        assert r.json["success"] is False and r.json["errorMsg"]
    for path in ("/follow/or/not/999", "/follow/common/999", "/follow/common/0"):
        r = client.get(path, headers=me)
        assert r.status_code == 404 and r.json["success"] is False
    assert client.get("/follow/or/not/x", headers=me).status_code == 400


def test_missing_set_is_rebuilt_from_the_database(client, services, redis_client, users, login_as):
    me = login_as(1)
    for target in (2, 3):
        assert client.put(f"/follow/{target}/true", headers=me).status_code == 200
    # Rows written behind Redis' back (another process, a restore) and the set lost.
    with services.db.session() as session:
        session.add(Follow(user_id=1, follow_user_id=4))
    redis_client.delete(follows_key(1))
    assert client.get("/follow/or/not/4", headers=me).json["data"] is True
    assert redis_follows(redis_client, 1) == {2, 3, 4}
    # A user who follows nobody gets an (empty, marked) set: no rebuild on every read.
    other = login_as(5)
    assert client.get("/follow/or/not/2", headers=other).json["data"] is False
    assert redis_follows(redis_client, 5) == set()
    # A follow while the set is missing does not create a one-member set.
    redis_client.delete(follows_key(1))
    assert client.put("/follow/6/true", headers=me).status_code == 200
    assert redis_follows(redis_client, 1) is None
    assert client.get("/follow/or/not/3", headers=me).json["data"] is True
    assert redis_follows(redis_client, 1) == {2, 3, 4, 6}


def test_common_follows(client, services, redis_client, users, login_as):
    a, b = login_as(1), login_as(2)
    for target in (3, 4, 5):
        client.put(f"/follow/{target}/true", headers=a)
    for target in (4, 5, 6):
        client.put(f"/follow/{target}/true", headers=b)
    r = client.get("/follow/common/2", headers=a)
    assert r.status_code == 200
    assert r.json["data"] == [
        {"id": 4, "nickName": "user_4", "icon": ""},
        {"id": 5, "nickName": "user_5", "icon": ""},
    ]
    # Both sets lost: rebuilt, same answer.
    redis_client.delete(follows_key(1), follows_key(2))
    assert [u["id"] for u in client.get("/follow/common/2", headers=a).json["data"]] == [4, 5]
    # Nobody in common.
    assert client.get("/follow/common/7", headers=a).json["data"] == []


def test_concurrent_follow_and_unfollow_of_one_pair_end_consistent(app, services, users, login_as):
    """One user hammering follow/unfollow of one target: DB row, Redis set and counters agree."""
    me = login_as(1)
    barrier = threading.Barrier(12)
    statuses: list[int] = []

    def worker(i: int) -> None:
        client = app.test_client()
        barrier.wait()
        for j in range(4):
            flag = "true" if (i + j) % 2 == 0 else "false"
            statuses.append(client.put(f"/follow/2/{flag}", headers=me).status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every call either applied (200) or was told to retry (409), never a 500.
    assert set(statuses) <= {200, 409} and 200 in statuses
    rows = db_follows(services, 1)
    assert redis_follows(services.redis, 1) in (rows, None)
    followee, _ = counters(services, 1)
    _, fans = counters(services, 2)
    assert followee == fans == len(rows)
    assert app.test_client().get("/follow/or/not/2", headers=me).json["data"] is (2 in rows)


def test_many_followers_at_once_count_exactly(app, services, users, login_as):
    target = 8
    barrier = threading.Barrier(7)

    def worker(user_id: int) -> None:
        client = app.test_client()
        headers = login_as(user_id)
        barrier.wait()
        assert client.put(f"/follow/{target}/true", headers=headers).status_code == 200

    threads = [threading.Thread(target=worker, args=(u,)) for u in range(1, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with services.db.sessions() as session:
        rows = session.scalar(
            select(func.count()).select_from(Follow).where(Follow.follow_user_id == target)
        )
    assert rows == 7
    assert counters(services, target) == (0, 7)
