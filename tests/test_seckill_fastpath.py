"""The WSGI fast path of the seckill order (web/order_fastpath.py): same answers, same side effects.

Each test counts the requests that reached Flask (a wrapper around the WSGI
callable the fast path falls back to), so "answered below Flask" is observed,
not assumed; answers are compared byte for byte with the Flask route's (an app
built with the fast path off, on the same Redis and database).
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from support.seckill import add_shop, create_seckill

from cache.login import TOKEN_KEY
from cache.ratelimit import TokenBucket
from cache.seckill import NO_SESSION, ODD_SESSION, OK, SeckillGate, load_voucher
from web.order_fastpath import SeckillFastPath
from web.orders import ORDER_TASK, flush_dispatch

ROUTE = "/voucher-order/seckill/<id:voucher_id>"


class FlaskCalls:
    """Counts the requests the seckill fast path handed on (to Flask, maybe via the shop's)."""

    def __init__(self, app):  # type: ignore[no-untyped-def]
        layer = app.wsgi_app
        while not isinstance(layer, SeckillFastPath):
            layer = layer.flask_wsgi
        self.fast = layer
        inner = layer.flask_wsgi
        self.count = 0

        def counting(environ, start_response):  # type: ignore[no-untyped-def]
            self.count += 1
            return inner(environ, start_response)

        layer.flask_wsgi = counting


@pytest.fixture
def calls(app):  # type: ignore[no-untyped-def]
    return FlaskCalls(app)


@pytest.fixture
def admin(login_as, services):  # type: ignore[no-untyped-def]
    add_shop(services)
    return login_as(1, role="admin")


@pytest.fixture
def flask_only(app_with):  # type: ignore[no-untyped-def]
    """The same system with the fast path off: the route's own answers, to compare."""
    return app_with(seckill_fast_path=False)


def _outcomes(outcome: str) -> float:
    return REGISTRY.get_sample_value("hmdp_seckill_requests_total", {"outcome": outcome}) or 0.0


def _route_count(app, status: int) -> float:  # type: ignore[no-untyped-def]
    registry = app.extensions["hmdp_metrics"].registry
    labels = {"method": "POST", "url_rule": ROUTE, "status": str(status)}
    return registry.get_sample_value("flask_http_request_duration_seconds_count", labels) or 0.0


def test_an_order_is_answered_below_flask_like_the_route(
    app, client, calls, admin, login_as, services, settings, flask_only, access_lines
):
    voucher_id = create_seckill(client, admin, stock=5)
    via_flask = flask_only.test_client().post(
        f"/voucher-order/seckill/{voucher_id}", headers=login_as(4)
    )
    assert flask_only.wsgi_app.__class__ is not SeckillFastPath
    oks, http_ok = _outcomes(OK), _route_count(app, 200)
    before = calls.count
    fast = client.post(
        f"/voucher-order/seckill/{voucher_id}",
        headers={**login_as(5), "X-Request-ID": "order-rid-1"},
    )
    assert calls.count == before  # not through Flask
    assert (fast.status_code, via_flask.status_code) == (200, 200)
    order_id = fast.json["data"]
    assert isinstance(order_id, str) and int(order_id) > 2**53
    flask_body = via_flask.get_data().replace(via_flask.json["data"].encode(), order_id.encode())
    assert fast.get_data() == flask_body
    assert fast.headers["Content-Type"] == via_flask.headers["Content-Type"]
    assert fast.headers["Content-Length"] == str(len(fast.get_data()))
    assert fast.headers["X-Request-ID"] == "order-rid-1"
    # the reservation, the counters, the access line
    entries = [fields for _, fields in services.redis.xrange(settings.order_stream)]
    assert {"orderId": order_id, "userId": "5", "voucherId": str(voucher_id)} in entries
    assert _outcomes(OK) == oks + 1
    assert _route_count(app, 200) == http_ok + 1
    line = access_lines()[-1]
    assert (line["route"], line["status"], line["request_id"], line["method"]) == (
        ROUTE,
        200,
        "order-rid-1",
        "POST",
    )
    # the order task was dispatched, carrying the request id
    assert flush_dispatch(app)
    messages = services.redis.lrange("orders", 0, -1)
    mine = [m for m in messages if order_id in m]
    assert len(mine) == 1 and ORDER_TASK in mine[0] and "order-rid-1" in mine[0]


def test_refusals_and_a_missing_voucher_below_flask(
    app, client, calls, admin, login_as, services, flask_only
):
    voucher_id = create_seckill(client, admin, stock=1)
    path = f"/voucher-order/seckill/{voucher_id}"
    before = calls.count
    first = client.post(path, headers=login_as(5))
    assert first.status_code == 200
    again = client.post(path, headers=login_as(5))
    sold = client.post(path, headers=login_as(6))
    missing = client.post("/voucher-order/seckill/424242", headers=login_as(6))
    assert calls.count == before
    assert (again.status_code, again.json["errorMsg"]) == (409, "already ordered")
    assert again.json["data"] == first.json["data"]  # the retry learns its order id
    assert (sold.status_code, sold.json["errorMsg"]) == (409, "sold out")
    assert (missing.status_code, missing.json["errorMsg"]) == (404, "voucher not found")
    flask_client = flask_only.test_client()
    assert again.get_data() == flask_client.post(path, headers=login_as(5)).get_data()
    assert sold.get_data() == flask_client.post(path, headers=login_as(7)).get_data()
    assert (
        missing.get_data()
        == flask_client.post("/voucher-order/seckill/424242", headers=login_as(6)).get_data()
    )
    assert _route_count(app, 409) == 2 and _route_count(app, 404) == 1


def test_a_voucher_redis_lost_is_loaded_from_the_database_below_flask(
    client, calls, admin, login_as, services
):
    voucher_id = create_seckill(client, admin, stock=3)
    services.redis.delete(f"seckill:stock:{voucher_id}", f"seckill:window:{voucher_id}")
    before = calls.count
    response = client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(5))
    assert calls.count == before
    assert response.status_code == 200
    assert services.redis.get(f"seckill:stock:{voucher_id}") == "2"


