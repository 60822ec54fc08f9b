"""The WSGI fast paths (web/fastpath.py, web/order_fastpath.py) and Flask answer alike.

Each fast path is the route's own answer dispatched below Flask, through the
request layer Flask's hooks use (web/exchange.py). :func:`test_both_paths_answer_alike`
plays each case twice on the same database, once with the fast paths on and once
with them off, each on a Redis database of its own, and compares everything a
client or an operator sees: status, the headers that matter, body bytes, the
HTTP and business metrics, the access lines and the side effects in Redis. The
requests of the fast run are counted where they reach Flask, so "answered below
Flask" (or "handed on") is observed, not assumed.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY
from support.seckill import add_shop, create_seckill, queued_orders

from cache import uv
from cache.login import TOKEN_KEY
from cache.order_stream import stream_key
from cache.region import encode_logical
from settings import is_cluster_url
from web.auth import UserSummary
from web.fastpath import ShopFastPath
from web.fastroute import FastPath
from web.order_fastpath import SeckillFastPath
from web.orders import ORDER_TASK, flush_dispatch
from web.visits import uv_buffer

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)

SHOP_ROUTE = "/shop/<shop_id>"
SECKILL_ROUTE = "/voucher-order/seckill/<id:voucher_id>"
WARM_UP_IP = "10.0.0.254"
BUSINESS_METRICS = (
    "hmdp_seckill_requests_total",
    "hmdp_rate_limit_rejections_total",
    "hmdp_rate_limit_errors_total",
)


@dataclass(frozen=True)
class Req:
    """One request of a case: who sends it, and whether the fast run answers it below Flask."""

    method: str
    path: str  # "{v}" is the case's voucher, "{shop}" its shop
    status: int
    fast: bool = True
    user: int | str | None = None  # a user id, "odd:<id in the session>", "raw:<header>"
    ip: str = "10.1.1.2"
    request_id: str | None = None  # default: one per request; "bad id" makes the server's
    compat: str | None = None  # its X-Hmdp-Compat header
    shown: int | None = None  # the status the client sees, if not ``status`` (compat mode)


@dataclass(frozen=True)
class Case:
    name: str
    requests: tuple[Req, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    stock: int = 5  # of the case's seckill voucher
    shop: int = 1
    warm_shop: bool = False  # GET the shop until the fast run serves it from its near-cache
    prepare: Callable[[Any, int], None] | None = None  # (redis, voucher id) before the requests
    check: Callable[[Run], None] | None = None  # more assertions (on the fast run: both are equal)


@dataclass
class Run:
    """What one run of a case left: answers, metrics, access lines and Redis state."""

    answers: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    reached_flask: list[bool] = field(default_factory=list)
    http: dict[tuple, float] = field(default_factory=dict)
    business: dict[tuple, float] = field(default_factory=dict)
    access: list[tuple] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    order_ids: list[str] = field(default_factory=list)


# --- the cases ---------------------------------------------------------------------------


def _refused_body(run: Run) -> None:
    refused = [a for a in run.answers if a[0] == 429]
    assert refused
    for _, headers, body in refused:
        assert body == (
            b'{"success":false,"errorMsg":"too many requests; slow down","data":null,"total":null}\n'
        )
        assert headers["Retry-After"] == "<seconds>"  # at least 1 (_headers_that_matter)


def _rejected(run: Run, rule: str) -> float:
    return run.business.get(("hmdp_rate_limit_rejections_total", (("rule", rule),)), 0.0)


def _order_id_is_a_64_bit_string(run: Run) -> None:
    assert run.order_ids and all(int(i) > 2**53 for i in run.order_ids)
    assert run.state["stream"] == [("5", True, True)]
    assert run.state.get("tasks with the request id", 1) == 1  # a RabbitMQ broker: not read
    assert run.access[0][5] == "order-rid-1" and run.answers[0][1]["X-Request-ID"] == "order-rid-1"
    assert run.business[("hmdp_seckill_requests_total", (("outcome", "ok"),))] == 1


def _shop_hits(run: Run) -> None:
    assert run.state["uv"] == 3  # the warm-up's address and two more
    assert run.answers[0][1]["X-Request-ID"] == "fast-rid-1"
    assert run.answers[-1][1]["X-Request-ID"] == "<new>"  # an invalid one is replaced
    assert all(b'"id":6,' in body for _, _, body in run.answers)


def _refusals(run: Run) -> None:
    assert run.answers[1][2] == (
        b'{"success":false,"errorMsg":"already ordered","data":"<order 0>","total":null}\n'
    )
    assert b'"sold out"' in run.answers[2][2] and b'"voucher not found"' in run.answers[3][2]


def _shop_limit(run: Run) -> None:
    _refused_body(run)
    assert all("X-RateLimit-Remaining" in a[1] for a in run.answers)
    assert _rejected(run, "shop_query") == 2


def _loaded_from_the_database(run: Run) -> None:
    assert run.state["stock"] == "2"


def _sessions(run: Run) -> None:
    assert run.state["session 5 pushed back"]  # the TTL slid to the session TTL
    assert not run.state["stray session"]  # an unknown token creates nothing
    assert run.state["stock"] == "4"


def _per_user_bucket(run: Run) -> None:
    _refused_body(run)
    assert all("X-RateLimit-Remaining" in a[1] for a in run.answers[:4])
    assert "ratelimit:{seckill}:user:5" in run.state["rate-limit keys"]
    assert _rejected(run, "seckill") == 1


def _one_reservation(run: Run) -> None:
    assert run.answers[0][1]["X-RateLimit-Remaining"] == "0"
    assert run.state["stock"] == "4" and run.state["buyers"] == {"7"}
    assert _rejected(run, "seckill") == 1


def _sliding_window(run: Run) -> None:
    assert run.state["stock"] == "4"
    assert _rejected(run, "seckill") == 1  # counted once, by the limiter itself


def _compat_refusals(run: Run) -> None:
    assert run.answers[1][2] == (
        b'{"success":false,"errorMsg":"already ordered","data":"<order 0>","total":null}\n'
    )
    real = [a[1].get("X-Hmdp-Status") for a in run.answers]
    assert real == [None, "409", "409", "404", None, None]
    vary = [a[1].get("Vary") for a in run.answers]  # errors but 401, whichever form
    assert vary == [None, "X-Hmdp-Compat", "X-Hmdp-Compat", "X-Hmdp-Compat", None, "X-Hmdp-Compat"]


def _compat_limits(run: Run) -> None:
    _refused_body(run)
    assert [a[1].get("X-Hmdp-Status") for a in run.answers] == [
        None,
        None,
        "429",
        None,
        None,
        "429",
    ]
    assert run.answers[3][0] == 429  # asked for real statuses
    assert _rejected(run, "shop_query") == 2 and _rejected(run, "seckill") == 1


def _forget_voucher(redis, voucher_id: int) -> None:  # type: ignore[no-untyped-def]
    redis.delete(f"seckill:stock:{{{voucher_id}}}", f"seckill:window:{{{voucher_id}}}")


# A seckill case with rate limits as the test settings have them, and behind the
# per-user token bucket: the fast path reads the session in the gate's call either way.
BUCKET_OR_NOT: list[tuple[str, dict[str, Any]]] = [
    ("", {}),
    (
        ", behind the per-user bucket",
        {"rate_limit_enabled": True, "rate_limit_seckill": "5,0.001/s"},
    ),
]

CASES = [
    Case(
        "shop hits, visits by address",
        (
            Req("GET", "/shop/{shop}", 200, request_id="fast-rid-1"),
            Req("GET", "/shop/{shop}", 200, ip="10.1.1.3"),
            Req("GET", "/shop/{shop}", 200),
            Req("GET", "/shop/{shop}", 200, request_id="bad id with spaces"),
        ),
        shop=6,
        warm_shop=True,
        check=_shop_hits,
    ),
    Case(
        "shop requests Flask answers",
        (
            Req("GET", "/shop/{shop}", 200, fast=False, user=7),  # the visitor is the user
            Req("GET", "/shop/5", 200, fast=False),  # not in the near-cache yet
            Req("GET", "/shop/0", 400, fast=False),
            Req("GET", "/shop/99999999", 404, fast=False),
            Req("GET", "/shop/{shop}/uv", 200, fast=False),
            Req("POST", "/shop/{shop}", 405, fast=False),
        ),
        shop=4,
        warm_shop=True,
    ),
    Case(
        "shop query limit per address",
        tuple(Req("GET", "/shop/{shop}", s, ip="10.9.9.9") for s in (200, 200, 200, 200, 429, 429))
        + (Req("GET", "/shop/{shop}", 200, ip="10.9.9.10"),),
        settings={"rate_limit_enabled": True, "rate_limit_shop_query": "4,0.001/s"},
        warm_shop=True,
        check=_shop_limit,
    ),
    Case(
        "an order",
        (Req("POST", "/voucher-order/seckill/{v}", 200, user=5, request_id="order-rid-1"),),
        check=_order_id_is_a_64_bit_string,
    ),
    Case(
        "refusals and a missing voucher",
        (
            Req("POST", "/voucher-order/seckill/{v}", 200, user=5),
            Req("POST", "/voucher-order/seckill/{v}", 409, user=5),  # with the first order id
            Req("POST", "/voucher-order/seckill/{v}", 409, user=6),  # sold out
            Req("POST", "/voucher-order/seckill/424242", 404, user=6),
        ),
        stock=1,
        check=_refusals,
    ),
    Case(
        "a voucher Redis lost is loaded from the database",
        (Req("POST", "/voucher-order/seckill/{v}", 200, user=5),),
        stock=3,
        prepare=_forget_voucher,
        check=_loaded_from_the_database,
    ),
    *(
        Case(
            f"no session, and a session that slides{where}",
            (
                Req("POST", "/voucher-order/seckill/{v}", 401),
                Req("POST", "/voucher-order/seckill/{v}", 401, user="raw:no-such-token"),
                Req("POST", "/voucher-order/seckill/{v}", 401, user="raw:" + "x" * 129),
                Req("POST", "/voucher-order/seckill/{v}", 401, user="raw:   "),
                Req("POST", "/voucher-order/seckill/{v}", 200, user=5),
            ),
            settings=limits,
            check=_sessions,
        )
        for where, limits in BUCKET_OR_NOT
    ),
    *(
        Case(
            f"a session id the gate does not judge{where}: {odd!r}",
            (Req("POST", "/voucher-order/seckill/{v}", status, fast=False, user=f"odd:{odd}"),),
            settings=limits,
        )
        for odd, status in [("abc", 401), ("0", 200), ("-3", 200), ("007", 200), ("", 401)]
        for where, limits in BUCKET_OR_NOT
    ),
    Case(
        "requests the seckill fast path hands on",
        (
            Req("POST", "/voucher-order/seckill/0", 404, fast=False, user=5),
            Req("POST", f"/voucher-order/seckill/{2**63}", 404, fast=False, user=5),
            Req("POST", "/voucher-order/seckill/{v}/", 404, fast=False, user=5),
            Req("GET", "/voucher-order/seckill/{v}", 405, fast=False, user=5),
        ),
    ),
    Case(
        "the per-user token bucket",
        (
            Req("POST", "/voucher-order/seckill/{v}", 200, user=5),
            Req("POST", "/voucher-order/seckill/{v}", 409, user=5),
            Req("POST", "/voucher-order/seckill/{v}", 429, user=5, ip="10.1.1.9"),  # any address
            Req("POST", "/voucher-order/seckill/{v}", 200, user=6),
            Req("POST", "/voucher-order/seckill/{v}", 401),
        ),
        settings={"rate_limit_enabled": True, "rate_limit_seckill": "2,0.001/s"},
        check=_per_user_bucket,
    ),
    Case(
        "a refused order reserves nothing",
        (
            Req("POST", "/voucher-order/seckill/{v}", 200, user=7),
            Req("POST", "/voucher-order/seckill/{v}", 429, user=7),
        ),
        settings={"rate_limit_enabled": True, "rate_limit_seckill": "1,0.001/s"},
        check=_one_reservation,
    ),
    Case(
        "compat mode asked for by the request",
        (
            Req("POST", "/voucher-order/seckill/{v}", 200, user=5, compat="1"),
            Req("POST", "/voucher-order/seckill/{v}", 409, user=5, compat="1", shown=200),
            Req("POST", "/voucher-order/seckill/{v}", 409, user=6, compat="1", shown=200),
            Req("POST", "/voucher-order/seckill/424242", 404, user=6, compat="1", shown=200),
            Req("POST", "/voucher-order/seckill/{v}", 401, compat="1"),  # the login page
            Req("POST", "/voucher-order/seckill/{v}", 409, user=6, compat="0"),
        ),
        stock=1,
        check=_compat_refusals,
    ),
    Case(
        "compat mode by the setting, rate limited",
        (
            *(Req("GET", "/shop/{shop}", 200, ip="10.9.9.9") for _ in range(2)),
            Req("GET", "/shop/{shop}", 429, ip="10.9.9.9", shown=200),
            Req("GET", "/shop/{shop}", 429, ip="10.9.9.9", compat="0"),
            Req("POST", "/voucher-order/seckill/{v}", 200, user=7),
            Req("POST", "/voucher-order/seckill/{v}", 429, user=7, shown=200),
        ),
        settings={
            "compat_errors": True,
            "rate_limit_enabled": True,
            "rate_limit_shop_query": "2,0.001/s",
            "rate_limit_seckill": "1,0.001/s",
        },
        warm_shop=True,
        check=_compat_limits,
    ),
    Case(
        "a sliding-window limit",
        tuple(Req("POST", "/voucher-order/seckill/{v}", s, user=8) for s in (200, 409, 429)),
        settings={"rate_limit_enabled": True, "rate_limit_seckill": "2/min"},
        check=_sliding_window,
    ),
]


# --- playing a case ------------------------------------------------------------------------


def _count_flask_calls(app) -> list[int]:  # type: ignore[no-untyped-def]
    """Wrap the innermost layer (Flask's own WSGI callable); returns the call counter."""
    calls = [0]
    outer, layer = None, app.wsgi_app
    while isinstance(layer, FastPath):
        outer, layer = layer, layer.flask_wsgi
    flask_wsgi = layer

    def counting(environ, start_response):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return flask_wsgi(environ, start_response)

    if outer is None:
        app.wsgi_app = counting
    else:
        outer.flask_wsgi = counting
    return calls


def _http_samples(app) -> dict[tuple, float]:  # type: ignore[no-untyped-def]
    wanted = ("flask_http_request_duration_seconds_count", "flask_http_request_total")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in app.extensions["hmdp_metrics"].registry.collect()
        for s in family.samples
        if s.name in wanted
    }


