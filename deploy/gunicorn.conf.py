"""gunicorn settings for the web tier when ``HMDP_WEB_SERVER=gunicorn``.

granian is the deployed server (BENCHMARKS.md "Web server choice"); gunicorn stays
as the comparison the benchmarks can run (``bench --server gunicorn``). Start it
the same way as granian: ``python -m deploy.web_server --bind HOST:PORT``
(deploy/web_server.py), which execs ``gunicorn -c deploy/gunicorn.conf.py``.

All tuning comes from Settings: the common ``HMDP_WEB_WORKERS``,
``HMDP_WEB_THREADS``, ``HMDP_WEB_BACKLOG``, ``HMDP_WEB_KEEPALIVE``,
``HMDP_WEB_GRACEFUL_TIMEOUT``, and the gunicorn-only ``GUNICORN_*`` knobs.

Also wired here, because only the gunicorn master can do it:

* Prometheus multiprocess mode: the instance's fresh ``PROMETHEUS_MULTIPROC_DIR``
  (deploy.web_server.prepare_metrics_dir), wiped when the master starts, before
  any worker writes; a dead worker's live gauges are dropped in ``child_exit``.
* JSON logs: gunicorn's own loggers use the app's formatter (logsetup.py).
* Graceful shutdown: on SIGTERM the master stops accepting, in-flight requests
  get ``graceful_timeout`` seconds to finish, then workers exit.
"""

import os
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import logsetup  # noqa: E402  (needs the path above)
from deploy.web_server import DEFAULT_THREADS, prepare_metrics_dir  # noqa: E402
from settings import Settings  # noqa: E402

_settings = Settings.from_env()

bind = "127.0.0.1:8080"  # --bind on the command line (deploy/web_server.py)
workers = _settings.web_workers or os.cpu_count() or 1
worker_class = _settings.gunicorn_worker_class
threads = _settings.web_threads or DEFAULT_THREADS["gunicorn"]
worker_connections = _settings.gunicorn_worker_connections  # gevent
backlog = _settings.web_backlog
keepalive = _settings.web_keepalive  # > nginx's upstream idle time
timeout = _settings.gunicorn_timeout
# SIGTERM: in-flight requests get this long to finish (compose's stop_grace_period is longer).
graceful_timeout = _settings.web_graceful_timeout
max_requests = _settings.gunicorn_max_requests
max_requests_jitter = _settings.gunicorn_max_requests_jitter
accesslog = _settings.gunicorn_accesslog  # the app logs hmdp.access lines
errorlog = "-"
loglevel = _settings.log_level.lower()
logconfig_dict = logsetup.logging_config(_settings.log_format, _settings.log_level)
proc_name = "hmdp-web"


def on_starting(server) -> None:
    """Master, before the first fork: choose and wipe the metrics directory."""
    path = prepare_metrics_dir(_settings, "_".join(server.cfg.bind) or "default")
    # Workers inherit the environment: prometheus_client reads it at import,
    # Settings.from_env reads it in create_app.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    server.hmdp_metrics_dir = str(path)  # for child_exit, which runs in this process too
    server.log.info("prometheus multiprocess dir %s", path)


def child_exit(server, worker) -> None:
    """Master: a worker died or was stopped; its live gauges must not linger."""
    from prometheus_client import multiprocess

    path = getattr(server, "hmdp_metrics_dir", None)
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
