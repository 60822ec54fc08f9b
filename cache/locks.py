"""Distributed locks on Redis: a simple mutex and a Redisson-style reentrant lock.

* :class:`SimpleLock` -- the hmdp ``SimpleRedisLock``: ``SET key token NX PX``
  with a random per-instance token; release and extend check the token in Lua
  (``lua/unlock.lua``, ``lua/extend.lua``) so nobody deletes a lock that expired
  and was taken by someone else. Not reentrant.
* :class:`RLock` -- Redisson's ``RLock``: the lock is one HASH
  ``{owner_id: hold_count}`` with a lease (PEXPIRE). ``owner_id`` is a
  per-process UUID (new after fork) + ":" + the thread id, so two threads of one
  process are two owners. The same thread may acquire it again (reentrancy);
  the lock goes away when the hold count drops to zero. Without an explicit
  lease a *watchdog* renews the lease every ``lease/3`` while the owner holds
  it; a SIGKILLed process renews nothing, so its locks expire after the lease.

Waiting (both kinds) is not polling: a waiter listens on the lock's unlock
channel (``hmdp_lock__channel:<name>``), retries when a release publishes there,
and otherwise sleeps at most the lock's remaining PTTL (an expiry publishes
nothing). See :mod:`cache.lock_wait` (one shared subscriber per process).

Watchdog design: ONE daemon thread per process serves every held RLock (it
exists only while some lock needs renewing). One thread rather than a timer per
lock keeps thread count flat however many locks a process holds, and a daemon
thread dies with its process, which is exactly the crash semantics we want. It
also stops renewing a lock whose holding thread has died without releasing.

A release that raises (Redis restarting, a connection reset) forgets the hold
all the same: whether or not the script ran, the watchdog stops renewing, so a
lock that was not released expires with its lease instead of living as long as
the process. The error is raised to the caller.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from metrics import LOCK_CONTENTION, LOCK_HOLD, LOCK_WAIT

from .connection import server_of
from .lock_wait import unlock_channel, wait_for_lock
from .scripts import call, load_composed, load_script, run_each

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class LockError(Exception):
    """Base class of lock errors."""


class LockNotOwnedError(LockError):
    """Release or extend of a lock the caller does not hold (or that expired)."""


class LockTimeout(LockError):
    """A context-manager acquire with a bounded wait did not get the lock in time."""


# --- metrics: label children bound once (cheap on the hot path) ----------------
_WAIT = {kind: LOCK_WAIT.labels(kind=kind) for kind in ("simple", "rlock")}
_HOLD = {kind: LOCK_HOLD.labels(kind=kind) for kind in ("simple", "rlock")}
_CONTENTION = {kind: LOCK_CONTENTION.labels(kind=kind) for kind in ("simple", "rlock")}


# --- per-process identity and state (reset in a forked child) ----------------
class _ProcessState:
    """Everything one process keeps about locks; replaced wholesale after fork."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.process_id = uuid.uuid4().hex
        self.lock = threading.Lock()
        self.holds: dict[tuple[int, str, str], _Hold] = {}
        self.watchdog: _Watchdog | None = None


_state = _ProcessState()


def _after_fork_in_child() -> None:
    global _state
    _state = _ProcessState()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _current() -> _ProcessState:
    """This process's state (also checks the pid, for forks that skip the hook)."""
    state = _state
    if state.pid != os.getpid():
        _after_fork_in_child()
        state = _state
    return state


def owner_id() -> str:
    """The RLock owner id of the calling thread: process UUID + ":" + thread id."""
    return f"{_current().process_id}:{threading.get_ident()}"


