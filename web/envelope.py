"""The hmdp JSON envelope and the error type every view raises.

Clients read ``{"success", "errorMsg", "data", "total"}``; the HTTP status
tells proxies and operators the same thing (400/401/403/404/409/429/503).

:func:`envelope` is the one encoder of the four fields, for Flask's views and
the WSGI fast paths alike, so both answer the same bytes. An answer is a
failure exactly when it carries an ``errorMsg``. JSON text that is already
encoded (a cached shop) is put in as it is (:func:`envelope_around`), never
decoded and encoded again; the hot answers' bytes are built from constant parts.
"""

from __future__ import annotations

import json
from functools import lru_cache, partial
from typing import Any

from flask import Response, request
from flask.json.provider import DefaultJSONProvider

from .exchange import NOT_LOGGED_IN

MIMETYPE = "application/json"

# Flask's JSON conversions (dates, decimals, dataclasses ...), compact, UTF-8 as is.
_dumps = partial(
    json.dumps, ensure_ascii=False, separators=(",", ":"), default=DefaultJSONProvider.default
)
_OK_HEAD = '{"success":true,"errorMsg":null,"data":'
_TAIL = ',"total":null}\n'


def envelope_around(data_json: str, error: str | None = None, total: int | None = None) -> str:
    """The envelope around ``data_json`` (JSON text already encoded): the one place of its fields."""
    if error is None and total is None:
        return _OK_HEAD + data_json + _TAIL
    return (
        '{"success":'
        + ("true" if error is None else "false")
        + ',"errorMsg":'
        + _dumps(error)
        + ',"data":'
        + data_json
        + ',"total":'
        + _dumps(total)
        + "}\n"
    )


def envelope(data: Any = None, error: str | None = None, total: int | None = None) -> str:
    """The envelope of ``data`` (encoded as Flask would), a failure when ``error`` is given."""
    return envelope_around(_dumps(data), error, total)


def ok_bytes(data_json: str) -> bytes:
    """A success around encoded JSON text, as bytes (:func:`envelope_around`, for the hot answers)."""
    return (_OK_HEAD + data_json + _TAIL).encode()


@lru_cache(maxsize=256)
def fail_bytes(message: str) -> bytes:
    """A failure's body as bytes; the hot paths' few messages are encoded once."""
    return envelope(error=message).encode()


def json_response(text: str, status: int = 200) -> Response:
    """A Flask response of envelope text."""
    return Response(text, status=status, mimetype=MIMETYPE)


class ApiError(Exception):
    """A failure the client should see as ``errorMsg`` with ``status``."""

    status = 400

    def __init__(self, message: str, status: int | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotLoggedIn(Unauthorized):
    """A missing or expired login (no session, or one whose user is gone), as opposed to a
    refused login attempt: the one error the hmdp compatibility mode leaves as 401, which
    its front end answers with its login page (web/exchange.py)."""

    def __init__(self, message: str = NOT_LOGGED_IN):
        super().__init__(message)


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class UnsupportedMediaType(ApiError):
    status = 415


class TooManyRequests(ApiError):
    status = 429


def ok(data: Any = None, total: int | None = None, status: int = 200) -> Response:
    """A success envelope."""
    return json_response(envelope(data, total=total), status)


def fail(message: str, status: int, headers: dict | None = None) -> Response:
    """A failure envelope with a real HTTP status."""
    response = json_response(envelope(error=message), status)
    for name, value in (headers or {}).items():
        response.headers[name] = str(value)
    return response


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or a 413/415/400 that says what is wrong.

    The app's one parser decides (web/request_json.py: the size limit,
    Content-Type, depth, numbers, storable strings).
    """
    if not request.get_data():
        raise BadRequest("request body must be a JSON object")
    payload = request.get_json()
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    return payload
