"""Periodic shop-cache upkeep, run by Celery beat (queue "beat").

* ``refresh_logical_expiry`` -- rewrites logical keys shortly before they
  expire, so readers normally never see an expired hot shop;
* ``warm_hot_shops`` -- recomputes the hot set (top N by sold plus the explicit
  ``cache:{shop}:hot`` ids) and writes their logical keys;
* ``rebuild_shop_bloom`` -- rebuilds the Bloom filter of shop ids from the
  database and swaps it in atomically;
* ``converge_updated_shops`` -- runs the cache steps again for every shop whose
  row changed since its last complete run (cache/shop_sync.py): a write whose
  steps failed and whose task was never sent (or gave up) still converges.

Each job uses the worker's Services (``self.app.services``) and never imports web.
"""

from __future__ import annotations

import logging

from celery import shared_task

from cache import shop_sync, shops

logger = logging.getLogger(__name__)


@shared_task(bind=True, name="beat.cache_jobs.refresh_logical_expiry", ignore_result=True)
def refresh_logical_expiry(self) -> int:  # type: ignore[no-untyped-def]
    """Refresh logical keys expiring within settings.logical_refresh_ahead seconds."""
    services = self.app.services
    settings = services.settings
    region = shops.shop_region(services.redis, services.db, settings)
    return shops.refresh_due_logical(
        region, services.db, settings.logical_refresh_ahead, settings.zone
    )


@shared_task(bind=True, name="beat.cache_jobs.warm_hot_shops", ignore_result=True)
def warm_hot_shops(self, top: int | None = None) -> int:  # type: ignore[no-untyped-def]
    """Recompute the hot set and write its logical keys (top N from settings)."""
    services = self.app.services
    settings = services.settings
    region = shops.shop_region(services.redis, services.db, settings)
    count = settings.hot_shop_count if top is None else int(top)
    return shops.warm_hot_shops(region, services.db, count, settings.zone)


@shared_task(bind=True, name="beat.cache_jobs.rebuild_shop_bloom", ignore_result=True)
def rebuild_shop_bloom(self) -> int:  # type: ignore[no-untyped-def]
    """Rebuild the shop Bloom filter (-1: another rebuild was running)."""
    services = self.app.services
    return shops.rebuild_shop_bloom(services.redis, services.db, services.settings)


@shared_task(bind=True, name="beat.cache_jobs.converge_updated_shops", ignore_result=True)
def converge_updated_shops(self) -> int:  # type: ignore[no-untyped-def]
    """Converge the caches and GEO index of recently changed shops; returns how many."""
    services = self.app.services
    region = shops.shop_region(services.redis, services.db, services.settings)
    report = shop_sync.converge_updated(region, services.db)
    if report.unfinished:
        logger.warning("shops not converged yet (next run retries): %s", report.unfinished[:20])
    return report.shops
