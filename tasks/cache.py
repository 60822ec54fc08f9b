"""Cache tasks: the logical-expiry refresh of one shop (queue "cache").

Sent by name ("tasks.cache.refresh_shop") by a web process that served an
expired logical key; that reader did not wait. The refresh reads the shop's
version before its database read and stores by compare-and-set, so a
redelivered or late refresh never overwrites a newer update (idempotent).
"""

from __future__ import annotations

from celery import shared_task

from cache.shops import shop_region


@shared_task(bind=True, name="tasks.cache.refresh_shop", ignore_result=True)
def refresh_shop(self, shop_id: int) -> bool:  # type: ignore[no-untyped-def]
    """Reload one hot shop's logical key from the database; True if it was written."""
    services = self.app.services
    region = shop_region(services.redis, services.db, services.settings)
    return region.refresh(int(shop_id))
