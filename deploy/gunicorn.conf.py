"""gunicorn settings for the web tier (``gunicorn -c deploy/gunicorn.conf.py web.wsgi:app``).

Every value can be overridden from the environment (GUNICORN_*), so the same
file serves the one-command stack, the local cluster and the compose stack; the
worker class and counts are left to benchmarking (BENCHMARKS.md).

Also wired here, because only the gunicorn master can do it:

* Prometheus multiprocess mode: each instance gets its own fresh
  ``PROMETHEUS_MULTIPROC_DIR`` (given, or ``$HMDP_VAR_DIR/prometheus/web-<bind>``),
  wiped when the master starts, before any worker writes; a dead worker's live
  gauges are dropped in ``child_exit``. /metrics then aggregates every worker.
* JSON logs: gunicorn's own loggers use the app's formatter (logsetup.py).
* Graceful shutdown: on SIGTERM the master stops accepting, in-flight requests
  get ``graceful_timeout`` seconds to finish, then workers exit.
"""

import multiprocessing
import os
import re
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import logsetup  # noqa: E402  (needs the path above)
from settings import Settings  # noqa: E402

_settings = Settings.from_env()

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))  # gevent
backlog = int(os.environ.get("GUNICORN_BACKLOG", "2048"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "30"))  # > nginx's upstream idle time
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# SIGTERM: in-flight requests get this long to finish (compose's stop_grace_period is longer).
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None  # the app logs hmdp.access lines
errorlog = "-"
loglevel = _settings.log_level.lower()
logconfig_dict = logsetup.logging_config(_settings.log_format, _settings.log_level)
proc_name = os.environ.get("GUNICORN_PROC_NAME", "hmdp-web")


def _multiproc_dir(server) -> Path:
    """This instance's own directory: instances on one host must not share one."""
    if _settings.prometheus_multiproc_dir is not None:
        return _settings.prometheus_multiproc_dir
    binds = "_".join(server.cfg.bind) or "default"
    return _settings.var_dir / "prometheus" / ("web-" + re.sub(r"[^A-Za-z0-9.-]+", "_", binds))


def on_starting(server) -> None:
    """Master, before the first fork: choose and wipe the metrics directory."""
    path = _multiproc_dir(server)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    # Workers inherit the environment: prometheus_client reads it at import,
    # Settings.from_env reads it in create_app.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    server.log.info("prometheus multiprocess dir %s", path)


def child_exit(server, worker) -> None:
    """Master: a worker died or was stopped; its live gauges must not linger."""
    from prometheus_client import multiprocess

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        multiprocess.mark_process_dead(worker.pid, path)


def worker_exit(server, worker) -> None:
    """Worker, after its last request (graceful stop): publish the order tasks it still queues.

    The seckill view hands tasks to an in-process dispatcher thread (web/order_dispatch.py);
    without this, reservations made just before a SIGTERM would wait for beat's recovery.
    """
    app = getattr(worker, "wsgi", None)
    if app is None:
        return
    try:
        from web.orders import flush_dispatch
    except ImportError:  # the orders feature is not part of this build
        return
    if not flush_dispatch(app, timeout=max(1, graceful_timeout // 3)):
        worker.log.warning("order tasks still queued at exit; beat's recovery will settle them")


def worker_int(worker) -> None:
    """Worker got SIGINT/SIGQUIT (fast stop): say so, so lost requests are explainable."""
    worker.log.warning("worker %s stopping without waiting (SIGINT/SIGQUIT)", worker.pid)
