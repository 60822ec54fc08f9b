"""The Redis side of login: one-time codes, sessions and the password lock.

Keys (hmdp's names where hmdp has them):

* ``login:code:{phone}`` — the code last sent to a phone (string, short TTL);
* ``login:wrong:{phone}`` — wrong guesses at that code (counter, dies with it);
* ``login:token:{token}`` — a session: hash of the user summary, sliding TTL;
* ``login:password:fail:{phone}`` — wrong passwords in the current window;
* ``login:password:lock:{phone}`` — present while password login is locked.

Wrong code guesses burn the code (after ``max_wrong`` of them) instead of
locking the phone: a stranger who guesses can make the owner request a new
code, never keep the owner out. Checking a code, consuming it and counting a
wrong guess happen in one script (``lua/login_code.lua``), so a code logs in
once even under concurrent attempts, and no guess slips past the count.
Wrong passwords lock password login only (``lua/login_password.lua``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import redis

from .scripts import load_script

# A phone's keys share its hash tag (the braces in the key): the code scripts and
# transactions touch two of them at once, so on a Redis Cluster they share a slot.
CODE_KEY = "login:code:{{{phone}}}"
WRONG_KEY = "login:wrong:{{{phone}}}"
TOKEN_KEY = "login:token:{token}"
PASSWORD_FAIL_KEY = "login:password:fail:{{{phone}}}"
PASSWORD_LOCK_KEY = "login:password:lock:{{{phone}}}"

Status = Literal["ok", "wrong", "missing", "void", "locked"]


@dataclass(frozen=True)
class Attempt:
    """The outcome of one login attempt.

    ``n``: for "wrong", attempts left (guesses at this code, or passwords before
    the lock; -1 when the password lock is off); for "locked", seconds until
    password login unlocks; 0 otherwise.
    """

    status: Status
    n: int


def store_code(client: redis.Redis, phone: str, code: str, ttl: int) -> None:
    """Remember the code sent to ``phone``; a new code replaces the old one and its guesses."""
    pipe = client.pipeline(transaction=True)
    pipe.set(CODE_KEY.format(phone=phone), code, ex=ttl)
    pipe.delete(WRONG_KEY.format(phone=phone))
    pipe.execute()


def discard_code(client: redis.Redis, phone: str) -> None:
    """Forget a code that could not be delivered."""
    client.delete(CODE_KEY.format(phone=phone), WRONG_KEY.format(phone=phone))


def use_code(client: redis.Redis, phone: str, code: str, max_wrong: int) -> Attempt:
    """Check ``code``: consume it if right; if wrong, count it and void the code at ``max_wrong``."""
    if not code:
        raise ValueError("use_code needs a non-empty code")
    if max_wrong < 1:
        raise ValueError("max_wrong must be at least 1")
    script = load_script(client, "login_code")
    keys = [CODE_KEY.format(phone=phone), WRONG_KEY.format(phone=phone)]
    status, n = script(keys=keys, args=[code, max_wrong])
    return Attempt(status=status, n=int(n))


def password_lock_remaining(client: redis.Redis, phone: str) -> int:
    """Seconds password login stays locked for ``phone`` (0 when it is not locked)."""
    ttl = client.ttl(PASSWORD_LOCK_KEY.format(phone=phone))
    if ttl == -2:  # no key
        return 0
    return max(1, ttl)


def record_password_failure(
    client: redis.Redis, phone: str, max_wrong: int, lock_seconds: int
) -> Attempt:
    """Count a wrong password: "wrong" with attempts left, or "locked" with its seconds."""
    script = load_script(client, "login_password")
    keys = [PASSWORD_FAIL_KEY.format(phone=phone), PASSWORD_LOCK_KEY.format(phone=phone)]
    status, n = script(keys=keys, args=[max_wrong, lock_seconds])
    return Attempt(status=status, n=int(n))


def reset_password_failures(client: redis.Redis, phone: str) -> None:
    """Forget past wrong passwords after a successful password login."""
    client.delete(PASSWORD_FAIL_KEY.format(phone=phone))


def create_session(client: redis.Redis, token: str, fields: Mapping[str, str], ttl: int) -> None:
    """Store a session hash with its TTL in one transaction (never a hash without TTL)."""
    key = TOKEN_KEY.format(token=token)
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping=dict(fields))
    pipe.expire(key, ttl)
    pipe.execute()


def load_session(client: redis.Redis, token: str, ttl: int) -> dict[str, str] | None:
    """The session hash of ``token``, its TTL pushed back to ``ttl`` (sliding session).

    One round trip; EXPIRE on a missing key is a no-op, so an unknown token
    creates nothing.
    """
    key = TOKEN_KEY.format(token=token)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(key)
    pipe.expire(key, ttl)
    data, _ = pipe.execute()
    return data or None


def delete_session(client: redis.Redis, token: str) -> None:
    """End a session (logout)."""
    client.delete(TOKEN_KEY.format(token=token))
