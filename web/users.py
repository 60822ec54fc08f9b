"""Routes of /user: login by SMS code (or password), sessions, user summaries and profiles.

Login follows hmdp: ``POST /user/code?phone=`` stores a 6-digit code in
``login:code:{phone}`` and hands it to the app's code sender (web/sms.py);
``POST /user/login {phone, code}`` consumes the code (once), creates the user
on first login and answers with a token whose session hash lives in
``login:token:{token}``. Wrong guesses burn the code: after
settings.login_max_wrong_codes of them it is void and the owner requests a new
one (the limits on sending codes bound how many codes, hence guesses, there
are). The phone itself is never locked, so a stranger cannot keep its owner
out. Wrong passwords lock password login only (settings.login_max_wrong_passwords
within settings.login_lock_seconds; 429 with ``Retry-After``): code login stays open.
"""

from __future__ import annotations

import logging
import secrets
import string
from typing import Annotated

import click
from flask import Blueprint, Response
from pydantic import BaseModel, BeforeValidator, Field, StringConstraints
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash

from cache import login as login_store
from models.entities import User, UserInfo
from timestamps import iso_instant

from .auth import ADMIN, UserSummary, current_token, login_required, require_user
from .contract import contract
from .envelope import ApiError, BadRequest, NotFound, TooManyRequests, Unauthorized, ok
from .phones import Phone, is_valid_phone, login_phone
from .runtime import services, settings
from .schemas import Body, Path, Query, Timestamp, empty_as_none, path_id, text
from .schemas import UserSummary as UserSummaryData
from .sms import code_sender, install_code_sender

log = logging.getLogger(__name__)

bp = Blueprint("users", __name__)
bp.record_once(lambda state: install_code_sender(state.app, state.app.extensions["hmdp"].settings))

NICK_PREFIX = "user_"
NICK_ALPHABET = string.ascii_lowercase + string.digits
MAX_PASSWORD = 128


