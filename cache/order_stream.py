"""The orders Stream: reservations waiting to become rows, and their recovery.

Settlement design (the contract every writer and reader here follows):

* The seckill Lua script XADDs each reservation ``{orderId, userId, voucherId}``
  to its voucher's stream ``stream.orders:{<voucherId>}`` (:func:`stream_key`) in the
  same atomic step that takes the stock. The Stream is the durable record of "sold
  in Redis, not yet a row" (Redis runs with AOF). One stream per voucher, in the
  voucher's slot (its tag), with its consumer group and its dead-letter stream
  ``stream.orders.dead:{<voucherId>}`` beside it, so everything that touches one
  entry touches one slot: on a single Redis and on a Redis Cluster alike.
  "The Stream" below is one voucher's; which vouchers have one is
  :mod:`cache.stream_vouchers`' job.
* **An entry present in the Stream is unsettled; settling deletes it.** Whoever
  persists an order (the Celery task, or recovery) calls :func:`acknowledge_many`
  afterwards: ``XACK`` + ``XDEL`` in one MULTI. An entry is only ever deleted
  after its row is committed (or after it was moved to the dead-letter stream,
  atomically, by :func:`dead_letter`). That keeps the Stream bounded by the
  unsettled work alone, so no trimming by length is needed or wanted: ``XLEN``
  *is* the backlog, and nothing unsettled can be trimmed away.
* The consumer group ``g1`` (created at ``0`` with MKSTREAM, so entries written
  before it are not skipped) hands out entries that somebody is settling now.
  Each task gets its own entry in the Celery message, and also *claims a batch*
  of entries nobody took yet with ``XREADGROUP ... >`` (:func:`claim_new`,
  consumer ``tasks``) to settle them together, one transaction for many
  orders: group commit. The group makes those batches disjoint between
  concurrent workers, and a worker killed mid-batch leaves its batch in the
  pending list (PEL), where recovery finds it. Entries in the PEL are those a
  batch or recovery took on.
* **The PEL's delivery count counts an entry's own failures**, and it is the
  dead-letter rule: an entry read for the first time has 1; recovery takes an
  entry over keeping its count (``XCLAIM ... JUSTID`` does not count a
  delivery) and, only when the try failed *because of the entry*, adds one
  (``XCLAIM ... RETRYCOUNT n+1``). A try that fails for an outside reason
  counts nothing: a busy user lock (someone settles that user right now), the
  database or Redis failing (the ``transient`` kinds, ``tasks.orders.RETRYABLE``
  for the beat job), a settler killed mid-try. An entry is dead-lettered when
  its count passes ``order_max_deliveries``, i.e. after that many failures of
  its own; an entry that fails by its outcome (unknown voucher, an order id
  that is another order's, no database stock) is dead-lettered at once by the
  settle code. Why count after the outcome rather than count on every claim and
  put the count back on an outside failure: putting it back needs Redis, and
  Redis failing is one of the outside causes. The price: an entry that killed
  every process trying it would never be dead-lettered; it stays in the Stream,
  seen in the backlog gauges.
* :func:`recover` (run by beat every ~15 s, see ``beat/order_jobs.py``):
  1. *stuck*: ``XPENDING ... IDLE`` lists PEL entries idle longer than
     ``order_claim_idle_ms`` (recovery died or failed mid-way, a batch's worker
     died); each is claimed right before it is tried, one at a time, so an
     entry a run never reached is untouched. An entry past
     ``order_max_deliveries`` goes to the dead-letter stream. An id that is
     gone from the Stream was settled, so it is simply XACKed (Redis 7's XCLAIM
     drops it from the PEL itself, 6.2's does not).
  2. *never picked up*: entries after the group's last-delivered id and older
     than the idle threshold (a lost dispatch, or a task that gave up) are
     counted with XRANGE and read with ``XREADGROUP ... >`` (so they enter
     the PEL with one delivery) and settled, a batch at a time with group
     commit; a batch that fails charges none of its entries (phase 1 tries
     them one by one later).
  Both call the same ``settle`` callable as the task (one code path; it takes
  the per-user lock, checks for an existing row, and relies on the UNIQUE
  constraint last), so a task and recovery settling one entry at the same time
  still give one row. Several outside failures in a row (database down) end
  the run early; a busy lock or an entry's own failure does not, so the
  entries behind it are still tried. A run visits the streams of the vouchers
  it is given that hold anything (one pipelined reading of all of them first),
  a batch of each in turn, so one voucher's backlog does not starve another's.
* **Upgrade**: versions before one stream per voucher wrote every reservation to
  the single ``stream.orders`` (:func:`legacy_stream`). While it exists,
  recovery drains it like a voucher's stream (its entries settle and
  dead-letter there, into ``stream.orders.dead``) and deletes it once empty
  (``lua/stream_drop_empty.lua``: only if nothing was added meanwhile, by a
  web process of the old version during a rolling upgrade). Only a single Redis
  can hold it (the old gate never ran on a cluster), so a cluster client never
  looks for it.

This module never imports ``tasks`` or ``web``: the settling is passed in.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from metrics import ORDERS_DEAD_LETTERED, ORDERS_RECOVERED
from models.entities import MAX_ID
from settings import Settings

from .connection import UNAVAILABLE
from .locks import LockError
from .scripts import load_script, pipeline_reply, queue, run_each

log = logging.getLogger(__name__)

RECOVERY_CONSUMER = "recovery"
TASK_CONSUMER = "tasks"  # one name for every worker: batches are disjoint all the same
_PAGE = 1000


class MalformedEntry(ValueError):
    """A Stream entry or task payload that is not a valid reservation."""


# --- which stream ------------------------------------------------------------------------


def voucher_key(name: str, voucher_id: int) -> str:
    """``name`` for one voucher: hmdp's name plus the voucher's hash tag (its slot)."""
    return f"{name}:{{{voucher_id}}}"


def stream_key(settings: Settings, voucher_id: int) -> str:
    """The orders stream of ``voucher_id``: ``stream.orders:{42}`` (the gate's XADD)."""
    return voucher_key(settings.order_stream, voucher_id)


def dead_letter_key(settings: Settings, voucher_id: int) -> str:
    """The dead-letter stream of ``voucher_id``, in its slot: ``stream.orders.dead:{42}``."""
    return voucher_key(settings.order_dead_letter_stream, voucher_id)


@dataclass(frozen=True)
class Stream:
    """One orders stream, its consumer group and its dead-letter stream (one slot)."""

    key: str
    dead: str
    group: str
    voucher_id: int | None = None  # None: the single stream of earlier versions

    @property
    def legacy(self) -> bool:
        """True for the single ``stream.orders`` of earlier versions (see the module doc)."""
        return self.voucher_id is None


def voucher_stream(settings: Settings, voucher_id: int) -> Stream:
    """The stream a voucher's reservations are in."""
    return _voucher_stream(
        settings.order_stream, settings.order_dead_letter_stream, settings.order_group, voucher_id
    )


@functools.lru_cache(maxsize=4096)
def _voucher_stream(name: str, dead_name: str, group: str, voucher_id: int) -> Stream:
    # Asked for several times per order settled: one immutable Stream per voucher.
    return Stream(
        voucher_key(name, voucher_id), voucher_key(dead_name, voucher_id), group, voucher_id
    )


def legacy_stream(settings: Settings) -> Stream:
    """The single orders stream earlier versions wrote (drained by recovery, then deleted)."""
    return Stream(settings.order_stream, settings.order_dead_letter_stream, settings.order_group)


def legacy_of(client: redis.Redis | RedisCluster, settings: Settings) -> list[Stream]:
    """The legacy stream where one can exist: a single Redis (the old gate never ran on a
    cluster, whose client would refuse the legacy key beside a voucher's in one call)."""
    return [] if isinstance(client, RedisCluster) else [legacy_stream(settings)]


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise MalformedEntry(f"{name} must be an integer")
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise MalformedEntry(f"{name} must be an integer, got {value!r}") from None
    if not 0 < number <= MAX_ID:
        raise MalformedEntry(f"{name} out of range: {number}")
    return number


@dataclass(frozen=True)
class OrderEntry:
    """One reservation: what the gate sold and where it sits in the Stream."""

    order_id: int
    user_id: int
    voucher_id: int
    stream_id: str | None = None
    legacy: bool = False  # in the single stream of earlier versions, not its voucher's

    @classmethod
    def from_fields(
        cls, fields: dict | None, stream_id: str | None, legacy: bool = False
    ) -> OrderEntry:
        """Parse a Stream entry's fields; MalformedEntry if they are not a reservation."""
        if not fields:
            raise MalformedEntry("empty entry")
        return cls(
            order_id=_positive_int(fields.get("orderId"), "orderId"),
            user_id=_positive_int(fields.get("userId"), "userId"),
            voucher_id=_positive_int(fields.get("voucherId"), "voucherId"),
            stream_id=stream_id,
            legacy=legacy,
        )

    @classmethod
    def from_payload(cls, payload: object) -> OrderEntry:
        """Parse a Celery task payload (the Stream fields plus ``streamId``)."""
        if not isinstance(payload, dict):
            raise MalformedEntry("payload must be an object")
        stream_id = payload.get("streamId")
        if stream_id is not None and not isinstance(stream_id, str):
            raise MalformedEntry("streamId must be a string")
        return cls.from_fields(payload, stream_id)

    def to_payload(self) -> dict[str, object]:
        """The Celery task argument; the order id as a string (64-bit, see cache/ids.py)."""
        return {
            "orderId": str(self.order_id),
            "userId": self.user_id,
            "voucherId": self.voucher_id,
            "streamId": self.stream_id,
        }


# --- group, acknowledgement, dead letters -------------------------------------------


def ensure_group(client: redis.Redis, stream: Stream) -> bool:
    """Create the consumer group (and the Stream) if missing; True if created now."""
    try:
        client.xgroup_create(stream.key, stream.group, id="0", mkstream=True)
        return True
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise


def ensure_groups(client: redis.Redis, streams: list[Stream]) -> None:
    """:func:`ensure_group` for many streams, in one pipeline (one round trip per node)."""
    if not streams:
        return
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xgroup_create(stream.key, stream.group, id="0", mkstream=True)
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
            raise reply


def stream_of(settings: Settings, entry: OrderEntry) -> Stream:
    """The stream ``entry`` is in: its voucher's (or, read from there, the legacy one)."""
    return legacy_stream(settings) if entry.legacy else voucher_stream(settings, entry.voucher_id)


def acknowledge_many(client: redis.Redis, settings: Settings, entries: list[OrderEntry]) -> None:
    """Mark settled entries: XACK (if recovery held them) and XDEL together, per stream.

    ``lua/stream_settle.lua`` once per stream the entries are in, all in one
    pipeline: one round trip on a single Redis, one per node on a cluster.
    """
    by_stream: dict[Stream, list[str]] = {}
    for entry in entries:
        if entry.stream_id is not None:
            by_stream.setdefault(stream_of(settings, entry), []).append(entry.stream_id)
    if not by_stream:
        return
    calls = [([stream.key], [stream.group, *ids]) for stream, ids in by_stream.items()]
    run_each(client, load_script(client, "stream_settle"), calls)


def dead_letter(
    client: redis.Redis,
    stream: Stream,
    stream_id: str,
    fields: dict | None,
    reason: str,
    deliveries: int | None = None,
) -> None:
    """Move an entry to its stream's dead-letter stream (copy, XACK, XDEL in one MULTI).

    For entries no retry can settle (oversell attempt, malformed, given up);
    an operator inspects ``stream.orders.dead:{<voucherId>}``. Logged at ERROR
    and counted. One slot: the dead letters are beside their stream.
    """
    record = {k: v for k, v in (fields or {}).items() if k not in {"reason", "sourceId"}}
    record.update(reason=reason[:500], sourceId=stream_id, at=str(int(time.time() * 1000)))
    if deliveries is not None:
        record["deliveries"] = str(deliveries)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(stream.dead, record)
    pipe.xack(stream.key, stream.group, stream_id)
    pipe.xdel(stream.key, stream_id)
    pipe.execute()
    ORDERS_DEAD_LETTERED.inc()
    log.error("order entry %s of %s dead-lettered: %s (%s)", stream_id, stream.key, reason, fields)


def replay_dead_letter(
    client: redis.Redis,
    settings: Settings,
    source: Stream,
    dead_id: str,
    entry: OrderEntry | None,
) -> str | None:
    """Move a dead letter of ``source`` back to its voucher's Stream as ``entry``, or (None)
    only remove it.

    One script (``lua/dead_letter_replay.lua``): atomic per entry, and at most
    once however many replays run. Returns the entry's new Stream id ('' when
    only removed), or None if ``dead_id`` is not a dead letter (any more). A
    voucher's dead letters go back to its own stream (one slot); the legacy
    dead letters (a single Redis) to their voucher's stream too.
    """
    fields: list[object] = []
    target = source.key
    if entry is not None:
        fields = ["orderId", entry.order_id, "userId", entry.user_id, "voucherId", entry.voucher_id]
        target = stream_key(settings, entry.voucher_id)
    new_id = load_script(client, "dead_letter_replay")(
        keys=[source.dead, target], args=[dead_id, *fields]
    )
    return None if new_id is None else str(new_id)


# --- reading ---------------------------------------------------------------------------


def iter_stream(client: redis.Redis, stream: str) -> Iterator[tuple[str, dict]]:
    """Every entry of ``stream``, oldest first, read in pages."""
    start = "-"
    while True:
        page = client.xrange(stream, min=start, max="+", count=_PAGE)
        yield from page
        if len(page) < _PAGE:
            return
        start = "(" + page[-1][0]


def as_items(reply: list) -> list[tuple[str, dict]]:
    """An XRANGE reply as (id, fields) pairs, whoever parsed it.

    redis-py's cluster transactions (MULTI in one slot) skip XRANGE's reply
    parsing and hand back each entry's fields as a flat list; the other clients
    parse them into a dict.
    """
    items = []
    for stream_id, fields in reply:
        if isinstance(fields, list):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        items.append((stream_id, fields))
    return items


def parse_entries(
    client: redis.Redis, settings: Settings, stream: Stream, items: list[tuple[str, dict]]
) -> tuple[list[OrderEntry], int]:
    """The reservations among ``stream``'s ``items``, and how many were malformed.

    A malformed entry can never be settled: it goes to the dead letters at once
    (for recovery and for the batches tasks claim alike). So does an entry of
    another voucher than its stream's: its settling would acknowledge it in
    the wrong stream.
    """
    entries = []
    malformed = 0
    for stream_id, fields in items:
        try:
            entry = OrderEntry.from_fields(fields, stream_id, stream.legacy)
            if stream.voucher_id is not None and entry.voucher_id != stream.voucher_id:
                raise MalformedEntry(f"voucherId {entry.voucher_id} in {stream.key}")
            entries.append(entry)
        except MalformedEntry as exc:
            dead_letter(client, stream, stream_id, fields, f"malformed: {exc}")
            malformed += 1
    return entries, malformed


def claim_new(
    client: redis.Redis, stream: Stream, count: int, own_id: str | None = None
) -> tuple[bool, list[tuple[str, dict]]]:
    """Claim up to ``count`` entries of ``stream`` nobody took yet, for a task to settle as a
    batch.

    Returns (whether ``own_id`` is still in the Stream, the claimed entries),
    in one round trip. An entry gone from the Stream was settled (the row is
    committed) or dead-lettered, so its task has nothing left to do. Claimed
    entries are in the PEL under ``tasks``: if the claimer dies, recovery
    takes them over once idle (phase 1 of :func:`recover`).
    """
    own = [] if own_id is None else [own_id]
    present, claimed = claim_for(client, {stream: (own, count)})
    return (stream.key, own_id) in present, claimed.get(stream, [])


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A Stream id (``ms-seq``) as a sortable pair."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


Ref = tuple[str, str]  # (stream key, entry id): ids are unique within one stream only


def ref(settings: Settings, entry: OrderEntry) -> Ref:
    """Where ``entry`` is: its stream's key and its id there."""
    return stream_of(settings, entry).key, entry.stream_id or ""


def claim_for(
    client: redis.Redis, wanted: dict[Stream, tuple[list[str], int]]
) -> tuple[set[Ref], dict[Stream, list[tuple[str, dict]]]]:
    """:func:`claim_new` for a task carrying many entries, of one voucher or several.

    ``wanted`` maps a stream to (its own ids to look for, how many entries nobody
    took yet to claim). Returns which own ids are still in their stream
    (unsettled) and the claimed entries per stream, in one pipeline (one round
    trip on a single Redis, one per node on a cluster). A stream without its
    group (a voucher Redis forgot) gets it, and is read again.
    """

    script = load_script(client, "stream_present")

    def read(streams: list[Stream]) -> list:
        pipe = client.pipeline(transaction=False)
        for stream in streams:
            own, count = wanted[stream]
            if own:
                queue(pipe, script, [stream.key], own)
            pipe.xreadgroup(stream.group, TASK_CONSUMER, {stream.key: ">"}, count=max(1, count))
        return pipe.execute(raise_on_error=False)

    present: set[Ref] = set()
    claimed: dict[Stream, list[tuple[str, dict]]] = {}
    todo = list(wanted)
    for _ in range(2):
        replies = iter(read(todo))
        missing = []
        for stream in todo:
            own = wanted[stream][0]
            if own:
                flags = _present_flags(script, stream.key, own, next(replies))
                present.update(
                    (stream.key, sid) for sid, flag in zip(own, flags, strict=True) if flag
                )
            reply = next(replies)
            if isinstance(reply, redis.ResponseError) and "NOGROUP" in str(reply):
                missing.append(stream)
            elif isinstance(reply, Exception):
                raise reply
            elif reply:
                claimed[stream] = reply[0][1]
        if not missing:
            break
        ensure_groups(client, missing)
        todo = missing
    return present, claimed


def _present_flags(script: Script, key: str, ids: list[str], reply: object) -> list:
    """``lua/stream_present.lua``'s 0/1 per id of stream ``key``, from a :func:`~cache.scripts.queue`."""
    reply = pipeline_reply(script, [key], ids, reply)
    if isinstance(reply, Exception):
        raise reply
    return reply


def still_present(client: redis.Redis | RedisCluster, refs: list[Ref]) -> set[Ref]:
    """Which of ``refs`` are still in their Stream (not settled yet), in one pipeline."""
    by_stream: dict[str, list[str]] = {}
    for key, stream_id in refs:
        by_stream.setdefault(key, []).append(stream_id)
    script = load_script(client, "stream_present")
    pipe = client.pipeline(transaction=False)
    for key, ids in by_stream.items():
        queue(pipe, script, [key], ids)
    replies = pipe.execute(raise_on_error=False)
    present: set[Ref] = set()
    for (key, ids), reply in zip(by_stream.items(), replies, strict=True):
        flags = _present_flags(script, key, ids, reply)
        present.update((key, sid) for sid, flag in zip(ids, flags, strict=True) if flag)
    return present


@dataclass(frozen=True)
class Reading:
    """One stream's figures: entries, held by the group, not yet delivered, dead letters."""

    exists: bool
    length: int
    pending: int
    lag: int
    dead_letters: int
    has_group: bool

    @property
    def backlog(self) -> bool:
        """Anything for recovery to do (an entry, or a PEL id of a deleted entry)."""
        return self.length > 0 or self.pending > 0

    @property
    def anything(self) -> bool:
        """Anything to settle or to replay: the stream is worth reading again."""
        return self.backlog or self.dead_letters > 0


def read_streams(client: redis.Redis, streams: list[Stream]) -> list[Reading]:
    """XLEN, the dead letters' XLEN and XINFO GROUPS of each stream, in one pipeline.

    One round trip on a single Redis, one per node on a cluster, however many
    streams. The lag is the group's (Redis >= 7) unless deletions make it
    unknowable; then, and on Redis 6.2, it is XLEN - pending: exact here,
    because a settled entry is acknowledged AND deleted, so a stream holds only
    pending and undelivered entries. A stream without a group: all of it is lag.
    """
    if not streams:
        return []
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream.key)
        pipe.xlen(stream.dead)
        pipe.xinfo_groups(stream.key)
    replies = pipe.execute(raise_on_error=False)
    readings = []
    for n, stream in enumerate(streams):
        length, dead, groups = replies[3 * n : 3 * n + 3]
        for reply in (length, dead):
            if isinstance(reply, Exception):
                raise reply
        exists = True
        if isinstance(groups, redis.ResponseError):  # no such stream
            groups, exists = [], False
        elif isinstance(groups, Exception):
            raise groups
        group = next((g for g in groups if g.get("name") == stream.group), None)
        length = int(length)
        if group is None:
            readings.append(Reading(exists, length, 0, length, int(dead), False))
            continue
        pending = int(group.get("pending") or 0)
        lag = group.get("lag")
        lag = max(length - pending, 0) if lag is None else int(lag)
        readings.append(Reading(exists, length, pending, lag, int(dead), True))
    return readings


