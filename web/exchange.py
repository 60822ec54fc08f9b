"""One request layer for Flask's hooks and the WSGI fast paths.

A request is answered by Flask (its hooks around a view) or, for a few hot
routes, below it (web/fastroute.py). Both read the request's facts and end it
through this module, so the two cannot drift apart:

* :class:`Exchange`: the facts of one request, read from the WSGI environ when
  first asked for: the request id (the client's valid ``X-Request-ID`` or a
  new one), the client address (:func:`forwarded_client_ip`), the usable token
  of the ``authorization`` header, the route (the URL rule) and, once decided,
  the user and the rate-limit decision. It lives in the environ, so a fast
  path that hands a request on to Flask hands its facts on with it: the same
  request id and start time, and a rate-limit charge it made already is not
  made again (web/ratelimit.py).
* :class:`Finish`: the one end of every request: the HTTP metrics by route
  (:class:`HttpMetrics`) and the ``hmdp.access`` line, both with the real
  status, and the status the client is shown (:meth:`Finish.shown`: the hmdp
  compatibility mode for errors); the caller echoes the request id in
  ``X-Request-ID``.

The hmdp compatibility mode: the hmdp front end shows ``errorMsg`` only of a
2xx answer (any other status is a generic "server error", 401 a redirect to its
login page), as the Java backend answers every error but a missing login with
HTTP 200. In this mode an error other than a missing or expired login (401,
``Exchange.login_missing``; a wrong login code, also a 401, is not one) is
shown as 200 with the same envelope and its real status in ``X-Hmdp-Status``;
the metrics and the access line keep the real status. ``HMDP_COMPAT_ERRORS`` turns it on for a deployment;
a request's ``X-Hmdp-Compat: 1`` (or ``0``) chooses for that request, whoever
sends it: it changes how the status is presented, never what was done, who may
do it or what is counted, so a client asking for it only tells itself less.
nginx's ``/api/`` location (deploy/nginx.conf.template) sends ``1``. The
answers whose presentation the header decides say so in ``Vary``, so a cache
never hands one client's form to another.

The request id is also set in :data:`logsetup.REQUEST_ID` while the request is
served, so every log line and every Celery task dispatched by it carry it (see
:mod:`tasks.logging`). The refusal texts both layers answer are declared here.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram

from logsetup import REQUEST_ID, REQUEST_ID_HEADER, new_request_id, valid_request_id
from settings import ProxyNetworks

if TYPE_CHECKING:
    from cache.ratelimit import Decision

    from .auth import UserSummary

access_log = logging.getLogger("hmdp.access")

NOT_LOGGED_IN = "not logged in"
TOO_MANY_REQUESTS = "too many requests; slow down"
MAX_TOKEN_LENGTH = 128
UNMATCHED = "<unmatched>"  # the route label of a request no URL rule matched
UNTRACKED_PATHS = frozenset({"/metrics"})  # scrapes are not counted in the HTTP metrics
EXCHANGE_KEY = "hmdp.exchange"
COMPAT_HEADER = "X-Hmdp-Compat"  # request: "1" compat mode on, "0" off, else the setting
COMPAT_ENVIRON = "HTTP_X_HMDP_COMPAT"
REAL_STATUS_HEADER = "X-Hmdp-Status"  # response: the real status of an error shown as 200

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def usable_token(raw: str | None) -> str | None:
    """The token of an ``authorization`` header value, or None if it cannot be a session."""
    token = (raw or "").strip()
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return token


class Exchange:
    """The facts of one request; those of its headers are worked out when first asked for.

    ``user`` and ``rate_limit`` are set by whoever decides them (the auth
    hook or a fast path, the limiter); ``user_loaded`` and ``charged`` say
    that this happened, so it is never done twice for one request. Until
    then they are the class's defaults: a fast answer sets only what it uses.
    ``login_missing`` is set by whoever answers a missing or expired login
    (401 ``not logged in``; not a refused login attempt, also a 401): the one
    error the compat mode leaves as it is.
    """

    route: str | None = None  # the URL rule, once routed
    user: UserSummary | None = None
    user_loaded = False
    rate_limit: Decision | None = None
    charged = False
    login_missing = False
    _client_ip: str | None = None

    def __init__(self, environ: dict[str, Any]):
        self.environ = environ
        self.started = time.perf_counter()
        self.method: str = environ.get("REQUEST_METHOD", "GET")
        # The client's valid X-Request-ID, or a new one: every answer echoes it.
        sent = environ.get("HTTP_X_REQUEST_ID")
        self.request_id: str = valid_request_id(sent) or new_request_id()

    @classmethod
    def of(cls, environ: dict[str, Any]) -> Exchange:
        """The exchange kept in this environ, made (and kept) on first use."""
        exchange = environ.get(EXCHANGE_KEY)
        if exchange is None:
            exchange = cls(environ)
            exchange.keep()
        return exchange

    def keep(self) -> None:
        """Keep this exchange in its environ, for the layers below (Flask's hooks).

        A fast path keeps it only when it hands the request on: an environ that
        holds its exchange is a reference cycle, which a fast answer leaves to
        reference counting instead of the cyclic collector.
        """
        self.environ[EXCHANGE_KEY] = self

    @property
    def path(self) -> str:
        """The path as Flask's ``request.path`` reads it (UTF-8 decoded, one leading slash)."""
        raw: str = self.environ.get("PATH_INFO") or ""
        return "/" + raw.encode("latin1").decode(errors="replace").lstrip("/")

    @property
    def remote_addr(self) -> str | None:
        """The peer's address."""
        return self.environ.get("REMOTE_ADDR")

    @property
    def token(self) -> str | None:
        """The usable token of the ``authorization`` header (:func:`usable_token`)."""
        return usable_token(self.environ.get("HTTP_AUTHORIZATION"))

    def client_ip(self, trusted_proxies: ProxyNetworks) -> str:
        """The client's address (:func:`forwarded_client_ip`)."""
        address = self._client_ip
        if address is None:
            address = self._client_ip = forwarded_client_ip(
                self.environ.get("REMOTE_ADDR"),
                self.environ.get("HTTP_X_FORWARDED_FOR"),
                trusted_proxies,
            )
        return address


def current_exchange() -> Exchange:
    """The exchange of the Flask request being served."""
    return Exchange.of(request.environ)


# --- the client address ---------------------------------------------------------------


def forwarded_client_ip(
    remote_addr: str | None, forwarded_for: str | None, trusted_proxies: ProxyNetworks
) -> str:
    """The client's address from the peer address, X-Forwarded-For and the trusted proxies.

    X-Forwarded-For counts only when the peer itself is a trusted proxy:
    anyone else who reaches the web server directly could write any address
    into it. Each proxy appends the address it received from, so the chain is
    walked from the right while the hop is a trusted proxy too; the first hop
    that is not one is the client. An entry that is not an address stops the
    walk at the last address known.
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


# --- the finish step ------------------------------------------------------------------


Recorder = tuple[Callable[[float], None], Callable[[], None]]  # (observe seconds, count one)


class HttpMetrics:
    """The request histogram and counter by route, in one registry per app.

    Named and labelled as prometheus-flask-exporter named them (the dashboards
    and alerts read them); declared here because its hooks count only requests
    Flask dispatched. The route label is the URL rule (``/shop/<shop_id>``),
    never the raw path, so ids cannot explode the label cardinality.
    """

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.duration = Histogram(
            "flask_http_request_duration_seconds",
            "Flask HTTP request duration in seconds",
            ("method", "url_rule", "status"),
            registry=registry,
        )
        self.total = Counter(
            "flask_http_request_total",
            "Total number of HTTP requests",
            ("method", "status"),
            registry=registry,
        )

    def recorder(self, method: str, route: str, status: int) -> Recorder:
        """What counts one answer of these labels, bound once (for a hot route)."""
        return (
            self.duration.labels(method, route, status).observe,
            self.total.labels(method, status).inc,
        )

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answer."""
        self.duration.labels(method, route, status).observe(seconds)
        self.total.labels(method, status).inc()


Headers = tuple[tuple[str, str], ...]
VARY_COMPAT: Headers = (("Vary", COMPAT_HEADER),)


class Finish:
    """The end of every request, whichever layer answered it: metrics, access line, status."""

    def __init__(self, metrics: HttpMetrics, access_log_enabled: bool, compat_errors: bool):
        self.metrics = metrics
        self.access_log_enabled = access_log_enabled
        self.compat_errors = compat_errors

    def __call__(
        self, exchange: Exchange, status: int, recorder: Recorder | None = None
    ) -> tuple[int, Headers]:
        """Count and log the answer; the status to send and the headers to add (:meth:`shown`).

        ``recorder`` is the hot route's :meth:`HttpMetrics.recorder` of this status.
        The caller also echoes ``exchange.request_id``.
        """
        self._record(exchange, status, recorder)
        return self.shown(exchange, status)

    def shown(self, exchange: Exchange, status: int) -> tuple[int, Headers]:
        """The status the client is shown for the real ``status``, with the headers saying so.

        An error but a missing login in compat mode (the module's docstring) is
        shown as 200 with ``X-Hmdp-Status``; each of them varies by ``X-Hmdp-Compat``.
        """
        if status < 400 or exchange.login_missing:
            return status, ()
        asked = exchange.environ.get(COMPAT_ENVIRON)
        if asked == "1" or (asked != "0" and self.compat_errors):
            return 200, ((REAL_STATUS_HEADER, str(status)), *VARY_COMPAT)
        return status, VARY_COMPAT

    def _record(self, exchange: Exchange, status: int, recorder: Recorder | None) -> None:
        elapsed = time.perf_counter() - exchange.started
        if recorder is not None:
            observe, count = recorder
            observe(elapsed)
            count()
        elif exchange.path not in UNTRACKED_PATHS:
            self.metrics.record(exchange.method, exchange.route or UNMATCHED, status, elapsed)
        if self.access_log_enabled:
            path = exchange.path
            access_log.info(
                "%s %s %s",
                exchange.method,
                path,
                status,
                extra={
                    "method": exchange.method,
                    "path": path,
                    "route": exchange.route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "remote": exchange.remote_addr,
                },
            )


FINISH_EXTENSION = "hmdp_finish"


def register_request_layer(
    app: Flask, metrics: HttpMetrics, access_log_enabled: bool, compat_errors: bool
) -> Finish:
    """Install Flask's side of the layer; register before any other hook.

    Its after_request hook runs last (Flask runs them in reverse), so it counts
    and rewrites the final answer, error handlers' and other hooks' work included.
    """
    finish = app.extensions[FINISH_EXTENSION] = Finish(metrics, access_log_enabled, compat_errors)

    @app.before_request
    def _start_request() -> None:
        exchange = current_exchange()
        exchange.route = request.url_rule.rule if request.url_rule is not None else None
        g.request_id_token = REQUEST_ID.set(exchange.request_id)

    @app.after_request
    def _finish_request(response: Response) -> Response:
        exchange = current_exchange()
        status, headers = finish(exchange, response.status_code)
        response.status_code = status
        for name, value in headers:
            response.headers.add(name, value)
        response.headers[REQUEST_ID_HEADER] = exchange.request_id
        return response

    @app.teardown_request
    def _end_request(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                REQUEST_ID.reset(token)
            except ValueError:  # set in another context (should not happen); just clear
                REQUEST_ID.set(None)

    return finish
