"""A cache region: the whole caching policy of one key family (like dogpile's region).

A region is built with a Redis client, a key prefix, TTLs, a ``loader``
(id -> dict | None, the database read) and optionally a Bloom filter, a
near-cache and a ``refresher`` (id -> None, schedules a logical refresh; the
web passes one that sends the Celery task by name). It never imports web or
tasks code. Values travel as JSON text: stored pre-serialised in Redis and in
L1, so a hit never re-encodes.

Keys for region ``name`` with prefix ``P`` (hmdp's names for shops)::

    P:{id}              physical value, TTL (+jitter); "" = null marker (null_ttl)
    P:logical:{id}      {"expireTime": epoch, "data": ...} with NO TTL (hot keys)
    P:ver:{id}          version, bumped by every invalidation (see cache_cas_set.lua)
    P:hot:current       the ids whose logical keys the warm job keeps
    lock:{name}:{id}    the rebuild mutex; lock:{name}:refresh:{id} the refresh guard

A read is one Lua call (``lua/cache_get.lua``): logical key, physical key and,
only on a miss, the Bloom filter. What happens then:

* **logical key present** -- served at once. If its ``expireTime`` passed, it is
  served stale and exactly one refresh is scheduled (a SimpleLock guards the
  scheduling; it expires by itself, so a failed refresh is retried later).
  Readers never wait for it.
* **physical key present** -- a hit, or a null hit ("" marker) -> None.
* **Bloom says absent** -- None; nothing is written (no null marker).
* **miss** -- the strategy decides: ``passthrough`` loads and stores (null
  marker when the database has nothing); ``mutex`` lets one rebuilder per key
  load under ``lock:{name}:{id}`` while the others poll the key with backoff for
  at most ``rebuild_wait`` s (then :class:`RebuildTimeout`); ``logical`` rebuilds
  the same way but stores a logical key (a missing logical key is loaded
  synchronously ONCE under the mutex; other readers wait for it).

Every store is a compare-and-set on the version read before the database read,
so an update that lands during a rebuild can never be overwritten by the old
value; :meth:`CacheRegion.invalidate` bumps the version, deletes the keys and
invalidates every process's near-cache (see :mod:`cache.near`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import redis

from metrics import CACHE_INVALIDATIONS, CACHE_REBUILD_WAIT, CACHE_REBUILDS, CACHE_REQUESTS

from .bloom import BloomFilter
from .jitter import jittered
from .locks import LockError, SimpleLock
from .near import MEMBER_WINDOW_MS, NearCache, await_acks, invalidation_message
from .scripts import load_script

log = logging.getLogger(__name__)

Loader = Callable[[str], "dict | None"]
Refresher = Callable[[str], None]

STRATEGIES = ("passthrough", "mutex", "logical")
VERSION_TTL_MS = 24 * 3600 * 1000  # far longer than any rebuild can take
_POLL_START_S = 0.002
_POLL_MAX_S = 0.05


class RebuildTimeout(Exception):
    """Another process's rebuild did not produce a value within ``rebuild_wait``."""


@dataclass(frozen=True)
class Invalidation:
    """What :meth:`CacheRegion.invalidate` did."""

    logical: bool  # a logical (hot) key existed: the caller may want it rewritten
    confirmed: bool  # no near-cache can return the old value any more (cache/near.py)


