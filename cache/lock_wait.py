"""Waiting for a Redis lock without polling: one shared unlock listener per process.

A lock release PUBLISHes on the lock's unlock channel. Rather than each waiter
opening its own pub/sub connection (which costs a TCP connect per contended
acquire and, from the application's bounded pool, could starve the holder of
the connection it needs to release), each process keeps ONE subscriber
connection per Redis server -- on a small side pool -- and one reader thread
(Redisson's ``LockPubSub`` idea). Waiters register per channel; a message wakes
the *oldest* waiter of that channel in this process (only one can win the lock,
so waking them all would just make N-1 of them fail their retry). A waiter that
leaves with an unconsumed wake-up passes it on, so none is lost.

The remaining PTTL returned by the failed acquire is the fallback timeout: a
lock that EXPIRES publishes nothing, so a waiter never sleeps past it.
The reader thread exits after a few idle seconds and restarts on demand.

The subscriber reads by polling (no socket timeout cuts its wait), so it
checks its connection itself: while waiters wait and nothing arrived for
:data:`HEALTH_CHECK_S`, it sends a PING; no PONG within the socket timeout
(a stalled or vanished server) drops the connection, wakes every waiter (they
retry, and fail with Redis' own error while it stays stalled) and reconnects,
re-subscribing every channel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from .connection import server_of, subscriber_pool

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "hmdp_lock__channel:"
# Sleep when the holder's key has no TTL (-1): re-check now and then.
NO_TTL_WAIT = 1.0
SUBSCRIBE_CONFIRM_WAIT = 2.0
READ_TIMEOUT = 1.0
IDLE_EXIT = 5.0
HEALTH_CHECK_S = 5.0  # silence (while waiters wait) after which the listener PINGs


def unlock_channel(name: str) -> str:
    """The pub/sub channel on which a release of lock ``name`` is announced."""
    return CHANNEL_PREFIX + name


@dataclass(eq=False)
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class _Channel:
    confirmed: threading.Event
    waiters: deque[_Waiter] = field(default_factory=deque)


class UnlockListener:
    """One subscriber connection and reader thread serving all waiters of a process."""

    def __init__(self, client: redis.Redis):
        # Only the reader thread reads; writes (SUBSCRIBE/UNSUBSCRIBE) happen under
        # self.lock. No health-check PINGs: redis-py would send them from the reader
        # thread without our lock.
        side_pool = subscriber_pool(client, health_check_interval=0)
        kwargs = side_pool.connection_kwargs
        self.pubsub = redis.Redis(connection_pool=side_pool).pubsub()
        self.lock = threading.Lock()
        self.channels: dict[str, _Channel] = {}
        # Per channel, the confirmation events of our (UN)SUBSCRIBEs in send order:
        # the server answers them in that order on this one connection.
        self.pending: dict[str, deque[threading.Event | None]] = {}
        self.thread: threading.Thread | None = None
        self.idle_since = time.monotonic()
        self.heard_at = time.monotonic()  # the last reply of any kind on the connection
        self.ping_sent_at: float | None = None
        self.pong_wait = kwargs.get("socket_timeout") or SUBSCRIBE_CONFIRM_WAIT

    # -- waiter side -------------------------------------------------------------
    def register(self, channel: str, confirm_timeout: float) -> _Waiter:
        """Join ``channel``'s waiters; return once Redis confirmed the subscription.

        Confirmation matters: an attempt made after it cannot miss a release,
        because that release's PUBLISH then reaches us.
        """
        waiter = _Waiter()
        with self.lock:
            entry = self.channels.get(channel)
            if entry is None:
                entry = _Channel(confirmed=threading.Event())
                self.channels[channel] = entry
                self.pending.setdefault(channel, deque()).append(entry.confirmed)
                try:
                    self.pubsub.subscribe(channel)
                except (redis.RedisError, OSError) as exc:
                    log.warning("lock wait: subscribe to %s failed (%s)", channel, exc)
                    self._unexpect(channel)
                    entry.confirmed.set()  # fall back to TTL-bounded waits
                if self.thread is None:
                    self.thread = threading.Thread(
                        target=self._run, name="hmdp-lock-listener", daemon=True
                    )
                    self.thread.start()
            entry.waiters.append(waiter)
            confirmed = entry.confirmed
        confirmed.wait(confirm_timeout)
        return waiter

    def unregister(self, channel: str, waiter: _Waiter) -> None:
        """Leave ``channel``; hand an unconsumed wake-up to the next waiter."""
        with self.lock:
            entry = self.channels.get(channel)
            if entry is None:
                return
            with contextlib.suppress(ValueError):
                entry.waiters.remove(waiter)
            if entry.waiters:
                if waiter.event.is_set():
                    entry.waiters[0].event.set()
                return
            del self.channels[channel]
            self.pending.setdefault(channel, deque()).append(None)
            try:
                self.pubsub.unsubscribe(channel)
            except (redis.RedisError, OSError) as exc:
                log.warning("lock wait: unsubscribe from %s failed (%s)", channel, exc)
                self._unexpect(channel)
            if not self.channels:
                self.idle_since = time.monotonic()

    def _unexpect(self, channel: str) -> None:
        """Drop the confirmation we just queued for a command that was not sent."""
        queue = self.pending.get(channel)
        if queue:
            queue.pop()
            if not queue:
                del self.pending[channel]

    # -- reader thread ---------------------------------------------------------
    def _run(self) -> None:
        failing = False
        while True:
            with self.lock:
                if not self.channels and time.monotonic() - self.idle_since > IDLE_EXIT:
                    self.thread = None
                    self.pending.clear()
                    with contextlib.suppress(redis.RedisError, OSError):
                        self.pubsub.reset()
                    return
            try:
                self._check_health()
                message = self.pubsub.get_message(timeout=READ_TIMEOUT)
            except (redis.RedisError, OSError) as exc:
                # Connection trouble: wake everyone (they retry, then fall back to
                # TTL-bounded waits) and let redis-py reconnect and resubscribe.
                if not failing:
                    log.warning("lock wait: listener connection failed (%s); retrying", exc)
                failing = True
                self._wake_all()
                time.sleep(0.1)
                continue
            if failing:
                log.info("lock wait: listener connection back")
                failing = False
            if message is not None:
                self.heard_at = time.monotonic()
                self.ping_sent_at = None
                self._dispatch(message)

    def _check_health(self) -> None:
        """PING after a silence while waiters wait; a PING unanswered in time drops the connection."""
        now = time.monotonic()
        with self.lock:
            if self.ping_sent_at is not None:
                if now - self.ping_sent_at <= self.pong_wait:
                    return
                self.ping_sent_at = None
                self.heard_at = now
                connection = self.pubsub.connection
                if connection is not None:
                    connection.disconnect()  # the next read reconnects and re-subscribes
                raise redis.TimeoutError(f"no PONG within {self.pong_wait:g}s")
            if self.channels and now - self.heard_at >= HEALTH_CHECK_S:
                self.ping_sent_at = now
                self.pubsub.ping()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode()
        with self.lock:
            if kind == "message":
                entry = self.channels.get(channel)
                if entry is not None and entry.waiters:
                    entry.waiters[0].event.set()
            elif kind in ("subscribe", "unsubscribe"):
                queue = self.pending.get(channel)
                if queue:
                    event = queue.popleft()
                    if event is not None and kind == "subscribe":
                        event.set()
                elif kind == "subscribe":
                    # Not ours: redis-py re-subscribed after a reconnect. A release
                    # may have published while we were away: make a waiter retry.
                    entry = self.channels.get(channel)
                    if entry is not None and entry.waiters:
                        entry.waiters[0].event.set()
                if not queue:
                    self.pending.pop(channel, None)

    def _wake_all(self) -> None:
        with self.lock:
            for entry in self.channels.values():
                entry.confirmed.set()
                for waiter in entry.waiters:
                    waiter.event.set()


class _Registry:
    """This process's listeners, one per application connection pool."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.listeners: weakref.WeakKeyDictionary[Any, UnlockListener] = weakref.WeakKeyDictionary()


