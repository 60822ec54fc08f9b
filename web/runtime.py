"""Access to this app's Services and Celery dispatcher from inside a request."""

from __future__ import annotations

from flask import current_app

from services import Services
from settings import Settings


def services() -> Services:
    """The Services of the current app (one per process)."""
    return current_app.extensions["hmdp"]


def settings() -> Settings:
    return services().settings
