"""Rate limits on routes, applied in one place: a before-request hook and a table.

``ROUTE_LIMITS`` maps endpoint names to a limit group (whose rule spec is a
Settings field) and to the subjects it is counted per: the client IP, the
logged-in user, and/or the phone in the request. A request is charged to all
its subjects at once in ONE script call (cache/ratelimit.py), all or nothing;
over the limit it gets 429 with ``Retry-After`` and ``X-RateLimit-*`` headers,
and every limited response carries the ``X-RateLimit-*`` headers.

The hook runs after the auth hook (registered after it), so per-user limits
see the user; a per-user limit on an anonymous request falls back to the client
address (:meth:`web.exchange.Exchange.client_ip`). The WSGI fast paths charge
their requests through the same :meth:`RouteLimiter.charge`, and a request is
charged once, whichever layer answers it.

If Redis cannot answer, the limiter fails OPEN (the request goes on, the error
is counted in ``hmdp_rate_limit_errors_total``): a cache outage must not turn
into refusing everything that could still be served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import redis
from flask import Flask, Response, current_app, request

from cache.ratelimit import (
    Decision,
    Limiter,
    Rule,
    TokenBucket,
    limit_key,
    limiter_for,
    parse_rule,
)
from metrics import RATE_LIMIT_ERRORS, RATE_LIMIT_REJECTIONS
from settings import Settings

from .envelope import TooManyRequests
from .exchange import TOO_MANY_REQUESTS, Exchange, current_exchange
from .phones import is_valid_phone, named_phones
from .runtime import services

log = logging.getLogger(__name__)

Subject = Literal["ip", "user", "phone"]
EXTENSION = "hmdp_ratelimit"


@dataclass(frozen=True)
class RouteLimit:
    """One route's limit: a group (bucket family), its spec's setting, and its subjects."""

    group: str
    setting: str
    per: tuple[Subject, ...]


SECKILL = RouteLimit("seckill", "rate_limit_seckill", ("user",))
SHOP_QUERY = RouteLimit("shop_query", "rate_limit_shop_query", ("ip",))

# Endpoint name -> limit. Shop queries share one budget per IP; the code and
# login routes have separate budgets, each per phone AND per IP.
ROUTE_LIMITS: dict[str, RouteLimit] = {
    "orders.seckill": SECKILL,
    "shops.get_shop": SHOP_QUERY,
    "shops.shops_by_type": SHOP_QUERY,
    "shops.shops_by_name": SHOP_QUERY,
    "shops.shop_types": SHOP_QUERY,
    "users.send_code": RouteLimit("code", "rate_limit_login", ("phone", "ip")),
    "users.login": RouteLimit("login", "rate_limit_login", ("phone", "ip")),
    "uploads.upload_blog_image": RouteLimit("upload", "rate_limit_upload", ("user",)),
}


class RouteLimiter:
    """The table resolved against Settings; charges a request to its subjects."""

    def __init__(self, settings: Settings, table: dict[str, RouteLimit] | None = None):
        self.settings = settings
        self.table = dict(ROUTE_LIMITS if table is None else table)
        # Parsed at start-up: a bad spec stops the app instead of not limiting.
        self.rules: dict[str, Rule | None] = {
            limit.setting: parse_rule(getattr(settings, limit.setting))
            for limit in self.table.values()
        }
        self._limiters: dict[type, Limiter] = {}
        self._client: redis.Redis | None = None

    def _limiter(self, client: redis.Redis, rule: Rule) -> Limiter:
        if client is not self._client:  # Services reconnected: rebind the scripts
            self._limiters, self._client = {}, client
        limiter = self._limiters.get(type(rule))
        if limiter is None:
            limiter = self._limiters[type(rule)] = limiter_for(client, rule)
        return limiter

    def _rule(self, endpoint: str | None) -> tuple[RouteLimit, Rule] | None:
        """The route's limit and its rule; None when the route is not limited."""
        limit = self.table.get(endpoint or "")
        if limit is None:
            return None
        rule = self.rules[limit.setting]
        return None if rule is None else (limit, rule)

    def _keys(self, exchange: Exchange, limit: RouteLimit) -> list[str]:
        keys: set[str] = set()
        for subject in limit.per:
            if subject == "user" and exchange.user is not None:
                keys.add(limit_key(limit.group, "user", exchange.user.id))
            elif subject == "phone":  # every valid phone the request names (web/phones.py)
                keys.update(
                    limit_key(limit.group, "phone", p) for p in named_phones() if is_valid_phone(p)
                )
            else:  # the address, or an anonymous request to a per-user limit
                ip = exchange.client_ip(self.settings.trusted_proxies)
                keys.add(limit_key(limit.group, "ip", ip))
        return sorted(keys)

    def charge(
        self,
        exchange: Exchange,
        endpoint: str | None,
        client: redis.Redis,
        raising: tuple[type[redis.RedisError], ...] = (),
    ) -> Decision | None:
        """Charge the request to its route's buckets, ONCE per request; None if not limited.

        The decision is kept on the exchange: a request that a fast path
        charged and then handed on to Flask is not charged again by the hook.
        If Redis cannot answer, the limiter fails open (None; counted, logged),
        but for the errors in ``raising``: a caller whose next step needs the
        same Redis ends the request instead of waiting for it twice. A
        per-phone subject reads the Flask request (no fast path has one).
        """
        if exchange.charged:
            return exchange.rate_limit
        found = self._rule(endpoint)
        decision = None
        if found is not None:
            limit, rule = found
            keys = self._keys(exchange, limit)
            try:
                decision = self._limiter(client, rule).hit_all([(key, rule) for key in keys])
            except raising:
                raise
            except redis.RedisError as exc:
                RATE_LIMIT_ERRORS.inc()
                log.warning("rate limiter unavailable, letting the request through: %s", exc)
            else:
                if not decision.allowed:
                    RATE_LIMIT_REJECTIONS.labels(rule=limit.group).inc()
        exchange.rate_limit, exchange.charged = decision, True
        return decision

    def user_bucket(self, exchange: Exchange, endpoint: str) -> tuple[str, TokenBucket] | None:
        """The per-user token bucket :meth:`charge` would charge, for a caller that charges it.

        For a fast path that reads the session and charges the bucket inside its
        own script, in the same call as its work (web/order_fastpath.py with
        cache.seckill's reserve_charged), and then hands the decision to
        :meth:`charged`: the bucket's key without the user id (the script appends
        the session's) and its rule. None when :meth:`charge` must do it: no
        limit, another strategy, or other subjects than the user.
        """
        found = None if exchange.charged else self._rule(endpoint)
        if found is None or not isinstance(found[1], TokenBucket) or found[0].per != ("user",):
            return None
        return limit_key(found[0].group, "user", ""), found[1]

    def charged(self, exchange: Exchange, endpoint: str, decision: Decision) -> None:
        """Keep (and count) a decision of :meth:`token_bucket`'s bucket made by its caller."""
        if not decision.allowed:
            RATE_LIMIT_REJECTIONS.labels(rule=self.table[endpoint].group).inc()
        exchange.rate_limit, exchange.charged = decision, True

    def limits(self, endpoint: str) -> bool:
        """True if requests to ``endpoint`` are charged to some bucket (a rule is set)."""
        return self._rule(endpoint) is not None


def register_ratelimit(app: Flask, settings: Settings) -> None:
    """Install the rate-limit hook (after the auth hook); nothing when disabled.

    The hook reads the table from ``app.extensions["hmdp_ratelimit"]``, so a
    deployment (or a test) can swap in a RouteLimiter with its own table.
    """
    app.extensions[EXTENSION] = RouteLimiter(settings)
    if not settings.rate_limit_enabled:
        return

    @app.before_request
    def _rate_limit() -> None:
        if request.method == "OPTIONS":  # CORS preflight: no work done, nothing to limit
            return
        limiter: RouteLimiter = current_app.extensions[EXTENSION]
        decision = limiter.charge(current_exchange(), request.endpoint, services().redis)
        if decision is not None and not decision.allowed:
            raise TooManyRequests(TOO_MANY_REQUESTS, headers=decision.headers())

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        decision = current_exchange().rate_limit
        if decision is not None:
            for name, value in decision.headers().items():
                response.headers[name] = value
        return response
