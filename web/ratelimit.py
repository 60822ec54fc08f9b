"""Rate limits on routes, applied in one place: a before-request hook and a table.

``ROUTE_LIMITS`` maps endpoint names to a limit group (whose rule spec is a
Settings field) and to the subjects it is counted per: the client IP, the
logged-in user, and/or the phone in the request. A request is charged to all
its subjects at once in ONE script call (cache/ratelimit.py), all or nothing;
over the limit it gets 429 with ``Retry-After`` and ``X-RateLimit-*`` headers,
and every limited response carries the ``X-RateLimit-*`` headers.

Endpoints of modules not written yet simply never match. The hook runs after
the auth hook (registered after it), so per-user limits see the user; a
per-user limit on an anonymous request falls back to the client IP. The
client IP is computed by :func:`forwarded_client_ip` (for the Flask hooks and
the WSGI fast paths alike): the peer address, or, when the peer is one of
``settings.trusted_proxies`` (CIDRs), the address X-Forwarded-For names left
of the trusted proxies.

If Redis cannot answer, the limiter fails OPEN (the request goes on, the error
is counted in ``hmdp_rate_limit_errors_total``): a cache outage must not turn
into refusing everything that could still be served.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from dataclasses import dataclass
from typing import Literal

import redis
from flask import Flask, Response, current_app, g, request

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
from settings import ProxyNetworks, Settings

from .auth import current_user
from .envelope import TooManyRequests
from .phones import is_valid_phone, named_phones
from .runtime import services

log = logging.getLogger(__name__)

Subject = Literal["ip", "user", "phone"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
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


def client_ip(trusted_proxies: ProxyNetworks) -> str:
    """This request's client address (see :func:`forwarded_client_ip`)."""
    return forwarded_client_ip(
        request.remote_addr, request.headers.get("X-Forwarded-For"), trusted_proxies
    )


def forwarded_client_ip(
    remote_addr: str | None, forwarded_for: str | None, trusted_proxies: ProxyNetworks
) -> str:
    """The client's address from the peer address, X-Forwarded-For and the trusted proxies.

    The ONE place that decides who the client is, for the Flask hooks and the
    WSGI fast paths (which have only the environ). X-Forwarded-For counts only
    when the peer itself is a trusted proxy: anyone else who reaches the web
    server directly could write any address into it. Each proxy appends the
    address it received from, so the chain is walked from the right while the
    hop is a trusted proxy too; the first hop that is not one is the client.
    An entry that is not an address stops the walk at the last address known.
    """
    remote = remote_addr or "unknown"
    if not trusted_proxies or not forwarded_for:
        return remote
    peer = _address(remote)
    if peer is None or not _is_trusted(peer, trusted_proxies):
        return remote
    client = str(peer)
    for hop in reversed(forwarded_for.split(",")):
        address = _address(hop.strip())
        if address is None:
            break
        client = str(address)
        if not _is_trusted(address, trusted_proxies):
            break
    return client


MAX_ADDRESS_TEXT = 45  # the longest textual IPv6 address (with an embedded IPv4 one)


def _address(text: str) -> IPAddress | None:
    """``text`` as an address (an IPv4-mapped IPv6 one as IPv4), or None if it is not one."""
    return _parse_address(text) if len(text) <= MAX_ADDRESS_TEXT else None