@dataclass(frozen=True)
class StreamStats:
    """Backlog figures summed over streams: unsettled entries, held by a settler, dead letters."""

    length: int
    pending: int
    dead_letters: int
    lag: int = 0


def stream_stats(client: redis.Redis, streams: list[Stream]) -> StreamStats:
    """The backlog figures of ``streams``, summed (:func:`read_streams`)."""
    readings = read_streams(client, streams)
    return StreamStats(
        sum(r.length for r in readings),
        sum(r.pending for r in readings),
        sum(r.dead_letters for r in readings),
        sum(r.lag for r in readings),
    )


def backlog(client: redis.Redis, settings: Settings, voucher_ids: Iterable[int]) -> int:
    """The unsettled reservations of ``voucher_ids`` (and of the legacy stream): their
    streams' XLEN summed, in one pipeline (for load tests that poll it)."""
    streams = [voucher_stream(settings, v) for v in voucher_ids] + legacy_of(client, settings)
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream.key)
    return sum(int(n) for n in pipe.execute())


def drop_if_empty(client: redis.Redis, stream: Stream) -> bool:
    """Delete ``stream`` if it holds no entry (``lua/stream_drop_empty.lua``); True if deleted.

    For the legacy stream once drained: atomic, so an entry an old web process
    adds meanwhile is never deleted with it.
    """
    return bool(load_script(client, "stream_drop_empty")(keys=[stream.key]))


