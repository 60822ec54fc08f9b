"""Routes of /user/sign: daily sign-in and the consecutive-days streak.

Also home of the app's clock (:func:`now`, :func:`today`): "today" is the date
in ``settings.timezone`` (HMDP_TIMEZONE, default UTC), so sign-in days and UV
days start at the same local midnight. The clock is a per-app callable in
``app.extensions["hmdp_clock"]`` returning an aware datetime; tests install a
fixed one instead of sleeping to a month boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, current_app

from cache import signs as sign_store

from .auth import login_required, require_user
from .envelope import ok
from .runtime import services

bp = Blueprint("signs", __name__)

CLOCK_EXTENSION = "hmdp_clock"
Clock = Callable[[], datetime]


def system_clock(timezone: str, utc_now: Clock | None = None) -> Clock:
    """The real time (or ``utc_now()``, for tests) seen in ``timezone`` (an IANA name)."""
    zone = ZoneInfo(timezone)
    if utc_now is None:
        return lambda: datetime.now(zone)
    source = utc_now
    return lambda: source().astimezone(zone)


@bp.record_once
def _install_clock(state: Any) -> None:
    tz = state.app.extensions["hmdp"].settings.timezone
    state.app.extensions.setdefault(CLOCK_EXTENSION, system_clock(tz))


def now() -> datetime:
    """This app's current time (aware, in the configured time zone)."""
    return current_app.extensions[CLOCK_EXTENSION]()


def today() -> date:
    """This app's current date in the configured time zone."""
    return now().date()


def now_ms() -> int:
    """This app's current time as Unix milliseconds (feed and like scores)."""
    return int(now().timestamp() * 1000)


@bp.post("/user/sign")
@login_required
def sign() -> Response:
    """Sign in for today; data = true if this signed in, false if already signed today."""
    user = require_user()
    return ok(sign_store.sign(services().redis, user.id, today()))


@bp.get("/user/sign/count")
@login_required
def sign_count() -> Response:
    """Consecutive days signed, ending today (0 if not signed today, as in hmdp)."""
    user = require_user()
    return ok(sign_store.streak(services().redis, user.id, today()))
