"""Error handlers: every failure leaves as a JSON envelope, never HTML or a trace."""

from __future__ import annotations

import logging

from flask import Flask, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from cache.connection import UNAVAILABLE

from .envelope import ApiError, NotLoggedIn, fail
from .exchange import current_exchange

log = logging.getLogger(__name__)

_HTTP_MESSAGES = {
    400: "bad request",
    401: "not logged in",
    403: "not allowed",
    404: "no such resource",
    405: "method not allowed",
    413: "request body too large",
    415: "unsupported media type",
    429: "too many requests",
}

# Redis down, stalled (no answer within HMDP_REDIS_SOCKET_TIMEOUT) or, on a cluster,
# without a master for the key's slot (cache.connection.UNAVAILABLE): what a client is told.
REDIS_DOWN = "service temporarily unavailable (cache)"
REDIS_DOWN_HEADERS = {"Retry-After": 1}
REDIS_ERRORS = UNAVAILABLE


def register_error_handlers(app: Flask) -> None:
    """Map our ApiError, werkzeug's HTTP errors and backend outages to envelopes."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        if isinstance(error, NotLoggedIn):
            current_exchange().login_missing = True  # kept a 401 in compat mode
        return fail(error.message, error.status, error.headers)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = _HTTP_MESSAGES.get(status) or (error.name or "error").lower()
        if status == 400 and error.description and "JSON" in error.description:
            message = "request body is not valid JSON"
        response = fail(message, status)
        if status == 405 and getattr(error, "valid_methods", None):
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    def _redis_down(error: Exception) -> Response:
        log.error("redis unavailable: %s: %s", type(error).__name__, error)
        return fail(REDIS_DOWN, 503, REDIS_DOWN_HEADERS)

    for unavailable in REDIS_ERRORS:
        app.register_error_handler(unavailable, _redis_down)

    @app.errorhandler(OperationalError)
    def _db_down(error: DBAPIError) -> Response:
        log.error("database unavailable: %s", error.orig)
        return fail("service temporarily unavailable (database)", 503, {"Retry-After": 1})

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return fail("internal server error", 500)
