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
  publishes up to ``max_batch`` tasks through ONE long-lived kombu producer,
  in one Redis pipeline when kombu supports ``Producer.batch()``;
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

log = logging.getLogger(__name__)

Payload = dict[str, object]
Item = tuple[contextvars.Context, Payload]  # the submitter's context, and the payload
SendBatch = Callable[[list[Item]], None]
OnFailure = Callable[[int, BaseException | str], None]


class CelerySender:
    """Publishes one batch of task payloads over a producer kept open between batches.

    Used by exactly one thread (the dispatcher's), so the producer needs no lock.
    Kombu's connect retries are turned off: the dispatcher has its own breaker.
    """

    def __init__(self, app: Celery, task_name: str):
        self.app = app
        self.task_name = task_name
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
        try:
            with batch(max_size=4 * len(items) + 4) if batch else contextlib.nullcontext():
                for context, payload in items:
                    context.run(
                        self.app.send_task,
                        self.task_name,
                        args=[payload],
                        producer=producer,
                        retry=False,
                        # What Celery would compute per message, given: the queue is
                        # declared once per connection (kombu caches it per channel
                        # anyway, but binds the entity again each time), and the args'
                        # repr (logs, Flower) is a plain repr of a small dict (not
                        # saferepr's generic walk). Their cost: BENCHMARKS.md, "Seckill
                        # gate and the seed's 30,000-request run".
                        declare=None if not self._declared else [],
                        argsrepr=repr([payload]),
                        kwargsrepr="{}",
                    )
                    self._declared = True
        except BaseException:
            self.close()
            raise
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
        idle_exit: float = 5.0,
        backoff: tuple[float, float] = (1.0, 30.0),
    ):
        self.send = send
        self.on_failure = on_failure
        self.max_queue = max_queue
        self.max_batch = max_batch
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
            while len(batch) < self.max_batch:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            try:
                self._deliver(batch)
            finally:
                for _ in batch:
                    q.task_done()

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
