"""The WSGI fast path of ``POST /voucher-order/seckill/{id}``: the flash-sale order below Flask.

The seckill gate is one Redis script; under load, what costs is everything
around it: Flask's dispatch and hooks and the separate session round trip of
the auth hook. This middleware, in front of ``Flask.wsgi_app`` (installed by
web/fastpath.py), answers the order with the route's own code
(:func:`web.orders.complete_order`, :func:`web.orders.answer_of`) and the
request layer of the route's hooks (web/exchange.py, web/fastroute.py):

* the session: 401 ``not logged in`` without a usable token or session, the
  session's TTL pushed back. Without a rate limit on the route it is read
  INSIDE the gate script (:meth:`cache.seckill.SeckillGate.reserve_for_session`):
  ONE Redis round trip per order instead of two;
* the per-user rate limit of the route when one is set, in the hooks' order:
  the session, then the user charged to the hook's bucket (``X-RateLimit-*``
  headers, 429), then the gate. A token bucket (the default rule) is charged in
  the same script call that reads the session and runs the gate
  (``lua/seckill_charged.lua``): ONE round trip per order instead of three (on
  a single Redis; on a Redis Cluster the same gate methods make the calls one
  by one, each key in its own slot); another rule loads the session as the auth hook does
  (:func:`web.auth.load_user`) and charges it separately;
* the request id (echoed, carried by the dispatched order task), the HTTP
  metrics with the route's labels and the access line (the finish step), and
  the seckill outcome metric (in ``complete_order``).

Anything unusual goes to Flask unchanged: another method or path, an id
outside the route's range, a session id the script does not judge (the auth
code decides), another Redis error (Flask meets it again and answers), or any
unexpected error here (logged). Redis down or stalled (a connection error or a
timeout) is answered here, 503 as Flask would: handed on, it would cost the
request a second socket timeout. A voucher Redis does not know is loaded from
the database here, by the route's code, so a flood of orders for a missing
voucher costs no more than through Flask.
"""

from __future__ import annotations

import logging
import re

import redis

from cache.seckill import NO_SESSION, ODD_SESSION, GateResult
from models.entities import MAX_ID

from .auth import load_user
from .envelope import MIMETYPE, ApiError, fail_bytes
from .errors import REDIS_DOWN, REDIS_DOWN_HEADERS, REDIS_ERRORS
from .exchange import NOT_LOGGED_IN, TOO_MANY_REQUESTS, Exchange
from .fastroute import Answer, FastPath
from .orders import answer_of, complete_order, seckill_state
from .ratelimit import EXTENSION as RATELIMIT_EXTENSION
from .ratelimit import RouteLimiter

log = logging.getLogger(__name__)

SECKILL_PATH = re.compile(r"/voucher-order/seckill/([0-9]{1,19})", re.ASCII)
NOT_LOGGED_IN_BODY = fail_bytes(NOT_LOGGED_IN)
TOO_MANY = fail_bytes(TOO_MANY_REQUESTS)
REDIS_DOWN_BODY = fail_bytes(REDIS_DOWN)


def _not_logged_in(exchange: Exchange, headers: list[tuple[str, str]]) -> Answer:
    """401: no usable session (a missing login, left a 401 by the compat mode)."""
    exchange.login_missing = True
    return 401, headers, NOT_LOGGED_IN_BODY


class SeckillFastPath(FastPath):
    """WSGI middleware in front of ``app.wsgi_app`` (installed by web/fastpath.py)."""

    method = "POST"
    path = SECKILL_PATH
    endpoint = "orders.seckill"
    statuses = (200, 401, 404, 409, 429, 503)
    quiet_errors = (redis.RedisError, ApiError)  # Flask meets it too and answers

    def _answer(self, exchange: Exchange, voucher_id: int) -> Answer | None:
        if not 1 <= voucher_id <= MAX_ID:
            return None  # Flask's 404
        try:
            return self._order(exchange, voucher_id)
        except REDIS_ERRORS as exc:
            # Redis down or stalled: answer the 503 here. Handed to Flask, the auth
            # hook would meet the same Redis again and wait a second timeout.
            log.error("redis unavailable: %s", exc)
            headers = [("Content-Type", MIMETYPE)]
            headers.extend((name, str(value)) for name, value in REDIS_DOWN_HEADERS.items())
            return 503, headers, REDIS_DOWN_BODY

    def _order(self, exchange: Exchange, voucher_id: int) -> Answer | None:
        headers = [("Content-Type", MIMETYPE)]
        token = exchange.token
        if token is None:
            return _not_logged_in(exchange, headers)
        state = seckill_state(self.app)
        limiter: RouteLimiter = self.app.extensions[RATELIMIT_EXTENSION]
        ttl = self.settings.login_token_ttl
        first: GateResult | None = None
        if self.settings.rate_limit_enabled and limiter.limits(self.endpoint):
            # The hooks' order: the session, then the user's bucket, then the view.
            bucket = limiter.user_bucket(exchange, self.endpoint)
            if bucket is not None:  # session, bucket and gate in one call
                decision, first = state.gate.reserve_charged(voucher_id, token, ttl, *bucket)
                if decision is None:  # no session, or one the auth code must judge
                    assert first is not None
                    return (
                        _not_logged_in(exchange, headers) if first.outcome == NO_SESSION else None
                    )
                limiter.charged(exchange, self.endpoint, decision)
            else:
                user = load_user(exchange, self.services)
                if user is None:
                    return _not_logged_in(exchange, headers)
                # Redis down or stalled: 503 at once, the gate needs the same Redis
                client = self.services.redis
                decision = limiter.charge(exchange, self.endpoint, client, raising=REDIS_ERRORS)
                if decision is None or decision.allowed:
                    first = state.gate.reserve(voucher_id, user.id)
            if decision is not None:
                headers.extend(decision.headers().items())
                if not decision.allowed:
                    return 429, headers, TOO_MANY
            assert first is not None
        else:
            first = state.gate.reserve_for_session(voucher_id, token, ttl)
            if first.outcome == NO_SESSION:
                return _not_logged_in(exchange, headers)
            if first.outcome == ODD_SESSION:
                return None
        status, body, more = answer_of(complete_order(state, voucher_id, first))
        headers.extend(more)
        return status, headers, body
