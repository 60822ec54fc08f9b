"""The rules route schemas are built from, and the shapes routes answer.

Every route declares its path, query and body as pydantic models made of the
types here (web/contract.py validates with them; web/openapi.py documents
them), so a bound is written once and the document cannot drift from the check:

* strings: a length and characters the database can store (:func:`text`, with
  web/text.py's rule, which the JSON parser applies to every string of a body too);
* numbers: a range, ids within :data:`models.entities.MAX_ID` (:func:`integer`);
* instants: a range checked before any conversion (:data:`Instant`);
* path ids: 400 when not a number, 404 when outside the ids that can exist.

A validator that has the whole message to say raises :func:`whole`; one that
knows the answer is "no such thing" raises :func:`not_found` (web/contract.py
turns both into the envelope). The data models at the end are for the
document only: answers are built by the views and never validated at run time.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from models.entities import MAX_ID
from timestamps import InstantOutOfRange, parse_instant

from .runtime import settings
from .text import text_problem

MAX_PAGE = 10_000
WHOLE = "hmdp_whole"  # an error type whose message is the whole errorMsg
NOT_FOUND = "hmdp_not_found"  # the same, answered 404


def whole(message: str) -> PydanticCustomError:
    """A validation error whose message is the client's whole ``errorMsg`` (400)."""
    return PydanticCustomError(WHOLE, message)


def not_found(message: str) -> PydanticCustomError:
    """A validation error that means the thing cannot exist: 404 with ``message``."""
    return PydanticCustomError(NOT_FOUND, message)


# --- strings -----------------------------------------------------------------------------


def storable(value: str) -> str:
    """Only what the database can store (web/text.py's one rule: no NUL, no lone surrogate)."""
    problem = text_problem(value)
    if problem is not None:
        raise PydanticCustomError("hmdp_storable", problem)
    return value


def single_line(value: str) -> str:
    """A one-line field (a name, an address): no control characters at all."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise PydanticCustomError("hmdp_single_line", "must not contain control characters")
    return storable(value)


def text(max_length: int, *, min_length: int = 0, strip: bool = False, line: bool = False) -> Any:
    """A string of ``min_length``..``max_length`` characters (after ``strip``) we can store."""
    return Annotated[
        str,
        Strict(),
        StringConstraints(strip_whitespace=strip, min_length=min_length, max_length=max_length),
        AfterValidator(single_line if line else storable),
    ]


def _none_as_empty(value: object) -> object:
    return "" if value is None else value


def text_or_null(max_length: int, *, strip: bool = False) -> Any:
    """:func:`text` where ``null`` means "": hmdp's front end sends null for an unset field.

    Documented as string or null, so that a client (and the contract fuzzer) is told
    the null it may send.
    """
    stored = text(max_length, strip=strip)
    return Annotated[stored, BeforeValidator(_none_as_empty, json_schema_input_type=stored | None)]


def empty_as_none(value: object) -> object:
    """hmdp's clients send "" for "not given" (``?name=``, ``"code": ""``)."""
    return None if value == "" else value


# --- numbers -----------------------------------------------------------------------------


def _no_text_or_bool(value: object) -> object:
    if isinstance(value, bool | str):
        raise PydanticCustomError("hmdp_number", "must be a number")
    return value


def integer(low: int, high: int, *, strict: bool = True) -> Any:
    """An integer in ``low``..``high``; not strict: a float with an integral value counts too."""
    if strict:
        return Annotated[int, Strict(), Field(ge=low, le=high)]
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_no_text_or_bool)]


def number(low: float, high: float) -> Any:
    """A finite number in ``low``..``high`` (an integer is a number too)."""
    return Annotated[float, Strict(), Field(ge=low, le=high, allow_inf_nan=False)]


Id = integer(1, MAX_ID)
Page = Annotated[int, Field(ge=1, le=MAX_PAGE, description="1-based page number")]
QueryId = Annotated[int, Field(ge=1, le=MAX_ID)]

_ID_SCHEMA = WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_ID})


def parse_path_id(raw: object, what: str, out_of_range: str = "404") -> int:
    """An id from a path segment: not digits -> 400; outside 1..MAX_ID -> 404 (or 400)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit():
        value = int(raw)
    else:
        raise whole(f"{what} id must be a positive integer")
    if not 1 <= value <= MAX_ID:
        if out_of_range == "400":
            raise whole(f"{what} id must be a positive integer")
        raise not_found(f"no such {what}")
    return value


def path_id(what: str, out_of_range: str = "404") -> Any:
    """A path id of ``what`` (see :func:`parse_path_id`), documented as an integer id."""
    check = partial(parse_path_id, what=what, out_of_range=out_of_range)
    return Annotated[int, BeforeValidator(check), _ID_SCHEMA]


# --- instants ----------------------------------------------------------------------------

FIRST_YEAR, LAST_YEAR = 2000, 9999  # of a sale window, in UTC


def _instant(value: object) -> datetime:
    """An ISO-8601 time as naive UTC (no offset: HMDP_TIMEZONE), in FIRST_YEAR..LAST_YEAR.

    :func:`timestamps.parse_instant` checks the range before it converts:
    ``0001-01-01T00:00:00+05:00`` must not overflow on its way to UTC.
    """
    if not isinstance(value, str):
        raise PydanticCustomError("hmdp_instant", "must be an ISO-8601 string")
    out_of_range = PydanticCustomError(
        "hmdp_instant", f"is out of range (years {FIRST_YEAR} to {LAST_YEAR})"
    )
    try:
        moment = parse_instant(value, settings().zone)
    except InstantOutOfRange:
        raise out_of_range from None
    except ValueError:
        raise PydanticCustomError("hmdp_instant", "is not an ISO-8601 time") from None
    if not FIRST_YEAR <= moment.year <= LAST_YEAR:
        raise out_of_range
    return moment.replace(microsecond=0)


Instant = Annotated[
    datetime,
    BeforeValidator(_instant),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "ISO-8601; without an offset it is a time in HMDP_TIMEZONE",
        }
    ),
]


# --- bodies ------------------------------------------------------------------------------


class Body(BaseModel):
    """A JSON body: unknown fields are ignored (hmdp's clients send more than we read)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StrictBody(BaseModel):
    """A JSON body whose unknown fields are a 400 (an admin's typo must not be dropped)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Query(BaseModel):
    """Query parameters; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore")


class Path(BaseModel):
    """Path parameters, by the URL rule's names."""


# --- what routes answer (documentation only) ---------------------------------------------

Timestamp = Annotated[
    str | None, Field(description="ISO-8601 with its UTC offset, seconds precision")
]


class UserSummary(BaseModel):
    """hmdp's UserDTO: what a session holds and lists of users show."""

    id: int
    nickName: str
    icon: str
