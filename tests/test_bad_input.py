"""Bad input, every class of it, on every body route: a 400/413/415 envelope and no change.

Against the real app on each backend of the run (SQLite, and MariaDB/MySQL where
one answers): each bad body is sent to each route that reads a JSON body, and the
answer must be the envelope with the status that names the class of the problem,
the message must say what it is, and neither the database (every row of every
table) nor Redis (every key and value) may differ afterwards. No answer in this
module may be a 5xx, and no request may reach the unexpected-error handler.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
import redis
from sqlalchemy import select
from support.procs import http, web_server
from support.seckill import voucher_body
from support.senders import MemoryCodeSender
from support.social import make_shop, make_users

from models.entities import Base
from web.request_json import MAX_DEPTH
from web.request_limits import MAX_HEADER_BYTES, MAX_HEADERS_BYTES, MAX_TARGET_BYTES
from web.shop_cache import shop_region_holder
from web.sms import EXTENSION

PHONE = "13712345678"
Body = dict[str, object]


@dataclass(frozen=True)
class BodyRoute:
    """A route that reads a JSON body, a body it accepts, and two of its fields."""

    method: str
    path: str
    who: str | None  # who is logged in: None, "user" or "admin"
    body: Body
    text: str  # a string field
    number: str  # an integer field
    extra: tuple[tuple[str, object, str], ...] = field(default=())  # (field, value, message)


ROUTES = [
    BodyRoute("POST", "/user/code", None, {"phone": PHONE}, "phone", "phone"),
    BodyRoute("POST", "/user/login", None, {"phone": PHONE, "code": "123456"}, "code", "code"),
    BodyRoute(
        "POST",
        "/shop",
        "admin",
        {"name": "noodles", "typeId": 1, "x": 120.1, "y": 30.2},
        "name",
        "typeId",
    ),
    BodyRoute("PUT", "/shop", "admin", {"id": 1, "name": "renamed"}, "name", "typeId"),
    BodyRoute(
        "POST",
        "/voucher",
        "admin",
        {"shopId": 1, "title": "10 off", "payValue": 90, "actualValue": 100},
        "title",
        "payValue",
    ),
    BodyRoute(
        "POST",
        "/voucher/seckill",
        "admin",
        voucher_body(),
        "title",
        "stock",
        extra=(
            ("beginTime", "0001-01-01T00:00:00+05:00", "out of range"),
            ("endTime", "9999-12-31T23:00:00-05:00", "out of range"),
            ("beginTime", "1999-12-31T00:00:00Z", "out of range"),
            ("beginTime", "not a time", "ISO-8601"),
            ("beginTime", 20300101, "ISO-8601"),
        ),
    ),
    BodyRoute(
        "POST", "/blog", "user", {"shopId": 1, "title": "t", "content": "c"}, "title", "shopId"
    ),
]
ROUTE_IDS = [f"{r.method} {r.path}" for r in ROUTES]


def with_literal(body: Body, name: str, literal: str) -> bytes:
    """``body`` as JSON text with ``name``'s value written as ``literal`` (raw JSON)."""
    marker = "\x01marker\x01"
    text = json.dumps({**body, name: marker})
    return text.replace(json.dumps(marker), literal).encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass(frozen=True)
class Bad:
    """One bad request body: its bytes (from the route), Content-Type, status, message."""

    name: str
    data: Callable[[BodyRoute], bytes]
    status: int
    message: str
    content_type: str | None = "application/json"


