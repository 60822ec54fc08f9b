"""cache/bloom.py and the Bloom path of the shop region, on a real Redis and database."""

from __future__ import annotations

import random
from datetime import UTC

import pytest
from support.shops import CountingLoader, add_shops

from cache.bloom import BloomFilter, bloom_size
from cache.region import CacheRegion
from cache.shop_source import load_shop
from cache.shops import SHOP_BLOOM_KEY, rebuild_shop_bloom, shop_bloom, shop_region_config

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


def test_size_follows_the_textbook_formulas():
    m, k = bloom_size(1000, 0.01)
    assert 9500 < m < 9600 and k == 7  # 9.59 bits per item, 7 hashes at 1%
    m2, _ = bloom_size(2000, 0.01)
    assert abs(m2 - 2 * m) <= 2


def test_offsets_are_deterministic_and_in_range(redis_client):
    bloom = BloomFilter(redis_client, "bloom:{t}", 1000)
    assert bloom.offsets(42) == bloom.offsets("42")
    assert len(bloom.offsets(42)) == bloom.k
    assert all(0 <= o < bloom.m for o in bloom.offsets(123456789))


def test_missing_filter_lets_everything_through_and_add_does_not_create_it(redis_client):
    bloom = BloomFilter(redis_client, "bloom:{t}", 1000)
    assert bloom.might_contain(5)
    bloom.add(5)
    assert not redis_client.exists("bloom:{t}")  # a filter of one id would reject all others


@pytest.mark.redis_cluster(
    single="statistics of the same script on one slot: nothing the cluster changes"
)
def test_false_positive_rate_at_capacity_is_about_one_percent(redis_client):
    bloom = BloomFilter(redis_client, "bloom:{t}", 2000, 0.01)
    bloom.begin_rebuild()
    assert bloom.finish_rebuild(range(1, 2001)) == 2000
    assert all(bloom.might_contain(i) for i in range(1, 2001))  # no false negatives
    false_positives = sum(bloom.might_contain(i) for i in range(10_001, 15_001))
    assert false_positives / 5_000 < 0.015


def test_insert_during_rebuild_is_not_lost_and_live_key_has_no_ttl(redis_client):
    bloom = BloomFilter(redis_client, "bloom:{t}", 1000)
    bloom.begin_rebuild()
    assert redis_client.pttl(bloom.building_key) > 0  # a crashed rebuild cleans up
    bloom.add(777)  # committed after the scan started: the scan below misses it
    bloom.finish_rebuild([1, 2, 3])
    assert bloom.might_contain(777) and bloom.might_contain(2)
    assert redis_client.ttl(bloom.key) == -1
    assert not redis_client.exists(bloom.building_key, bloom.scratch_key)
    bloom.add(888)  # after the swap: straight into the live filter
    assert bloom.might_contain(888)


def test_rebuild_from_database_holds_every_shop(services):
    ids = add_shops(services.db, 300)
    assert rebuild_shop_bloom(services.redis, services.db, services.settings) == 300
    bloom = shop_bloom(services.redis, services.settings)
    assert all(bloom.might_contain(i) for i in ids)


@pytest.mark.redis_cluster(
    single="statistics of the same script on one slot: nothing the cluster changes"
)
def test_random_unknown_ids_rarely_reach_the_database_and_grow_nothing(services):
    add_shops(services.db, 500)
    settings = services.settings
    # sized for twice the data (false positives ~0.03%), not the 200k default
    settings = settings.with_(bloom_expected_shops=1000)
    rebuild_shop_bloom(services.redis, services.db, settings)
    loader = CountingLoader(services.db)
    region = CacheRegion(
        services.redis,
        loader,
        shop_region_config(settings),
        bloom=shop_bloom(services.redis, settings),
    )
    keys_before = services.redis.dbsize()
    rng = random.Random(4)
    for _ in range(10_000):
        assert region.get(rng.randint(1_000, 2**62)) is None
    assert loader.calls <= 100  # at most 1% reached the database
    # only false positives may leave a (TTL'd) null marker; Bloom rejects write nothing
    assert services.redis.dbsize() <= keys_before + loader.calls
    assert services.redis.exists(SHOP_BLOOM_KEY)
    # known ids are still served
    assert region.get(250) is not None and load_shop(services.db, 250, UTC) is not None
