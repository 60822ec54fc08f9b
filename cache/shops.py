"""The shop cache: one region configured from Settings, plus its upkeep jobs.

Web routes, the refresh task, beat jobs and ``flask cache warm`` all build the
shop region here, so they agree on keys, TTLs and strategy. Nothing here
imports web or tasks: the refresh trigger is a callable passed in.

**Which strategy serves GET /shop/{id}:** a shop with a logical key is served
by logical expiry; a shop without one by ``settings.shop_cache_strategy``
(passthrough | mutex | logical). Logical keys exist for the *hot* shops: the
top ``settings.hot_shop_count`` shops by ``sold`` plus the ids in the Redis set
``cache:{shop}:hot`` (an operator's explicit list), written by the warm job
(``flask seed``, ``flask cache warm``, beat ``warm_hot_shops``). Under strategy
``logical`` every shop read gets a logical key. A hot shop whose logical key
is missing (just updated, Redis restarted) falls back to the configured
strategy until its refresh or the next warm-up writes it again.
"""

from __future__ import annotations

import logging
import time
from datetime import tzinfo

import redis

from models.session import Database
from settings import Settings

from .bloom import BloomFilter
from .jitter import jittered
from .locks import LockError, SimpleLock
from .near import NearCache
from .region import CacheRegion, Refresher, RegionConfig, to_json
from .shop_source import iter_shop_ids, load_shop, load_shop_types, load_shops, top_shop_ids

log = logging.getLogger(__name__)

# The shop region's keys, its Bloom filter and the operator's hot list share the hash
# tag {shop}: its scripts read a shop's keys with the filter and bump the region's
# generation as they invalidate, so on a Redis Cluster the region lives on one slot.
SHOP_PREFIX = "cache:{shop}"
SHOP_TYPE_KEY = "cache:shop-type"
SHOP_BLOOM_KEY = "bloom:{shop}"
EXPLICIT_HOT_KEY = "cache:{shop}:hot"  # operator-managed set of shop ids, always hot
WARM_LOCK = "lock:shop:warm"
BLOOM_LOCK = "lock:bloom:shop"
JOB_LOCK_TTL_MS = 10 * 60 * 1000


def shop_region_config(settings: Settings) -> RegionConfig:
    """The region's policy, read from Settings."""
    return RegionConfig(
        name="shop",
        prefix=SHOP_PREFIX,
        strategy=settings.shop_cache_strategy,
        ttl=settings.shop_ttl,
        null_ttl=settings.null_ttl,
        jitter=settings.ttl_jitter,
        logical_ttl=settings.logical_ttl,
        lock_ttl_ms=settings.rebuild_lock_ttl * 1000,
        rebuild_wait=settings.rebuild_wait,
        near_ttl=settings.near_cache_ttl if settings.near_cache_enabled else 0.0,
        ack_wait=settings.near_cache_ack_wait,
    )


def shop_bloom(client: redis.Redis, settings: Settings) -> BloomFilter:
    """The Bloom filter of existing shop ids."""
    return BloomFilter(
        client, SHOP_BLOOM_KEY, settings.bloom_expected_shops, settings.bloom_fp_rate
    )


def shop_near_cache(client: redis.Redis, settings: Settings) -> NearCache | None:
    """This process's L1 for shops, or None when disabled."""
    if not settings.near_cache_enabled or settings.near_cache_ttl <= 0:
        return None
    config = shop_region_config(settings)
    return NearCache(
        client,
        channel=f"{config.prefix}:invalidate",
        members_key=f"{config.prefix}:near:members",
        size=settings.near_cache_size,
        ttl=settings.near_cache_ttl,
    )


def shop_region(
    client: redis.Redis,
    db: Database,
    settings: Settings,
    *,
    refresher: Refresher | None = None,
    near: NearCache | None = None,
) -> CacheRegion:
    """The shop region; ``refresher`` schedules a logical refresh (None: a thread)."""
    return CacheRegion(
        client,
        lambda key: load_shop(db, key, settings.zone),
        shop_region_config(settings),
        bloom=shop_bloom(client, settings),
        near=near,
        refresher=refresher,
    )