def test_no_session_is_a_401_below_flask_and_the_session_ttl_slides(
    client, calls, admin, login_as, services, settings, flask_only
):
    voucher_id = create_seckill(client, admin)
    path = f"/voucher-order/seckill/{voucher_id}"
    before = calls.count
    answers = [
        client.post(path),
        client.post(path, headers={"authorization": "no-such-token"}),
        client.post(path, headers={"authorization": "x" * 129}),
        client.post(path, headers={"authorization": "   "}),
    ]
    assert calls.count == before
    flask_401 = flask_only.test_client().post(path).get_data()
    for answer in answers:
        assert answer.status_code == 401 and answer.get_data() == flask_401
    assert not services.redis.exists(TOKEN_KEY.format(token="no-such-token"))
    headers = login_as(5)
    key = TOKEN_KEY.format(token=headers["authorization"])
    services.redis.expire(key, 10)
    assert client.post(path, headers=headers).status_code == 200
    assert services.redis.ttl(key) > 10  # pushed back to the session TTL
    assert services.redis.get(f"seckill:stock:{voucher_id}") == "99"


@pytest.mark.parametrize("user_id", ["abc", "0", "-3", "007", ""])
def test_a_session_id_the_script_does_not_judge_goes_to_flask(
    client, calls, admin, services, user_id
):
    voucher_id = create_seckill(client, admin)
    services.redis.hset(TOKEN_KEY.format(token="odd"), mapping={"id": user_id, "role": "user"})
    services.redis.expire(TOKEN_KEY.format(token="odd"), 600)
    before = calls.count
    response = client.post(f"/voucher-order/seckill/{voucher_id}", headers={"authorization": "odd"})
    assert calls.count == before + 1
    # whatever the auth code decides ("007" is user 7 for it; "abc" no session)
    expected = 200 if user_id in ("0", "007", "-3") else 401
    assert response.status_code == expected


def test_unusual_requests_go_to_flask(client, calls, admin, login_as):
    voucher_id = create_seckill(client, admin)
    user = login_as(5)
    for method, path, status in [
        ("POST", "/voucher-order/seckill/0", 404),
        ("POST", f"/voucher-order/seckill/{2**63}", 404),
        ("POST", f"/voucher-order/seckill/{voucher_id}/", 404),
        ("GET", f"/voucher-order/seckill/{voucher_id}", 405),
    ]:
        before = calls.count
        assert client.open(path, method=method, headers=user).status_code == status
        assert calls.count == before + 1, path


def _limited(app_with, login_as, services, rule: str):  # type: ignore[no-untyped-def]
    """An app with the seckill limit ``rule``, its Flask-call counter, a voucher's path."""
    limited_app = app_with(rate_limit_enabled=True, rate_limit_seckill=rule)
    client = limited_app.test_client()
    add_shop(services)
    voucher_id = create_seckill(client, login_as(1, role="admin"), stock=5)
    return client, FlaskCalls(limited_app), voucher_id


def _rejections() -> float:
    value = REGISTRY.get_sample_value("hmdp_rate_limit_rejections_total", {"rule": "seckill"})
    return value or 0.0


def test_the_per_user_limit_applies_below_flask(app_with, login_as, services):
    client, calls, voucher_id = _limited(app_with, login_as, services, "2,0.001/s")
    path = f"/voucher-order/seckill/{voucher_id}"
    user = login_as(5)
    before = calls.count
    answers = [client.post(path, headers=user) for _ in range(3)]
    assert calls.count == before
    assert [a.status_code for a in answers] == [200, 409, 429]
    assert all("X-RateLimit-Remaining" in a.headers for a in answers)
    refused = answers[-1]
    assert (refused.json["success"], refused.json["errorMsg"]) == (
        False,
        "too many requests; slow down",
    )
    assert int(refused.headers["Retry-After"]) >= 1
    assert services.redis.exists("ratelimit:seckill:user:5")  # the Flask hook's bucket
    assert client.post(path, headers=login_as(6)).status_code == 200  # per user
    assert client.post(path).status_code == 401