@functools.lru_cache(maxsize=4096)
def _parse_address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, trusted_proxies: ProxyNetworks) -> bool:
    return any(address in network for network in trusted_proxies)


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

    def _subject_keys(self, limit: RouteLimit, subject: Subject) -> list[str]:
        if subject == "user":
            user = current_user()
            if user is not None:
                return [limit_key(limit.group, "user", user.id)]
            subject = "ip"  # anonymous: count per address instead
        if subject == "phone":  # every valid phone the request names (web/phones.py)
            phones = (p for p in named_phones() if is_valid_phone(p))
            return [limit_key(limit.group, "phone", phone) for phone in phones]
        return [limit_key(limit.group, "ip", client_ip(self.settings.trusted_proxies))]

    def check(self, endpoint: str | None, client: redis.Redis) -> Decision | None:
        """The decision for this request, or None if its route is not limited."""
        limit = self.table.get(endpoint or "")
        if limit is None:
            return None
        rule = self.rules[limit.setting]
        if rule is None:
            return None
        keys = sorted({key for subject in limit.per for key in self._subject_keys(limit, subject)})
        return self._charge(limit, rule, keys, client)

    def check_ip(self, endpoint: str, ip: str, client: redis.Redis) -> Decision | None:
        """Like :meth:`check` for a route limited per client address only, without a request.

        The WSGI fast path (web/fastpath.py) charges its hits here, to the same
        bucket the Flask hook would use.
        """
        return self.check_subject(endpoint, "ip", ip, client)

    def check_subject(
        self, endpoint: str, subject: Subject, value: object, client: redis.Redis
    ) -> Decision | None:
        """Like :meth:`check` for a route limited per ``subject`` only (its value given).

        For the WSGI fast paths, which have no Flask request: the seckill one
        (web/order_fastpath.py) charges the user it resolved, to the bucket the
        Flask hook would charge for that user.
        """
        found = self._subject_rule(endpoint, subject)
        if found is None:
            return None
        limit, rule = found
        return self._charge(limit, rule, [limit_key(limit.group, subject, value)], client)

    def _subject_rule(self, endpoint: str, subject: Subject) -> tuple[RouteLimit, Rule] | None:
        """The limit and rule of a route limited per ``subject`` only; None if not limited."""
        limit = self.table.get(endpoint)
        if limit is None:
            return None
        if limit.per != (subject,):
            raise ValueError(f"{endpoint} is not limited per {subject} only: {limit.per}")
        rule = self.rules[limit.setting]
        return None if rule is None else (limit, rule)

    def token_bucket(
        self, endpoint: str, subject: Subject, value: object
    ) -> tuple[str, TokenBucket] | None:
        """The bucket :meth:`check_subject` would charge, when it is a token bucket.

        For a fast path that charges it inside its own script, in the same call
        as its work (web/order_fastpath.py with cache.seckill's reserve_charged);
        None for another strategy or no limit (then :meth:`check_subject`).
        The caller reports a refusal with :meth:`refused`.
        """
        found = self._subject_rule(endpoint, subject)
        if found is None:
            return None
        limit, rule = found
        if not isinstance(rule, TokenBucket):
            return None
        return limit_key(limit.group, subject, value), rule

    def refused(self, endpoint: str) -> None:
        """Count a refusal decided outside :meth:`check` (see :meth:`token_bucket`)."""
        RATE_LIMIT_REJECTIONS.labels(rule=self.table[endpoint].group).inc()

    def limits(self, endpoint: str) -> bool:
        """True if requests to ``endpoint`` are charged to some bucket (a rule is set)."""
        limit = self.table.get(endpoint)
        return limit is not None and self.rules[limit.setting] is not None

    def _charge(
        self, limit: RouteLimit, rule: Rule, keys: list[str], client: redis.Redis
    ) -> Decision | None:
        if not keys:
            return None
        decision = self._limiter(client, rule).hit_all([(key, rule) for key in keys])
        if not decision.allowed:
            RATE_LIMIT_REJECTIONS.labels(rule=limit.group).inc()
        return decision


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
        try:
            decision = limiter.check(request.endpoint, services().redis)
        except redis.RedisError as exc:
            RATE_LIMIT_ERRORS.inc()
            log.warning("rate limiter unavailable, letting the request through: %s", exc)
            return
        if decision is None:
            return
        g.rate_limit = decision
        if not decision.allowed:
            raise TooManyRequests("too many requests; slow down", headers=decision.headers())

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        decision: Decision | None = g.get("rate_limit")
        if decision is not None:
            for name, value in decision.headers().items():
                response.headers[name] = value
        return response
