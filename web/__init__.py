"""The Flask front: app factory and blueprints.

``create_app(settings)`` builds an app with its own Services (Redis, database)
and a Celery app used only to dispatch tasks by name: the web tier never
imports task code, and workers never import this package.
"""

from __future__ import annotations

from flask import Flask

from services import Services
from settings import Settings

from .cli import register_cli
from .errors import register_error_handlers
from .health import bp as health_bp


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app; connections are opened on first use, not here."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        JSON_AS_ASCII=False,
        MAX_CONTENT_LENGTH=1 * 1024 * 1024,
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["hmdp"] = Services(settings)
    app.extensions["hmdp_post_seed"] = []

    register_error_handlers(app)
    register_cli(app)
    app.register_blueprint(health_bp)
    return app
