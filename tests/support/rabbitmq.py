"""A RabbitMQ vhost of the test run's own, so its queues never meet anyone else's.

The machine's RabbitMQ (127.0.0.1:5672, guest/guest) is shared: tests never
publish to, consume from or purge the default vhost's queues. Each run that
needs a broker on RabbitMQ gets ``hmdp-test-<pid>-<hex>``, created with
``rabbitmqctl`` and deleted with everything in it at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid

import pytest

HOST = "127.0.0.1:5672"
USER = "guest"


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def create_vhost() -> str:
    """A new vhost the guest user may use; skips the test when RabbitMQ cannot make one."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("no rabbitmqctl: RabbitMQ is not installed here")
    name = f"hmdp-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _ctl("add_vhost", name)
        _ctl("set_permissions", "-p", name, USER, ".*", ".*", ".*")
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"RabbitMQ cannot make a vhost: {exc}")
    return name


def delete_vhost(name: str) -> None:
    """Drop a vhost :func:`create_vhost` made (its queues and messages go with it)."""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        _ctl("delete_vhost", name)


def broker_url(vhost: str) -> str:
    """CELERY_BROKER_URL for ``vhost``."""
    return f"amqp://{USER}:{USER}@{HOST}/{vhost}"
