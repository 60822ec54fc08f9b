"""Which vouchers have an orders stream worth reading: for recovery, the gauges and audits.

Every voucher has its own stream (``stream.orders:{<voucherId>}``,
:mod:`cache.order_stream`), so whoever reads "the" backlog reads many streams.
The authority on which vouchers exist is the database's ``tb_seckill_voucher``:
the gate sells only vouchers loaded from it (:mod:`cache.reconcile`,
web/vouchers.py), on a single Redis and on a cluster alike, and it needs no
Redis key of its own in some one slot that every gate call would have to touch.
(A Redis set of the vouchers the gate has seen cannot be written by the gate's
script on a cluster: it would be another slot.) One thing the database cannot
say is which vouchers it no longer has: a voucher deleted after its sale began
may leave entries behind (they dead-letter as an unknown voucher). So loading a
voucher into Redis also registers it (:func:`prepare`: ``stream.orders:vouchers``,
a set in one slot, written at load time, never by the gate), and the sweep
below reads the registered vouchers too.

Reading every voucher's stream ever made on every beat tick would grow without
bound, so the readers take:

* **recent** vouchers: sale not ended, or ended less than
  ``order_stream_horizon_s`` ago (a day). Reservations are made only during a
  sale, and settle within seconds; these are where the backlog is;
* **lingering** vouchers: older ones whose stream held entries or dead letters
  when last read (a long database outage, an entry that kept failing, a dead
  letter nobody replayed yet: the gauge keeps counting it).
  Kept in ``stream.orders:lingering`` (a set in one slot, written only by
  recovery and replay, never by the gate), so recovery keeps visiting them
  until their stream is empty;
* and once per ``order_stream_sweep_s`` (an hour; the mark
  ``stream.orders:swept`` expires then; a fresh Redis has none) recovery reads
  **every** seckill voucher's stream, the database's and the registered ones,
  in one pipeline (one round trip per node), so nothing old is missed even if
  the set was lost.

So a beat tick costs one indexed database query, one SMEMBERS and one
pipelined reading of the recent and lingering streams, whatever the number of
vouchers the shop ever sold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from sqlalchemy import Select, select
from sqlalchemy.exc import SQLAlchemyError

from models.entities import SeckillVoucher, utcnow
from models.session import Database
from settings import Settings

from .order_stream import ensure_groups, voucher_stream

log = logging.getLogger(__name__)


def lingering_key(settings: Settings) -> str:
    """The set of old vouchers whose stream recovery found entries in."""
    return f"{settings.order_stream}:lingering"


def registry_key(settings: Settings) -> str:
    """The set of every voucher loaded into Redis (the sweep reads deleted ones there)."""
    return f"{settings.order_stream}:vouchers"


def prepare(client: redis.Redis, settings: Settings, voucher_ids: list[int]) -> None:
    """Vouchers loaded into Redis: register them, and give their streams the consumer group.

    Called wherever a voucher becomes sellable (its creation, its load on
    demand, ``flask seed``), before the gate can write its stream.
    """
    if not voucher_ids:
        return
    client.sadd(registry_key(settings), *sorted(set(voucher_ids)))
    ensure_groups(client, [voucher_stream(settings, v) for v in voucher_ids])


def swept_key(settings: Settings) -> str:
    """Present while the last full sweep is younger than ``order_stream_sweep_s``."""
    return f"{settings.order_stream}:swept"


def _ids(db: Database, query: Select) -> list[int]:
    """The voucher ids ``query`` selects: a read on a connection of its own, no commit."""
    with db.engine.connect() as conn:
        return [int(v) for v in conn.execute(query).scalars()]


def recent_vouchers(db: Database, settings: Settings) -> list[int]:
    """Seckill vouchers on sale, or whose sale ended less than the horizon ago."""
    since = utcnow() - timedelta(seconds=settings.order_stream_horizon_s)
    query = select(SeckillVoucher.voucher_id).where(SeckillVoucher.end_time > since)
    return _ids(db, query.order_by(SeckillVoucher.voucher_id))


def all_vouchers(db: Database) -> list[int]:
    """Every seckill voucher (the audit's and the sweep's list)."""
    return _ids(db, select(SeckillVoucher.voucher_id).order_by(SeckillVoucher.voucher_id))


def lingering(client: redis.Redis, settings: Settings) -> set[int]:
    """The old vouchers recovery still visits (their stream held entries when last read)."""
    return {int(v) for v in client.smembers(lingering_key(settings)) if v.isdigit()}


def linger(client: redis.Redis, settings: Settings, voucher_ids: list[int]) -> None:
    """Have recovery and the gauges visit these vouchers' streams until they are empty.

    Replay calls it before it puts an entry back into a voucher's stream, so an
    entry of a voucher whose sale ended long ago is never left unread. It also
    makes the next recovery sweep every stream: a run that read the voucher's
    stream just before the entry came back may drop it from the set.
    """
    if voucher_ids:
        pipe = client.pipeline(transaction=False)
        pipe.sadd(lingering_key(settings), *sorted(set(voucher_ids)))
        pipe.delete(swept_key(settings))
        pipe.execute()


@dataclass
class Visit:
    """The vouchers one recovery run reads, and which of them are old."""

    voucher_ids: list[int]
    old: set[int] = field(default_factory=set)  # not recent: lingering, or swept
    swept: bool = False


def registered(client: redis.Redis, settings: Settings) -> set[int]:
    """Every voucher ever loaded into Redis (:func:`prepare`)."""
    return {int(v) for v in client.smembers(registry_key(settings)) if v.isdigit()}


def for_recovery(client: redis.Redis, db: Database, settings: Settings) -> Visit:
    """Recent and lingering vouchers; every seckill voucher when a sweep is due.

    With the database failing, every registered voucher (no sweep mark is
    spent, the lingering set is left as it is): the run still reads every
    stream, and its settle attempts fail as outside failures, which charge no
    entry and end the run.
    """
    try:
        recent = recent_vouchers(db, settings)
    except SQLAlchemyError as exc:
        log.warning("order streams: vouchers from the registry, the database failed: %s", exc)
        return Visit(sorted(registered(client, settings) | lingering(client, settings)))
    old = lingering(client, settings)
    swept = bool(client.set(swept_key(settings), "1", nx=True, ex=settings.order_stream_sweep_s))
    if swept:
        old |= set(all_vouchers(db)) | registered(client, settings)
    old -= set(recent)
    return Visit(recent + sorted(old), old, swept)


def after_recovery(
    client: redis.Redis, settings: Settings, visit: Visit, behind: list[int]
) -> None:
    """Keep the old vouchers whose stream held anything in the set, drop the empty ones.

    ``behind``: the vouchers whose stream held entries, pending ids or dead
    letters when recovery read them. One emptied by this run leaves the set on
    the next.
    """
    keep = visit.old & set(behind)
    drop = visit.old - keep
    pipe = client.pipeline(transaction=False)
    if keep:
        pipe.sadd(lingering_key(settings), *sorted(keep))
    if drop:
        pipe.srem(lingering_key(settings), *sorted(drop))
    pipe.execute()


def for_readers(client: redis.Redis, db: Database, settings: Settings) -> list[int]:
    """What the stream gauges read: the recent vouchers and the lingering ones."""
    recent = recent_vouchers(db, settings)
    return recent + sorted(lingering(client, settings) - set(recent))
