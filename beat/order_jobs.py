"""Periodic order jobs: recover reservations no task has settled; repair lost gate state.

``beat.order_jobs.recover_pending_orders`` runs every ~15 s (celeryconfig's
beat_schedule) on a worker. It settles, through the task's own code path
(:func:`tasks.orders.settle_order`; :func:`~tasks.orders.settle_free` for
what nobody ever read, in batches), every Stream entry whose dispatch was lost
or whose task died or gave up, and dead-letters what keeps failing, in the
stream of every voucher that may hold any (:mod:`cache.stream_vouchers`).
(The stream gauges are read from Redis at scrape time by web/metrics.py.) See
:mod:`cache.order_stream` for the design.

``beat.order_jobs.reconcile_seckill_state`` runs every ~30 s: it makes every
live voucher's buyers, issued ids and stock, and the order id counter, agree
with the database and the unsettled reservations again after Redis lost state
(:mod:`cache.reconcile`); when cheap checks show nothing lost it reads nothing
more (:meth:`~cache.reconcile.Reconciler.run_if_lost`).
"""

from __future__ import annotations

import logging

import redis
from celery import shared_task
from sqlalchemy import text

from cache import order_stream, stream_vouchers
from cache.locks import RLock
from cache.reconcile import Reconciler
from services import Services
from tasks.orders import RETRYABLE, settle_free, settle_order

log = logging.getLogger(__name__)

JOB_NAME = "beat.order_jobs.recover_pending_orders"
RECOVERY_LOCK = "lock:order-recovery"
# A busy user lock means someone settles that user right now: recovery moves on
# and tries the entry on its next run rather than wait (and hold up the run).
USER_LOCK_WAIT_SECONDS = 0.0


def _database_up(services: Services) -> bool:
    try:
        with services.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:  # any failure: skip this run, keep delivery budgets
        log.warning("order job skipped: database unavailable (%s)", exc)
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
        return recover_orders(services, **options).as_dict()
    finally:
        try:
            lock.release()
        except (redis.RedisError, OSError) as exc:  # the hold is dropped: it expires
            log.warning("%s not released (%s); it expires with its lease", RECOVERY_LOCK, exc)


def recover_orders(services: Services, **options: object) -> order_stream.RecoveryReport:
    """One pass of :func:`cache.order_stream.recover` with the tasks' settling code.

    Over the streams of the vouchers :func:`cache.stream_vouchers.for_recovery`
    names (recent, lingering, every one when a sweep is due) and the legacy
    stream. Without the job's lock and database check (:func:`run_recovery`
    adds them). The database and Redis failures the task retries are the ones
    that never count against an entry.
    """
    client, settings = services.redis, services.settings
    visit = stream_vouchers.for_recovery(client, services.db, settings)
    report = order_stream.recover(
        client,
        settings,
        lambda entry: settle_order(services, entry, USER_LOCK_WAIT_SECONDS),
        visit.voucher_ids,
        settle_many=lambda entries: settle_free(services, entries),
        transient=RETRYABLE,
        **options,  # type: ignore[arg-type]
    )
    stream_vouchers.after_recovery(client, settings, visit, report.behind)
    return report


@shared_task(bind=True, name=JOB_NAME, ignore_result=True)
def recover_pending_orders(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Beat entry point: recover unsettled orders with this worker's Services."""
    return run_recovery(self.app.services)


RECONCILE_JOB = "beat.order_jobs.reconcile_seckill_state"


def run_reconcile(services: Services) -> dict[str, object]:
    """The beat's reconciliation of every live seckill voucher, unless the database is down."""
    if not _database_up(services):
        return {"skipped": "database unavailable"}
    reconciler = Reconciler(services.redis, services.settings, services.db)
    return reconciler.run_if_lost(services.settings.seckill_reconcile_full_s).as_dict()


@shared_task(bind=True, name=RECONCILE_JOB, ignore_result=True)
def reconcile_seckill_state(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Beat entry point: repair the gate state Redis lost, with this worker's Services."""
    return run_reconcile(self.app.services)