# --- recovery ----------------------------------------------------------------------------


Settle = Callable[[OrderEntry], str]
# Settles a batch (group commit); may leave entries out (their user's lock is
# busy): those stay in the PEL, uncharged, for phase 1 of a later run.
SettleMany = Callable[[list[OrderEntry]], dict[OrderEntry, str]]

# Failures whose cause is outside the entry when no ``transient`` is given:
# Redis and network errors. The beat job passes tasks.orders.RETRYABLE.
TRANSIENT: tuple[type[BaseException], ...] = (*UNAVAILABLE, OSError)


@dataclass
class RecoveryReport:
    """What one recovery run did (returned by the beat job, logged)."""

    claimed: int = 0  # stuck entries taken over from the PEL
    picked_up: int = 0  # never-delivered entries read with XREADGROUP
    settled: Counter = field(default_factory=Counter)  # outcome -> count
    acked_deleted: int = 0  # PEL ids whose entry was already settled
    dead_lettered: int = 0
    failed: int = 0  # entries whose settle raised (busy locks not counted)
    busy: int = 0  # entries whose user lock was held by someone else: left for the next run
    aborted: bool = False
    streams: int = 0  # streams read (every voucher given, and the legacy stream)
    behind: list[int] = field(default_factory=list)  # vouchers whose streams held anything
    legacy_dropped: bool = False  # the drained legacy stream was deleted in this run

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly, for the beat job's result and logs."""
        return {
            "claimed": self.claimed,
            "picked_up": self.picked_up,
            "settled": dict(self.settled),
            "acked_deleted": self.acked_deleted,
            "dead_lettered": self.dead_lettered,
            "failed": self.failed,
            "busy": self.busy,
            "aborted": self.aborted,
            "streams": self.streams,
            "behind": self.behind,
            "legacy_dropped": self.legacy_dropped,
        }


