"""The Redis side of login: one-time codes, sessions and the brute-force lock.

Keys (hmdp's names where hmdp has them):

* ``login:code:{phone}`` — the code last sent to a phone (string, short TTL);
* ``login:token:{token}`` — a session: hash of the user summary, sliding TTL;
* ``login:fail:{phone}`` — wrong attempts in the current window (counter);
* ``login:lock:{phone}`` — present while the phone is locked after too many.

Checking a code, consuming it and counting a failure happen in one script
(``lua/login_code.lua``), so a code logs in once even under concurrent
attempts, and no attempt slips past the lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import redis

from .scripts import load_script

CODE_KEY = "login:code:{phone}"
TOKEN_KEY = "login:token:{token}"
FAIL_KEY = "login:fail:{phone}"
LOCK_KEY = "login:lock:{phone}"

Status = Literal["ok", "wrong", "missing", "locked"]


@dataclass(frozen=True)
class Attempt:
    """The outcome of one login attempt.

    ``n``: for "locked", seconds until the phone unlocks; for "wrong", attempts
    left before the lock (-1 when locking is disabled).
    """

    status: Status
    n: int


def store_code(client: redis.Redis, phone: str, code: str, ttl: int) -> None:
    """Remember the code sent to ``phone`` (a new code replaces the old one)."""
    client.set(CODE_KEY.format(phone=phone), code, ex=ttl)


def discard_code(client: redis.Redis, phone: str) -> None:
    """Forget a code that could not be delivered."""
    client.delete(CODE_KEY.format(phone=phone))


def lock_remaining(client: redis.Redis, phone: str) -> int:
    """Seconds the phone stays locked (0 when it is not locked)."""
    ttl = client.ttl(LOCK_KEY.format(phone=phone))
    if ttl == -2:  # no key
        return 0
    return max(1, ttl)


def _attempt(
    client: redis.Redis, phone: str, code: str, max_wrong: int, lock_seconds: int
) -> Attempt:
    script = load_script(client, "login_code")
    keys = [
        CODE_KEY.format(phone=phone),
        FAIL_KEY.format(phone=phone),
        LOCK_KEY.format(phone=phone),
    ]
    status, n = script(keys=keys, args=[code, max_wrong, lock_seconds])
    return Attempt(status=status, n=int(n))


def use_code(
    client: redis.Redis, phone: str, code: str, max_wrong: int, lock_seconds: int
) -> Attempt:
    """Check ``code`` and consume it if right; count it (and maybe lock) if wrong.

    "ok" also resets the failure count: a correct login clears past mistakes.
    """
    if not code:
        raise ValueError("use_code needs a non-empty code")
    return _attempt(client, phone, code, max_wrong, lock_seconds)


def record_failure(client: redis.Redis, phone: str, max_wrong: int, lock_seconds: int) -> Attempt:
    """Count a failed non-code attempt (a wrong password) towards the lock."""
    return _attempt(client, phone, "", max_wrong, lock_seconds)


def reset_failures(client: redis.Redis, phone: str) -> None:
    """Forget past wrong attempts after a successful password login."""
    client.delete(FAIL_KEY.format(phone=phone))


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
