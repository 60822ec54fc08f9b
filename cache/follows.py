"""The Redis side of follows: ``follows:{userId}``, the ids a user follows (a SET).

The database (tb_follow) is the truth; the set is a copy kept in step so that
"do I follow X?" is one SISMEMBER and "whom do we both follow?" one SINTER.

* A built set always holds the marker member ``"0"`` (no user has id 0), so a
  user who follows nobody still has a set, and a *missing* set unambiguously
  means "never built, or evicted": it is rebuilt from the database before the
  answer. Readers never see the marker (it is filtered out here).
* Every change of a user's follows and every rebuild of their set runs under
  the lock ``lock:follows:{userId}``: the writer commits the database change,
  then mirrors it into the set (``lua/follow_apply.lua``: only if the set
  exists). Without the lock, two racing requests of one user (follow and
  unfollow, or a write and a rebuild) could leave the set disagreeing with the
  database; with it they are applied one after the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

import redis
from redis.cluster import RedisCluster

from .locks import LockNotOwnedError, SimpleLock
from .scripts import load_script

log = logging.getLogger(__name__)

FOLLOWS_KEY = "follows:{user_id}"
LOCK_KEY = "lock:follows:{user_id}"
MARKER = "0"
LOCK_TTL_MS = 10_000

T = TypeVar("T")


class FollowBusy(Exception):
    """The user's follow lock was not obtained in time (another change is running)."""


def follows_key(user_id: int) -> str:
    """The Redis key of the set of ids ``user_id`` follows."""
    return FOLLOWS_KEY.format(user_id=user_id)


def _lock(client: redis.Redis, user_id: int) -> SimpleLock:
    return SimpleLock(client, LOCK_KEY.format(user_id=user_id), ttl_ms=LOCK_TTL_MS)


def _release(lock: SimpleLock) -> None:
    try:
        lock.release()
    except LockNotOwnedError:  # the lease ran out; the work is done anyway
        log.warning("follow lock %s expired before release", lock.name)


def install(client: redis.Redis, user_id: int, followed: Iterable[int]) -> None:
    """Replace the set with exactly ``followed`` (plus the marker), atomically.

    MULTI/EXEC so that no reader sees a half-written set.
    """
    pipe = client.pipeline(transaction=True)
    pipe.delete(follows_key(user_id))
    pipe.sadd(follows_key(user_id), MARKER, *(str(i) for i in followed))
    pipe.execute()


def change(
    client: redis.Redis,
    user_id: int,
    target_id: int,
    follow: bool,
    write_db: Callable[[], T],
    wait: float = 2.0,
) -> T:
    """Run ``write_db`` (the committed database change) under the user's lock, then mirror it.

    The mirror is applied whatever ``write_db`` found (already following or
    not), which also repairs a set that had drifted. If mirroring fails after
    the commit, the set is deleted (best effort) so the next read rebuilds it.
    Raises FollowBusy when the lock is not obtained within ``wait`` seconds.
    """
    lock = _lock(client, user_id)
    if not lock.acquire(blocking=True, timeout=wait):
        raise FollowBusy(f"another follow change of user {user_id} is running")
    try:
        result = write_db()
        try:
            load_script(client, "follow_apply")(
                keys=[follows_key(user_id)], args=[str(target_id), "1" if follow else "0"]
            )
        except redis.RedisError:
            log.exception("follow set of user %s not updated; dropping it", user_id)
            client.delete(follows_key(user_id))
            raise
        return result
    finally:
        _release(lock)


def ensure(
    client: redis.Redis, user_id: int, load: Callable[[], Iterable[int]], wait: float = 2.0
) -> set[int] | None:
    """Make sure the set exists, rebuilding it from ``load()`` (the database) if missing.

    Returns None when the set exists (ask Redis), else the ids that were loaded
    (the caller may answer from them). The rebuild holds the user's lock so it
    cannot overwrite a change committed meanwhile; if the lock is busy past
    ``wait``, the database answer is returned without touching Redis.
    """
    key = follows_key(user_id)
    if client.exists(key):
        return None
    lock = _lock(client, user_id)
    if not lock.acquire(blocking=True, timeout=wait):
        return set(load())
    try:
        if client.exists(key):  # rebuilt by someone else while we waited
            return None
        followed = set(load())
        install(client, user_id, followed)
        return followed
    finally:
        _release(lock)


def is_following(
    client: redis.Redis, user_id: int, target_id: int, load: Callable[[], Iterable[int]]
) -> bool:
    """Whether ``user_id`` follows ``target_id`` (rebuilding the set first if missing)."""
    loaded = ensure(client, user_id, load)
    if loaded is not None:
        return target_id in loaded
    return bool(client.sismember(follows_key(user_id), str(target_id)))


def common(
    client: redis.Redis,
    user_id: int,
    other_id: int,
    load: Callable[[int], Iterable[int]],
) -> list[int]:
    """Ids both users follow (SINTER), ascending; ``load(uid)`` reads one user's follows.

    On a Redis Cluster the two sets are on their users' slots: SMEMBERS each,
    intersected here (a follow set is small).
    """
    for uid in {user_id, other_id}:
        ensure(client, uid, lambda uid=uid: load(uid))
    if isinstance(client, RedisCluster):  # two users' sets: two slots, two reads
        members = client.smembers(follows_key(user_id)) & client.smembers(follows_key(other_id))
    else:
        members = client.sinter([follows_key(user_id), follows_key(other_id)])
    if MARKER not in members:
        # Both built sets hold the marker, so a set vanished between ensure and
        # SINTER (eviction): answer from the database this time.
        both = set(load(user_id)) & set(load(other_id))
        return sorted(both)
    return sorted(int(m) for m in members if m != MARKER)


def forget(client: redis.Redis, user_ids: Iterable[int]) -> int:
    """Drop the sets of ``user_ids`` so the next read rebuilds them from the database.

    For rows written behind the API's back (``flask seed``). Safe against a
    concurrent change: its mirror step skips a missing set, and the rebuild
    reads the committed rows.
    """
    keys = [follows_key(u) for u in user_ids]
    return int(client.delete(*keys)) if keys else 0
