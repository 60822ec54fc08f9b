"""The in-process near-cache (L1) and its cross-process invalidation.

A near-cache hit costs no Redis call at all, so it must never serve a value
older than a finished update. The rule kept here: **after an update is
confirmed, no process returns the old value**. How:

1. The writer (``CacheRegion.invalidate``) deletes the Redis keys and PUBLISHes
   ``"<ack key>\\n<key>..."`` on the region's channel in one Lua call that also
   reports how many subscribers got the message and how many near-cache
   processes are registered (heartbeat within :data:`MEMBER_WINDOW_MS`).
2. Every process with an L1 runs one daemon listener thread (started lazily on
   first use, again after fork) that evicts the keys, then RPUSHes an
   acknowledgement. The writer waits (:func:`await_acks`) for
   ``max(receivers, members)`` acks, so a process whose subscription dropped
   silently still counts. With every ack in, the update is confirmed. If one
   is missing, the update is confirmed once the L1 TTL has run out since the
   delete, so even a stuck process holds nothing older: an entry's expiry is
   measured from *before* its Redis read, never from its insertion. The TTL is
   the last resort, not the mechanism. A request waits for acks at most
   ``Settings.near_cache_ack_wait`` (below the Redis socket timeout) and, when
   one is missing then, answers that the write is committed and converging,
   while a task waits out the TTL (cache/shop_sync.py).
3. A reader that read Redis before an invalidation may try to insert the old
   value after the eviction: every insert carries the generation it saw before
   its Redis read, and any invalidation (or clear) bumps the generation, so the
   late insert is dropped.
4. The L1 is served only while the listener is subscribed and its heartbeat is
   recent (:data:`SERVE_BOUND_S`); on disconnect, on resubscribe and after a
   heartbeat gap it is cleared whole, since messages may have been missed.

Eviction is FIFO by insertion (not LRU): with a TTL of a few seconds the hot
keys are re-inserted constantly anyway, and a hit then needs no lock.

**Refresh-ahead** (:meth:`NearCache.lookup`): an entry that is read after a
random point between :data:`REFRESH_AHEAD` of its TTL is handed, once, to the
reader that found it, which re-reads Redis and re-inserts it (the region does
that: :meth:`cache.region.CacheRegion.near_get`) while every other reader keeps
getting the entry. A key read all the time then never expires: without it,
every hot key expired every TTL in every process and the next reads took the
slow path (Flask and a Redis round trip), all at about the same moment, since
keys filled together expire together. The refreshed entry is an ordinary
insert (generation taken and expiry counted from before its Redis read), so
rule 3 above holds for it unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import uuid
import weakref

import redis

from .connection import subscriber_client
from .scripts import load_script

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # listener's ZADD into the members set
MEMBER_WINDOW_MS = 5_000  # writers count members seen within this window
SERVE_BOUND_S = 2.5  # L1 is served only if the last heartbeat is younger (< window)
ACK_TTL_MS = 30_000  # an ack list left behind by a writer that gave up expires
_RECONNECT_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0)
# An entry is due for a refresh from a random point between these fractions of
# its TTL: early enough that one read finds it due well before it expires, spread
# so that keys filled in the same instant are not refreshed in the same instant.
REFRESH_AHEAD = (0.6, 0.8)


class NearCache:
    """A bounded, short-TTL dict of JSON texts, kept honest by a listener thread."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        channel: str,
        members_key: str,
        size: int,
        ttl: float,
    ):
        self.client = client
        self.channel = channel
        self.members_key = members_key
        self.size = max(1, int(size))
        self.ttl = float(ttl)
        self._reset_process_state()
        ref = weakref.ref(self)

        def _after_fork() -> None:
            obj = ref()
            if obj is not None:
                obj._reset_process_state()

        os.register_at_fork(after_in_child=_after_fork)

    def _reset_process_state(self) -> None:
        # Called at init and in a forked child: the thread did not survive the fork.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # key -> (expires at, text, due for a refresh at), monotonic times
        self._entries: dict[str, tuple[float, str, float]] = {}
        self._gen = 0
        self._live = False
        self._beat_at = float("-inf")
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self.member_id = uuid.uuid4().hex
        self.subscribed = threading.Event()

    # --- the read side (request threads) ---------------------------------------

    def serving(self) -> bool:
        """Whether L1 may be used now: listener subscribed and heartbeat recent."""
        return self._live and time.monotonic() - self._beat_at < SERVE_BOUND_S

    def get(self, key: str) -> str | None:
        """The cached text, or None (absent, expired, or L1 not serving)."""
        if not self.serving():
            self.start()
            return None
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def lookup(self, key: str) -> tuple[str | None, bool]:
        """Like :meth:`get`, plus whether THIS caller should refresh the entry now.

        True at most once per inserted entry: for the first reader after the
        entry's refresh point (see :data:`REFRESH_AHEAD`). That reader re-reads
        Redis and re-inserts the value with :meth:`put`; if it cannot (Redis down, key gone),
        the entry simply expires at its TTL, as without refresh-ahead.
        """
        if not self.serving():
            self.start()
            return None, False
        entry = self._entries.get(key)
        if entry is None:
            return None, False
        now = time.monotonic()
        if entry[0] <= now:
            return None, False
        if entry[2] > now:
            return entry[1], False
        with self._lock:  # claim it: the due point moves to the expiry, nobody else is due
            if self._entries.get(key) is not entry:
                return entry[1], False  # replaced or evicted meanwhile
            self._entries[key] = (entry[0], entry[1], entry[0])
        return entry[1], True

    @property
    def generation(self) -> int:
        """Snapshot this BEFORE reading Redis; pass it to :meth:`put`."""
        return self._gen

    def put(self, key: str, text: str, generation: int, read_at: float) -> bool:
        """Insert a value read from Redis at monotonic ``read_at`` (before the read).

        Refused when any invalidation happened since ``generation`` was taken,
        or when L1 is not serving. Returns whether it was inserted.
        """
        if self.ttl <= 0:
            return False
        with self._lock:
            if generation != self._gen or not self.serving():
                return False
            entries = self._entries
            # Re-insert at the end: insertion order is then (about) expiry order,
            # so dropping the first entry drops the oldest, usually expired, one.
            entries.pop(key, None)
            if len(entries) >= self.size:
                del entries[next(iter(entries))]
            due = read_at + self.ttl * random.uniform(*REFRESH_AHEAD)
            entries[key] = (read_at + self.ttl, text, due)
            return True

    def evict(self, keys: list[str]) -> None:
        """Drop ``keys`` and bump the generation (so racing inserts are refused)."""
        with self._lock:
            self._gen += 1
            for key in keys:
                self._entries.pop(key, None)

    def clear(self) -> None:
        """Drop everything (listener lost, gap in heartbeats, tests)."""
        with self._lock:
            self._gen += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # --- the listener thread -----------------------------------------------------

    def start(self) -> None:
        """Start this process's listener if it is not running (cheap when it is)."""
        if self._listener is not None and self._listener.is_alive():
            return
        with self._lock:
            if self._listener is not None and self._listener.is_alive():
                return
            self._stop.clear()
            self._listener = threading.Thread(
                target=_listen,
                args=(weakref.ref(self), self._stop),
                name=f"near-cache:{self.channel}",
                daemon=True,
            )
            self._listener.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the listener and deregister (tests, shutdown)."""
        self._stop.set()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout)
        self._live = False
        self.clear()
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(self.members_key, self.member_id)

    def _heartbeat(self, script) -> None:  # type: ignore[no-untyped-def]
        script(keys=[self.members_key], args=[self.member_id, MEMBER_WINDOW_MS])
        now = time.monotonic()
        if now - self._beat_at >= SERVE_BOUND_S:
            # Not served for a while (starved thread, Redis hiccup): we may have
            # missed messages, so nothing cached before this point is trusted.
            self.clear()
        self._beat_at = now

    def _handle(self, data: str) -> None:
        ack_key, _, rest = data.partition("\n")
        self.evict(rest.split("\n") if rest else [])
        if ack_key:
            pipe = self.client.pipeline(transaction=False)
            pipe.rpush(ack_key, self.member_id)
            pipe.pexpire(ack_key, ACK_TTL_MS)
            pipe.execute()


def _listen(ref: weakref.ref[NearCache], stop: threading.Event) -> None:
    """The listener thread's body. It holds its NearCache only by weak reference
    (briefly, per message), so a cache that was dropped (an app torn down in a
    test) ends its thread instead of leaking a reconnecting listener."""
    cache = ref()
    if cache is None:
        return
    # One subscriber pool for the thread's life: on a cluster each reconnect
    # goes to the next node, so a dead node the slot map still names is passed.
    subscriber = subscriber_client(cache.client)
    del cache
    failures = 0
    while not stop.is_set():
        cache = ref()
        if cache is None:
            return
        client, channel, member = cache.client, cache.channel, cache.member_id
        members_key = cache.members_key
        heartbeat = load_script(client, "near_heartbeat")
        pubsub = subscriber.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.subscribe(channel)
            deadline = time.monotonic() + 5.0
            while True:
                message = pubsub.get_message(timeout=0.5)
                if message and message["type"] == "subscribe":
                    break
                if time.monotonic() > deadline:
                    raise redis.ConnectionError("no subscribe confirmation")
            cache.clear()  # messages before the subscription were not seen
            cache._beat_at = float("-inf")
            cache._heartbeat(heartbeat)
            cache._live = True
            cache.subscribed.set()
            failures = 0
            del cache
            next_beat = time.monotonic() + HEARTBEAT_S
            while not stop.is_set():
                timeout = max(0.0, min(0.25, next_beat - time.monotonic()))
                message = pubsub.get_message(timeout=timeout)
                cache = ref()
                if cache is None:  # dropped: deregister so no writer waits for our ack
                    with contextlib.suppress(redis.RedisError):
                        client.zrem(members_key, member)
                    return
                if message and message["type"] == "message":
                    cache._handle(message["data"])
                if time.monotonic() >= next_beat:
                    cache._heartbeat(heartbeat)
                    next_beat = time.monotonic() + HEARTBEAT_S
                del cache
        except Exception as exc:  # any failure: stop serving, reconnect
            # Loud once per outage, quiet while it lasts (the loop retries with backoff).
            (log.warning if failures == 0 else log.debug)(
                "near-cache listener on %s lost: %s", channel, exc
            )
            failures += 1
        finally:
            cache = ref()
            if cache is not None:
                cache._live = False
                cache.subscribed.clear()
                cache.clear()
            del cache
            with contextlib.suppress(Exception):
                pubsub.close()
        if not stop.is_set():
            stop.wait(_RECONNECT_BACKOFF_S[min(failures, len(_RECONNECT_BACKOFF_S)) - 1])


def invalidation_message(ack_key: str, keys: list[str]) -> str:
    """The text a writer publishes: the ack list's key, then one key per line."""
    return "\n".join([ack_key, *keys])


def await_acks(client: redis.Redis, ack_key: str, expected: int, deadline: float) -> int:
    """Block until ``expected`` listeners acknowledged or monotonic ``deadline`` passed.

    Returns the number of acks received; the ack list is deleted either way.
    """
    received = 0
    try:
        while received < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # BLPOP's timeout is in seconds (fractions allowed since Redis 6).
            if client.blpop([ack_key], timeout=max(0.01, remaining)) is None:
                break
            received += 1
    finally:
        with contextlib.suppress(redis.RedisError):
            client.delete(ack_key)
    return received
