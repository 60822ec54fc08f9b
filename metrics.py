"""Every hmdp-specific Prometheus metric, defined once, used by all layers.

prometheus_client metrics are process-local objects (no connection); with
several web worker processes, ``PROMETHEUS_MULTIPROC_DIR`` makes them shared
(see web/metrics.py). Label values are small closed sets, never ids.
"""

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import event
from sqlalchemy.pool import Pool

# --- cache (cache/region.py) -------------------------------------------------
CACHE_REQUESTS = Counter(
    "hmdp_cache_requests_total",
    "Cache lookups by strategy and result",
    ["strategy", "result"],  # result: hit | miss | null_hit | bloom_reject | stale | near_hit
)
CACHE_REBUILDS = Counter(
    "hmdp_cache_rebuilds_total", "Cache rebuilds from the database", ["strategy"]
)
CACHE_REBUILD_WAIT = Histogram(
    "hmdp_cache_rebuild_wait_seconds",
    "Time a reader waited for another's rebuild",
    ["strategy"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CACHE_INVALIDATIONS = Counter(
    "hmdp_cache_invalidations_total",
    "Cache invalidations after a write, by how the near-caches confirmed",
    # none (no L1 anywhere) | acked | waited_ttl (an ack was missing, the TTL ran out) |
    # unconfirmed (an ack was missing when the write's wait ended: a task converges it)
    ["outcome"],
)

# --- locks (cache/locks.py) ----------------------------------------------------
LOCK_WAIT = Histogram(
    "hmdp_lock_wait_seconds",
    "Time spent waiting to acquire a lock",
    ["kind"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
LOCK_HOLD = Histogram(
    "hmdp_lock_hold_seconds",
    "Time a lock was held",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)
LOCK_CONTENTION = Counter(
    "hmdp_lock_contention_total", "Acquire attempts that found the lock held", ["kind"]
)

# --- seckill (cache/seckill.py, web) ------------------------------------------
SECKILL_OUTCOMES = Counter(
    "hmdp_seckill_requests_total", "Seckill gate answers by outcome", ["outcome"]
)  # ok | sold_out | duplicate | not_started | ended | ...
ORDER_DISPATCH_FAILURES = Counter(
    "hmdp_order_dispatch_failures_total",
    "Reservations whose Celery dispatch failed (recovered by beat)",
)
ORDER_TASK_MESSAGES = Counter(
    "hmdp_order_task_messages_total",
    "Order task messages published (each carries a micro-batch of reservations)",
)
ORDERS_DISPATCHED = Counter(
    "hmdp_orders_dispatched_total", "Reservations carried by the published order task messages"
)

# --- order tasks (tasks/orders.py) and recovery (beat) --------------------------
ORDER_TASKS = Counter(
    "hmdp_order_tasks_total",
    "Orders of order task messages by result (a message carries a micro-batch); "
    "retried/failed: task runs",
    ["result"],
)  # created | duplicate | drift | oversell | rejected | unknown_voucher | retried | failed
ORDER_BATCH_SETTLED = Counter(
    "hmdp_order_batch_settled_total",
    "Stream entries an order task settled in its batch besides its own (group commit)",
    ["outcome"],
)  # created | duplicate | drift | oversell | rejected | unknown_voucher
ORDER_TASK_SECONDS = Histogram(
    "hmdp_order_task_seconds",
    "Order task duration",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
ORDERS_RECOVERED = Counter(
    "hmdp_orders_recovered_total", "Stream entries settled by the recovery job"
)
ORDERS_DEAD_LETTERED = Counter(
    "hmdp_orders_dead_lettered_total", "Stream entries moved to the dead-letter stream"
)
ORDER_DRIFT = Counter(
    "hmdp_order_drift_total",
    "Reservations of a buyer who already had an order row under another id: an id answered "
    "200 that will never exist (Redis lost the buyer; alert on any)",
)
ORDER_OVERSELL_ATTEMPTS = Counter(
    "hmdp_order_oversell_attempts_total",
    "Reservations refused by the database stock guard (must stay 0; alert on any)",
)
# Stream length, pending, lag/backlog and dead letters are NOT gauges set by some
# process: web/metrics.py reads them from Redis at scrape time (StreamCollector),
# as hmdp_orders_stream_length, hmdp_orders_pending, hmdp_orders_backlog,
# hmdp_orders_dead_letters and hmdp_redis_up.

# --- social and location (cache/uv.py, web/blogs.py) ---------------------------
UV_VISITS = Counter(
    "hmdp_uv_visits_total", "Shop visits fed to UV counting, by fate", ["result"]
)  # buffered | dropped (buffer full) | lost (flush failed)
FEED_PUSHES = Counter("hmdp_feed_pushes_total", "Blog ids pushed into followers' inboxes")

# --- database pool (every process; see track_pool) -----------------------------
# Set from pool events in the process that owns the pool; "liveall" keeps one
# series per live process (a pid label in web/Celery multiprocess mode),
# so exhaustion of ONE worker's pool is visible, not averaged away.
DB_POOL_CHECKED_OUT = Gauge(
    "hmdp_db_pool_checked_out",
    "Database connections checked out of this process's pool",
    multiprocess_mode="liveall",
)
DB_POOL_CAPACITY = Gauge(
    "hmdp_db_pool_capacity",
    "Connections this process's pool may hold (pool_size + max_overflow)",
    multiprocess_mode="liveall",
)


def track_pool(pool: Pool) -> None:
    """Keep DB_POOL_* up to date from ``pool``'s checkout/checkin events.

    Events, not a scrape-time collector: with several web workers only the one that
    serves a scrape would run a collector, while each worker has its own pool.
    """
    if event.contains(pool, "checkout", _on_checkout):
        return
    size = pool.size() if hasattr(pool, "size") else 0
    overflow = getattr(pool, "_max_overflow", 0)  # QueuePool keeps it private
    DB_POOL_CAPACITY.set(size + max(overflow, 0))
    event.listen(pool, "checkout", _on_checkout)
    event.listen(pool, "checkin", _on_checkin)


def _on_checkout(*_: object) -> None:
    DB_POOL_CHECKED_OUT.inc()


def _on_checkin(*_: object) -> None:
    DB_POOL_CHECKED_OUT.dec()


# --- rate limiting (cache/ratelimit.py) ----------------------------------------
RATE_LIMIT_REJECTIONS = Counter(
    "hmdp_rate_limit_rejections_total", "Requests refused by a rate limit", ["rule"]
)
RATE_LIMIT_ERRORS = Counter(
    "hmdp_rate_limit_errors_total",
    "Rate-limit checks that failed (Redis unavailable); the request was let through",
)