# --- SimpleLock ----------------------------------------------------------------
class SimpleLock:
    """A non-reentrant mutex: ``SET name token NX PX ttl``, released by token.

    Used where a short critical section needs one winner (cache rebuilds). The
    key is ``name`` as given; the value is a random token of this instance, so
    the instance (not the thread) owns the lock.
    """

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        ttl_ms: int = 10_000,
        *,
        timeout: float | None = None,
    ):
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be positive")
        self.client = client
        self.name = name
        self.ttl_ms = int(ttl_ms)
        self.timeout = timeout  # bounded wait of the context manager (None = forever)
        self.token = uuid.uuid4().hex
        self._acquired_at: float | None = None

    def _try(self) -> int | None:
        """One retry while waiting: SET NX and PTTL in one round trip (pipelined)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.name, self.token, nx=True, px=self.ttl_ms)
        pipe.pttl(self.name)
        got, ttl = pipe.execute()
        return None if got else int(ttl)

    def acquire(self, blocking: bool = False, timeout: float | None = None) -> bool:
        """Take the lock; with ``blocking``, wait (up to ``timeout`` s, None = forever).

        Returns False when not acquired (non-blocking and held, or timed out).
        """
        start = time.monotonic()
        if self.client.set(self.name, self.token, nx=True, px=self.ttl_ms):
            self._acquired_at = time.monotonic()
            _WAIT["simple"].observe(self._acquired_at - start)
            return True
        _CONTENTION["simple"].inc()
        got = False
        if blocking and (timeout is None or timeout > 0):
            deadline = None if timeout is None else start + timeout
            got = wait_for_lock(self.client, self.name, self._try, deadline)
        now = time.monotonic()
        _WAIT["simple"].observe(now - start)
        if got:
            self._acquired_at = now
        return got

    def release(self) -> None:
        """Delete the lock if it still holds our token; else LockNotOwnedError."""
        acquired_at, self._acquired_at = self._acquired_at, None  # forgotten even if this raises
        released = load_script(self.client, "unlock")(
            keys=[self.name], args=[self.token, unlock_channel(self.name)]
        )
        if not released:
            raise LockNotOwnedError(f"lock {self.name!r} is not held by this instance")
        if acquired_at is not None:
            _HOLD["simple"].observe(time.monotonic() - acquired_at)

    def extend(self, additional_ms: int) -> None:
        """Add ``additional_ms`` to the remaining TTL (owner only), for long work."""
        if additional_ms <= 0:
            raise ValueError("additional_ms must be positive")
        extend = load_script(self.client, "extend")
        if not extend(keys=[self.name], args=[self.token, int(additional_ms)]):
            raise LockNotOwnedError(f"lock {self.name!r} is not held by this instance")

    def locked(self) -> bool:
        """Whether anyone holds the lock now."""
        return bool(self.client.exists(self.name))

    def owned(self) -> bool:
        """Whether this instance holds the lock now."""
        return self.client.get(self.name) in (self.token, self.token.encode())

    def __enter__(self) -> SimpleLock:
        if not self.acquire(blocking=True, timeout=self.timeout):
            raise LockTimeout(f"lock {self.name!r} not acquired within {self.timeout}s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"SimpleLock({self.name!r}, ttl_ms={self.ttl_ms})"


# --- RLock -----------------------------------------------------------------------
@dataclass(eq=False)
class _Hold:
    """What this process knows about one owner's holds of one RLock."""

    key: tuple[int, str, str]
    client: redis.Redis
    name: str
    owner: str
    lease_ms: int
    thread: threading.Thread
    since: float
    watchdog: list[bool] = field(default_factory=list)  # one flag per hold, LIFO
    due: float = 0.0

    @property
    def renewing(self) -> bool:
        return any(self.watchdog)


class _Watchdog:
    """One daemon thread renewing every watchdog-held RLock of this process."""

    def __init__(self, state: _ProcessState):
        self.state = state
        self.wake = threading.Condition(state.lock)
        self.thread = threading.Thread(target=self._run, name="hmdp-lock-watchdog", daemon=True)

    def _due_holds(self) -> tuple[list[_Hold], float | None]:
        now = time.monotonic()
        due: list[_Hold] = []
        next_due: float | None = None
        for hold in self.state.holds.values():
            if not hold.renewing:
                continue
            if hold.due <= now:
                due.append(hold)
            elif next_due is None or hold.due < next_due:
                next_due = hold.due
        return due, next_due

    def _run(self) -> None:
        while True:
            with self.wake:
                due, next_due = self._due_holds()
                if not due:
                    if next_due is None:
                        self.state.watchdog = None  # nothing to renew: exit
                        return
                    self.wake.wait(next_due - time.monotonic())
                    continue
            for hold in due:
                self._renew(hold)

    def _renew(self, hold: _Hold) -> None:
        interval = hold.lease_ms / 3000.0
        if not self._wanted(hold):
            return  # released meanwhile
        if not hold.thread.is_alive():
            log.warning("lock %s: holder thread died without release; lease will expire", hold.name)
            self._forget(hold)
            return
        try:
            renewed = load_script(hold.client, "rlock_renew")(
                keys=[hold.name], args=[hold.lease_ms, hold.owner]
            )
        except (redis.RedisError, OSError) as exc:
            log.warning("lock %s: lease renewal failed (%s); retrying", hold.name, exc)
            hold.due = time.monotonic() + min(interval, 1.0) / 3
            return
        if not renewed:
            if self._wanted(hold):
                log.warning("lock %s: lost (expired or force-released); renewal stopped", hold.name)
            self._forget(hold)
            return
        hold.due = time.monotonic() + interval

    def _wanted(self, hold: _Hold) -> bool:
        with self.wake:
            return hold.renewing and self.state.holds.get(hold.key) is hold

    def _forget(self, hold: _Hold) -> None:
        with self.wake:
            hold.watchdog = [False] * len(hold.watchdog)


