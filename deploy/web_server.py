"""The web server command: ONE definition for every launcher.

``python -m deploy.web_server --bind HOST:PORT`` (:func:`web_argv` builds those
arguments) prepares what must exist before the server forks its workers, then
replaces itself with the server (``exec``: same pid, so a SIGTERM from a
supervisor, Docker or an operator reaches the server's master directly):

* **granian** (``HMDP_WEB_SERVER=granian``, the default, chosen by measurement:
  BENCHMARKS.md "Web server choice"): ``--interface wsgi --no-ws``,
  ``HMDP_WEB_WORKERS`` processes × ``HMDP_WEB_THREADS`` blocking threads, failed
  workers respawned, ``--workers-kill-timeout HMDP_WEB_GRACEFUL_TIMEOUT``;
* **gunicorn** (``HMDP_WEB_SERVER=gunicorn``, kept to compare): deploy/gunicorn.conf.py.

Before the exec, in this process (i.e. before any worker exists):

* Prometheus multiprocess mode: the instance's own ``PROMETHEUS_MULTIPROC_DIR``
  (given, or ``$HMDP_VAR_DIR/prometheus/web-<bind>``) is created and wiped, and
  exported so every worker writes there; /metrics then aggregates all workers;
* JSON logs: granian's own loggers (master and workers) get logsetup's config
  through ``--log-config`` (a file written next to the metrics directory), so the
  root logger already has our handler when a worker imports web.wsgi.

The rest happens in each worker: web/wsgi.py (logging if no server configured
it, ``gc.freeze()``), web/order_dispatch.py (queued order tasks published at
exit: granian's forked workers end with ``os._exit``, which skips ``atexit``, so
that flush is a multiprocessing finalizer) and web/metrics.py (a dead
sibling's live gauges dropped when its replacement starts).

Imported by manage.py (through deploy.cluster) before the virtualenv exists:
standard library only at module level.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from settings import Settings

ROOT = Path(__file__).resolve().parent.parent
APP = "web.wsgi:app"
SERVERS = ("granian", "gunicorn")
DEFAULT_THREADS = {"granian": 2, "gunicorn": 8}


def web_argv(bind: str, *, app: str = APP, name: str | None = None) -> list[str]:
    """The arguments after the Python interpreter that start one web instance on ``bind``.

    One definition, so ``manage.py up``, the cluster, compose, the benchmarks and
    the tests run the same server; it reads its tuning from the environment
    (``HMDP_WEB_*``, see settings.py).
    """
    argv = ["-m", "deploy.web_server", "--bind", bind]
    if app != APP:
        argv += ["--app", app]
    if name:
        argv += ["--name", name]
    return argv


def split_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ``[::1]:80`` works too."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--bind must be HOST:PORT, got {bind!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def instance_dir(settings: Settings, bind: str, kind: str) -> Path:
    """A per-instance directory under the var dir: instances on one host never share one."""
    return settings.var_dir / kind / ("web-" + re.sub(r"[^A-Za-z0-9.-]+", "_", bind))


def prepare_metrics_dir(settings: Settings, bind: str) -> Path:
    """Create and wipe this instance's multiprocess directory (before any worker forks).

    Stale ``*.db`` files from a previous run would add old counts to every scrape.
    """
    path = settings.prometheus_multiproc_dir or instance_dir(settings, bind, "prometheus")
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path


def granian_log_config(settings: Settings) -> dict:
    """logsetup's dictConfig, with granian's own loggers sent to our handler."""
    import logsetup

    config = logsetup.logging_config(settings.log_format, settings.log_level)
    handler = {"handlers": ["hmdp"], "propagate": False}
    config["loggers"].update(
        {
            "_granian": {"level": settings.log_level, **handler},
            "granian.access": {"level": "INFO", **handler},
        }
    )
    return config


def log_config_path(settings: Settings, bind: str) -> Path:
    """Where :func:`prepare` writes granian's logging config for this instance."""
    return instance_dir(settings, bind, "run") / "granian-logging.json"


def server_argv(
    settings: Settings,
    bind: str,
    *,
    app: str = APP,
    name: str | None = None,
    log_config: Path | None = None,
) -> list[str]:
    """The server's own command line (what :func:`main` execs), for ``settings.web_server``."""
    python = sys.executable
    if settings.web_server == "gunicorn":
        argv = [python, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
        argv += ["--bind", bind, "--chdir", str(ROOT)]  # counts: gunicorn.conf.py
        if name:
            argv += ["--name", name]
        return [*argv, app]
    host, port = split_bind(bind)
    workers = settings.web_workers or os.cpu_count() or 1
    threads = settings.web_threads or DEFAULT_THREADS["granian"]
    argv = [
        python,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--no-ws",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--blocking-threads",
        str(threads),
        "--backlog",
        str(settings.web_backlog),
        # Requests per worker in flight or queued for a thread. granian's default
        # (backlog / workers) stops accepting a worker's keep-alive connections beyond
        # it: 25 of 30,000 seckill answers at 1,000 users never arrived (60 s client
        # timeouts) while their reservations were made. One worker may hold them all.
        "--backpressure",
        str(settings.web_backlog),
        "--http1-keep-alive" if settings.web_keepalive > 0 else "--no-http1-keep-alive",
        "--workers-kill-timeout",
        str(settings.web_graceful_timeout),
        "--respawn-failed-workers",
        "--log-level",
        settings.log_level.lower(),
        "--working-dir",
        str(ROOT),
    ]
    if log_config is not None:
        argv += ["--log-config", str(log_config)]
    return [*argv, app]


def prepare(settings: Settings, bind: str, *, app: str = APP, name: str | None = None):
    """Everything before the exec: (server argv, environment for the server)."""
    metrics_dir = prepare_metrics_dir(settings, bind)
    env = dict(os.environ)
    # Workers inherit the environment: prometheus_client reads it at import,
    # Settings.from_env in create_app.
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    paths = [str(ROOT), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # logsetup for --log-config
    log_config = None
    if settings.web_server == "granian":
        log_config = log_config_path(settings, bind)
        log_config.parent.mkdir(parents=True, exist_ok=True)
        log_config.write_text(json.dumps(granian_log_config(settings), indent=1))
    return server_argv(settings, bind, app=app, name=name, log_config=log_config), env


def main(argv: Sequence[str] | None = None) -> None:
    """Prepare, log the command (one JSON line), exec the server; never returns."""
    parser = argparse.ArgumentParser(prog="python -m deploy.web_server", description=__doc__)
    parser.add_argument("--bind", required=True, help="HOST:PORT")
    parser.add_argument("--app", default=APP, help="WSGI target (module:attribute)")
    parser.add_argument("--name", help="process name (gunicorn only)")
    parser.add_argument(
        "--print", action="store_true", help="print the server command and exit (no exec)"
    )
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import logging

    import logsetup
    from settings import Settings

    settings = Settings.from_env()
    if args.print:
        print(" ".join(server_argv(settings, args.bind, app=args.app, name=args.name)))
        return
    logsetup.configure(settings.log_format, settings.log_level)
    cmd, env = prepare(settings, args.bind, app=args.app, name=args.name)
    logging.getLogger("hmdp.web_server").info(
        "starting %s",
        settings.web_server,
        extra={"argv": cmd, "metrics_dir": env["PROMETHEUS_MULTIPROC_DIR"]},
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
