"""Access to this app's Services, clock and Celery dispatcher from inside a request."""

from __future__ import annotations

from datetime import date, datetime

from celery import Celery
from flask import current_app

from services import Services
from settings import Settings


def services() -> Services:
    """The Services of the current app (one per process)."""
    return current_app.extensions["hmdp"]


def settings() -> Settings:
    return services().settings


def now() -> datetime:
    """This app's current time (aware, in the configured time zone)."""
    return services().clock()


def today() -> date:
    """This app's current date in the configured time zone."""
    return now().date()


def now_ms() -> int:
    """This app's current time as Unix milliseconds (feed and like scores)."""
    return int(now().timestamp() * 1000)


def celery() -> Celery:
    """The Celery app used to dispatch tasks by name (never imports task code)."""
    return current_app.extensions["hmdp_celery"]