def to_json(data: object) -> str:
    """Compact JSON text, as stored in Redis and L1 and sent to clients."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


_LOGICAL_HEAD = '{"expireTime":'


def encode_logical(data_json: str, expire_at: float) -> str:
    """The logical-expiry envelope, written so :func:`decode_logical` needs no parse."""
    return f'{_LOGICAL_HEAD}{expire_at:.3f},"data":{data_json}}}'


def decode_logical(text: str) -> tuple[float, str]:
    """(expireTime, data JSON text) of an envelope, slicing instead of parsing."""
    if text.startswith(_LOGICAL_HEAD):
        comma = text.find(",", len(_LOGICAL_HEAD))
        if comma > 0 and text.startswith('"data":', comma + 1) and text.endswith("}"):
            return float(text[len(_LOGICAL_HEAD) : comma]), text[comma + 8 : -1]
    envelope = json.loads(text)  # written by someone else: parse it properly
    return float(envelope["expireTime"]), to_json(envelope["data"])


@dataclass(frozen=True)
class RegionConfig:
    """The policy knobs of one region (from Settings, see ``cache.shops``)."""

    name: str  # "shop": lock keys are lock:{name}:{id}
    prefix: str  # "cache:{shop}": a hash tag, so the region's keys share a cluster slot
    strategy: str = "mutex"
    ttl: float = 30 * 60
    null_ttl: float = 2 * 60
    jitter: float = 0.1
    logical_ttl: float = 30 * 60
    lock_ttl_ms: int = 10_000
    rebuild_wait: float = 3.0
    near_ttl: float = 1.0  # the readers' L1 TTL: how long a writer may have to wait
    ack_wait: float = 1.0  # the longest a request's invalidation waits for L1 acks

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown cache strategy {self.strategy!r}")


class Strategy(Protocol):
    """What to do on a miss (neither logical nor physical key, Bloom passed)."""

    name: str

    def on_miss(self, region: CacheRegion, key: str, version: str) -> str | None: ...


class PassThrough:
    """Load on every miss, no mutex; a database miss stores a null marker."""

    name = "passthrough"

    def on_miss(self, region: CacheRegion, key: str, version: str) -> str | None:
        text = region.load(key, self.name)
        region.store_physical(key, text, version)
        return text


class MutexRebuild:
    """One rebuilder per key (cache breakdown); the rest wait for its value."""

    name = "mutex"

    def on_miss(self, region: CacheRegion, key: str, version: str) -> str | None:
        return region.rebuild_exclusively(key, version, self.name, region.store_physical)


class LogicalExpiry:
    """Missing logical key: load once under the mutex and store it logically."""

    name = "logical"

    def on_miss(self, region: CacheRegion, key: str, version: str) -> str | None:
        return region.rebuild_exclusively(key, version, self.name, region.store_logical_any)


_STRATEGY_CLASSES: dict[str, type] = {
    "passthrough": PassThrough,
    "mutex": MutexRebuild,
    "logical": LogicalExpiry,
}


class _Metrics:
    """Label children bound once: the hot path only calls ``inc()``."""

    def __init__(self, strategy: str):
        results = ("hit", "miss", "null_hit", "bloom_reject", "stale", "near_hit")
        self.physical = {r: CACHE_REQUESTS.labels(strategy=strategy, result=r) for r in results}
        self.logical = {r: CACHE_REQUESTS.labels(strategy="logical", result=r) for r in results}
        self.rebuilds = {s: CACHE_REBUILDS.labels(strategy=s) for s in STRATEGIES}
        self.waits = {s: CACHE_REBUILD_WAIT.labels(strategy=s) for s in STRATEGIES}


class CacheRegion:
    """Reads, rebuilds, refreshes and invalidates one key family."""

    def __init__(
        self,
        client: redis.Redis,
        loader: Loader,
        config: RegionConfig,
        *,
        bloom: BloomFilter | None = None,
        near: NearCache | None = None,
        refresher: Refresher | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.loader = loader
        self.config = config
        self.bloom = bloom
        self.near = near
        self.refresher = refresher
        self.clock = clock
        self.strategy: Strategy = _STRATEGY_CLASSES[config.strategy]()
        p = config.prefix
        self.generation_key = f"{p}:gen"
        self.hot_key = f"{p}:hot:current"
        self.channel = f"{p}:invalidate"
        self.members_key = f"{p}:near:members"
        self._get = load_script(client, "cache_get")
        self._cas = load_script(client, "cache_cas_set")
        self._invalidate = load_script(client, "cache_invalidate")
        self._metrics = _Metrics(config.strategy)

    # --- key names -------------------------------------------------------------

    def physical_key(self, key: str) -> str:
        return f"{self.config.prefix}:{key}"

    def logical_key(self, key: str) -> str:
        return f"{self.config.prefix}:logical:{key}"

    def version_key(self, key: str) -> str:
        return f"{self.config.prefix}:ver:{key}"

    def lock_key(self, key: str) -> str:
        return f"lock:{self.config.name}:{key}"

    def refresh_lock_key(self, key: str) -> str:
        return f"lock:{self.config.name}:refresh:{key}"

    # --- reading -------------------------------------------------------------------

    def get(self, key: object) -> str | None:
        """The entity's JSON text, or None if it does not exist.

        At most one Redis round trip when cached, none on a near-cache hit.
        Raises :class:`RebuildTimeout` when another rebuild takes too long.
        """
        key = str(key)
        near = self.near
        if near is not None:
            text = self.near_get(key)
            if text is not None:
                return text
            generation = near.generation
            read_at = time.monotonic()
        text = self._read(key)
        if near is not None and text is not None:
            near.put(key, text, generation, read_at)
        return text

    def near_get(self, key: str) -> str | None:
        """A near-cache hit only (never a rebuild); None otherwise.

        For callers that can serve a hit more cheaply than a full read but must
        fall back to :meth:`get` on a miss (web/fastpath.py); counted as a
        near hit, like in :meth:`get`. A hit costs no Redis call, except for
        the one reader per entry that finds it due for its refresh-ahead
        (:meth:`cache.near.NearCache.lookup`): that one re-reads Redis once
        (:meth:`near_refresh`) so that a key read all the time never expires.
        """
        near = self.near
        if near is None:
            return None
        text, due = near.lookup(key)
        if text is None:
            return None
        self._metrics.physical["near_hit"].inc()
        if due:
            try:
                self.near_refresh(key)
            except redis.RedisError as exc:  # the entry stays until its TTL, as before
                log.debug("near-cache refresh of %s %s failed: %s", self.config.name, key, exc)
        return text

    def near_refresh(self, key: str) -> bool:
        """Re-read ``key`` from Redis (one call) into the near-cache; whether it was put.

        Only what Redis holds is taken: a value, or a logical key (a stale one
        schedules its refresh, as in :meth:`get`). A miss, a null marker or a
        Bloom rejection puts nothing and never rebuilds here: the entry then
        expires at its TTL and the next read goes through :meth:`get`.
        """
        near = self.near
        if near is None:
            return False
        generation = near.generation  # before the read: rule 3 of cache/near.py
        read_at = time.monotonic()
        kind, value = self._raw(key)
        if kind == "P" and value:
            self._metrics.physical["hit"].inc()
            text = value
        elif kind == "L":
            text = self._serve_logical(key, value)
        else:
            return False
        return near.put(key, text, generation, read_at)

    def _raw(self, key: str) -> list[str]:
        bloom = self.bloom
        if bloom is None:
            # No offsets: the script never reads KEYS[3]; a key of the region's own
            # slot stands in for it (a Redis Cluster routes by every key named).
            physical = self.physical_key(key)
            keys = [self.logical_key(key), physical, physical, self.version_key(key)]
            return self._get(keys=keys, args=[])
        keys = [self.logical_key(key), self.physical_key(key), bloom.key, self.version_key(key)]
        return self._get(keys=keys, args=bloom.offsets(key))

    def _read(self, key: str) -> str | None:
        kind, value = self._raw(key)
        if kind == "P":
            if value == "":
                self._metrics.physical["null_hit"].inc()
                return None
            self._metrics.physical["hit"].inc()
            return value
        if kind == "L":
            return self._serve_logical(key, value)
        if kind == "R":
            self._metrics.physical["bloom_reject"].inc()
            return None
        self._metrics.physical["miss"].inc()
        return self.strategy.on_miss(self, key, value)

    def _serve_logical(self, key: str, envelope: str) -> str:
        expire_at, data = decode_logical(envelope)
        if expire_at > self.clock():
            self._metrics.logical["hit"].inc()
        else:
            self._metrics.logical["stale"].inc()
            self.schedule_refresh(key)
        return data

    # --- rebuilding ---------------------------------------------------------------

    def load(self, key: str, strategy: str) -> str | None:
        """Read the entity from the database (the loader) as JSON text."""
        self._metrics.rebuilds[strategy].inc()
        data = self.loader(key)
        return None if data is None else to_json(data)

    def rebuild_exclusively(
        self,
        key: str,
        version: str,
        strategy: str,
        store: Callable[[str, str | None, str], object],
    ) -> str | None:
        """Load under ``lock:{name}:{id}``; without the lock, wait for the holder's value.

        Waiters poll the keys with exponential backoff (2 ms .. 50 ms) and try
        the lock again each round, so a holder that died or failed is replaced
        by one waiter, never by all of them. Bounded by ``rebuild_wait``.
        """
        cfg = self.config
        lock = SimpleLock(self.client, self.lock_key(key), ttl_ms=cfg.lock_ttl_ms)
        started = time.monotonic()
        deadline = started + cfg.rebuild_wait
        delay = _POLL_START_S
        waited = False
        while True:
            if lock.acquire(blocking=False):
                try:
                    # Double check: the previous holder may have stored it just now.
                    kind, value = self._raw(key)
                    if kind != "M":
                        return self._served(key, kind, value)
                    text = self.load(key, strategy)
                    store(key, text, value)
                    return text
                finally:
                    with contextlib.suppress(LockError):
                        lock.release()  # it may have expired during a slow load
                    if waited:
                        self._metrics.waits[strategy].observe(time.monotonic() - started)
            waited = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._metrics.waits[strategy].observe(time.monotonic() - started)
                raise RebuildTimeout(
                    f"{cfg.name} {key}: no rebuilt value after {cfg.rebuild_wait:g}s"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX_S)
            kind, value = self._raw(key)
            if kind != "M":
                self._metrics.waits[strategy].observe(time.monotonic() - started)
                return self._served(key, kind, value)

    def _served(self, key: str, kind: str, value: str) -> str | None:
        if kind == "L":
            return self._serve_logical(key, value)
        if kind == "P":
            return value or None
        return None  # "R": the filter was rebuilt meanwhile and says absent

    # --- storing (compare-and-set on the version read before the load) ---------

    def store_physical(self, key: str, text: str | None, version: str) -> bool:
        """Store a value (TTL) or a null marker (null TTL), both jittered."""
        cfg = self.config
        ttl = cfg.ttl if text is not None else cfg.null_ttl
        ttl_ms = jittered(ttl, cfg.jitter)
        keys = [self.physical_key(key), self.version_key(key)]
        return self._cas(keys=keys, args=[version, text or "", ttl_ms]) == 1

    def store_logical_any(self, key: str, text: str | None, version: str) -> bool:
        """Store a logical key for any id (strategy ``logical``); nulls go physical."""
        return self._store_logical(key, text, version, guarded=False)

    def store_logical_hot(self, key: str, text: str | None, version: str) -> bool:
        """Store a logical key only if the id is in the hot set (no orphans)."""
        return self._store_logical(key, text, version, guarded=True)

    def _store_logical(self, key: str, text: str | None, version: str, guarded: bool) -> bool:
        if text is None:
            return self.store_physical(key, None, version)
        envelope = encode_logical(text, self.clock() + self.config.logical_ttl)
        keys = [self.logical_key(key), self.version_key(key)]
        args: list[object] = [version, envelope, 0]
        if guarded:
            keys.append(self.hot_key)
            args.append(key)
        return self._cas(keys=keys, args=args) == 1

    # --- logical refresh ------------------------------------------------------------

    def schedule_refresh(self, key: str) -> bool:
        """Ask for one refresh of an expired logical key; True if this call scheduled it.

        The guard lock is never released: it expires after ``lock_ttl_ms``, so
        a refresh that was lost or failed is scheduled again by a later reader.
        """
        guard = SimpleLock(self.client, self.refresh_lock_key(key), ttl_ms=self.config.lock_ttl_ms)
        if not guard.acquire(blocking=False):
            return False
        try:
            if self.refresher is not None:
                self.refresher(key)
            else:  # no task queue (CLI, tests): refresh in a daemon thread
                threading.Thread(target=self._refresh_quietly, args=(key,), daemon=True).start()
        except Exception:
            log.exception("could not schedule a refresh of %s %s", self.config.name, key)
            with contextlib.suppress(LockError, redis.RedisError):
                guard.release()
            return False
        return True

    def _refresh_quietly(self, key: str) -> None:
        try:
            self.refresh(key)
        except Exception:
            log.exception("refresh of %s %s failed", self.config.name, key)

    def refresh(self, key: object) -> bool:
        """Reload one logical key from the database (the refresh task's body).

        Under strategy ``logical`` any id may hold a logical key; otherwise only
        ids in the hot set (so a shop that left the hot set gets no orphan key).
        """
        key = str(key)
        version = self.client.get(self.version_key(key)) or ""
        text = self.load(key, "logical")
        if self.config.strategy == "logical":
            return self.store_logical_any(key, text, version)
        return self.store_logical_hot(key, text, version)

    def logical_expiry(self, keys: Iterable[object]) -> dict[str, float]:
        """expireTime of each existing logical key (for the beat refresher)."""
        keys = [str(k) for k in keys]
        if not keys:
            return {}
        values = self.client.mget([self.logical_key(k) for k in keys])
        return {k: decode_logical(v)[0] for k, v in zip(keys, values, strict=True) if v}

    def make_hot(self, keys: Iterable[object]) -> list[str]:
        """Replace the hot set with ``keys``; returns the ids that left it.

        Their logical keys are deleted in the same transaction (except under
        strategy ``logical``, where every id may keep one), so no TTL-less key
        outlives its hotness. Callers serialise warm-ups (see ``cache.shops``).
        """
        keys = [str(k) for k in keys]
        previous = self.client.smembers(self.hot_key)
        dropped = sorted(set(previous) - set(keys))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.hot_key)
        if keys:
            pipe.sadd(self.hot_key, *keys)
        if dropped and self.config.strategy != "logical":
            pipe.delete(*[self.logical_key(k) for k in dropped])
        pipe.execute()
        return dropped

    def refresh_many(
        self, keys: Iterable[object], load_many: Callable[[list[str]], dict[str, dict]]
    ) -> int:
        """(Re)write the logical keys of ``keys`` from one batched database read.

        Versions are read BEFORE the load, like every rebuild, so an update that
        lands meanwhile wins. Ids the database no longer has get a null marker.
        Returns how many logical keys were written.
        """
        keys = [str(k) for k in keys]
        if not keys:
            return 0
        versions = self.client.mget([self.version_key(k) for k in keys])
        self._metrics.rebuilds["logical"].inc(len(keys))
        found = load_many(keys)
        written = 0
        for key, version in zip(keys, versions, strict=True):
            data = found.get(key)
            text = None if data is None else to_json(data)
            if self.config.strategy == "logical":
                stored = self.store_logical_any(key, text, version or "")
            else:
                stored = self.store_logical_hot(key, text, version or "")
            written += bool(stored and text is not None)
        return written

    # --- writing ----------------------------------------------------------------------

    def invalidate(self, key: object, ack_wait: float | None = None) -> Invalidation:
        """Call AFTER the database write: drop every cached copy, everywhere.

        Deletes the Redis keys and evicts every process's near-cache, then
        waits for their acknowledgements at most ``ack_wait`` seconds (None:
        ``config.ack_wait``, what a request may wait). A wait of the near-cache
        TTL or more always confirms: when an ack is missing it sleeps until the
        TTL has run out since the delete (see :mod:`cache.near`). Idempotent:
        calling it again for the same write does no harm. Raises Redis' error
        when the keys could not be deleted.
        """
        key = str(key)
        ack_key = f"{self.config.prefix}:near:ack:{uuid.uuid4().hex}"
        keys = [
            self.version_key(key),
            self.generation_key,
            self.members_key,
            self.physical_key(key),
            self.logical_key(key),
        ]
        args = [
            VERSION_TTL_MS,
            self.channel,
            invalidation_message(ack_key, [key]),
            MEMBER_WINDOW_MS,
        ]
        receivers, members, _physical, logical = self._invalidate(keys=keys, args=args)
        published_at = time.monotonic()
        near = self.near
        if near is not None:
            near.evict([key])
        expected = max(int(receivers), int(members))
        if not expected:
            CACHE_INVALIDATIONS.labels(outcome="none").inc()
            return Invalidation(bool(logical), True)
        wait = self.config.ack_wait if ack_wait is None else ack_wait
        ttl = self.config.near_ttl
        if await_acks(self.client, ack_key, expected, published_at + min(wait, ttl)) >= expected:
            CACHE_INVALIDATIONS.labels(outcome="acked").inc()
            return Invalidation(bool(logical), True)
        if wait < ttl:
            CACHE_INVALIDATIONS.labels(outcome="unconfirmed").inc()
            return Invalidation(bool(logical), False)
        remaining = published_at + ttl - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        CACHE_INVALIDATIONS.labels(outcome="waited_ttl").inc()
        return Invalidation(bool(logical), True)
