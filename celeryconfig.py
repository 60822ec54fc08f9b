"""Celery's configuration: everything but the connection URLs, which come from Settings.

Read by :func:`tasks.app.create_celery`. Reliability choices for "nothing lost,
nothing twice": tasks are acknowledged late (after they ran) and re-queued when
their worker dies; the prefetch is 1 so that a killed worker holds as few
unacknowledged messages as possible; every task is idempotent, so a redelivery
is harmless.
"""

# Modules that define tasks; a worker imports them at start. Each feature adds its own.
imports: tuple[str, ...] = ()
imports += ("tasks.cache", "beat.cache_jobs")  # shop cache (issue 4)
imports += ("tasks.orders", "beat.order_jobs")  # seckill orders (issue 5)

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure_or_timeout = True
worker_prefetch_multiplier = 1
task_track_started = False
task_ignore_result = True
task_time_limit = 120
task_soft_time_limit = 100
worker_max_tasks_per_child = 10_000
worker_send_task_events = True  # Flower and the Prometheus exporter read events
task_send_sent_event = True
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
    "beat.jobs.*": {"queue": "beat"},
    "beat.cache_jobs.*": {"queue": "beat"},
    "beat.order_jobs.*": {"queue": "beat"},
}
task_default_queue = "celery"

# Periodic jobs (beat/jobs.py); each feature adds its entries here.
beat_schedule: dict[str, dict] = {}
# Seckill: settle Stream entries no task settled (lost dispatch, dead worker).
beat_schedule["recover-pending-orders"] = {
    "task": "beat.order_jobs.recover_pending_orders",
    "schedule": 15.0,
    "options": {"expires": 14.0},
}
# Shop cache (issue 4): refresh hot keys before they expire, recompute the hot
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