JSON = "application/json"
BAD = [
    # nesting: the decoder's RecursionError, and depth above the limit
    Bad("nested arrays, 200 KB", lambda r: nested(100_000).encode(), 400, "nested deeper"),
    Bad(
        "nested objects",
        lambda r: ('{"a":' * 20_000 + "1" + "}" * 20_000).encode(),
        400,
        "nested deeper",
    ),
    Bad(
        "nested in a field",
        lambda r: with_literal(r.body, r.text, nested(MAX_DEPTH + 1)),
        400,
        "nested deeper",
    ),
    # not JSON, or not an object
    Bad("malformed", lambda r: b'{"phone": ', 400, "not valid JSON"),
    Bad("trailing garbage", lambda r: json.dumps(r.body).encode() + b" x", 400, "not valid JSON"),
    Bad("not UTF-8", lambda r: b'{"title": "\xff\xfe"}', 400, "UTF-8"),
    Bad(
        "UTF-8 BOM", lambda r: b"\xef\xbb\xbf" + json.dumps(r.body).encode(), 400, "not valid JSON"
    ),
    # numbers
    Bad("NaN", lambda r: with_literal(r.body, r.number, "NaN"), 400, "not a JSON number"),
    Bad("Infinity", lambda r: with_literal(r.body, r.number, "Infinity"), 400, "not a JSON number"),
    Bad(
        "-Infinity", lambda r: with_literal(r.body, r.number, "-Infinity"), 400, "not a JSON number"
    ),
    Bad("1e400", lambda r: with_literal(r.body, r.number, "1e400"), 400, "out of range"),
    Bad("-1e400", lambda r: with_literal(r.body, r.number, "-1e400"), 400, "out of range"),
    Bad("beyond BIGINT", lambda r: with_literal(r.body, r.number, str(2**63)), 400, "out of range"),
    Bad("30 digits", lambda r: with_literal(r.body, r.number, "9" * 30), 400, "out of range"),
    Bad("5000 digits", lambda r: with_literal(r.body, r.number, "9" * 5000), 400, "out of range"),
    # characters the database cannot store
    Bad("lone surrogate", lambda r: with_literal(r.body, r.text, r'"a\ud800"'), 400, "surrogate"),
    Bad("low surrogate", lambda r: with_literal(r.body, r.text, r'"\udfff"'), 400, "surrogate"),
    Bad("NUL", lambda r: with_literal(r.body, r.text, r'"a\u0000b"'), 400, "NUL"),
    Bad("surrogate in a key", lambda r: with_literal(r.body, "\ud800", "1"), 400, "surrogate"),
    Bad(
        "surrogate deep inside",
        lambda r: with_literal(r.body, "other", r'{"x": ["ok", "\ud800"]}'),
        400,
        "other.x[1]",
    ),
    # wrong Content-Type
    Bad("text/plain", lambda r: json.dumps(r.body).encode(), 415, "Content-Type", "text/plain"),
    Bad("no Content-Type", lambda r: json.dumps(r.body).encode(), 415, "Content-Type", None),
    Bad(
        "a form",
        lambda r: b"phone=13712345678&code=123456",
        415,
        "Content-Type",
        "application/x-www-form-urlencoded",
    ),
    # size
    Bad(
        "2 MiB",
        lambda r: with_literal(r.body, r.text, '"' + "x" * (2 << 20) + '"'),
        413,
        "too large",
    ),
    Bad("2 MiB unlabelled", lambda r: b"x" * (2 << 20), 413, "too large", None),
]

# Where the route reads a JSON object and its fields (not /user/code, whose body is optional)
NOT_AN_OBJECT = [
    Bad("a list", lambda r: b"[1, 2]", 400, "JSON object"),
    Bad("a string", lambda r: b'"13712345678"', 400, "JSON object"),
    Bad("null", lambda r: b"null", 400, "JSON object"),
    Bad("empty", lambda r: b"", 400, "JSON object"),
]


def wrong_types(route: BodyRoute) -> list[tuple[str, object]]:
    """Each of the route's two fields given a value of every wrong JSON type."""
    return [
        (route.number, "12"),
        (route.number, True),
        (route.number, [1]),
        (route.number, {"n": 1}),
        (route.number, 1.5),
        (route.text, 12),
        (route.text, False),
        (route.text, ["a"]),
        (route.text, {"a": "b"}),
    ]


# --- the world and what "changed nothing" means --------------------------------------


@pytest.fixture
def sender(app) -> MemoryCodeSender:
    sender = MemoryCodeSender()
    app.extensions[EXTENSION] = sender
    return sender


