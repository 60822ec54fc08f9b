"""Every process refuses at start a Redis Cluster it would have to use as Celery's broker.

Celery has no Redis Cluster transport: a worker, beat, Flower or web instance
given a cluster as ``REDIS_URL`` without a broker of its own, or a cluster as the
broker (also through Celery's own ``--broker`` option), must exit at once with
the reason, not start and fail at the first task. The real commands the
launchers run (deploy/cluster.py, compose), with no Redis listening: the refusal
comes from the settings, before any connection.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.env import ROOT

from deploy.web_server import web_argv
from tasks.app import worker_argv

pytestmark = pytest.mark.process

# Nothing listens there: a process that got past its settings would hang or fail later.
CLUSTER = "redis+cluster://127.0.0.1:1,127.0.0.1:2"
NO_BROKER = "Celery has no Redis Cluster transport: set CELERY_BROKER_URL"
CLUSTER_BROKER = "CELERY_BROKER_URL: Celery cannot use a Redis Cluster"

CELERY = [sys.executable, "-m", "celery"]
PROCESSES = {
    "worker": [*CELERY, *worker_argv(pool="solo", concurrency=1, standalone=True)],
    "beat": [*CELERY, "-A", "tasks.worker", "beat", "--schedule", "{tmp}/beat-schedule"],
    "flower": [*CELERY, "-A", "tasks.worker", "flower", "--conf=deploy/flowerconfig.py"],
    "web": [sys.executable, *web_argv("127.0.0.1:1")],
}


def _run(argv: list[str], env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("HMDP_", "REDIS_URL", "CELERY_"))
    }
    base.update(PYTHONPATH=str(ROOT), HMDP_VAR_DIR=str(tmp_path / "var"), **env)
    try:
        return subprocess.run(argv, cwd=ROOT, env=base, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:  # it started instead of refusing
        pytest.fail(f"{argv[:4]} did not refuse within 90 s: {exc.stderr!r}"[-2000:])


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_a_cluster_without_a_broker_of_its_own_is_refused_at_start(name, tmp_path):
    done = _run(PROCESSES[name], {"REDIS_URL": CLUSTER}, tmp_path)
    assert done.returncode != 0
    assert NO_BROKER in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_a_cluster_as_the_broker_is_refused_at_start(name, tmp_path):
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "CELERY_BROKER_URL": CLUSTER}
    done = _run(PROCESSES[name], env, tmp_path)
    assert done.returncode != 0
    assert CLUSTER_BROKER in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]


def test_celerys_own_broker_option_is_checked_too(tmp_path):
    """``celery -b URL`` sets CELERY_BROKER_URL before the app loads: the same refusal."""
    argv = [*CELERY, "-b", CLUSTER, *worker_argv(pool="solo", concurrency=1, standalone=True)]
    done = _run(argv, {"REDIS_URL": "redis://127.0.0.1:1/0"}, tmp_path)
    assert done.returncode != 0
    assert CLUSTER_BROKER in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]
