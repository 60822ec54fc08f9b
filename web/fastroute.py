"""The WSGI fast path of one Flask route: the same answer, dispatched below Flask.

A fast path (web/fastpath.py, web/order_fastpath.py) answers a hot route's
requests without Flask's dispatch, with the route's own code and the request
layer Flask's hooks use (web/exchange.py): the request's facts
(:class:`~web.exchange.Exchange`), the rate-limit charge, and the one finish
step (HTTP metrics with the route's labels, the access line, ``X-Request-ID``).
Only the dispatch differs: a method and a path pattern instead of the URL map.

What a fast path cannot answer it hands on, with its exchange in the environ,
to ``flask_wsgi`` (Flask, or the next fast path): the request keeps its id and
start time, and is not charged to a rate limit twice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask

from logsetup import REQUEST_ID, REQUEST_ID_HEADER

from .exchange import EXCHANGE_KEY, FINISH_EXTENSION, Exchange, Finish, HttpMetrics

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Answer = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body


class FastPath:
    """A WSGI middleware answering one route's requests below Flask when it can.

    A subclass sets ``method``, ``path`` (its one group: the id), ``endpoint``
    (the Flask route it answers for) and the ``statuses`` it answers, and
    implements :meth:`_answer`: an Answer, or None to hand the request on.
    Errors in ``quiet_errors`` hand it on silently (Flask meets them again and
    answers); any other error is logged first: a fast path never answers 500
    itself.
    """

    method: str
    path: re.Pattern[str]
    endpoint: str
    statuses: tuple[int, ...]
    quiet_errors: tuple[type[Exception], ...] = ()

    def __init__(self, app: Flask, flask_wsgi: WsgiApp):
        self.app = app
        self.flask_wsgi = flask_wsgi
        self.services = app.extensions["hmdp"]
        self.settings = self.services.settings
        self.rule = next(r.rule for r in app.url_map.iter_rules() if r.endpoint == self.endpoint)
        self._finish: Finish = app.extensions[FINISH_EXTENSION]
        metrics: HttpMetrics = app.extensions["hmdp_metrics"]
        self._recorders = {
            status: metrics.recorder(self.method, self.rule, status) for status in self.statuses
        }
        self._lines = {
            status: f"{status} {HTTPStatus(status).phrase.upper()}"
            for status in (200, *self.statuses)  # 200: an error shown in compat mode
        }

    def _wants(self, environ: dict[str, Any]) -> bool:
        """More conditions than the method and path (e.g. no login), cheap to test."""
        return True

    def _answer(self, exchange: Exchange, id_: int) -> Answer | None:
        raise NotImplementedError

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == self.method:
            match = self.path.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None and self._wants(environ):
                exchange = environ.get(EXCHANGE_KEY) or Exchange(environ)
                exchange.route = self.rule
                request_id = exchange.request_id
                context = REQUEST_ID.set(request_id)  # log lines and tasks carry it
                try:
                    try:
                        answer = self._answer(exchange, int(match.group(1)))
                    except self.quiet_errors:
                        answer = None
                    except Exception:
                        log.exception("%s fast path failed; handing it to Flask", self.endpoint)
                        answer = None
                    if answer is not None:
                        status, headers, body = answer
                        shown, more = self._finish(exchange, status, self._recorders[status])
                        headers.extend(more)
                        headers.append(("Content-Length", str(len(body))))
                        headers.append((REQUEST_ID_HEADER, request_id))
                        start_response(self._lines[shown], headers)
                        return [body]
                finally:
                    REQUEST_ID.reset(context)
                exchange.keep()  # handed on with its facts (and a charge already made)
        return self.flask_wsgi(environ, start_response)