def _ensure_watchdog(state: _ProcessState) -> None:
    """Start the watchdog thread if none runs, or wake it (call under state.lock)."""
    if state.watchdog is None:
        state.watchdog = _Watchdog(state)
        state.watchdog.thread.start()
    else:
        state.watchdog.wake.notify()


def _record_holds(
    client: redis.Redis | RedisCluster,
    locks: list[RLock],
    owner: str,
    watchdog: bool,
    now: float,
    lease_ms: int | None = None,
) -> None:
    """Note one more hold of each of ``locks`` (all on ``client``) in this process's table.

    One pass under the state lock for a whole batch: taking that lock and
    finding the client's server again for each lock cost more than the lock's
    share of the script call. ``lease_ms`` is an explicit lease's (None: each
    lock's own).
    """
    state = _current()
    server = id(server_of(client))
    thread = threading.current_thread()
    with state.lock:
        for lock in locks:
            key = (server, lock.name, owner)
            hold = state.holds.get(key)
            if hold is None:
                hold = _Hold(
                    key=key,
                    client=lock.client,
                    name=lock.name,
                    owner=owner,
                    lease_ms=lock.lease_ms,
                    thread=thread,
                    since=now,
                )
                state.holds[key] = hold
            hold.watchdog.append(watchdog)
            if watchdog:
                lease = lock.lease_ms if lease_ms is None else lease_ms
                hold.lease_ms = lock.lease_ms
                if hold.due == 0.0 or hold.due > now + lease / 3000.0:
                    hold.due = now + lease / 3000.0
        if watchdog and locks:
            _ensure_watchdog(state)


def _drop_holds(
    client: redis.Redis | RedisCluster,
    locks: list[RLock],
    owner: str,
    lefts: list[int | None],
) -> None:
    """Forget one hold of each lock after a release; ``lefts`` are the script's replies
    (None where the release failed).

    A failed release drops one hold like a successful one; the outer holds
    of a reentrant lock keep it renewed until they are released.
    """
    state = _current()
    server = id(server_of(client))
    released: list[float] = []
    with state.lock:
        for lock, left in zip(locks, lefts, strict=True):
            key = (server, lock.name, owner)
            hold = state.holds.get(key)
            if hold is None:
                continue
            if hold.watchdog:
                hold.watchdog.pop()
            if (left is not None and left <= 0) or not hold.watchdog:
                del state.holds[key]
                if left == 0:
                    released.append(hold.since)
    if released:
        now = time.monotonic()
        for since in released:
            _HOLD["rlock"].observe(now - since)