class _Run:
    """State of one recovery run (the phases and the streams share the failure streak)."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        settle: Settle,
        max_failures: int,
        settle_many: SettleMany | None = None,
        transient: tuple[type[BaseException], ...] = TRANSIENT,
    ) -> None:
        self.client = client
        self.settings = settings
        self.settle = settle
        self.settle_many = settle_many
        self.max_failures = max_failures
        self.transient = transient
        self.streak = 0
        self.report = RecoveryReport()
        self.seen: set[Ref] = set()  # tried in this run: not again until the next run

    def handle(self, stream: Stream, stream_id: str, fields: dict | None, deliveries: int) -> None:
        """Settle one entry we hold in the PEL, or dead-letter it if it may no longer be tried.

        ``deliveries`` is its count now: 1 + the failures of its own so far.
        """
        report = self.report
        self.seen.add((stream.key, stream_id))
        if deliveries > self.settings.order_max_deliveries:
            dead_letter(
                self.client,
                stream,
                stream_id,
                fields,
                f"not settled after {deliveries - 1} deliveries",
                deliveries - 1,
            )
            report.dead_lettered += 1
            return
        entries = self._parse(stream, [(stream_id, fields)])
        if not entries:
            return
        try:
            outcome = self.settle(entries[0])
        except Exception as exc:
            if self._failed(1, stream_id, exc):
                self._charge(stream, stream_id, deliveries + 1)
            return
        self._settled([outcome])

    def _parse(self, stream: Stream, items: list[tuple[str, dict]]) -> list[OrderEntry]:
        entries, malformed = parse_entries(self.client, self.settings, stream, items)
        self.report.dead_lettered += malformed
        return entries

    def _failed(self, count: int, what: str, exc: Exception) -> bool:
        """Book a failed settle call (of ``count`` entries); True if the entries caused it.

        A busy user lock is nobody's fault: the entries wait for the next run.
        Outside failures (``transient``: the database or Redis) make the
        streak that ends the run, since the next entries would fail alike.
        Anything else is the entry's own failure.
        """
        if isinstance(exc, LockError):
            self.report.busy += count
            log.info("recovery of %s deferred: %s", what, exc)
            return False
        self.report.failed += count
        log.warning("recovery of %s failed (%s: %s)", what, type(exc).__name__, exc)
        if not isinstance(exc, self.transient):
            return True
        self.streak += 1
        if self.streak >= self.max_failures:
            log.error("recovery stopped after %d outside failures in a row", self.streak)
            self.report.aborted = True
        return False

    def _charge(self, stream: Stream, stream_id: str, deliveries: int) -> None:
        """Count one failure of the entry's own: its delivery count becomes ``deliveries``."""
        self.client.xclaim(
            stream.key,
            stream.group,
            RECOVERY_CONSUMER,
            0,
            [stream_id],
            retrycount=deliveries,
            justid=True,
        )

    def _settled(self, outcomes: list[str]) -> None:
        self.streak = 0
        self.report.settled.update(outcomes)
        ORDERS_RECOVERED.inc(len(outcomes))

    def handle_first_deliveries(self, stream: Stream, items: list[tuple[str, dict]]) -> None:
        """Settle entries read for the first time: together if a batch settler was given.

        A batch that fails charges nobody (which entry was it?): its entries
        stay in the PEL with the one delivery of their read, and phase 1 tries
        them one by one on a later run.
        """
        if self.settle_many is None or self.settings.order_max_deliveries < 1:
            for stream_id, fields in items:
                if self.report.aborted:
                    break  # left in the PEL with one delivery: claimed on a later run
                self.handle(stream, stream_id, fields, 1)
            return
        self.seen.update((stream.key, stream_id) for stream_id, _ in items)
        entries = self._parse(stream, items)
        if not entries:
            return
        try:
            outcomes = self.settle_many(entries)
        except Exception as exc:  # leave them pending, try again later
            self._failed(len(entries), f"{len(entries)} entries", exc)
            return
        self.report.busy += len(entries) - len(outcomes)
        self._settled(list(outcomes.values()))

    def stuck(self, stream: Stream, batch: int) -> int:
        """Phase 1: take over PEL entries idle past the threshold, one at a time; how many seen."""
        pending = self.client.xpending_range(
            stream.key,
            stream.group,
            min="-",
            max="+",
            count=batch,
            idle=self.settings.order_claim_idle_ms,
        )
        ids = [p["message_id"] for p in pending if (stream.key, p["message_id"]) not in self.seen]
        for sid in ids:
            if self.report.aborted:
                break
            self.seen.add((stream.key, sid))
            claimed = self._claim(stream, sid)
            if claimed is not None:
                self.report.claimed += 1
                self.handle(stream, sid, *claimed)
        return len(ids)

    def _claim(self, stream: Stream, stream_id: str) -> tuple[dict, int] | None:
        """Take one idle PEL entry over, keeping its delivery count: (fields, deliveries).

        XCLAIM ... JUSTID takes it without counting a delivery (whether the try
        counts is decided by its outcome); the entry and its count are read in
        the same round trip. None if someone else took it meanwhile (it is no
        longer idle), or if it is gone from the Stream (settled: its PEL id is
        cleared).
        """
        key, group = stream.key, stream.group
        pipe = self.client.pipeline(transaction=False)
        pipe.xclaim(
            key,
            group,
            RECOVERY_CONSUMER,
            self.settings.order_claim_idle_ms,
            [stream_id],
            justid=True,
        )
        pipe.xrange(key, min=stream_id, max=stream_id)
        pipe.xpending_range(key, group, min=stream_id, max=stream_id, count=1)
        taken, found, pel = pipe.execute()
        if not found:  # Redis 7's XCLAIM has dropped the id from the PEL, 6.2's has not
            self.client.xack(key, group, stream_id)
            self.report.acked_deleted += 1
            return None
        if not taken or not pel:
            return None
        return found[0][1], int(pel[0]["times_delivered"])

    def never_delivered(self, stream: Stream, batch: int, now_ms: int) -> int:
        """Phase 2: read entries nobody took that are older than the threshold."""
        cutoff = now_ms - self.settings.order_claim_idle_ms
        if cutoff <= 0:
            return 0
        group = next(g for g in self.client.xinfo_groups(stream.key) if g["name"] == stream.group)
        older = self.client.xrange(
            stream.key, min="(" + group["last-delivered-id"], max=str(cutoff), count=batch
        )
        if not older:
            return 0
        # The first len(older) undelivered entries are these, unless a task's
        # batch took some meanwhile: then newer ones come instead, which is
        # harmless (settling is idempotent), just early.
        replies = self.client.xreadgroup(
            stream.group, RECOVERY_CONSUMER, {stream.key: ">"}, count=len(older)
        )
        entries = replies[0][1] if replies else []
        self.report.picked_up += len(entries)
        self.handle_first_deliveries(stream, entries)
        return len(entries)


