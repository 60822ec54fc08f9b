"""The Celery application factory.

``create_celery(settings)`` builds an app configured from ``celeryconfig`` plus
the connection URLs from Settings. Each worker process gets its own
:class:`services.Services` (created after fork), reached from a task as
``self.app.services``. The CLI entry point is :mod:`tasks.worker`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_init, worker_process_init

import celeryconfig
from cache.connection import client_options
from services import Services
from settings import Settings

from .exporter import install_worker_metrics
from .logging import install_celery_logging

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+socket://")


class HmdpCelery(Celery):
    """A Celery app that carries the Services of its process."""

    services: Services


def create_celery(settings: Settings | None = None, services: Services | None = None) -> HmdpCelery:
    """A Celery app for ``settings``; the web app builds one to dispatch, workers to run."""
    settings = settings or Settings.from_env()
    services = services or Services(settings)
    app = HmdpCelery("hmdp", set_as_current=False)
    app.config_from_object(celeryconfig)
    app.conf.broker_url = services.broker_url
    if services.broker_url.startswith(REDIS_SCHEMES):
        # kombu's Redis transport (workers, the web's dispatch, beat, Flower): a stalled
        # broker fails a publish or a poll after the socket timeout instead of hanging
        # it. Its BRPOP blocks 1 s, below any socket timeout, and the consumer's event
        # loop reads without one (kombu's own health check drops a dead connection).
        options = client_options(settings)
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, **options}
    app.conf.redis_socket_timeout = settings.redis_socket_timeout  # a Redis result backend
    app.conf.redis_socket_connect_timeout = settings.redis_connect_timeout
    app.conf.result_backend = settings.celery_result_backend
    app.conf.task_ignore_result = settings.celery_result_backend is None
    app.services = services
    install_celery_logging(settings)

    @worker_init.connect(weak=False)
    def _lower_priority(**_: object) -> None:
        lower_priority(settings.worker_nice)  # the pool forked after this inherits it

    @worker_process_init.connect(weak=False)
    def _fresh_connections_after_fork(**_: object) -> None:
        # Pools inherited from the parent would be shared across processes.
        services.close()

    install_worker_metrics(settings, services)  # after the reset above: pool gauges
    return app


AUTOGROUP = Path("/proc/self/autogroup")  # "/autogroup-<n> nice <value>" (sched(7))


def lower_priority(nice: int) -> None:
    """Run this process, and what it forks from now on, at ``nice``: below the web tier.

    A nice value alone is not enough where the kernel groups processes by
    session (``kernel.sched_autogroup_enabled``, the default of most
    distributions): the CPU is shared between sessions first, and a nice value
    only ranks a process inside its own. A worker in a session of its own
    (deploy/supervisor.py starts every child so) would share the cores with the
    web tier as an equal, whatever its nice value; so the session's autogroup
    is niced as well, when this process leads it (a worker started from a
    shell shares the shell's session, which is left alone). Both only upwards:
    idempotent, and a worker started niced stays so.
    """
    if nice > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if nice <= 0 or os.getsid(0) != os.getpid():
        return
    with contextlib.suppress(OSError, ValueError):  # no autogroups in this kernel
        if nice > int(AUTOGROUP.read_text().split()[-1]):
            AUTOGROUP.write_text(str(nice))


# Celery processes of the deployed worker (manage.py up, manage.py cluster, compose, and
# the benchmarks' default, so they measure what is deployed).
WORKER_CONCURRENCY = 2

# Every queue celeryconfig routes to (orders, cache, beat) plus the default one.
WORKER_QUEUES = "celery,orders,cache,beat"


def worker_argv(
    *,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    name: str | None = None,
    queues: str = WORKER_QUEUES,
    pool: str = "prefork",
    standalone: bool = False,
) -> list[str]:
    """The arguments after ``celery`` that start a worker on our queues.

    One definition, so the launchers, the tests and the benchmarks run the same
    worker; ``standalone`` skips gossip and mingle (a lone worker has no peers to
    sync with, and starting up is faster).
    """
    argv = [
        "-A",
        "tasks.worker",
        "worker",
        "-Q",
        queues,
        "--pool",
        pool,
        "--concurrency",
        str(WORKER_CONCURRENCY if concurrency is None else concurrency),
        "--loglevel",
        loglevel,
    ]
    if standalone:
        argv += ["--without-gossip", "--without-mingle"]
    if name:
        argv += ["-n", name]
    return argv
