"""A RabbitMQ vhost of one run's own on this machine's RabbitMQ, through ``rabbitmqctl``.

The machine's RabbitMQ (127.0.0.1:5672, guest/guest) is shared: the tests and the
bench never publish to, consume from or purge the default vhost's queues. A run
that needs a broker there gets ``<prefix>-<pid>-<hex>``, made with ``rabbitmqctl``
and deleted with everything in it at the end. :func:`queue_depth` reads a queue's
ready and unacknowledged messages the way kombu's Redis transport exposes its
``orders`` list and ``unacked`` hash (the bench's "tasks done").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid

HOST = "127.0.0.1:5672"
USER = "guest"


class RabbitmqUnavailable(RuntimeError):
    """rabbitmqctl is missing or refused the command."""


def _ctl(*args: str) -> str:
    if shutil.which("rabbitmqctl") is None:
        raise RabbitmqUnavailable("no rabbitmqctl: RabbitMQ is not installed here")
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise RabbitmqUnavailable(f"rabbitmqctl {args[0]}: {exc}") from exc
    return done.stdout


def create_vhost(prefix: str) -> str:
    """A new vhost ``<prefix>-<pid>-<hex>`` the guest user may use (RabbitmqUnavailable if not)."""
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _ctl("add_vhost", name)
    try:
        _ctl("set_permissions", "-p", name, USER, ".*", ".*", ".*")
    except RabbitmqUnavailable:
        delete_vhost(name)
        raise
    return name


def delete_vhost(name: str) -> None:
    """Drop a vhost :func:`create_vhost` made (its queues and messages go with it)."""
    with contextlib.suppress(RabbitmqUnavailable):
        _ctl("delete_vhost", name)


def vhosts() -> list[str]:
    """Every vhost of this machine's RabbitMQ (a run checks that it left none behind)."""
    return _ctl("list_vhosts", "--no-table-headers").split()


def broker_url(vhost: str) -> str:
    """CELERY_BROKER_URL for ``vhost`` on this machine's RabbitMQ."""
    return f"amqp://{USER}:{USER}@{HOST}/{vhost}"


def queue_depth(vhost: str, queue: str) -> tuple[int, int]:
    """``queue``'s (ready, unacknowledged) messages in ``vhost``; (0, 0) before it exists."""
    columns = ("name", "messages_ready", "messages_unacknowledged")
    out = _ctl("list_queues", "-p", vhost, "--no-table-headers", *columns)
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return 0, 0
