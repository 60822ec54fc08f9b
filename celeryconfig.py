"""Celery's configuration: everything but the connection URLs, which come from Settings.

Read by :func:`tasks.app.create_celery`. Reliability choices for "nothing lost,
nothing twice": tasks are acknowledged late (after they ran) and re-queued when
their worker dies; every task is idempotent, so a redelivery is harmless.

Throughput choices (measured in BENCHMARKS.md, "Seckill drain into MariaDB"):

* ``worker_prefetch_multiplier = 4``: each pool process has up to 4 messages
  reserved, so a child finishing a task finds the next one already in the
  worker instead of waiting for the main process's next BRPOP (with 1, the
  children sat idle while the main process fetched).
  Safe because nothing depends on the prefetch being small: a killed worker's
  reserved messages are unacknowledged (acks late), so the broker gives them
  back after ``visibility_timeout``; meanwhile beat's Stream recovery settles
  their reservations from their vouchers' ``stream.orders:{<id>}`` once idle past
  ``HMDP_ORDER_CLAIM_IDLE_MS``; a late redelivery is then a DUPLICATE no-op.
  The cost is latency for other work behind a deep backlog, bounded by
  concurrency x 4 messages.
* task events OFF by default (``worker_send_task_events``,
  ``task_send_sent_event``): each event is one more broker publish per task
  state, and with them on the worker's main process spent much of its time
  publishing events. Only Flower reads them (our own
  ``/metrics`` exporter does not: it counts inside the tasks), and Flower turns
  them on by itself when it runs (``enable_events`` broadcast); ``manage.py up``
  and ``deploy/cluster.py``, which run Flower, also start the worker with ``-E``.
"""

# Modules that define tasks; a worker imports them at start. Each feature adds its own.
imports: tuple[str, ...] = ()
imports += ("tasks.cache", "beat.cache_jobs")  # shop cache
imports += ("tasks.orders", "beat.order_jobs")  # seckill orders

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

task_acks_late = True
task_reject_on_worker_lost = True
# A task that failed or timed out is acknowledged (not redelivered forever); its
# reservation stays in the Stream for recovery. Celery >= 5.7 names the two cases
# apart; older versions ignore these names and default to the same (True).
task_acks_on_failure = True
task_acks_on_timeout = True
worker_prefetch_multiplier = 4  # see the module doc
task_track_started = False
task_ignore_result = True
task_time_limit = 120
task_soft_time_limit = 100
worker_max_tasks_per_child = 10_000
worker_send_task_events = False  # Flower turns them on (see the module doc)
task_send_sent_event = False
broker_connection_retry_on_startup = True
broker_transport_options = {
    # Redis broker: an unacknowledged message comes back after this long, so a
    # task killed with its worker is redelivered even without a restart.
    "visibility_timeout": 300,
}
result_expires = 3600

task_routes = {
    "tasks.orders.*": {"queue": "orders"},
    "tasks.cache.*": {"queue": "cache"},
    "beat.cache_jobs.*": {"queue": "beat"},
    "beat.order_jobs.*": {"queue": "beat"},
}
task_default_queue = "celery"

# Periodic jobs (beat/cache_jobs.py, beat/order_jobs.py); each feature adds its entries here.
beat_schedule: dict[str, dict] = {}
# Seckill: settle Stream entries no task settled (lost dispatch, dead worker).
beat_schedule["recover-pending-orders"] = {
    "task": "beat.order_jobs.recover_pending_orders",
    "schedule": 15.0,
    "options": {"expires": 14.0},
}
# Seckill: repair the gate state Redis lost (buyers, issued ids, stock, id counter).
beat_schedule["reconcile-seckill-state"] = {
    "task": "beat.order_jobs.reconcile_seckill_state",
    "schedule": 30.0,
    "options": {"expires": 25.0},
}
# Shop cache: refresh hot keys before they expire, recompute the hot
# set, rebuild the Bloom filter of shop ids.
beat_schedule["cache-refresh-logical-expiry"] = {
    "task": "beat.cache_jobs.refresh_logical_expiry",
    "schedule": 60.0,
    "options": {"expires": 55.0},
}
beat_schedule["cache-warm-hot-shops"] = {
    "task": "beat.cache_jobs.warm_hot_shops",
    "schedule": 600.0,
    "options": {"expires": 300.0},
}
beat_schedule["cache-rebuild-shop-bloom"] = {
    "task": "beat.cache_jobs.rebuild_shop_bloom",
    "schedule": 3600.0,
    "options": {"expires": 1800.0},
}
# Shop writes whose cache steps failed after the commit and whose converge task
# was never sent or gave up (cache/shop_sync.py).
beat_schedule["cache-converge-updated-shops"] = {
    "task": "beat.cache_jobs.converge_updated_shops",
    "schedule": 30.0,
    "options": {"expires": 25.0},
}