@pytest.fixture(autouse=True)
def _stop_the_near_cache(app):
    """Stop the shop near-cache listener the shop routes start (closing the app does not):
    its heartbeat would write into the next test's Redis."""
    yield
    region = shop_region_holder(app).region
    if region is not None and region.near is not None:
        region.near.stop()


@pytest.fixture
def world(services, sender):
    make_users(services, 5)
    make_shop(services, 1)
    return services


@pytest.fixture
def heads(login_as) -> dict[str | None, dict[str, str]]:
    return {None: {}, "user": login_as(3), "admin": login_as(1, role="admin")}


@pytest.fixture
def state(settings, services) -> Callable[[], tuple]:
    """Every row of every table and every Redis key with its value (DUMP), for comparing."""
    raw = redis.Redis.from_url(settings.redis_url)

    def snapshot() -> tuple:
        keys = sorted(raw.keys("*"))
        in_redis = {key: raw.dump(key) for key in keys}
        with services.db.sessions() as session:
            rows = {
                table.name: sorted(map(repr, session.execute(select(table)).all()))
                for table in Base.metadata.sorted_tables
            }
        return in_redis, rows

    yield snapshot
    raw.close()


@pytest.fixture
def no_unexpected_errors(caplog):
    """No request of the test reached the unexpected-error handler (web/errors.py)."""
    with caplog.at_level(logging.ERROR, logger="web.errors"):
        yield
    assert not [r for r in caplog.records if r.name == "web.errors"]


def send(client, route: BodyRoute, headers: dict, data: bytes, content_type: str | None):
    all_headers = dict(headers)
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return client.open(route.path, method=route.method, data=data, headers=all_headers)


def refused(response, status: int, message: str) -> str:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"success", "errorMsg", "data", "total"}
    assert body["success"] is False and body["data"] is None
    assert message in body["errorMsg"], body["errorMsg"]
    assert b"Traceback" not in response.data
    return body["errorMsg"]


# --- the tests ----------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_the_good_body_is_accepted(client, world, heads, sender, route):
    """The control: each route takes its body as given, so each refusal below is the input's."""
    if route.path == "/user/login":
        client.post(f"/user/code?phone={PHONE}")
        route = replace(route, body={"phone": PHONE, "code": sender.last_code(PHONE)})
    response = send(client, route, heads[route.who], json.dumps(route.body).encode(), JSON)
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_every_bad_body_is_refused_and_changes_nothing(
    client, world, heads, state, no_unexpected_errors, route
):
    before = state()
    cases = BAD + ([] if route.path == "/user/code" else NOT_AN_OBJECT)
    for bad in cases:
        response = send(client, route, heads[route.who], bad.data(route), bad.content_type)
        refused(response, bad.status, bad.message)
        assert state() == before, bad.name


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_wrong_types_and_values_are_400_naming_the_field(
    client, world, heads, state, no_unexpected_errors, route
):
    before = state()
    for name, value, message in [
        *((n, v, n) for n, v in wrong_types(route)),
        *route.extra,
    ]:
        data = json.dumps({**route.body, name: value}).encode()
        error = refused(send(client, route, heads[route.who], data, JSON), 400, message)
        assert state() == before, (name, value, error)


def test_the_rate_limit_hook_meets_bad_bodies_first(app_with, world, state, no_unexpected_errors):
    """The login routes' limiter reads the body's phone before any validation: a 400, not a 500.

    Only the rate-limit counters (per address: the body names no phone) may change.
    """
    client = app_with(rate_limit_enabled=True).test_client()
    before_redis, before_rows = state()
    for path in ("/user/code", "/user/login"):
        for data, status in [
            (nested(100_000).encode(), 400),
            (with_literal({"phone": PHONE}, "phone", r'"\ud800"'), 400),
            (b'{"phone": NaN}', 400),
            (b'{"phone": "' + b"1" * (2 << 20) + b'"}', 413),  # before any charge
        ]:
            response = client.post(path, data=data, content_type=JSON)
            refused(response, status, "")
    after_redis, after_rows = state()
    assert after_rows == before_rows
    changed = {
        k for k in set(after_redis) | set(before_redis) if after_redis.get(k) != before_redis.get(k)
    }
    assert changed and all(key.startswith(b"ratelimit:") for key in changed), changed
    assert not any(b":phone:" in key for key in changed)


