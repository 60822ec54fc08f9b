"""The off-path order dispatcher (web/order_dispatch.py): batching, breaker, bounds.

The publishing itself is exercised against a real broker (and a dead one) in
test_seckill_api.py and test_orders_workers.py; here the sender is a plain
callable so that the queueing rules can be driven precisely.
"""

from __future__ import annotations

import threading
import time

from support.seckill import wait_for

from web.order_dispatch import OrderDispatcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[dict]] = []
        self.failures: list[int] = []
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def send(self, batch: list) -> None:
        self.gate.wait(10)
        if self.fail:
            raise ConnectionError("broker down")
        self.batches.append([payload for _, payload in batch])
        self.contexts = [context for context, _ in batch]

    def on_failure(self, count: int, reason: object) -> None:
        self.failures.append(count)


def test_everything_submitted_is_published_in_order_and_in_batches():
    rec = Recorder()
    rec.gate.clear()  # hold the first batch so that the rest queue up behind it
    d = OrderDispatcher(rec.send, rec.on_failure, max_batch=10)
    for n in range(25):
        assert d.submit({"n": n})
    rec.gate.set()
    assert d.flush(10)
    published = [p["n"] for batch in rec.batches for p in batch]
    assert published == list(range(25))
    assert max(len(b) for b in rec.batches) == 10 and len(rec.batches) < 25
    assert rec.failures == []


def test_a_failed_publish_counts_the_batch_and_pauses_dispatch():
    rec = Recorder()
    rec.fail = True
    d = OrderDispatcher(rec.send, rec.on_failure, backoff=(0.3, 1.0))
    d.submit({"n": 1})
    assert d.flush(10)
    assert rec.failures == [1]
    # paused: dropped at once (and counted), not queued behind a dead broker
    assert d.submit({"n": 2}) is False
    assert rec.failures == [1, 1]
    rec.fail = False
    time.sleep(0.35)
    assert d.submit({"n": 3})
    assert d.flush(10)
    assert [p["n"] for b in rec.batches for p in b] == [3]


def test_a_full_queue_drops_and_counts_instead_of_growing():
    rec = Recorder()
    rec.gate.clear()
    d = OrderDispatcher(rec.send, rec.on_failure, max_queue=2, max_batch=1)
    assert d.submit({"n": 0})
    wait_for(lambda: d._queue is not None and d._queue.qsize() == 0, 5)  # taken, blocked
    assert d.submit({"n": 1}) and d.submit({"n": 2})
    assert d.submit({"n": 3}) is False
    assert rec.failures == [1]
    rec.gate.set()
    assert d.flush(10)
    assert [p["n"] for b in rec.batches for p in b] == [0, 1, 2]


def test_the_thread_exits_when_idle_and_comes_back():
    rec = Recorder()
    d = OrderDispatcher(rec.send, rec.on_failure, idle_exit=0.1)
    d.submit({"n": 1})
    assert d.flush(10)
    wait_for(lambda: d._thread is None, 5, 0.02, "idle exit")
    d.submit({"n": 2})
    assert d.flush(10)
    assert [p["n"] for b in rec.batches for p in b] == [1, 2]


def test_the_submitters_context_travels_with_the_payload():
    import contextvars

    var: contextvars.ContextVar[str | None] = contextvars.ContextVar("rid", default=None)
    rec = Recorder()
    d = OrderDispatcher(rec.send, rec.on_failure)
    token = var.set("request-42")
    try:
        d.submit({"n": 1})
    finally:
        var.reset(token)
    assert d.flush(10)
    assert rec.contexts[0].run(var.get) == "request-42"


def test_the_dispatcher_lingers_for_a_micro_batch():
    """Reservations submitted within the linger after the first one leave in one batch."""
    rec = Recorder()
    d = OrderDispatcher(rec.send, rec.on_failure, max_batch=100, linger=0.5)
    for n in range(5):
        assert d.submit({"n": n})
    assert d.flush(10)
    assert [[p["n"] for p in b] for b in rec.batches] == [[0, 1, 2, 3, 4]]
