"""How long a URL and headers may be: a 414 or 431 envelope instead of reading on.

Behind nginx its ``large_client_header_buffers`` (4 x 8 KiB) refuse longer ones
before they reach us; a client that reaches the web server directly meets the
web server's own much higher limits (granian takes URLs of about 64 KiB and
headers of hundreds) and then these, the same as nginx's, checked by the
hook after the request layer's (web/exchange.py) and before the session or a
rate limit is looked up. Nothing of ours fails on a long header; this bounds what any code may meet.
The WSGI fast paths match short paths only and read three headers, each bounded
where it is read (the token, the request id, X-Forwarded-For).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from .envelope import ApiError

MAX_TARGET_BYTES = 8192  # path and query string together
MAX_HEADER_BYTES = 8192  # one header, name and value
MAX_HEADERS_BYTES = 32768  # all of them

_HEADER_KEYS = ("CONTENT_TYPE", "CONTENT_LENGTH")


def check_request_size(environ: dict[str, Any]) -> None:
    """A 414 for an over-long URL, a 431 for an over-long header or too many header bytes."""
    target = len(environ.get("PATH_INFO") or "") + len(environ.get("QUERY_STRING") or "")
    if target > MAX_TARGET_BYTES:
        raise ApiError(f"URL too long (at most {MAX_TARGET_BYTES} bytes of path and query)", 414)
    total = 0
    for key, value in environ.items():
        if key.startswith("HTTP_") or key in _HEADER_KEYS:
            size = len(key) + len(value)
            if size > MAX_HEADER_BYTES:
                name = key.removeprefix("HTTP_").replace("_", "-").title()[:40]
                raise ApiError(
                    f"request header {name} too large (at most {MAX_HEADER_BYTES} bytes)", 431
                )
            total += size
    if total > MAX_HEADERS_BYTES:
        raise ApiError(f"request headers too large (at most {MAX_HEADERS_BYTES} bytes)", 431)


def register_request_limits(app: Flask) -> None:
    """Install the check; register it right after the request layer, before auth."""

    @app.before_request
    def _check_request_size() -> None:
        check_request_size(request.environ)