def _redis_now_ms(client: redis.Redis) -> int:
    """Redis' clock: Stream ids carry its milliseconds, so ages compare on one clock."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def recover(
    client: redis.Redis,
    settings: Settings,
    settle: Settle,
    voucher_ids: Iterable[int],
    *,
    now_ms: int | None = None,
    batch: int = 200,
    budget_s: float = 10.0,
    max_failures: int = 3,
    settle_many: SettleMany | None = None,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
) -> RecoveryReport:
    """Settle every entry no task has settled in time, in the streams of ``voucher_ids``
    and in the legacy stream (see the module doc).

    First one pipelined reading of every stream (:func:`read_streams`); only
    those holding anything are visited, a batch of each in turn (phase 1, then
    phase 2), until none finds anything, ``budget_s`` is spent (the next beat
    run continues) or ``max_failures`` settle attempts fail in a row for an
    outside reason (``transient``: the exceptions that mean the database or
    Redis failed, not the entry). With ``settle_many`` (group commit), phase 2
    settles each batch it reads in one call: after a long broker outage the
    backlog is all phase 2, and settling it one order at a time would take
    minutes. Phase 1 stays one by one (each entry has its own delivery count).
    The legacy stream, drained, is deleted. Call it under a lock so that one
    recovery runs at a time.
    """
    streams = [voucher_stream(settings, v) for v in dict.fromkeys(voucher_ids)]
    streams += legacy_of(client, settings)
    readings = read_streams(client, streams)
    run = _Run(client, settings, settle, max_failures, settle_many, transient)
    run.report.streams = len(streams)
    active = [s for s, r in zip(streams, readings, strict=True) if r.backlog]
    run.report.behind = [
        s.voucher_id
        for s, r in zip(streams, readings, strict=True)
        if r.anything and s.voucher_id is not None
    ]
    ensure_groups(
        client, [s for s, r in zip(streams, readings, strict=True) if r.backlog and not r.has_group]
    )
    deadline = time.monotonic() + budget_s
    while active and not run.report.aborted and time.monotonic() < deadline:
        now = _redis_now_ms(client) if now_ms is None else now_ms
        still = []
        for stream in active:
            found = run.stuck(stream, batch)
            if not run.report.aborted:
                found += run.never_delivered(stream, batch, now)
            if found:
                still.append(stream)
            if run.report.aborted or time.monotonic() >= deadline:
                break
        active = still
    for stream, reading in zip(streams, readings, strict=True):
        if stream.legacy and reading.exists and not run.report.aborted:
            run.report.legacy_dropped = drop_if_empty(client, stream)
    if run.report.claimed or run.report.picked_up or run.report.acked_deleted:
        log.info("order recovery: %s", run.report.as_dict())
    return run.report
