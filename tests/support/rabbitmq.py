"""A RabbitMQ vhost of the test run's own, so its queues never meet anyone else's.

The machine's RabbitMQ is shared: each run that needs a broker on RabbitMQ gets
``hmdp-test-<pid>-<hex>`` (:mod:`deploy.rabbitmq`, which the bench uses too),
deleted with everything in it at the end of the run; without RabbitMQ the tests
that need it skip.
"""

from __future__ import annotations

import pytest

from deploy.rabbitmq import RabbitmqUnavailable, broker_url, delete_vhost
from deploy.rabbitmq import create_vhost as _create_vhost

__all__ = ["broker_url", "create_vhost", "delete_vhost"]


def create_vhost() -> str:
    """A new vhost the guest user may use; skips the test when RabbitMQ cannot make one."""
    try:
        return _create_vhost("hmdp-test")
    except RabbitmqUnavailable as exc:
        pytest.skip(f"RabbitMQ cannot make a vhost: {exc}")
