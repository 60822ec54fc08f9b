"""The orders Stream: reservations waiting to become rows, and their recovery.

Settlement design (the contract every writer and reader here follows):

* The seckill Lua script XADDs each reservation ``{orderId, userId, voucherId}``
  to ``stream.orders`` in the same atomic step that takes the stock. The Stream
  is the durable record of "sold in Redis, not yet a row" (Redis runs with AOF).
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
  entries behind it are still tried.

This module never imports ``tasks`` or ``web``: the settling is passed in.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis

from metrics import ORDERS_DEAD_LETTERED, ORDERS_RECOVERED
from models.entities import MAX_ID
from settings import Settings

from .connection import UNAVAILABLE
from .locks import LockError
from .scripts import load_script

log = logging.getLogger(__name__)

RECOVERY_CONSUMER = "recovery"
TASK_CONSUMER = "tasks"  # one name for every worker: batches are disjoint all the same
_PAGE = 1000


class MalformedEntry(ValueError):
    """A Stream entry or task payload that is not a valid reservation."""


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

    @classmethod
    def from_fields(cls, fields: dict | None, stream_id: str | None) -> OrderEntry:
        """Parse a Stream entry's fields; MalformedEntry if they are not a reservation."""
        if not fields:
            raise MalformedEntry("empty entry")
        return cls(
            order_id=_positive_int(fields.get("orderId"), "orderId"),
            user_id=_positive_int(fields.get("userId"), "userId"),
            voucher_id=_positive_int(fields.get("voucherId"), "voucherId"),
            stream_id=stream_id,
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


def ensure_group(client: redis.Redis, settings: Settings) -> bool:
    """Create the consumer group (and the Stream) if missing; True if created now."""
    try:
        client.xgroup_create(settings.order_stream, settings.order_group, id="0", mkstream=True)
        return True
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise


def acknowledge_many(client: redis.Redis, settings: Settings, stream_ids: list[str]) -> None:
    """Mark settled entries: one XACK (if recovery held them) and one XDEL, in one MULTI."""
    if not stream_ids:
        return
    pipe = client.pipeline(transaction=True)
    pipe.xack(settings.order_stream, settings.order_group, *stream_ids)
    pipe.xdel(settings.order_stream, *stream_ids)
    pipe.execute()


def dead_letter(
    client: redis.Redis,
    settings: Settings,
    stream_id: str,
    fields: dict | None,
    reason: str,
    deliveries: int | None = None,
) -> None:
    """Move an entry to the dead-letter stream (copy, XACK, XDEL in one MULTI).

    For entries no retry can settle (oversell attempt, malformed, given up);
    an operator inspects ``stream.orders.dead``. Logged at ERROR and counted.
    """
    record = {k: v for k, v in (fields or {}).items() if k not in {"reason", "sourceId"}}
    record.update(reason=reason[:500], sourceId=stream_id, at=str(int(time.time() * 1000)))
    if deliveries is not None:
        record["deliveries"] = str(deliveries)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(settings.order_dead_letter_stream, record)
    pipe.xack(settings.order_stream, settings.order_group, stream_id)
    pipe.xdel(settings.order_stream, stream_id)
    pipe.execute()
    ORDERS_DEAD_LETTERED.inc()
    log.error("order entry %s dead-lettered: %s (%s)", stream_id, reason, fields)


def replay_dead_letter(
    client: redis.Redis, settings: Settings, dead_id: str, entry: OrderEntry | None
) -> str | None:
    """Move a dead letter back to the orders Stream as ``entry``, or (None) only remove it.

    One script (``lua/dead_letter_replay.lua``): atomic per entry, and at most
    once however many replays run. Returns the entry's new Stream id ('' when
    only removed), or None if ``dead_id`` is not a dead letter (any more).
    """
    fields: list[object] = []
    if entry is not None:
        fields = ["orderId", entry.order_id, "userId", entry.user_id, "voucherId", entry.voucher_id]
    new_id = load_script(client, "dead_letter_replay")(
        keys=[settings.order_dead_letter_stream, settings.order_stream], args=[dead_id, *fields]
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


def parse_entries(
    client: redis.Redis, settings: Settings, items: list[tuple[str, dict]]
) -> tuple[list[OrderEntry], int]:
    """The reservations among Stream ``items``, and how many were malformed.

    A malformed entry can never be settled: it goes to the dead letters at once
    (for recovery and for the batches tasks claim alike).
    """
    entries = []
    malformed = 0
    for stream_id, fields in items:
        try:
            entries.append(OrderEntry.from_fields(fields, stream_id))
        except MalformedEntry as exc:
            dead_letter(client, settings, stream_id, fields, f"malformed: {exc}")
            malformed += 1
    return entries, malformed


def claim_new(
    client: redis.Redis, settings: Settings, count: int, own_id: str | None = None
) -> tuple[bool, list[tuple[str, dict]]]:
    """Claim up to ``count`` entries nobody took yet, for a task to settle as a batch.

    Returns (whether ``own_id`` is still in the Stream, the claimed entries),
    in one round trip. An entry gone from the Stream was settled (the row is
    committed) or dead-lettered, so its task has nothing left to do. Claimed
    entries are in the PEL under ``tasks``: if the claimer dies, recovery
    takes them over once idle (phase 1 of :func:`recover`).
    """
    present, claimed = claim_for(client, settings, count, [] if own_id is None else [own_id])
    return own_id in present, claimed


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A Stream id (``ms-seq``) as a sortable pair."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def claim_for(
    client: redis.Redis, settings: Settings, count: int, own_ids: list[str]
) -> tuple[set[str], list[tuple[str, dict]]]:
    """:func:`claim_new` for a task carrying many entries: which of ``own_ids`` are still
    in the Stream (unsettled), and up to ``count`` entries nobody took yet, in one round trip.
    """
    stream, group = settings.order_stream, settings.order_group

    def read() -> list:
        pipe = client.pipeline(transaction=False)
        for own_id in own_ids:
            pipe.xrange(stream, min=own_id, max=own_id)
        pipe.xreadgroup(group, TASK_CONSUMER, {stream: ">"}, count=max(1, count))
        return pipe.execute()

    try:
        replies = read()
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        ensure_group(client, settings)
        replies = read()
    present = {own_id for own_id, found in zip(own_ids, replies, strict=False) if found}
    claimed = replies[-1]
    return present, (claimed[0][1] if claimed else [])


def still_present(client: redis.Redis, settings: Settings, stream_ids: list[str]) -> set[str]:
    """Which of ``stream_ids`` are still in the Stream (not settled yet), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for stream_id in stream_ids:
        pipe.xrange(settings.order_stream, min=stream_id, max=stream_id)
    return {sid for sid, found in zip(stream_ids, pipe.execute(), strict=True) if found}


@dataclass(frozen=True)
class StreamStats:
    """Backlog figures: unsettled entries, held by recovery, dead letters."""

    length: int
    pending: int
    dead_letters: int


def stream_stats(client: redis.Redis, settings: Settings) -> StreamStats:
    """Read the backlog figures (the gauges are read at scrape time by web/metrics.py)."""
    pipe = client.pipeline(transaction=False)
    pipe.xlen(settings.order_stream)
    pipe.xlen(settings.order_dead_letter_stream)
    length, dead = pipe.execute()
    try:
        pending = int(client.xpending(settings.order_stream, settings.order_group)["pending"])
    except redis.ResponseError:  # no group yet
        pending = 0
    return StreamStats(int(length), pending, int(dead))


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
        }


class _Run:
    """State of one recovery run (the phases share the failure streak)."""

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
        self.seen: set[str] = set()  # tried in this run: not again until the next run

    def handle(self, stream_id: str, fields: dict | None, deliveries: int) -> None:
        """Settle one entry we hold in the PEL, or dead-letter it if it may no longer be tried.

        ``deliveries`` is its count now: 1 + the failures of its own so far.
        """
        report = self.report
        self.seen.add(stream_id)
        if deliveries > self.settings.order_max_deliveries:
            dead_letter(
                self.client,
                self.settings,
                stream_id,
                fields,
                f"not settled after {deliveries - 1} deliveries",
                deliveries - 1,
            )
            report.dead_lettered += 1
            return
        entries = self._parse([(stream_id, fields)])
        if not entries:
            return
        try:
            outcome = self.settle(entries[0])
        except Exception as exc:
            if self._failed(1, stream_id, exc):
                self._charge(stream_id, deliveries + 1)
            return
        self._settled([outcome])

    def _parse(self, items: list[tuple[str, dict]]) -> list[OrderEntry]:
        entries, malformed = parse_entries(self.client, self.settings, items)
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

    def _charge(self, stream_id: str, deliveries: int) -> None:
        """Count one failure of the entry's own: its delivery count becomes ``deliveries``."""
        s = self.settings
        self.client.xclaim(
            s.order_stream,
            s.order_group,
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

    def handle_first_deliveries(self, items: list[tuple[str, dict]]) -> None:
        """Settle entries read for the first time: together if a batch settler was given.

        A batch that fails charges nobody (which entry was it?): its entries
        stay in the PEL with the one delivery of their read, and phase 1 tries
        them one by one on a later run.
        """
        if self.settle_many is None or self.settings.order_max_deliveries < 1:
            for stream_id, fields in items:
                if self.report.aborted:
                    break  # left in the PEL with one delivery: claimed on a later run
                self.handle(stream_id, fields, 1)
            return
        self.seen.update(stream_id for stream_id, _ in items)
        entries = self._parse(items)
        if not entries:
            return
        try:
            outcomes = self.settle_many(entries)
        except Exception as exc:  # leave them pending, try again later
            self._failed(len(entries), f"{len(entries)} entries", exc)
            return
        self.report.busy += len(entries) - len(outcomes)
        self._settled(list(outcomes.values()))

    def stuck(self, batch: int) -> int:
        """Phase 1: take over PEL entries idle past the threshold, one at a time; how many seen."""
        s = self.settings
        pending = self.client.xpending_range(
            s.order_stream, s.order_group, min="-", max="+", count=batch, idle=s.order_claim_idle_ms
        )
        ids = [p["message_id"] for p in pending if p["message_id"] not in self.seen]
        for sid in ids:
            if self.report.aborted:
                break
            self.seen.add(sid)
            claimed = self._claim(sid)
            if claimed is not None:
                self.report.claimed += 1
                self.handle(sid, *claimed)
        return len(ids)

    def _claim(self, stream_id: str) -> tuple[dict, int] | None:
        """Take one idle PEL entry over, keeping its delivery count: (fields, deliveries).

        XCLAIM ... JUSTID takes it without counting a delivery (whether the try
        counts is decided by its outcome); the entry and its count are read in
        the same round trip. None if someone else took it meanwhile (it is no
        longer idle), or if it is gone from the Stream (settled: its PEL id is
        cleared).
        """
        s = self.settings
        pipe = self.client.pipeline(transaction=False)
        pipe.xclaim(
            s.order_stream,
            s.order_group,
            RECOVERY_CONSUMER,
            s.order_claim_idle_ms,
            [stream_id],
            justid=True,
        )
        pipe.xrange(s.order_stream, min=stream_id, max=stream_id)
        pipe.xpending_range(s.order_stream, s.order_group, min=stream_id, max=stream_id, count=1)
        taken, found, pel = pipe.execute()
        if not found:  # Redis 7's XCLAIM has dropped the id from the PEL, 6.2's has not
            self.client.xack(s.order_stream, s.order_group, stream_id)
            self.report.acked_deleted += 1
            return None
        if not taken or not pel:
            return None
        return found[0][1], int(pel[0]["times_delivered"])

    def never_delivered(self, batch: int, now_ms: int) -> int:
        """Phase 2: read entries nobody took that are older than the threshold."""
        s = self.settings
        cutoff = now_ms - s.order_claim_idle_ms
        if cutoff <= 0:
            return 0
        group = next(
            g for g in self.client.xinfo_groups(s.order_stream) if g["name"] == s.order_group
        )
        older = self.client.xrange(
            s.order_stream, min="(" + group["last-delivered-id"], max=str(cutoff), count=batch
        )
        if not older:
            return 0
        # The first len(older) undelivered entries are these, unless a task's
        # batch took some meanwhile: then newer ones come instead, which is
        # harmless (settling is idempotent), just early.
        replies = self.client.xreadgroup(
            s.order_group, RECOVERY_CONSUMER, {s.order_stream: ">"}, count=len(older)
        )
        entries = replies[0][1] if replies else []
        self.report.picked_up += len(entries)
        self.handle_first_deliveries(entries)
        return len(entries)


def _redis_now_ms(client: redis.Redis) -> int:
    """Redis' clock: Stream ids carry its milliseconds, so ages compare on one clock."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def recover(
    client: redis.Redis,
    settings: Settings,
    settle: Settle,
    *,
    now_ms: int | None = None,
    batch: int = 200,
    budget_s: float = 10.0,
    max_failures: int = 3,
    settle_many: SettleMany | None = None,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
) -> RecoveryReport:
    """Settle every entry no task has settled in time (see the module doc).

    Runs phase 1 and 2 in batches until both find nothing, ``budget_s`` is
    spent (the next beat run continues) or ``max_failures`` settle attempts
    fail in a row for an outside reason (``transient``: the exceptions that
    mean the database or Redis failed, not the entry). With ``settle_many``
    (group commit), phase 2 settles each batch it reads in one call: after a
    long broker outage the backlog is all phase 2, and settling it one order
    at a time would take minutes. Phase 1 stays one by one (each entry has its
    own delivery count). Call it under a lock so that one recovery runs at a
    time.
    """
    ensure_group(client, settings)
    run = _Run(client, settings, settle, max_failures, settle_many, transient)
    deadline = time.monotonic() + budget_s
    while not run.report.aborted and time.monotonic() < deadline:
        now = _redis_now_ms(client) if now_ms is None else now_ms
        found = run.stuck(batch)
        if not run.report.aborted:
            found += run.never_delivered(batch, now)
        if found == 0:
            break
    if run.report.claimed or run.report.picked_up or run.report.acked_deleted:
        log.info("order recovery: %s", run.report.as_dict())
    return run.report
