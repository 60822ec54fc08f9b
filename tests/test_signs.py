"""Daily sign-in: SETBIT per day, streak with BITFIELD, across month (and year) boundaries.

Semantics (hmdp's): the streak ends TODAY; not signed today -> 0, even if
yesterday was signed. "Today" is injected, so month edges need no waiting.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from cache import signs

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


def sign_days(redis_client, user_id: int, *days: date) -> None:
    for day in days:
        assert signs.sign(redis_client, user_id, day) is True


def test_bit_layout_is_hmdps(redis_client):
    signs.sign(redis_client, 7, date(2024, 2, 1))
    signs.sign(redis_client, 7, date(2024, 2, 10))
    key = "sign:7:202402"
    assert signs.sign_key(7, date(2024, 2, 29)) == key
    assert redis_client.getbit(key, 0) == 1 and redis_client.getbit(key, 9) == 1
    assert redis_client.bitcount(key) == 2
    # Signing twice the same day is not a second sign-in.
    assert signs.sign(redis_client, 7, date(2024, 2, 10)) is False


def test_streak_crosses_the_month_boundary(redis_client):
    sign_days(
        redis_client, 1, date(2024, 1, 30), date(2024, 1, 31), date(2024, 2, 1), date(2024, 2, 2)
    )
    assert signs.streak(redis_client, 1, date(2024, 2, 2)) == 4
    assert signs.streak(redis_client, 1, date(2024, 2, 1)) == 3
    assert signs.streak(redis_client, 1, date(2024, 1, 31)) == 2
    # Not signed today: 0 (hmdp), although yesterday was.
    assert signs.streak(redis_client, 1, date(2024, 2, 3)) == 0


def test_a_gap_breaks_the_streak(redis_client):
    sign_days(redis_client, 2, date(2024, 1, 29), date(2024, 1, 31), date(2024, 2, 1))
    assert signs.streak(redis_client, 2, date(2024, 2, 1)) == 2  # Jan 30 missing
    # A gap on the last day of the previous month stops at the month edge.
    sign_days(redis_client, 3, date(2024, 1, 30), date(2024, 2, 1), date(2024, 2, 2))
    assert signs.streak(redis_client, 3, date(2024, 2, 2)) == 2


def test_streak_runs_through_whole_months_and_the_year_end(redis_client):
    start, end = date(2023, 11, 20), date(2024, 2, 3)
    day = start
    while day <= end:
        signs.sign(redis_client, 4, day)
        day += timedelta(days=1)
    assert signs.streak(redis_client, 4, end) == (end - start).days + 1  # 76 days
    # Leap February: the 29th is day index 28.
    sign_days(redis_client, 5, date(2024, 2, 28), date(2024, 2, 29), date(2024, 3, 1))
    assert signs.streak(redis_client, 5, date(2024, 3, 1)) == 3
    # A full month that is the first month ever signed ends the walk.
    for d in range(1, 32):
        signs.sign(redis_client, 6, date(2024, 1, d))
    assert signs.streak(redis_client, 6, date(2024, 1, 31)) == 31


def test_routes_use_the_app_clock(app, client, login_as):
    moment = {"t": datetime(2024, 1, 31, 23, 0, tzinfo=UTC)}
    app.extensions["hmdp"].clock = lambda: moment["t"]
    me = login_as(9)
    assert client.post("/user/sign").status_code == 401
    assert client.get("/user/sign/count").status_code == 401
    r = client.post("/user/sign", headers=me)
    assert r.status_code == 200 and r.json["data"] is True
    assert client.post("/user/sign", headers=me).json["data"] is False  # same day
    moment["t"] += timedelta(hours=2)  # Feb 1, 01:00
    assert client.get("/user/sign/count", headers=me).json["data"] == 0  # not yet today
    client.post("/user/sign", headers=me)
    r = client.get("/user/sign/count", headers=me)
    assert r.status_code == 200 and r.json["success"] and r.json["data"] == 2


def test_the_day_follows_the_configured_time_zone(settings, login_as):
    """At 2024-01-31 20:00 UTC it is already Feb 1 in Shanghai (UTC+8)."""
    from services import system_clock
    from web import create_app

    app = create_app(settings.with_(timezone="Asia/Shanghai"))
    try:
        assert app.extensions["hmdp"].clock().utcoffset() == timedelta(hours=8)
        fixed = datetime(2024, 1, 31, 20, 0, tzinfo=UTC)
        app.extensions["hmdp"].clock = system_clock("Asia/Shanghai", lambda: fixed)
        client = app.test_client()
        client.post("/user/sign", headers=login_as(11))
        redis = app.extensions["hmdp"].redis
        assert redis.getbit("sign:11:202402", 0) == 1
        assert redis.exists("sign:11:202401") == 0
        app.extensions["hmdp"].clock = system_clock("UTC", lambda: fixed)
        client.post("/user/sign", headers=login_as(12))
        assert redis.getbit("sign:12:202401", 30) == 1
    finally:
        app.extensions["hmdp"].close()
