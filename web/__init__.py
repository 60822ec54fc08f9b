"""The Flask front: app factory and blueprints.

``create_app(settings)`` builds an app with its own Services (Redis, database)
and a Celery app used only to dispatch tasks by name: the web tier never
imports task code, and workers never import this package.
"""

from __future__ import annotations

import contextlib
from importlib import import_module

from flask import Flask
from flask.sessions import SessionInterface

from services import Services
from settings import Settings
from tasks.app import create_celery

from . import shop_cache, visits
from .auth import register_auth
from .cli import register_cli
from .errors import register_error_handlers
from .exchange import register_request_layer
from .fastpath import install as install_fast_path
from .ids import IdConverter
from .metrics import register_metrics
from .ratelimit import register_ratelimit
from .request_json import ApiJSONProvider, JsonRequest
from .request_limits import register_request_limits

# One module per concern, each exposing ``bp`` (a Blueprint) and optionally
# ``post_seed(services)``, run by ``flask seed`` after the demo rows are in.
BLUEPRINT_MODULES = (
    "web.health",
    "web.users",
    "web.shops",
    "web.vouchers",
    "web.orders",
    "web.blogs",
    "web.follows",
    "web.signs",
    "web.stats",
    "web.uploads",
    "web.openapi",  # the document of every route above, and its docs page
)


class NoCookieSessions(SessionInterface):
    """hmdp authenticates with the ``authorization`` header, never a cookie session.

    Flask's default interface builds a signing serializer on every request even
    when no session is used; this one hands Flask its read-only null session.
    """

    def open_session(self, app: Flask, request: object) -> None:
        return None

    def save_session(self, app: Flask, session: object, response: object) -> None:
        return None


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app; connections are opened on first use, not here."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)  # an API: no static files
    # The one JSON body parser (web/request_json.py), and its failures as envelopes.
    app.json = ApiJSONProvider(app)
    app.request_class = JsonRequest
    app.config.update(
        SECRET_KEY=settings.secret_key,
        JSON_AS_ASCII=False,
        MAX_CONTENT_LENGTH=1 * 1024 * 1024,
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.session_interface = NoCookieSessions()
    app.url_map.converters["id"] = IdConverter
    services = Services(settings)
    app.extensions["hmdp"] = services
    # Used only to send tasks by name; the broker is contacted on first send.
    app.extensions["hmdp_celery"] = create_celery(settings, services)
    app.extensions["hmdp_post_seed"] = []
    shop_cache.install(app)
    visits.install(app, services)

    http_metrics = register_metrics(app, services)
    # the first hook: the request id; its after_request runs last: the final answer
    register_request_layer(app, http_metrics, settings.access_log, settings.compat_errors)
    register_error_handlers(app)
    register_request_limits(app)  # 414/431 before auth and the limiter read headers
    register_auth(app)
    register_ratelimit(app, settings)  # after auth: per-user limits need the user
    register_cli(app)
    for name in BLUEPRINT_MODULES:
        module = import_module(name)
        app.register_blueprint(module.bp)
        if hasattr(module, "post_seed"):
            app.extensions["hmdp_post_seed"].append(module.post_seed)
    install_fast_path(app)  # last: the enabled fast paths need the routes and extensions above
    return app


def close_app(app: Flask) -> None:
    """Stop what the app runs in the background, then release its pools.

    The shop near-cache's listener deregisters, so writers stop waiting for this
    process's acknowledgements at once (instead of for its last heartbeat to age
    out), and the UV buffer sends what it holds; both matter between tests as at
    shutdown.
    """
    region = shop_cache.shop_region_holder(app).region
    if region is not None and region.near is not None:
        region.near.stop()
    with contextlib.suppress(Exception):  # a Redis already gone keeps its last visits
        visits.uv_buffer(app).close()
    app.extensions["hmdp"].close()
