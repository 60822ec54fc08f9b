"""gunicorn settings for the web tier (``gunicorn -c deploy/gunicorn.conf.py web.wsgi:app``).

Every value can be overridden from the environment (GUNICORN_*), so the same
file serves the one-command stack, the local cluster and the compose stack.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
backlog = 2048
keepalive = 30
timeout = 30
graceful_timeout = 30  # SIGTERM: in-flight requests get this long to finish
max_requests = 0
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