_registry = _Registry()


def _reset_after_fork() -> None:
    global _registry
    _registry = _Registry()  # the parent's reader thread does not exist here


os.register_at_fork(after_in_child=_reset_after_fork)


def listener_for(client: redis.Redis) -> UnlockListener:
    """The shared unlock listener for ``client``'s server in this process."""
    registry = _registry
    if registry.pid != os.getpid():
        _reset_after_fork()
        registry = _registry
    pool = server_of(client)
    with registry.lock:
        listener = registry.listeners.get(pool)
        if listener is None:
            listener = UnlockListener(client)
            registry.listeners[pool] = listener
    return listener


def wait_for_lock(
    client: redis.Redis,
    name: str,
    attempt: Callable[[], int | None],
    deadline: float | None,
) -> bool:
    """Block until ``attempt()`` gets the lock (returns None) or ``deadline`` passes.

    ``attempt`` returns None on success, else the holder's PTTL in ms. Each wait
    ends on an unlock message for ``name`` or after that PTTL (an expiry
    publishes nothing), never by spinning. Returns whether the lock was taken.
    """
    channel = unlock_channel(name)
    listener = listener_for(client)
    confirm = SUBSCRIBE_CONFIRM_WAIT
    if deadline is not None:
        confirm = max(0.0, min(confirm, deadline - time.monotonic()))
    waiter = listener.register(channel, confirm)
    try:
        while True:
            waiter.event.clear()  # before the attempt: a later wake-up is kept
            ttl = attempt()
            if ttl is None:
                return True
            # -2: released between our two checks, retry at once; -1: no TTL
            wait = ttl / 1000.0 if ttl > 0 else (0.0 if ttl == -2 else NO_TTL_WAIT)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)
            if wait > 0:
                waiter.event.wait(wait)
    finally:
        listener.unregister(channel, waiter)