def _business_samples() -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name in BUSINESS_METRICS
    }


def _delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def _session(redis, user_id: int | str, raw_id: str | None = None) -> str:  # type: ignore[no-untyped-def]
    token = uuid.uuid4().hex
    fields = UserSummary(int(user_id), f"user_{user_id}", "").to_hash() if raw_id is None else {}
    if raw_id is not None:
        fields = {"id": raw_id, "role": "user"}
    redis.hset(TOKEN_KEY.format(token=token), mapping=fields)
    redis.expire(TOKEN_KEY.format(token=token), 600)
    return token


def _headers_that_matter(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    headers = dict(response.headers.items())
    names = {name.lower() for name in headers}
    assert names <= {
        "content-type",
        "content-length",
        "x-request-id",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "retry-after",
        "allow",
        "vary",
        "x-hmdp-status",
    }, names
    for timed, least in (("X-RateLimit-Reset", 0), ("Retry-After", 1)):  # seconds from now
        if timed in headers:
            assert int(headers[timed]) >= least
            headers[timed] = "<seconds>"
    if re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"]):
        headers["X-Request-ID"] = "<new>"
    return headers


def _play(case: Case, app, voucher_id: int, access_lines) -> Run:  # type: ignore[no-untyped-def]
    svc = app.extensions["hmdp"]
    redis = svc.redis
    for step in app.extensions["hmdp_post_seed"]:
        step(svc)
    if case.prepare is not None:
        case.prepare(redis, voucher_id)
    client = app.test_client()
    calls = _count_flask_calls(app)
    shop_path = f"/shop/{case.shop}"
    if case.warm_shop:  # until served below Flask (the near-cache listener starts lazily)
        deadline = time.monotonic() + 10
        while True:
            before = calls[0]
            assert (
                client.get(shop_path, environ_base={"REMOTE_ADDR": WARM_UP_IP}).status_code == 200
            )
            if calls[0] == before or not isinstance(app.wsgi_app, ShopFastPath):
                break
            assert time.monotonic() < deadline, "never served by the fast path"
            time.sleep(0.05)
    tokens: dict[int, str] = {}
    run = Run()
    http_before, business_before = _http_samples(app), _business_samples()
    lines_before = len(access_lines())
    for number, req in enumerate(case.requests):
        headers = {"X-Request-ID": req.request_id or f"{case.name[:20]}-{number}".replace(" ", "-")}
        if isinstance(req.user, int):
            tokens.setdefault(req.user, _session(redis, req.user))
            headers["authorization"] = tokens[req.user]
        elif isinstance(req.user, str) and req.user.startswith("odd:"):
            headers["authorization"] = _session(redis, 0, raw_id=req.user[4:])
        elif isinstance(req.user, str):
            headers["authorization"] = req.user[4:]
        if req.compat is not None:
            headers["X-Hmdp-Compat"] = req.compat
        path = req.path.format(v=voucher_id, shop=case.shop)
        before = calls[0]
        response = client.open(
            path, method=req.method, headers=headers, environ_base={"REMOTE_ADDR": req.ip}
        )
        shown = req.status if req.shown is None else req.shown
        assert response.status_code == shown, (case.name, req, response.get_data())
        run.reached_flask.append(calls[0] > before)
        body = response.get_data()
        data = response.json.get("data") if response.is_json else None
        if isinstance(data, str) and data.isdigit() and path.startswith("/voucher-order"):
            if data not in run.order_ids:
                run.order_ids.append(data)
            body = body.replace(data.encode(), f"<order {run.order_ids.index(data)}>".encode())
        run.answers.append((response.status_code, _headers_that_matter(response), body))
    run.http = _delta(_http_samples(app), http_before)
    run.business = _delta(_business_samples(), business_before)
    run.access = [
        (line["method"], line["path"], line["route"], line["status"], line["remote"])
        + (line["request_id"] if len(line["request_id"]) != 32 else "<new>",)
        for line in access_lines()[lines_before:]
    ]
    # side effects
    buffer = uv_buffer(app)
    buffer.flush()
    run.state["uv"] = uv.count(redis, case.shop, svc.clock().date())
    run.state["stock"] = redis.get(f"seckill:stock:{{{voucher_id}}}")
    run.state["buyers"] = redis.smembers(f"seckill:order:{{{voucher_id}}}")
    entries = [fields for _, fields in redis.xrange(stream_key(svc.settings, voucher_id))]
    run.state["stream"] = sorted(
        (e["userId"], e["voucherId"] == str(voucher_id), e["orderId"] in run.order_ids)
        for e in entries
    )
    run.state["rate-limit keys"] = sorted(redis.scan_iter("ratelimit:*"))
    if 5 in tokens:
        run.state["session 5 pushed back"] = redis.ttl(TOKEN_KEY.format(token=tokens[5])) > 600
    run.state["stray session"] = bool(redis.exists(TOKEN_KEY.format(token="no-such-token")))
    assert flush_dispatch(app)
    if svc.settings.celery_broker_url is None:  # the broker is this Redis: read its queue
        tasks = redis.lrange("orders", 0, -1)
        run.state["tasks"] = len(queued_orders(redis))  # orders carried (one message per batch)
        run.state["tasks with the request id"] = sum(
            ORDER_TASK in m and "order-rid-1" in m for m in tasks
        )
    return run


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_both_paths_answer_alike(case, app_with, settings, client, seeded, login_as, access_lines):
    voucher_id = create_seckill(client, login_as(1, role="admin"), stock=case.stock)
    runs = {}
    for number, fast in ((1, False), (2, True)):
        # a Redis database of each run's own; a cluster has one: the runs take turns on it
        own_redis = settings.redis_url
        if not is_cluster_url(own_redis):
            own_redis = own_redis.rsplit("/", 1)[0] + f"/{number}"
        app = app_with(
            redis_url=own_redis,
            shop_fast_path=fast,
            seckill_fast_path=fast,
            login_token_ttl=900,
            **case.settings,
        )
        app.extensions["hmdp"].redis.flushdb()
        runs[fast] = _play(case, app, voucher_id, access_lines)
    flask, fast = runs[False], runs[True]
    assert all(flask.reached_flask)
    assert fast.reached_flask == [not r.fast for r in case.requests]
    assert fast.answers == flask.answers
    assert fast.http == flask.http
    assert fast.business == flask.business
    assert fast.access == flask.access
    assert fast.state == flask.state
    # each request counted once, by its route's labels, and logged once
    counted = {k: v for k, v in fast.http.items() if k[0].endswith("_duration_seconds_count")}
    assert sum(counted.values()) == len(case.requests)
    assert len(fast.access) == len(case.requests)
    for req, (method, _, route, status, *_) in zip(case.requests, fast.access, strict=True):
        assert (method, status) == (req.method, req.status)
        if req.fast:
            assert route == (SHOP_ROUTE if req.path.startswith("/shop") else SECKILL_ROUTE)
            labels = (("method", method), ("status", str(status)), ("url_rule", route))
            assert counted[("flask_http_request_duration_seconds_count", labels)] >= 1
    if case.check is not None:
        case.check(fast)


def test_a_fast_path_that_fails_after_the_charge_hands_on_a_request_charged_once(
    app_with, settings, login_as, services
):
    """The bucket is charged with the gate in one script; then the database is down."""
    broken = app_with(
        rate_limit_enabled=True,
        rate_limit_seckill="5,0.001/s",
        database_url=f"sqlite:///{settings.var_dir}/no/such/dir/hmdp.db",
    )
    client = broken.test_client()
    user = login_as(5)
    remaining = []
    for _ in range(2):
        # unknown to Redis: the fast path loads it from the database, which fails,
        # and hands the request to Flask, which meets the same failure
        response = client.post("/voucher-order/seckill/424242", headers=user)
        assert response.status_code == 503, response.json
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["4", "3"]  # one token per request, not two
    assert services.redis.exists("ratelimit:{seckill}:user:5")


# --- what only the fast paths do -----------------------------------------------------------


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


def test_an_update_is_seen_at_once_by_the_fast_path(app, client, seeded, login_as):
    calls = FlaskCalls(app)
    warm_until_fast(client, calls, "/shop/3")
    admin = login_as(1, role="admin")
    changed = client.put("/shop", json={"id": 3, "name": "改名后的店"}, headers=admin)
    assert changed.status_code == 200, changed.json
    assert client.get("/shop/3").json["data"]["name"] == "改名后的店"


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


def test_the_shop_fast_path_can_be_switched_off(app_with, seeded):
    app = app_with(shop_fast_path=False)
    assert not isinstance(app.wsgi_app, ShopFastPath)
    assert app.test_client().get("/shop/1").status_code == 200


def test_the_seckill_fast_path_can_be_switched_off(app_with):
    flask_only = app_with(seckill_fast_path=False)
    layer = flask_only.wsgi_app
    while hasattr(layer, "flask_wsgi"):
        assert not isinstance(layer, SeckillFastPath)
        layer = layer.flask_wsgi


# --- the gate with the session read in the script -------------------------------------------


@pytest.mark.redis_cluster(single="reads the task messages of a Redis broker")
def test_dispatched_tasks_are_whole_celery_messages_in_the_orders_queue(
    app, client, login_as, services
):
    """The publisher declares the queue once per connection and writes the args' repr itself."""
    import base64
    import json

    add_shop(services)
    voucher_id = create_seckill(client, login_as(1, role="admin"), stock=10)
    ids = [
        client.post(f"/voucher-order/seckill/{voucher_id}", headers=login_as(u)).json["data"]
        for u in range(10, 15)
    ]
    assert flush_dispatch(app)
    messages = [json.loads(m) for m in services.redis.lrange("orders", 0, -1)]
    assert 1 <= len(messages) <= 5  # one per micro-batch of reservations
    seen = []
    for message in messages:
        assert message["headers"]["task"] == ORDER_TASK
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert kwargs == {} and message["headers"]["argsrepr"] == repr(args)
        assert message["properties"]["delivery_info"]["routing_key"] == "orders"
        seen += [payload["orderId"] for payload in args[0]]
    assert sorted(seen) == sorted(ids)  # every order in exactly one message
