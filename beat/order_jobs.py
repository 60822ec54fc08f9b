"""Periodic order jobs: recover reservations no task has settled.

``beat.order_jobs.recover_pending_orders`` runs every ~15 s (celeryconfig's
beat_schedule) on a worker. It settles, through the task's own code path
(:func:`tasks.orders.settle_order`; :func:`~tasks.orders.settle_orders` for
what nobody ever read, in batches), every Stream entry whose dispatch was lost
or whose task died or gave up, and dead-letters what keeps failing. (The
stream gauges are read from Redis at scrape time by web/metrics.py.) See :mod:`cache.order_stream` for the design.
"""

from __future__ import annotations

import logging

import redis
from celery import shared_task
from sqlalchemy import text

from cache import order_stream
from cache.locks import RLock
from services import Services
from tasks.orders import settle_order, settle_orders

log = logging.getLogger(__name__)

JOB_NAME = "beat.order_jobs.recover_pending_orders"
RECOVERY_LOCK = "lock:order-recovery"


def _database_up(services: Services) -> bool:
    try:
        with services.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:  # any failure: skip this run, keep delivery budgets
        log.warning("order recovery skipped: database unavailable (%s)", exc)
        return False


def run_recovery(services: Services, **options: object) -> dict[str, object]:
    """One recovery run, unless another is running or the database is down.

    The lock keeps two runs (a slow one and the next beat tick, or a manual
    run) from claiming the same entries; checking the database first avoids
    spending every entry's delivery budget during an outage. The lock has the
    order locks' lease: if its release fails, it expires after that lease and
    the next run on any worker goes ahead.
    """
    client = services.redis
    lock = RLock(client, RECOVERY_LOCK, lease_ms=services.settings.order_lock_lease_ms)
    if not lock.acquire(blocking=False):
        return {"skipped": "another recovery is running"}
    try:
        if not _database_up(services):
            return {"skipped": "database unavailable"}
        report = order_stream.recover(
            client,
            services.settings,
            lambda entry: settle_order(services, entry),
            settle_many=lambda entries: settle_orders(services, entries),
            **options,  # type: ignore[arg-type]
        )
        return report.as_dict()
    finally:
        try:
            lock.release()
        except (redis.RedisError, OSError) as exc:  # the hold is dropped: it expires
            log.warning("%s not released (%s); it expires with its lease", RECOVERY_LOCK, exc)


@shared_task(bind=True, name=JOB_NAME, ignore_result=True)
def recover_pending_orders(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Beat entry point: recover unsettled orders with this worker's Services."""
    return run_recovery(self.app.services)
