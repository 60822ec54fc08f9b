"""Request ids and the access log of the web tier.

Every request gets an id: the client's ``X-Request-ID`` when it is valid (nginx
forwards one it made itself when the client sent none), else a fresh one. The id
is set in :data:`logsetup.REQUEST_ID` for the request's duration, so every log
line written while serving it, and every Celery task dispatched by it (see
:mod:`tasks.logging`), carries it; it goes back in the ``X-Request-ID`` response
header so a client can quote it. One structured access-log line per request
(logger ``hmdp.access``) gives route, status and duration next to the id.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from logsetup import REQUEST_ID, REQUEST_ID_HEADER, new_request_id, valid_request_id

access_log = logging.getLogger("hmdp.access")


def register_request_logging(app: Flask, access_log_enabled: bool = True) -> None:
    """Install the hooks; call before any other before_request hook is registered."""

    @app.before_request
    def _start_request() -> None:
        request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        g.request_id = request_id
        g.request_id_token = REQUEST_ID.set(request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    def _finish_request(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        if access_log_enabled and request_id:
            started = g.get("request_started", time.perf_counter())
            rule = request.url_rule.rule if request.url_rule is not None else None
            access_log.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "route": rule,
                    "status": response.status_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "remote": request.remote_addr,
                },
            )
        return response

    @app.teardown_request
    def _end_request(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                REQUEST_ID.reset(token)
            except ValueError:  # set in another context (should not happen); just clear
                REQUEST_ID.set(None)
