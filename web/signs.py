"""Routes of /user/sign: daily sign-in and the consecutive-days streak.

Days are those of the app's clock (:attr:`services.Services.clock`), in the
configured time zone.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, Response
from pydantic import Field

from cache import signs as sign_store

from .auth import login_required, require_user
from .contract import contract
from .envelope import ok
from .runtime import services, today

bp = Blueprint("signs", __name__)


@bp.post("/user/sign")
@login_required
@contract(data=Annotated[bool, Field(description="false: signed in today already")])
def sign() -> Response:
    """Sign in for today; data = true if this signed in, false if already signed today."""
    user = require_user()
    return ok(sign_store.sign(services().redis, user.id, today()))


@bp.get("/user/sign/count")
@login_required
@contract(data=Annotated[int, Field(ge=0, description="consecutive days")])
def sign_count() -> Response:
    """Consecutive days signed, ending today (0 if not signed today, as in hmdp)."""
    user = require_user()
    return ok(sign_store.streak(services().redis, user.id, today()))
