"""Cache tasks (queue "cache"), sent by name by the web processes.

* ``tasks.cache.refresh_shop``: the logical-expiry refresh of one shop, sent by
  a web process that served an expired logical key; that reader did not wait.
  The refresh reads the shop's version before its database read and stores by
  compare-and-set, so a redelivered or late refresh never overwrites a newer
  update (idempotent).
* ``tasks.cache.converge_shop``: the cache steps of a shop write (an update or
  a create) that did not finish after its commit (cache/shop_sync.py), run
  again, idempotently, with backoff until they all finish; beat's sweep covers
  what it never finishes.
"""

from __future__ import annotations

from celery import shared_task

from cache import shop_sync
from cache.shops import shop_region

CONVERGE_RETRIES = 12  # backoff 1, 2, 4 ... 60 s: about 7 minutes, then beat's sweep


@shared_task(bind=True, name="tasks.cache.refresh_shop", ignore_result=True)
def refresh_shop(self, shop_id: int) -> bool:  # type: ignore[no-untyped-def]
    """Reload one hot shop's logical key from the database; True if it was written."""
    services = self.app.services
    region = shop_region(services.redis, services.db, services.settings)
    return region.refresh(int(shop_id))


@shared_task(
    bind=True, name="tasks.cache.converge_shop", ignore_result=True, max_retries=CONVERGE_RETRIES
)
def converge_shop(self, shop_id: int) -> bool:  # type: ignore[no-untyped-def]
    """Finish a written shop's cache steps; retried until every one is done."""
    services = self.app.services
    region = shop_region(services.redis, services.db, services.settings)
    # A worker may wait out the near-cache TTL for a missing acknowledgement.
    outcome = shop_sync.converge_shop(region, services.db, int(shop_id), region.config.near_ttl)
    if not outcome.done:
        raise self.retry(countdown=min(60, 2**self.request.retries))
    return True
