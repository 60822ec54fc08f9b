"""Dispatching order tasks off the request path, in batches, over one producer.

Why not ``send_task`` inline in the view: building and publishing a Celery
message costs more CPU than the whole seckill gate (kombu builds a Redis client
per publish, plus the task-sent event), and with the broker unreachable kombu
spends seconds reconnecting, which would stall every sale. The reservation is
already durable in the orders Stream when the view answers, so dispatching is
only a latency optimisation: if it is late or lost, beat's recovery settles the
entry. Hence:

* the view calls :meth:`OrderDispatcher.submit` (a queue put, microseconds);
  the request's context variables travel with the payload, so the publish
  (in the dispatcher thread) still carries the request id to the task's logs;
* one daemon thread per process (a greenlet under gevent) drains the queue and
  publishes ONE task message per micro-batch of up to ``max_batch``
  reservations (``HMDP_ORDER_DISPATCH_BATCH``) through one long-lived kombu
  producer: after the first reservation it waits ``linger`` seconds
  (``HMDP_ORDER_DISPATCH_LINGER_MS``) for more, so that under load a message
  carries tens of orders. A Celery message costs more CPU (to publish, fetch,
  ack) than an order's database work, and the worker settles a message's
  reservations with group commit anyway (tasks/orders.py);
* a failed publish counts every message of the batch in
  ORDER_DISPATCH_FAILURES and opens a breaker (1 s doubling to 30 s) during
  which new messages are dropped and counted at once instead of queueing
  behind a dead broker; the queue is bounded for the same reason.

The thread exits after a few idle seconds and starts again on demand, and a
forked child (gunicorn, Celery prefork) gets its own queue and thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import multiprocessing.util
import os
import queue
import threading
import time
from collections.abc import Callable

from celery import Celery

from metrics import ORDER_TASK_MESSAGES, ORDERS_DISPATCHED

log = logging.getLogger(__name__)

Payload = dict[str, object]
Item = tuple[contextvars.Context, Payload]  # the submitter's context, and the payload
SendBatch = Callable[[list[Item]], None]
OnFailure = Callable[[int, BaseException | str], None]


class CelerySender:
    """Publishes a batch of task payloads as messages of up to ``per_message`` payloads each.

    The task's one argument is the list of the payloads (tasks/orders.py
    settles them together); the message is published in the context of its
    first payload's submitter, so its request id header is that request's
    (the args carry every order's ids, which is what Flower and the logs
    find a reservation's task by). The producer stays open between batches.
    Used by exactly one thread (the dispatcher's), so the producer needs no
    lock. Kombu's connect retries are turned off: the dispatcher has its own
    breaker.
    """

    def __init__(self, app: Celery, task_name: str, per_message: int = 100):
        self.app = app
        self.task_name = task_name
        self.per_message = max(1, per_message)
        self._producer = None
        self._declared = False

    def _connect(self):  # type: ignore[no-untyped-def]
        options = dict(self.app.conf.broker_transport_options or {})
        options["max_retries"] = 0
        connection = self.app.connection_for_write(transport_options=options)
        self._producer = self.app.amqp.Producer(connection, auto_declare=False)
        self._declared = False
        return self._producer

    def close(self) -> None:
        """Drop the producer and its connection (after an error, at exit)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.connection.release()

    def __call__(self, items: list[Item]) -> None:
        producer = self._producer or self._connect()
        batch = getattr(producer, "batch", None)  # kombu >= 5.7: one pipeline
        step = self.per_message
        chunks = [items[i : i + step] for i in range(0, len(items), step)]
        try:
            with batch(max_size=4 * len(chunks) + 4) if batch else contextlib.nullcontext():
                for chunk in chunks:
                    args = [[payload for _, payload in chunk]]
                    chunk[0][0].run(
                        self.app.send_task,
                        self.task_name,
                        args=args,
                        producer=producer,
                        retry=False,
                        # What Celery would compute per message, given: the queue is
                        # declared once per connection (kombu caches it per channel
                        # anyway, but binds the entity again each time), and the args'
                        # repr (logs, Flower) is a plain repr of small dicts (not
                        # saferepr's generic walk). Their cost: BENCHMARKS.md, "Seckill
                        # gate and the seed's 30,000-request run".
                        declare=None if not self._declared else [],
                        argsrepr=repr(args),
                        kwargsrepr="{}",
                    )
                    self._declared = True
        except BaseException:
            self.close()
            raise
        ORDER_TASK_MESSAGES.inc(len(chunks))
        ORDERS_DISPATCHED.inc(len(items))
        # Let request greenlets in after each batch (threads get the GIL back every
        # switch interval anyway). Not after each message: under load every
        # sleep(0) is a trip through the scheduler, which throttled the dispatch
        # (BENCHMARKS.md, seckill gate).
        time.sleep(0)


class OrderDispatcher:
    """A bounded queue drained by one background thread (see the module doc)."""

    def __init__(
        self,
        send: SendBatch,
        on_failure: OnFailure,
        *,
        max_queue: int = 100_000,
        max_batch: int = 32,
        linger: float = 0.0,
        idle_exit: float = 5.0,
        backoff: tuple[float, float] = (1.0, 30.0),
    ):
        self.send = send
        self.on_failure = on_failure
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.linger = linger
        self.idle_exit = idle_exit
        self.backoff = backoff
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[Item] | None = None
        self._thread: threading.Thread | None = None
        self._open_until = 0.0
        self._next_backoff = backoff[0]
        self._flush_at_exit: int | None = None  # the pid that registered the exit flush

    # --- producer side (request threads) -------------------------------------------

    def submit(self, payload: Payload) -> bool:
        """Queue one task for publication; False (and counted) if it was dropped."""
        if time.monotonic() < self._open_until:
            self.on_failure(1, "broker unavailable (dispatch paused)")
            return False
        with self._lock:
            q = self._ensure_thread()
            try:
                q.put_nowait((contextvars.copy_context(), payload))
            except queue.Full:
                dropped = True
            else:
                dropped = False
        if dropped:
            self.on_failure(1, "dispatch queue full")
        return not dropped

    def _ensure_thread(self) -> queue.Queue[Item]:
        """The queue of this process, its thread running (call under the lock)."""
        if self._pid != os.getpid() or self._queue is None:
            self._pid = os.getpid()
            self._queue = queue.Queue(self.max_queue)
            self._thread = None
        if self._thread is None:
            if self._flush_at_exit != self._pid:
                # A clean exit (a graceful stop) publishes what is queued; a crash loses
                # it, and recovery settles those from the Stream. A multiprocessing
                # finalizer, not atexit: granian's workers are multiprocessing children,
                # which end with os._exit (no atexit) after running the finalizers; in
                # any other process multiprocessing runs them from its own atexit hook.
                multiprocessing.util.Finalize(self, self.flush, args=(2.0,), exitpriority=10)
                self._flush_at_exit = self._pid
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="hmdp-order-dispatch", daemon=True
            )
            self._thread.start()
        return self._queue

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was published or dropped (tests, exit)."""
        deadline = time.monotonic() + timeout
        q = self._queue
        while q is not None and q.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # --- consumer side (the dispatcher thread) --------------------------------------

    def _run(self, q: queue.Queue[Item]) -> None:
        while True:
            try:
                first = q.get(timeout=self.idle_exit)
            except queue.Empty:
                with self._lock:
                    if q.empty() and self._thread is threading.current_thread():
                        self._thread = None
                        return
                continue
            batch = [first]
            self._take(q, batch)
            if self.linger > 0 and len(batch) < self.max_batch:
                # One sleep per batch, not a timed get per item: under load the
                # queue fills meanwhile and is then taken in one go.
                time.sleep(self.linger)
                self._take(q, batch)
            try:
                self._deliver(batch)
            finally:
                for _ in batch:
                    q.task_done()

    def _take(self, q: queue.Queue[Item], batch: list[Item]) -> None:
        """Move what is queued into ``batch``, up to ``max_batch``."""
        while len(batch) < self.max_batch:
            try:
                batch.append(q.get_nowait())
            except queue.Empty:
                return

    def _deliver(self, batch: list[Item]) -> None:
        if time.monotonic() < self._open_until:
            self.on_failure(len(batch), "broker unavailable (dispatch paused)")
            return
        try:
            self.send(batch)
        except Exception as exc:  # the broker is down or refuses: recovery covers it
            pause = self._next_backoff
            self._open_until = time.monotonic() + pause
            self._next_backoff = min(pause * 2, self.backoff[1])
            log.warning(
                "order dispatch failed for %d tasks (%s: %s); pausing %.0fs, "
                "the recovery job will persist them from the stream",
                len(batch),
                type(exc).__name__,
                exc,
                pause,
            )
            self.on_failure(len(batch), exc)
            return
        self._next_backoff = self.backoff[0]