class RLock:
    """A reentrant distributed lock with Redisson semantics (see module doc).

    Cheap to create (per request is fine); the holds live in Redis and in a
    per-process table, so two instances with the same name in one thread are
    the same lock. Usable as ``with RLock(...)`` and as a decorator.
    """

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        lease_ms: int = 30_000,
        *,
        wait_timeout: float | None = None,
    ):
        if lease_ms <= 0:
            raise ValueError("lease_ms must be positive")
        self.client = client
        self.name = name
        self.lease_ms = int(lease_ms)
        self.wait_timeout = wait_timeout  # bounded wait of the context manager/decorator
        self.channel = unlock_channel(name)

    def _key(self, owner: str) -> tuple[int, str, str]:
        return (id(server_of(self.client)), self.name, owner)

    def acquire(
        self,
        blocking: bool = True,
        wait_timeout: float | None = None,
        lease: float | None = None,
    ) -> bool:
        """Take (or re-enter) the lock; False if not acquired in time.

        ``wait_timeout`` (s) bounds a blocking wait (None = forever). ``lease``
        (s) sets an explicit lease with no watchdog: the lock expires after it
        even if the holder still runs. Without it the watchdog keeps it alive.
        """
        if lease is not None and lease <= 0:
            raise ValueError("lease must be positive")
        start = time.monotonic()
        owner = owner_id()
        lease_ms = self.lease_ms if lease is None else max(1, int(lease * 1000))
        if lease is not None and self._renewing(owner):
            # Re-entering a watchdog hold: a short explicit lease must not cut
            # the TTL under the outer hold (the watchdog renews every lease/3).
            lease_ms = max(lease_ms, self.lease_ms)
        script = load_script(self.client, "rlock_acquire")

        def attempt() -> int | None:
            ttl = script(keys=[self.name], args=[lease_ms, owner])
            return None if ttl is None else int(ttl)

        got = attempt() is None
        if not got:
            _CONTENTION["rlock"].inc()
            if blocking and (wait_timeout is None or wait_timeout > 0):
                deadline = None if wait_timeout is None else start + wait_timeout
                got = wait_for_lock(self.client, self.name, attempt, deadline)
        now = time.monotonic()
        _WAIT["rlock"].observe(now - start)
        if got:
            self._record_hold(owner, lease_ms, watchdog=lease is None, now=now)
        return got

    def _renewing(self, owner: str) -> bool:
        state = _current()
        with state.lock:
            hold = state.holds.get(self._key(owner))
            return hold is not None and hold.renewing

    def _record_hold(self, owner: str, lease_ms: int, watchdog: bool, now: float) -> None:
        _record_holds(self.client, [self], owner, watchdog, now, lease_ms)

    def release(self) -> None:
        """Drop one hold; at zero the lock is deleted and waiters are woken.

        Raises LockNotOwnedError if the calling thread does not hold it (never
        did, or its lease expired, or it was force-released). If Redis fails
        the release, the hold is dropped anyway (see the module doc) and the
        error raised.
        """
        owner = owner_id()
        try:
            release = load_script(self.client, "rlock_release")
            left = int(release(keys=[self.name], args=[owner, self.channel]))
        except BaseException:
            self._drop_hold(owner, None)
            raise
        self._drop_hold(owner, left)
        if left < 0:
            raise LockNotOwnedError(f"lock {self.name!r} is not held by {owner}")

    def _drop_hold(self, owner: str, left: int | None) -> None:
        _drop_holds(self.client, [self], owner, [left])

    def force_release(self) -> bool:
        """Delete the lock whoever holds it and wake waiters (operators only).

        Returns True if there was a lock. A holder's watchdog notices at its
        next renewal and stops; its later release raises LockNotOwnedError.
        """
        return bool(
            load_script(self.client, "lock_force_release")(keys=[self.name], args=[self.channel])
        )

    def is_held_by_me(self) -> bool:
        """Whether the calling thread holds the lock now."""
        return bool(self.client.hexists(self.name, owner_id()))

    def hold_count(self) -> int:
        """How many times the calling thread holds the lock (0 = not held)."""
        value = self.client.hget(self.name, owner_id())
        return int(value) if value is not None else 0

    def __enter__(self) -> RLock:
        if not self.acquire(blocking=True, wait_timeout=self.wait_timeout):
            raise LockTimeout(f"lock {self.name!r} not acquired within {self.wait_timeout}s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __call__(self, func: F) -> F:
        """Decorator: every call of ``func`` runs holding the lock."""

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"RLock({self.name!r}, lease_ms={self.lease_ms})"


# --- many RLocks in one round trip (batch settling) --------------------------------
def _many(client: redis.Redis | RedisCluster, name: str, calls: list[tuple[str, list]]) -> list:
    """``lua/<name>.lua`` once per (lock key, its arguments); the replies in order.

    On a single Redis that is ONE script call, ``lua/<name>_many.lua`` with the
    per-lock script composed in: one call per lock was most of the Redis work of
    a settled order. On a Redis Cluster the keys are in different slots: one call
    per lock, all in one pipeline (one round trip per node).
    """
    if isinstance(client, RedisCluster):
        per_lock = [([key], args) for key, args in calls]
        return run_each(client, load_script(client, name), per_lock)
    script = load_composed(client, f"{name}_many", (name,))
    return call(script, [key for key, _ in calls], [arg for _, args in calls for arg in args])


def acquire_all(client: redis.Redis, locks: list[RLock]) -> list[RLock]:
    """Try each lock once, all in ONE script call; returns those taken (watchdog-held).

    For a worker settling a batch of orders: one lock per user, and waiting on
    a busy one would stall the whole batch, so nothing here waits; the caller
    handles the entries of the locks it did not get one by one, with the
    blocking :meth:`RLock.acquire`. Every lock must use ``client``.
    """
    if not locks:
        return []
    owner = owner_id()
    started = time.monotonic()
    replies = _many(
        client, "rlock_acquire", [(lock.name, [lock.lease_ms, owner]) for lock in locks]
    )
    now = time.monotonic()
    taken = [lock for lock, ttl in zip(locks, replies, strict=True) if ttl is None]
    _record_holds(client, taken, owner, watchdog=True, now=now)
    if len(taken) < len(locks):
        _CONTENTION["rlock"].inc(len(locks) - len(taken))
    _WAIT["rlock"].observe(now - started)
    return taken


def release_all(client: redis.Redis, locks: list[RLock]) -> list[RLock]:
    """Drop one hold of each lock in ONE script call; returns those no longer ours.

    A lock not held any more (its lease expired, or it was force-released) is
    returned rather than raised, so that one lost lease does not leave the
    others held until they expire. If the call fails, every hold is
    dropped anyway (see the module doc) and the error raised.
    """
    if not locks:
        return []
    owner = owner_id()
    try:
        replies = _many(
            client, "rlock_release", [(lock.name, [owner, lock.channel]) for lock in locks]
        )
    except BaseException:
        _drop_holds(client, locks, owner, [None] * len(locks))
        raise
    lefts = [int(reply) for reply in replies]
    _drop_holds(client, locks, owner, list(lefts))
    return [lock for lock, left in zip(locks, lefts, strict=True) if left < 0]
