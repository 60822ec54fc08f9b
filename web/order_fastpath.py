"""The WSGI fast path of ``POST /voucher-order/seckill/{id}``: the flash-sale order below Flask.

The seckill gate is one Redis script; under load, what costs is everything
around it: Flask's dispatch and hooks (an empty Flask route is a few thousand
requests/s on 2 cores) and the separate session round trip of the auth hook.
This middleware, in front of ``Flask.wsgi_app`` (installed by web/fastpath.py),
answers the order with the route's own code (:func:`web.orders.complete_order`,
:func:`web.orders.answer_of`) and does what the route's hooks do:

* the session: 401 ``not logged in`` without a usable token or session, the
  session's TTL pushed back. Without a rate limit on the route it is read
  INSIDE the gate script (:meth:`cache.seckill.SeckillGate.reserve_for_session`):
  ONE Redis round trip per order instead of two;
* the per-user rate limit of the route when one is set (then the session is
  read first, as the auth hook does, and the user charged to the hook's bucket:
  ``X-RateLimit-*`` headers, 429); a token bucket (the default rule) is charged
  in the same script call as the gate (``lua/seckill_charged.lua``): two
  round trips per order instead of three;
* the request id (echoed, carried by the dispatched order task), the HTTP metrics
  of prometheus-flask-exporter with the route's labels, the access line
  (web/fastroute.py), and the seckill outcome metric (in ``complete_order``).

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
import time
from typing import Any

import redis
from flask import Flask

from cache.seckill import NO_SESSION, ODD_SESSION, GateResult
from logsetup import REQUEST_ID
from models.entities import MAX_ID

from .auth import session_user, usable_token
from .envelope import ApiError, fail_bytes
from .errors import REDIS_DOWN, REDIS_DOWN_HEADERS, REDIS_ERRORS
from .fastroute import Answer, FastPath, FastRoute, WsgiApp, request_id_of
from .orders import answer_of, complete_order, seckill_state
from .ratelimit import EXTENSION as RATELIMIT_EXTENSION
from .ratelimit import RouteLimiter

log = logging.getLogger(__name__)

ENDPOINT = "orders.seckill"
SECKILL_PATH = re.compile(r"/voucher-order/seckill/([0-9]{1,19})", re.ASCII)
NOT_LOGGED_IN = "not logged in"
TOO_MANY = "too many requests; slow down"


class SeckillFastPath(FastPath):
    """WSGI middleware in front of ``app.wsgi_app`` (installed by web/fastpath.py)."""

    method = "POST"
    path = SECKILL_PATH
    name = "seckill"
    quiet_errors = (redis.RedisError, ApiError)  # Flask meets it too and answers (503)

    def __init__(self, app: Flask, flask_wsgi: WsgiApp):
        super().__init__(flask_wsgi)
        self.app = app
        self.services = app.extensions["hmdp"]
        self.settings = self.services.settings
        self.route = FastRoute(app, ENDPOINT, "POST", (200, 401, 404, 409, 429, 503))
        self.enabled = self.route.enabled

    def _answer(self, environ: dict[str, Any], voucher_id: int) -> Answer | None:
        started = time.perf_counter()
        if not 1 <= voucher_id <= MAX_ID:
            return None  # Flask's 404
        request_id = request_id_of(environ)
        context = REQUEST_ID.set(request_id)  # log lines and the order task carry it
        try:
            return self._order(environ, voucher_id, started, request_id)
        except REDIS_ERRORS as exc:
            # Redis down or stalled: answer the 503 here. Handed to Flask, the auth
            # hook would meet the same Redis again and wait a second timeout.
            log.error("redis unavailable: %s", exc)
            headers = [("Content-Type", "application/json")]
            headers.extend((name, str(value)) for name, value in REDIS_DOWN_HEADERS.items())
            body = fail_bytes(REDIS_DOWN)
            return self.route.finish(environ, 503, headers, body, started, request_id)
        finally:
            REQUEST_ID.reset(context)

    def _order(
        self, environ: dict[str, Any], voucher_id: int, started: float, request_id: str
    ) -> Answer | None:
        headers = [("Content-Type", "application/json")]

        def fail(status: int, message: str) -> Answer:
            body = fail_bytes(message)
            return self.route.finish(environ, status, headers, body, started, request_id)

        token = usable_token(environ.get("HTTP_AUTHORIZATION"))
        if token is None:
            return fail(401, NOT_LOGGED_IN)
        state = seckill_state(self.app)
        limiter: RouteLimiter = self.app.extensions[RATELIMIT_EXTENSION]
        first: GateResult
        if self.settings.rate_limit_enabled and limiter.limits(ENDPOINT):
            # The hooks' order: the session, then the user's bucket, then the view.
            user = session_user(self.services, token)
            if user is None:
                return fail(401, NOT_LOGGED_IN)
            bucket = limiter.token_bucket(ENDPOINT, "user", user.id)
            try:
                if bucket is not None:  # bucket and gate in one call
                    decision, charged = state.gate.reserve_charged(voucher_id, user.id, *bucket)
                else:
                    decision = limiter.check_subject(ENDPOINT, "user", user.id, self.services.redis)
                    charged = None
            except REDIS_ERRORS:
                raise  # the gate needs the same Redis: 503 (in _answer)
            except redis.RedisError:
                return None  # Flask's hook counts the error and fails open
            if decision is not None:
                headers.extend(decision.headers().items())
                if not decision.allowed:
                    if bucket is not None:  # check_subject counted its own
                        limiter.refused(ENDPOINT)
                    return fail(429, TOO_MANY)
            first = charged or state.gate.reserve(voucher_id, user.id)
        else:
            ttl = self.settings.login_token_ttl
            first = state.gate.reserve_for_session(voucher_id, token, ttl)
            if first.outcome == NO_SESSION:
                return fail(401, NOT_LOGGED_IN)
            if first.outcome == ODD_SESSION:
                return None
        status, body = answer_of(complete_order(state, voucher_id, first))
        return self.route.finish(environ, status, headers, body, started, request_id)