def test_storable_text_in_query_parameters(client, world, no_unexpected_errors):
    refused(client.get("/shop/of/name?name=a%00b"), 400, "NUL")
    assert client.get("/shop/of/name?name=%ED%A0%80").status_code == 200  # not UTF-8: replaced


def test_routes_without_a_body_ignore_one(client, world, heads, no_unexpected_errors):
    """A bad body sent where none is read (the fast paths included) is no 500 either."""
    data = nested(100_000).encode()
    for method, path, who in [
        ("GET", "/shop/999", None),  # no such shop: no visit counted (UV flushes later)
        ("POST", "/voucher-order/seckill/1", "user"),
        ("POST", "/user/sign", "user"),
        ("GET", "/blog/hot", None),
        ("PUT", "/follow/2/true", "user"),
    ]:
        response = client.open(
            path, method=method, data=data, headers=heads[who], content_type=JSON
        )
        assert response.status_code < 500, (path, response.data[:200])
        assert response.mimetype == "application/json"


def test_over_long_numbers_in_query_parameters(client, world, no_unexpected_errors):
    refused(client.get("/blog/hot?current=" + "9" * 5000), 400, "'current'")
    refused(client.get("/blog/of/user?id=" + "9" * 25), 400, "'id'")


def test_over_long_urls_and_headers_are_414_and_431(
    client, world, heads, state, no_unexpected_errors
):
    before = state()
    long_query = "/shop/of/name?name=" + "a" * MAX_TARGET_BYTES
    refused(client.get(long_query), 414, "URL too long")
    refused(client.get("/blog/" + "1" * MAX_TARGET_BYTES), 414, "URL too long")
    big = "a" * MAX_HEADER_BYTES
    refused(client.get("/blog/hot", headers={"X-Big": big}), 431, "X-Big")
    refused(client.get("/user/me", headers={"authorization": big}), 431, "Authorization")
    many = {f"X-H{i}": "a" * (MAX_HEADER_BYTES // 2) for i in range(MAX_HEADERS_BYTES // 4096 + 1)}
    refused(client.get("/blog/hot", headers=many), 431, "headers too large")
    publish = {**heads["user"], "X-Big": big}
    body = {"shopId": 1, "title": "t", "content": "c"}
    refused(client.post("/blog", json=body, headers=publish), 431, "X-Big")
    assert state() == before
    # Within the limits all is as usual; the fast path reads only bounded headers.
    assert client.get("/blog/hot", headers={"X-Big": "a" * 4000}).status_code == 200
    assert client.get("/shop/999", headers={"X-Big": big}).status_code < 500


@pytest.mark.process
def test_granian_hands_long_urls_and_headers_to_the_app(settings, tmp_path):
    """Granian takes URLs and headers far longer than ours: the client gets our envelopes.

    The rate limits are on, as deployed: the login route's hook reads the body first."""
    deployed = settings.with_(rate_limit_enabled=True)
    with web_server(deployed, tmp_path / "web.log") as (base, _):
        status, headers, data = http(f"{base}/shop/of/name?name={'a' * 20_000}")
        assert status == 414 and json.loads(data)["errorMsg"].startswith("URL too long")
        status, headers, data = http(f"{base}/blog/hot", headers={"X-Big": "a" * 20_000})
        assert status == 431 and "X-Big" in json.loads(data)["errorMsg"]
        # and a 200 KB nested body, decoded in one of granian's threads
        request = urllib.request.Request(
            f"{base}/user/login",
            data=nested(100_000).encode(),
            headers={"Content-Type": JSON},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused_there:
            urllib.request.urlopen(request, timeout=10)
        assert refused_there.value.code == 400
        assert "nested deeper" in json.loads(refused_there.value.read())["errorMsg"]
