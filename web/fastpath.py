"""The WSGI fast path: ``GET /shop/{id}`` near-cache hits answered without Flask's dispatch.

A near-cache hit (cache/near.py) costs no Redis call; what is left of a
request is the web framework itself. Under granian an empty Flask route
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

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from flask import Flask

from logsetup import REQUEST_ID, new_request_id, valid_request_id

from .logging import access_log
from .ratelimit import EXTENSION as RATELIMIT_EXTENSION
from .ratelimit import RouteLimiter, forwarded_client_ip
from .shops import MAX_ID, shop_region_holder, shop_response_text
from .signs import CLOCK_EXTENSION
from .stats import UV_EXTENSION

log = logging.getLogger(__name__)

ENDPOINT = "shops.get_shop"
SHOP_PATH = re.compile(r"/shop/([0-9]{1,19})", re.ASCII)
TOO_MANY = json.dumps(
    {"success": False, "errorMsg": "too many requests; slow down", "data": None, "total": None},
    separators=(",", ":"),
).encode()

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _http_metrics(app: Flask) -> tuple[Any, Any] | None:
    """The exporter's request histogram and counter, looked up in its registry by name."""
    exporter = app.extensions.get("hmdp_metrics")
    if exporter is None:
        return None
    collectors = exporter.registry._names_to_collectors  # no public lookup exists
    duration = collectors.get("flask_http_request_duration_seconds")
    total = collectors.get("flask_http_request_total")
    if duration is None or total is None:
        return None
    return duration, total


class ShopFastPath:
    """WSGI middleware in front of ``app.wsgi_app`` (installed by :func:`install`)."""

    def __init__(self, app: Flask, flask_wsgi: WsgiApp):
        self.app = app
        self.flask_wsgi = flask_wsgi
        svc = app.extensions["hmdp"]
        self.services = svc
        self.settings = svc.settings
        self.region_holder = shop_region_holder(app)
        self.clock = app.extensions[CLOCK_EXTENSION]
        self.uv = app.extensions[UV_EXTENSION]
        rule = next(r.rule for r in app.url_map.iter_rules() if r.endpoint == ENDPOINT)
        metrics = _http_metrics(app)
        self.enabled = metrics is not None
        if metrics is not None:
            duration, total = metrics
            self._observe = {
                # (method, the route label, status): the exporter's label order
                status: duration.labels("GET", rule, status).observe
                for status in (200, 429)
            }
            self._count = {
                status: total.labels(method="GET", status=status).inc for status in (200, 429)
            }
        self.rule = rule

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.enabled and environ.get("REQUEST_METHOD") == "GET":
            match = SHOP_PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None and "HTTP_AUTHORIZATION" not in environ:
                try:
                    answer = self._answer(environ, int(match.group(1)))
                except Exception:  # never a 500 from here: Flask answers instead
                    log.exception("shop fast path failed; handing the request to Flask")
                    answer = None
                if answer is not None:
                    status, headers, body = answer
                    start_response(status, headers)
                    return [body]
        return self.flask_wsgi(environ, start_response)

    def _answer(
        self, environ: dict[str, Any], shop_id: int
    ) -> tuple[str, list[tuple[str, str]], bytes] | None:
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
                    return self._finish(environ, 429, headers, TOO_MANY, started)
        self.uv.record(shop_id, self.clock().date(), f"ip:{ip}")
        return self._finish(environ, 200, headers, shop_response_text(text).encode(), started)

    def _finish(
        self,
        environ: dict[str, Any],
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        started: float,
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        request_id = valid_request_id(environ.get("HTTP_X_REQUEST_ID")) or new_request_id()
        headers.append(("Content-Length", str(len(body))))
        headers.append(("X-Request-ID", request_id))
        elapsed = time.perf_counter() - started
        self._observe[status](elapsed)
        self._count[status]()
        if self.settings.access_log:
            token = REQUEST_ID.set(request_id)
            try:
                access_log.info(
                    "GET %s %s",
                    environ.get("PATH_INFO"),
                    status,
                    extra={
                        "method": "GET",
                        "path": environ.get("PATH_INFO"),
                        "route": self.rule,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "remote": environ.get("REMOTE_ADDR"),
                    },
                )
            finally:
                REQUEST_ID.reset(token)
        return ("200 OK" if status == 200 else "429 TOO MANY REQUESTS"), headers, body


def install(app: Flask) -> None:
    """Put the fast path in front of the app's WSGI callable (after every blueprint)."""
    app.wsgi_app = ShopFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
