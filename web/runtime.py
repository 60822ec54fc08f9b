"""Access to this app's Services and Celery dispatcher from inside a request."""

from __future__ import annotations

from celery import Celery
from flask import current_app

from services import Services
from settings import Settings


def services() -> Services:
    """The Services of the current app (one per process)."""
    return current_app.extensions["hmdp"]


def settings() -> Settings:
    return services().settings


def celery() -> Celery:
    """The Celery app used to dispatch tasks by name (never imports task code)."""
    return current_app.extensions["hmdp_celery"]