def test_a_refused_order_reserves_nothing_and_is_counted(app_with, login_as, services):
    """The bucket and the gate in one script: a refusal must not reach the gate."""
    client, calls, voucher_id = _limited(app_with, login_as, services, "1,0.001/s")
    path = f"/voucher-order/seckill/{voucher_id}"
    rejected = _rejections()
    before = calls.count
    first, second = (client.post(path, headers=login_as(7)) for _ in range(2))
    assert calls.count == before
    assert (first.status_code, second.status_code) == (200, 429)
    assert first.headers["X-RateLimit-Remaining"] == "0"
    assert services.redis.get(f"seckill:stock:{voucher_id}") == "4"  # one reservation only
    assert services.redis.smembers(f"seckill:order:{voucher_id}") == {"7"}
    assert _rejections() == rejected + 1


def test_a_sliding_window_limit_is_charged_apart_below_flask(app_with, login_as, services):
    client, calls, voucher_id = _limited(app_with, login_as, services, "2/min")
    path = f"/voucher-order/seckill/{voucher_id}"
    rejected = _rejections()
    before = calls.count
    answers = [client.post(path, headers=login_as(8)).status_code for _ in range(3)]
    assert calls.count == before
    assert answers == [200, 409, 429]
    assert services.redis.get(f"seckill:stock:{voucher_id}") == "4"
    assert _rejections() == rejected + 1  # counted once, by the limiter itself


def test_the_fast_path_can_be_switched_off(flask_only):
    layer = flask_only.wsgi_app
    while hasattr(layer, "flask_wsgi"):
        assert not isinstance(layer, SeckillFastPath)
        layer = layer.flask_wsgi


# --- the gate with the session read in the script -------------------------------------------


@pytest.fixture
def gate(services):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    load_voucher(services.redis, 1, 3, now - timedelta(hours=1), now + timedelta(hours=1))
    return SeckillGate(services.redis, services.settings)


def test_reserve_for_session_reads_the_user_from_the_session(gate, login_as, services, settings):
    token = login_as(42)["authorization"]
    key = TOKEN_KEY.format(token=token)
    services.redis.expire(key, 5)
    result = gate.reserve_for_session(1, token, 900)
    assert result.outcome == OK and result.user_id == 42 and result.order_id
    assert 5 < services.redis.ttl(key) <= 900
    assert services.redis.sismember("seckill:order:1", "42")
    fields = services.redis.xrange(settings.order_stream)[-1][1]
    assert fields["userId"] == "42"
    again = gate.reserve_for_session(1, token, 900)
    assert (again.outcome, again.user_id) == ("duplicate", 42)


def test_reserve_for_session_without_a_session_reserves_nothing(gate, services, settings):
    assert gate.reserve_for_session(1, "nobody", 900).outcome == NO_SESSION
    services.redis.hset(TOKEN_KEY.format(token="noid"), mapping={"nickName": "x"})
    assert gate.reserve_for_session(1, "noid", 900).outcome == NO_SESSION
    services.redis.hset(TOKEN_KEY.format(token="odd"), mapping={"id": "1.5"})
    assert gate.reserve_for_session(1, "odd", 900).outcome == ODD_SESSION
    assert not services.redis.exists(TOKEN_KEY.format(token="nobody"))
    assert services.redis.get("seckill:stock:1") == "3"
    assert services.redis.xlen(settings.order_stream) == 0


def test_reserve_charged_reserves_only_what_the_bucket_admits(gate, services, settings):
    bucket = TokenBucket(capacity=2, rate=0.001)
    decisions = [gate.reserve_charged(1, user, "ratelimit:t:user:1", bucket) for user in (5, 6, 7)]
    assert [d.allowed for d, _ in decisions] == [True, True, False]
    assert [d.remaining for d, _ in decisions] == [1, 0, 0]
    assert decisions[2][1] is None and decisions[2][0].retry_after > 0
    assert [r.outcome for _, r in decisions[:2]] == [OK, OK]  # type: ignore[union-attr]
    assert services.redis.smembers("seckill:order:1") == {"5", "6"}
    assert services.redis.get("seckill:stock:1") == "1"
    assert services.redis.xlen(settings.order_stream) == 2


def test_dispatched_tasks_are_whole_celery_messages_in_the_orders_queue(
    app, client, admin, login_as, services
):
    """The publisher declares the queue once per connection and writes the args' repr itself."""
    import base64
    import json

    voucher_id = create_seckill(client, admin, stock=10)
    ids = [
        client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(u)).json["data"]
        for u in range(10, 15)
    ]
    assert flush_dispatch(app)
    messages = [json.loads(m) for m in services.redis.lrange("orders", 0, -1)]
    assert len(messages) == 5
    seen = set()
    for message in messages:
        assert message["headers"]["task"] == ORDER_TASK
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert kwargs == {} and message["headers"]["argsrepr"] == repr(args)
        assert message["properties"]["delivery_info"]["routing_key"] == "orders"
        seen.add(args[0]["orderId"])
    assert seen == set(ids)