def _password_locked(seconds: int) -> TooManyRequests:
    return TooManyRequests(
        f"too many wrong passwords for this phone; log in with a code, "
        f"or try a password again in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


def new_code() -> str:
    """A uniformly random 6-digit code (leading zeros kept)."""
    return f"{secrets.randbelow(1_000_000):06d}"


def new_nick_name() -> str:
    """hmdp's default nickname for a new user: ``user_`` + 10 random characters."""
    return NICK_PREFIX + "".join(secrets.choice(NICK_ALPHABET) for _ in range(10))


class CodeQuery(Query):
    phone: Phone = None


class CodeBody(Body):
    phone: Phone = None


Code = Annotated[
    Annotated[str, StringConstraints(pattern="^[0-9]{6}$")] | None,
    BeforeValidator(empty_as_none),
    Field(description="the 6 digits sent by POST /user/code"),
]
Password = Annotated[
    text(MAX_PASSWORD) | None, BeforeValidator(empty_as_none), Field(description="or a password")
]


class LoginBody(Body):
    phone: Phone = Field(None, description="here or in the query: one phone")
    code: Code = None
    password: Password = None


class UserPath(Path):
    user_id: path_id("user")


class UserInfoData(BaseModel):
    userId: int
    city: str
    introduce: str
    fans: int
    followee: int
    gender: int
    birthday: str | None = Field(description="a date, YYYY-MM-DD")
    level: int
    credits: int
    createTime: Timestamp
    updateTime: Timestamp


@bp.post("/user/code")
@contract(
    query=CodeQuery,
    body=CodeBody,
    body_optional=True,
    errors={503: "the login code could not be delivered"},
)
def send_code(query: CodeQuery, body: CodeBody | None) -> Response:
    """Send a new login code (it replaces the last one and its wrong guesses)."""
    phone = login_phone()
    client = services().redis
    code = new_code()
    login_store.store_code(client, phone, code, settings().login_code_ttl)
    try:
        code_sender().send(phone, code)
    except Exception as exc:
        login_store.discard_code(client, phone)
        log.warning("login code for %s not delivered: %s", phone, exc)  # never the code
        raise ApiError("the login code could not be delivered; try again", 503) from exc
    return ok()


def _find_or_create_user(phone: str) -> User:
    """The user with this phone, created (with an empty profile) on first login.

    The phone column is unique: if a concurrent first login wins the insert,
    this one reads the winner's row instead of creating a second user.
    """
    db = services().db
    with db.session() as session:
        user = session.scalar(select(User).where(User.phone == phone))
        if user is not None:
            return user
    try:
        with db.session() as session:
            user = User(phone=phone, nick_name=new_nick_name(), icon="", password="", role="user")
            session.add(user)
            session.flush()
            session.add(UserInfo(user_id=user.id))
        return user
    except IntegrityError:
        with db.session() as session:
            user = session.scalar(select(User).where(User.phone == phone))
        if user is None:
            raise
        return user


def _start_session(user: User) -> str:
    summary = UserSummary(id=user.id, nick_name=user.nick_name, icon=user.icon)
    token = secrets.token_urlsafe(32)
    login_store.create_session(
        services().redis, token, summary.to_hash(), settings().login_token_ttl
    )
    return token


def _login_with_code(phone: str, code: str) -> User:
    attempt = login_store.use_code(services().redis, phone, code, settings().login_max_wrong_codes)
    if attempt.status == "missing":
        raise Unauthorized("no valid code for this phone (expired, used or void): request one")
    if attempt.status == "void":
        raise Unauthorized(
            "wrong code; that was its last guess, the code is void: request a new one"
        )
    if attempt.status == "wrong":
        raise Unauthorized(f"wrong code; {attempt.n} guesses left for this code")
    return _find_or_create_user(phone)


def _login_with_password(phone: str, password: str) -> User:
    client = services().redis
    locked = login_store.password_lock_remaining(client, phone)
    if locked:
        raise _password_locked(locked)
    with services().db.session() as session:
        user = session.scalar(select(User).where(User.phone == phone))
    if user is None or not user.password:
        # No password to guess: not counted, and no difference from a wrong one.
        raise Unauthorized("wrong phone or password (or no password set: log in with a code)")
    if not check_password_hash(user.password, password):
        cfg = settings()
        attempt = login_store.record_password_failure(
            client, phone, cfg.login_max_wrong_passwords, cfg.login_lock_seconds
        )
        if attempt.status == "locked":
            raise _password_locked(attempt.n)
        raise Unauthorized("wrong phone or password (or no password set: log in with a code)")
    login_store.reset_password_failures(client, phone)
    return user


@bp.post("/user/login")
@contract(
    query=CodeQuery,
    body=LoginBody,
    data=Annotated[str, Field(description="the session token: send it as `authorization`")],
    errors={401: "wrong, expired or void code, or wrong password"},
)
def login(query: CodeQuery, body: LoginBody) -> Response:
    """Log in with ``{phone, code}`` (or ``{phone, password}``); data = the session token.

    The phone may be in the query instead of the body (or in both: the same one).
    """
    phone = login_phone()
    if body.code is not None:
        user = _login_with_code(phone, body.code)
    elif body.password is not None:
        user = _login_with_password(phone, body.password)
    else:
        raise BadRequest("code is required")
    return ok(_start_session(user))


@bp.get("/user/me")
@login_required
@contract(data=UserSummaryData)
def me() -> Response:
    """The logged-in user's summary (straight from the session)."""
    return ok(require_user().to_json())


@bp.post("/user/logout")
@login_required
@contract()
def logout() -> Response:
    """End this session: the token stops working at once."""
    login_store.delete_session(services().redis, current_token())
    return ok()


def _user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    return user


@bp.get("/user/<int:user_id>")
@contract(path=UserPath, data=UserSummaryData, errors={404: "no such user"})
def get_user(path: UserPath) -> Response:
    """A user's public summary ``{id, nickName, icon}``."""
    with services().db.session() as session:
        user = _user(session, path.user_id)
        return ok({"id": user.id, "nickName": user.nick_name, "icon": user.icon})


@bp.get("/user/info/<int:user_id>")
@contract(path=UserPath, data=UserInfoData, errors={404: "no such user"})
def get_user_info(path: UserPath) -> Response:
    """A user's profile; a user without a profile row gets the empty defaults."""
    with services().db.session() as session:
        user = _user(session, path.user_id)
        info = session.get(UserInfo, user.id)
        if info is None:
            return ok(
                {
                    "userId": user.id,
                    "city": "",
                    "introduce": "",
                    "fans": 0,
                    "followee": 0,
                    "gender": 0,
                    "birthday": None,
                    "level": 0,
                    "credits": 0,
                    "createTime": None,
                    "updateTime": None,
                }
            )
        return ok(
            {
                "userId": info.user_id,
                "city": info.city,
                "introduce": info.introduce,
                "fans": info.fans,
                "followee": info.followee,
                "gender": info.gender,
                "birthday": info.birthday.isoformat() if info.birthday else None,  # a date
                "level": info.level,
                "credits": info.credits,
                "createTime": iso_instant(info.create_time, settings().zone),
                "updateTime": iso_instant(info.update_time, settings().zone),
            }
        )


# --- roles (``flask users role``) -----------------------------------------------------------

ROLES = (ADMIN, "user")


@bp.cli.command("role")
@click.argument("phone")
@click.argument("role", type=click.Choice(ROLES))
def role_command(phone: str, role: str) -> None:
    """Make the user of PHONE an admin or an ordinary user (the user is created if new).

    It holds at once, for the user's live sessions too: admin routes read the
    role from the database on every request (web/auth.is_admin).
    """
    if not is_valid_phone(phone):
        raise click.BadParameter(
            "a mainland mobile number (11 digits, 13x-19x)", param_hint="PHONE"
        )
    user = _find_or_create_user(phone)
    with services().db.session() as session:
        session.execute(update(User).where(User.id == user.id).values(role=role))
    click.echo(f"user {user.id} ({phone}) is now {role}")
    if role != ADMIN and phone in settings().admin_phones:
        click.echo("note: this phone is in HMDP_ADMIN_PHONES, which keeps it an admin", err=True)
