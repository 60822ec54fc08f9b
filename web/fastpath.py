"""The WSGI fast paths: hot requests answered without Flask's dispatch.

This module holds the one for ``GET /shop/{id}`` near-cache hits;
web/order_fastpath.py has the seckill order's, web/fastroute.py what they share
(the route's HTTP metrics, the request id, the access line). :func:`install`
puts those the settings enable in front of Flask.

A near-cache hit (cache/near.py) costs no Redis call (but for the one reader
per hot entry and TTL that refreshes it ahead, with one Redis read, so that a
hot key never expires and never falls to Flask); what is left of a request is
the web framework itself. Under granian an empty Flask route
answers ~5,700 req/s on this 2-core box while a bare WSGI callable answers
~38,000 (BENCHMARKS.md), so the hottest read of the system is answered one
layer lower, by this middleware in front of ``Flask.wsgi_app``.

It is an *answer from the same sources, with the same side effects*, never a
second implementation of the route: the JSON comes from the shop region's own
near-cache (:meth:`cache.region.CacheRegion.near_get`, which only holds what
the region read and keeps honest across processes), and a fast answer does
everything the Flask route and its hooks do for a hit:

* the request id (the client's valid ``X-Request-ID`` or a new one), echoed back
  and stamped on the ``hmdp.access`` line, which is written when enabled;
* the HTTP metrics of prometheus-flask-exporter, with the route's own labels;
* the per-address rate limit of shop queries (``X-RateLimit-*`` headers; 429);
* the UV visit (anonymous visitor: ``ip:{client address}``).

Anything else goes to Flask unchanged: another method or path, a logged-in
request (its user must be loaded for the UV visitor), a near-cache miss,
a region not built yet, or an unexpected error here (logged, then Flask).
"""

from __future__ import annotations

import re
import time
from typing import Any

import redis
from flask import Flask

from models.entities import MAX_ID

from .envelope import fail_bytes, ok_bytes
from .fastroute import Answer, FastPath, FastRoute, WsgiApp
from .order_fastpath import SeckillFastPath
from .ratelimit import EXTENSION as RATELIMIT_EXTENSION
from .ratelimit import RouteLimiter, forwarded_client_ip
from .shops import shop_region_holder
from .stats import UV_EXTENSION

ENDPOINT = "shops.get_shop"
SHOP_PATH = re.compile(r"/shop/([0-9]{1,19})", re.ASCII)
TOO_MANY = fail_bytes("too many requests; slow down")


class ShopFastPath(FastPath):
    """WSGI middleware in front of ``app.wsgi_app`` (installed by :func:`install`)."""

    method = "GET"
    path = SHOP_PATH
    name = "shop"

    def __init__(self, app: Flask, flask_wsgi: WsgiApp):
        super().__init__(flask_wsgi)
        self.app = app
        svc = app.extensions["hmdp"]
        self.services = svc
        self.settings = svc.settings
        self.region_holder = shop_region_holder(app)
        self.uv = app.extensions[UV_EXTENSION]
        self.route = FastRoute(app, ENDPOINT, "GET", (200, 429))
        self.enabled = self.route.enabled
        self.rule = self.route.rule

    def _wants(self, environ: dict[str, Any]) -> bool:
        return "HTTP_AUTHORIZATION" not in environ  # the UV visitor would be the user

    def _answer(self, environ: dict[str, Any], shop_id: int) -> Answer | None:
        started = time.perf_counter()
        region = self.region_holder.region
        if region is None or not 1 <= shop_id <= MAX_ID:
            return None  # first request of the process, or Flask's 400
        text = region.near_get(str(shop_id))
        if text is None:
            return None
        ip = forwarded_client_ip(
            environ.get("REMOTE_ADDR"),
            environ.get("HTTP_X_FORWARDED_FOR"),
            self.settings.trusted_proxies,
        )
        headers = [("Content-Type", "application/json")]
        if self.settings.rate_limit_enabled:
            limiter: RouteLimiter = self.app.extensions[RATELIMIT_EXTENSION]
            try:
                decision = limiter.check_ip(ENDPOINT, ip, self.services.redis)
            except redis.RedisError:
                return None  # Flask's hook counts the error and fails open
            if decision is not None:
                headers.extend(decision.headers().items())
                if not decision.allowed:
                    return self.route.finish(environ, 429, headers, TOO_MANY, started)
        self.uv.record(shop_id, self.services.clock().date(), f"ip:{ip}")
        return self.route.finish(environ, 200, headers, ok_bytes(text), started)


def install(app: Flask) -> None:
    """Put the enabled fast paths in front of the app's WSGI callable (after every blueprint).

    Each passes what it does not answer to the next, the last to Flask; passing
    costs a method and a path test.
    """
    settings = app.extensions["hmdp"].settings
    if settings.seckill_fast_path:
        app.wsgi_app = SeckillFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
    if settings.shop_fast_path and settings.near_cache_enabled:
        app.wsgi_app = ShopFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
