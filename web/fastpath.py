"""The WSGI fast paths: hot requests answered without Flask's dispatch.

This module holds the one for ``GET /shop/{id}`` near-cache hits;
web/order_fastpath.py has the seckill order's, web/fastroute.py what they share.
:func:`install` puts those the settings enable in front of Flask.

A near-cache hit (cache/near.py) costs no Redis call (but for the one reader
per hot entry and TTL that refreshes it ahead, with one Redis read, so that a
hot key never expires and never falls to Flask); what is left of a request is
the web framework itself, which costs several times the hit (BENCHMARKS.md),
so the hottest read of the system is answered one layer lower, by this
middleware in front of ``Flask.wsgi_app``.

It is the route's own answer, dispatched differently: the JSON comes from the
shop region's near-cache (:meth:`cache.region.CacheRegion.near_get`, which
only holds what the region read and keeps honest across processes), the body
and the UV visit from :func:`web.shop_cache.shop_answer` (what the Flask route
answers too), the per-address rate limit of shop queries from the limiter the
Flask hook charges (``X-RateLimit-*`` headers; 429), and the request id, HTTP
metrics and access line from the request layer's finish step.

Anything else goes to Flask unchanged: another method or path, a logged-in
request (its user must be loaded for the UV visitor), a near-cache miss,
a region not built yet, or an unexpected error here (logged, then Flask).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from models.entities import MAX_ID

from .envelope import MIMETYPE, fail_bytes
from .exchange import TOO_MANY_REQUESTS, Exchange
from .fastroute import Answer, FastPath, WsgiApp
from .order_fastpath import SeckillFastPath
from .ratelimit import EXTENSION as RATELIMIT_EXTENSION
from .shop_cache import shop_answer, shop_region_holder

SHOP_PATH = re.compile(r"/shop/([0-9]{1,19})", re.ASCII)
TOO_MANY = fail_bytes(TOO_MANY_REQUESTS)


class ShopFastPath(FastPath):
    """WSGI middleware in front of ``app.wsgi_app`` (installed by :func:`install`)."""

    method = "GET"
    path = SHOP_PATH
    endpoint = "shops.get_shop"
    statuses = (200, 429)

    def __init__(self, app: Flask, flask_wsgi: WsgiApp):
        super().__init__(app, flask_wsgi)
        self.region_holder = shop_region_holder(app)

    def _wants(self, environ: dict[str, Any]) -> bool:
        return "HTTP_AUTHORIZATION" not in environ  # the UV visitor would be the user

    def _answer(self, exchange: Exchange, shop_id: int) -> Answer | None:
        region = self.region_holder.region
        if region is None or not 1 <= shop_id <= MAX_ID:
            return None  # first request of the process, or Flask's 400
        text = region.near_get(str(shop_id))
        if text is None:
            return None
        headers = [("Content-Type", MIMETYPE)]
        if self.settings.rate_limit_enabled:
            limiter = self.app.extensions[RATELIMIT_EXTENSION]
            decision = limiter.charge(exchange, self.endpoint, self.services.redis)
            if decision is not None:
                headers.extend(decision.headers().items())
                if not decision.allowed:
                    return 429, headers, TOO_MANY
        return 200, headers, shop_answer(self.app, exchange, shop_id, text)


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