def hot_shop_ids(client: redis.Redis, db: Database, top: int) -> list[str]:
    """The hot set: the ``top`` best sellers plus the explicit ``cache:{shop}:hot`` ids."""
    ids = [str(i) for i in top_shop_ids(db, top)]
    explicit = sorted(client.smembers(EXPLICIT_HOT_KEY), key=lambda s: (len(s), s))
    seen = set(ids)
    ids.extend(i for i in explicit if i.isdigit() and i not in seen)
    return ids


def warm_hot_shops(region: CacheRegion, db: Database, top: int, zone: tzinfo) -> int:
    """Make the current hot shops the hot set and write their logical keys.

    Serialised by ``lock:shop:warm`` so two warm-ups cannot interleave their
    hot-set updates; a second caller skips (returns 0). Returns keys written.
    """
    lock = SimpleLock(region.client, WARM_LOCK, ttl_ms=JOB_LOCK_TTL_MS)
    if not lock.acquire(blocking=False):
        return 0
    try:
        ids = hot_shop_ids(region.client, db, top)
        region.make_hot(ids)
        return region.refresh_many(ids, lambda keys: load_shops(db, keys, zone))
    finally:
        try:
            lock.release()
        except LockError:
            log.warning("warm-up outlived its lock %s", WARM_LOCK)


def refresh_due_logical(region: CacheRegion, db: Database, ahead: float, zone: tzinfo) -> int:
    """Refresh every logical key that expires within ``ahead`` seconds (beat).

    Readers then never see an expired value in normal operation; the reader-
    triggered refresh is the fallback. Keys: the hot set, or under strategy
    ``logical`` every logical key (found with SCAN).
    """
    client = region.client
    if region.config.strategy == "logical":
        pattern = region.logical_key("*")
        cut = len(region.logical_key(""))
        keys = {k[cut:] for k in client.scan_iter(match=pattern, count=1000)}
    else:
        keys = set(client.smembers(region.hot_key))
    horizon = time.time() + ahead
    expiry = region.logical_expiry(sorted(keys))
    due = [k for k in sorted(keys) if expiry.get(k, 0.0) <= horizon]
    total = 0
    for start in range(0, len(due), 500):
        chunk = due[start : start + 500]
        total += region.refresh_many(chunk, lambda ks: load_shops(db, ks, zone))
    return total


def rebuild_shop_bloom(client: redis.Redis, db: Database, settings: Settings) -> int:
    """Rebuild the shop Bloom filter from the database and swap it in atomically.

    Returns the number of ids in the new filter, or -1 when another rebuild
    holds ``lock:bloom:shop``. Inserts during the scan are not lost (see
    :meth:`cache.bloom.BloomFilter.begin_rebuild`).
    """
    bloom = shop_bloom(client, settings)
    lock = SimpleLock(client, BLOOM_LOCK, ttl_ms=JOB_LOCK_TTL_MS)
    if not lock.acquire(blocking=False):
        return -1
    try:
        bloom.begin_rebuild()
        count = bloom.finish_rebuild(iter_shop_ids(db))
        if count > settings.bloom_expected_shops:
            log.warning(
                "bloom:{shop} holds %d ids, more than HMDP_BLOOM_EXPECTED_SHOPS=%d: "
                "its false-positive rate is above %.2f%%",
                count,
                settings.bloom_expected_shops,
                settings.bloom_fp_rate * 100,
            )
        return count
    finally:
        try:
            lock.release()
        except LockError:
            log.warning("bloom rebuild outlived its lock %s", BLOOM_LOCK)


def shop_types_json(client: redis.Redis, db: Database, settings: Settings) -> str:
    """The shop-type list as JSON text, cache-aside in ``cache:shop-type``.

    Ten rows that change only by migration: no mutex, no version; a jittered
    TTL keeps it from expiring together with the warm-up's other keys.
    """
    text = client.get(SHOP_TYPE_KEY)
    if text is None:
        text = warm_shop_types(client, db, settings)
    return text


def warm_shop_types(client: redis.Redis, db: Database, settings: Settings) -> str:
    """Load the shop types and (re)write ``cache:shop-type``; returns the JSON text."""
    text = to_json(load_shop_types(db, settings.zone))
    client.set(SHOP_TYPE_KEY, text, px=jittered(settings.shop_type_ttl, settings.ttl_jitter))
    return text
