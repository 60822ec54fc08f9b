"""After a shop's row changed: every cache and the GEO index converge on the new row.

A shop write commits to the database first; what follows must never turn that
committed write into an error (the client would retry a write that happened)
and must never be lost. :func:`converge_shop` runs the steps that follow, each
idempotent and each tried even when an earlier one failed:

* ``invalidate``: version bump, delete of the physical and logical keys and the
  near-cache broadcast in one Lua call, then the wait for the near-caches'
  acknowledgements (:meth:`cache.region.CacheRegion.invalidate`);
* ``hot``: a hot shop's logical key rewritten from the row (compare-and-set on
  the version read first, so it never overwrites a newer write);
* ``geo``: the shop at its position in its type's GEO key, and out of the others.

It reports what did not finish (a Redis error, or a near-cache that had not
acknowledged within the request's wait). Then:

1. ``PUT /shop`` and ``POST /shop`` answer 202 (committed, caches converging)
   and send the task ``tasks.cache.converge_shop``, which runs the steps again
   (waiting out the near-cache TTL when an acknowledgement is missing) and
   retries with backoff until they all finish;
2. when even that task could not be sent (the broker on the same unreachable
   Redis) or ran out of retries, beat's ``converge_updated_shops``
   (:func:`converge_updated`) runs the steps for every shop whose row changed
   since its last complete run, read from ``tb_shop.update_time``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from sqlalchemy import select

from models.entities import Shop, ShopType
from models.session import Database

from . import geo
from .region import CacheRegion
from .shops import SHOP_PREFIX

log = logging.getLogger(__name__)

STEPS = ("invalidate", "hot", "geo")
# Epoch seconds up to which every changed shop has converged (the sweep's mark).
SWEEP_MARK_KEY = f"{SHOP_PREFIX}:converged-until"
# tb_shop.update_time is written by the web hosts' clocks: the sweep reaches back
# this much further than its mark, so a host whose clock is behind is not missed.
CLOCK_MARGIN_S = 60.0
# No mark (first run, or Redis lost it): how far back the sweep starts.
FIRST_LOOKBACK_S = 3600.0


@dataclass
class Convergence:
    """What :func:`converge_shop` left unfinished."""

    failed: list[str] = field(default_factory=list)  # steps that raised
    confirmed: bool = False  # every near-cache is known to have dropped the old value

    @property
    def done(self) -> bool:
        return not self.failed and self.confirmed


def index_shop(client: redis.Redis, db: Database, shop_id: int) -> None:
    """Put the shop at its current position and type in the GEO index (raises Redis' error).

    It leaves every other type's key in the same MULTI, so a type change needs
    no "old type"; a shop the database no longer has is left alone.
    """
    with db.sessions() as session:
        shop = session.get(Shop, shop_id)
        type_ids = list(session.scalars(select(ShopType.id)))
    if shop is None:
        return
    geo.upsert(
        client,
        geo.ShopPoint(shop.id, shop.type_id, shop.x, shop.y),
        other_type_ids=[t for t in type_ids if t != shop.type_id],
    )


def converge_shop(
    region: CacheRegion, db: Database, shop_id: int, ack_wait: float | None = None
) -> Convergence:
    """Run every step for one shop whose row was just written; never raises.

    ``ack_wait``: how long to wait for the near-caches' acknowledgements (None:
    the region's, what a request may wait; the near-cache TTL or more always
    confirms). Call it again, as often as needed, until ``done``.
    """
    outcome = Convergence()
    logical = False
    try:
        invalidation = region.invalidate(shop_id, ack_wait)
        logical, outcome.confirmed = invalidation.logical, invalidation.confirmed
    except Exception as exc:  # Redis away, stalled, or the script failed
        outcome.failed.append("invalidate")
        log.warning("shop %s: cache invalidation failed after the commit: %s", shop_id, exc)
    try:
        # A hot (logical) shop: its logical key back from the new row now, rather
        # than leave it to the mutex path until the next warm-up.
        if logical or region.client.sismember(region.hot_key, str(shop_id)):
            region.refresh(shop_id)
    except Exception as exc:
        outcome.failed.append("hot")
        log.warning("shop %s: hot-shop refresh failed after the commit: %s", shop_id, exc)
    try:
        index_shop(region.client, db, shop_id)
    except Exception as exc:
        outcome.failed.append("geo")
        log.warning("shop %s: GEO index not updated after the commit: %s", shop_id, exc)
    return outcome


def updated_shop_ids(db: Database, since: float) -> list[int]:
    """Ids of the shops whose row changed at or after epoch ``since``."""
    cut = datetime.fromtimestamp(since, UTC).replace(tzinfo=None)  # naive UTC, as stored
    query = select(Shop.id).where(Shop.update_time >= cut).order_by(Shop.id)
    with db.sessions() as session:
        return list(session.scalars(query))


@dataclass
class SweepReport:
    """One :func:`converge_updated` run."""

    since: float  # epoch seconds the run reached back to
    shops: int  # shops it converged
    unfinished: list[int]  # shops still unfinished (retried by the next run)


def mark_converged(client: redis.Redis, at: float) -> bool:
    """Start the sweep at ``at`` on a system that has no mark yet (returns whether it did).

    ``flask seed`` writes every shop's row, then caches and indexes them all
    itself: without a mark, the first sweep would run every step again for each
    shop it just loaded (an hour's lookback), on the order worker, during the
    first sale. An existing mark is left alone: its window may hold a write whose
    steps failed, which only the sweep retries.
    """
    # The sweep reaches back CLOCK_MARGIN_S before its mark: its first window starts at ``at``.
    return bool(client.set(SWEEP_MARK_KEY, repr(at + CLOCK_MARGIN_S), nx=True))


def converge_updated(
    region: CacheRegion, db: Database, clock: Callable[[], float] = time.time
) -> SweepReport:
    """Converge every shop changed since the last complete run (beat, the safety net).

    The mark moves to this run's start (never back) only when every shop
    finished, so a Redis outage of any length is swept once it is over. Waits out the
    near-cache TTL where an acknowledgement is missing (a worker may wait).
    """
    started = clock()
    raw = region.client.get(SWEEP_MARK_KEY)
    mark = float(raw) if raw else None
    since = (started - FIRST_LOOKBACK_S if mark is None else mark) - CLOCK_MARGIN_S
    ids = updated_shop_ids(db, since)
    unfinished = [
        shop_id
        for shop_id in ids
        if not converge_shop(region, db, shop_id, region.config.near_ttl).done
    ]
    if not unfinished:
        # Never back: a mark ahead of this run's start is the seed's (mark_converged).
        region.client.set(SWEEP_MARK_KEY, repr(started if mark is None else max(started, mark)))
    return SweepReport(since, len(ids), unfinished)
