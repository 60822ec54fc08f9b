"""The hmdp JSON envelope and the error type every view raises.

Clients read ``{"success", "errorMsg", "data", "total"}``; the HTTP status
tells proxies and operators the same thing (400/401/403/404/409/429/503).
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request


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


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class TooManyRequests(ApiError):
    status = 429


def ok(data: Any = None, total: int | None = None, status: int = 200) -> Response:
    """A success envelope."""
    response = jsonify({"success": True, "errorMsg": None, "data": data, "total": total})
    response.status_code = status
    return response


def fail(message: str, status: int, headers: dict | None = None) -> Response:
    """A failure envelope with a real HTTP status."""
    response = jsonify({"success": False, "errorMsg": message, "data": None, "total": None})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = str(value)
    return response


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    if not request.data:
        raise BadRequest("request body must be a JSON object")
    payload = request.get_json(silent=True, force=True)
    if payload is None:
        raise BadRequest("request body is not valid JSON")
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    return payload


def int_arg(
    name: str, default: int | None = None, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer query parameter, validated; missing without default is a 400."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"query parameter '{name}' is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter '{name}' must be an integer") from None
    if minimum is not None and value < minimum:
        raise BadRequest(f"query parameter '{name}' must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise BadRequest(f"query parameter '{name}' must be <= {maximum}")
    return value


def float_arg(name: str) -> float | None:
    """An optional float query parameter, validated."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter '{name}' must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"query parameter '{name}' must be a finite number")
    return value
