"""What every WSGI fast path shares: the side effects of Flask's hooks for one route.

A fast path (web/fastpath.py, web/order_fastpath.py) answers a hot request
below Flask; whatever it answers must leave the same traces as the Flask route
would: the request id (the client's valid ``X-Request-ID`` or a new one),
echoed in the response and stamped on the ``hmdp.access`` line (written when
enabled), and prometheus-flask-exporter's HTTP metrics with the route's labels.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask

from logsetup import REQUEST_ID, new_request_id, valid_request_id

from .logging import access_log

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Answer = tuple[str, list[tuple[str, str]], bytes]  # status line, headers, body


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


def request_id_of(environ: dict[str, Any]) -> str:
    """The client's valid ``X-Request-ID``, or a new one (as web/logging.py decides)."""
    return valid_request_id(environ.get("HTTP_X_REQUEST_ID")) or new_request_id()


class FastRoute:
    """One Flask route answered below Flask: the side effects its hooks would have had.

    ``enabled`` is False when the app has no HTTP metrics to keep (then the fast
    path stays off: its answers must be counted where Flask's are).
    """

    def __init__(self, app: Flask, endpoint: str, method: str, statuses: Iterable[int]):
        self.method = method
        self.settings = app.extensions["hmdp"].settings
        self.rule = next(r.rule for r in app.url_map.iter_rules() if r.endpoint == endpoint)
        self.status_lines = {s: f"{s} {HTTPStatus(s).phrase.upper()}" for s in statuses}
        metrics = _http_metrics(app)
        self.enabled = metrics is not None
        if metrics is not None:
            duration, total = metrics
            # (method, the route label, status): the exporter's label order
            self._observe = {
                s: duration.labels(method, self.rule, s).observe for s in self.status_lines
            }
            self._count = {s: total.labels(method=method, status=s).inc for s in self.status_lines}

    def finish(
        self,
        environ: dict[str, Any],
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        started: float,
        request_id: str | None = None,
    ) -> Answer:
        """Count, log and complete an answer as Flask's hooks would (request id, metrics, access line)."""
        request_id = request_id or request_id_of(environ)
        headers.append(("Content-Length", str(len(body))))
        headers.append(("X-Request-ID", request_id))
        elapsed = time.perf_counter() - started
        self._observe[status](elapsed)
        self._count[status]()
        if self.settings.access_log:
            token = REQUEST_ID.set(request_id)
            try:
                access_log.info(
                    "%s %s %s",
                    self.method,
                    environ.get("PATH_INFO"),
                    status,
                    extra={
                        "method": self.method,
                        "path": environ.get("PATH_INFO"),
                        "route": self.rule,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "remote": environ.get("REMOTE_ADDR"),
                    },
                )
            finally:
                REQUEST_ID.reset(token)
        return self.status_lines[status], headers, body


class FastPath:
    """A WSGI middleware answering one route's requests below Flask when it can.

    A subclass sets ``method``, ``path`` (its one group: the id) and ``name``,
    and implements :meth:`_answer`: an Answer, or None to hand the request on
    (to ``flask_wsgi``: Flask, or the next fast path). Errors in ``quiet_errors``
    hand it on silently (Flask meets them again and answers); any other error is
    logged first: a fast path never answers 500 itself.
    """

    method: str
    path: re.Pattern[str]
    name: str
    quiet_errors: tuple[type[Exception], ...] = ()
    enabled = False

    def __init__(self, flask_wsgi: WsgiApp):
        self.flask_wsgi = flask_wsgi

    def _wants(self, environ: dict[str, Any]) -> bool:
        """More conditions than the method and path (e.g. no login), cheap to test."""
        return True

    def _answer(self, environ: dict[str, Any], id_: int) -> Answer | None:
        raise NotImplementedError

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.enabled and environ.get("REQUEST_METHOD") == self.method:
            match = self.path.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None and self._wants(environ):
                try:
                    answer = self._answer(environ, int(match.group(1)))
                except self.quiet_errors:
                    answer = None
                except Exception:
                    log.exception("%s fast path failed; handing the request to Flask", self.name)
                    answer = None
                if answer is not None:
                    status, headers, body = answer
                    start_response(status, headers)
                    return [body]
        return self.flask_wsgi(environ, start_response)
