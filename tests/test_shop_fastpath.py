"""The WSGI fast path of GET /shop/{id} (web/fastpath.py): same answer, same side effects.

Each test counts the requests that reached Flask (a wrapper around the Flask
WSGI callable the middleware falls back to), so "served by the fast path" is
observed, not assumed.
"""

from __future__ import annotations

import time

from cache.region import encode_logical
from web.fastpath import ShopFastPath


class FlaskCalls:
    """Counts the requests the fast path handed to Flask."""

    def __init__(self, app):  # type: ignore[no-untyped-def]
        self.fast: ShopFastPath = app.wsgi_app
        assert isinstance(self.fast, ShopFastPath)
        inner = self.fast.flask_wsgi
        self.count = 0

        def counting(environ, start_response):  # type: ignore[no-untyped-def]
            self.count += 1
            return inner(environ, start_response)

        self.fast.flask_wsgi = counting


def warm_until_fast(client, calls: FlaskCalls, path: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """GET until one answer did not reach Flask (the near-cache listener starts lazily)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        before = calls.count
        response = client.get(path, **kwargs)
        assert response.status_code == 200
        if calls.count == before:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never served by the fast path")


def http_total(app, status: int) -> float:  # type: ignore[no-untyped-def]
    registry = app.extensions["hmdp_metrics"].registry
    return (
        registry.get_sample_value(
            "flask_http_request_total", {"method": "GET", "status": str(status)}
        )
        or 0.0
    )


def shop_duration_count(app, status: int) -> float:  # type: ignore[no-untyped-def]
    registry = app.extensions["hmdp_metrics"].registry
    labels = {"method": "GET", "url_rule": "/shop/<shop_id>", "status": str(status)}
    return registry.get_sample_value("flask_http_request_duration_seconds_count", labels) or 0.0


def test_a_hit_is_answered_below_flask_with_the_same_bytes_and_headers(app, client, seeded):
    calls = FlaskCalls(app)
    via_flask = client.get("/shop/1")
    warm_until_fast(client, calls, "/shop/1")
    before = calls.count
    fast = client.get("/shop/1", headers={"X-Request-ID": "fast-rid-1"})
    assert calls.count == before  # not through Flask
    assert fast.status_code == 200
    assert fast.get_data() == via_flask.get_data()
    assert fast.json["data"]["id"] == 1 and fast.json["success"] is True
    assert fast.headers["Content-Type"] == via_flask.headers["Content-Type"]
    assert fast.headers["Content-Length"] == str(len(fast.get_data()))
    assert fast.headers["X-Request-ID"] == "fast-rid-1"
    fresh = client.get("/shop/1", headers={"X-Request-ID": "bad id with spaces"})
    assert len(fresh.headers["X-Request-ID"]) == 32  # replaced by a new id


def test_fast_hits_count_in_the_routes_http_metrics_and_the_access_log(
    app, client, seeded, access_lines
):
    calls = FlaskCalls(app)
    warm_until_fast(client, calls, "/shop/2")
    total, by_route = http_total(app, 200), shop_duration_count(app, 200)
    lines_before = len(access_lines())
    before = calls.count
    for _ in range(5):
        client.get("/shop/2", headers={"X-Request-ID": "rid-metrics"})
    assert calls.count == before
    assert http_total(app, 200) == total + 5
    assert shop_duration_count(app, 200) == by_route + 5
    lines = access_lines()[lines_before:]
    assert len(lines) == 5
    assert {(line["route"], line["status"], line["request_id"]) for line in lines} == {
        ("/shop/<shop_id>", 200, "rid-metrics")
    }


def test_an_update_is_seen_at_once_by_the_fast_path(app, client, seeded, login_as):
    calls = FlaskCalls(app)
    warm_until_fast(client, calls, "/shop/3")
    admin = login_as(1, role="admin")
    changed = client.put("/shop", json={"id": 3, "name": "改名后的店"}, headers=admin)
    assert changed.status_code == 200, changed.json
    assert client.get("/shop/3").json["data"]["name"] == "改名后的店"


def test_misses_logged_in_users_and_bad_ids_go_to_flask(app, client, seeded, login_as):
    calls = FlaskCalls(app)
    warm_until_fast(client, calls, "/shop/4")
    user = login_as(7)
    for path, kwargs, status in [
        ("/shop/4", {"headers": user}, 200),  # the UV visitor is the user: Flask loads them
        ("/shop/5", {}, 200),  # not in this process's near-cache yet
        ("/shop/0", {}, 400),
        ("/shop/99999999", {}, 404),
        ("/shop/4/uv", {}, 200),
    ]:
        before = calls.count
        response = client.get(path, **kwargs)
        assert response.status_code == status, (path, response.json)
        assert calls.count == before + 1, path
    before = calls.count
    assert client.post("/shop/4").status_code in (401, 405)
    assert calls.count == before + 1


def test_fast_hits_are_counted_as_visits_of_the_client_address(app, client, seeded):
    calls = FlaskCalls(app)
    warm_until_fast(client, calls, "/shop/6", environ_base={"REMOTE_ADDR": "10.1.1.1"})
    for address in ("10.1.1.2", "10.1.1.3", "10.1.1.2"):
        before = calls.count
        client.get("/shop/6", environ_base={"REMOTE_ADDR": address})
        assert calls.count == before
    # three distinct addresses (the warm-up's among them), estimated by HyperLogLog
    assert client.get("/shop/6/uv").json["data"]["uv"] == 3


def test_a_hot_entry_is_refreshed_ahead_below_flask_and_never_misses(app_with, seeded):
    long_ttl_app = app_with(near_cache_ttl=60.0)
    client = long_ttl_app.test_client()
    calls = FlaskCalls(long_ttl_app)
    warm_until_fast(client, calls, "/shop/7")
    region = calls.fast.region_holder.region
    near = region.near
    old = client.get("/shop/7").get_data()
    text, _ = near.lookup("7")
    # as if read from Redis 90 % of the TTL ago: due for its refresh, not expired
    assert near.put("7", text, near.generation, time.monotonic() - 0.9 * near.ttl)
    kind, _ = region._raw("7")
    marked = text.replace('"id":7,', '"id":7,"refreshed":true,')
    key = region.physical_key("7") if kind == "P" else region.logical_key("7")
    value = marked if kind == "P" else encode_logical(marked, time.time() + 3600)
    seeded.redis.set(key, value)  # what Redis holds now (no invalidation sent)
    before = calls.count
    assert client.get("/shop/7").get_data() == old  # the due reader gets the entry ...
    assert calls.count == before  # ... below Flask, and refreshed it from Redis:
    refreshed = client.get("/shop/7")
    assert calls.count == before
    assert refreshed.json["data"]["refreshed"] is True
    assert near.lookup("7") == (marked, False)  # a new entry with a new TTL


def test_the_shop_query_limit_applies_to_fast_hits(app_with, seeded):
    limited_app = app_with(rate_limit_enabled=True, rate_limit_shop_query="4,0.001/s")
    client = limited_app.test_client()
    calls = FlaskCalls(limited_app)
    statuses, through_flask = [], []
    for _ in range(6):
        before = calls.count
        response = client.get("/shop/1", environ_base={"REMOTE_ADDR": "10.9.9.9"})
        statuses.append(response.status_code)
        through_flask.append(calls.count - before)
        assert "X-RateLimit-Remaining" in response.headers
        time.sleep(0.05)  # let the near-cache listener subscribe
    # one budget of 4 per address whichever layer answers; the rest is refused
    assert statuses == [200, 200, 200, 200, 429, 429]
    refused = client.get("/shop/1", environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert refused.status_code == 429
    assert refused.json == {
        "success": False,
        "errorMsg": "too many requests; slow down",
        "data": None,
        "total": None,
    }
    assert int(refused.headers["Retry-After"]) >= 1
    assert 0 in through_flask[1:]  # some of them were fast-path answers
    other = client.get("/shop/1", environ_base={"REMOTE_ADDR": "10.9.9.10"})
    assert other.status_code == 200  # per address


def test_the_fast_path_can_be_switched_off(app_with, seeded):
    app = app_with(shop_fast_path=False)
    assert not isinstance(app.wsgi_app, ShopFastPath)
    assert app.test_client().get("/shop/1").status_code == 200


def test_fast_hits_see_the_client_behind_a_trusted_proxy_only(app_with, seeded):
    from settings import Settings

    proxies = Settings.from_env({"HMDP_TRUSTED_PROXIES": "127.0.0.1/32"}).trusted_proxies
    app = app_with(trusted_proxies=proxies)
    client = app.test_client()
    calls = FlaskCalls(app)
    warm_until_fast(client, calls, "/shop/6", environ_base={"REMOTE_ADDR": "10.1.1.1"})
    before = calls.count
    for peer, forwarded in [
        ("127.0.0.1", "6.6.6.6, 203.0.113.1"),  # nginx: the address it saw, not the
        ("127.0.0.1", "6.6.6.6, 203.0.113.2"),  # entries the client wrote itself
        ("198.51.100.4", "203.0.113.3"),  # a direct peer's header is ignored
        ("198.51.100.4", "203.0.113.4"),
    ]:
        client.get(
            "/shop/6", environ_base={"REMOTE_ADDR": peer}, headers={"X-Forwarded-For": forwarded}
        )
    assert calls.count == before  # all answered by the fast path
    # 10.1.1.1 (the warm-up), 203.0.113.1, 203.0.113.2 and 198.51.100.4: 4 visitors
    # (ignoring the header would make 3; believing any peer's or the leftmost entry, 5)
    assert client.get("/shop/6/uv").json["data"]["uv"] == 4
