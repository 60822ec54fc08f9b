"""Phone numbers: what a valid one is, and which phone a login request is for.

The login routes and the per-phone rate limit (web/ratelimit.py) read the
phone of a request through :func:`named_phones`, so the limiter charges every
phone the route could act on: the query's ``phone`` and the JSON body's, both
when both are given. The routes then accept a request only when those name
ONE phone (:func:`login_phone`), so rotating ``?phone=`` next to a body phone
buys no extra attempts.
"""

from __future__ import annotations

import re
from typing import Annotated

from flask import request
from pydantic import BeforeValidator, Field, StringConstraints

from .envelope import BadRequest
from .schemas import empty_as_none

# Mainland China mobile numbers: 11 ASCII digits, 1 then 3-9 (hmdp's RegexUtils).
PHONE_RE = re.compile(r"1[3-9][0-9]{9}")

# A phone in a route schema ("" is not given, as hmdp's clients send it).
Phone = Annotated[
    Annotated[str, StringConstraints(pattern=f"^{PHONE_RE.pattern}$")] | None,
    BeforeValidator(empty_as_none),
    Field(description="a mainland mobile number: 11 digits, 13x-19x"),
]


def is_valid_phone(value: object) -> bool:
    """True for a mainland mobile number given as a string (no spaces, no +86)."""
    return isinstance(value, str) and PHONE_RE.fullmatch(value) is not None


def named_phones(strict: bool = False) -> tuple[object, ...]:
    """The phone values this request gives, valid or not: the query's, then the JSON body's.

    An empty value counts as not given. A body the app's parser refuses
    (web/request_json.py) names no phone here, for the rate-limit hook;
    ``strict`` (the routes) answers its 400/415 instead.
    """
    named = [request.args.get("phone")]
    if request.content_length:
        body = request.get_json(silent=not strict)
        if isinstance(body, dict):
            named.append(body.get("phone"))
    return tuple(value for value in named if value is not None and value != "")


def login_phone() -> str:
    """The one valid phone this request is for; a 400 when none, a bad one, or two differ."""
    named = named_phones(strict=True)
    if not named:
        raise BadRequest("phone is required")
    if not all(is_valid_phone(value) for value in named):
        raise BadRequest("phone must be a mainland mobile number (11 digits, 13x-19x)")
    if len(set(named)) > 1:
        raise BadRequest("the query and the body name different phones")
    return named[0]  # type: ignore[return-value]
