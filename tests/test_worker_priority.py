"""HMDP_WORKER_NICE: a real Celery worker, its pool and its autogroup run at the configured nice value."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.backends import backends
from support.procs import children
from support.workers import celery_worker, log_tail

pytestmark = pytest.mark.process


def test_the_worker_and_its_pool_children_run_niced(settings, backend, tmp_path):
    if backend != backends()[0]:
        pytest.skip("a process priority is the same on every backend; one run is enough")
    log = tmp_path / "worker.log"
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with celery_worker(settings, log, HMDP_WORKER_NICE=str(own + 7)) as proc:
        deadline = time.monotonic() + 30
        while len(children(proc.pid)) < 2:  # the prefork pool forks after worker_init
            assert proc.poll() is None, log_tail(log)
            assert time.monotonic() < deadline, "no pool children: " + log_tail(log)
            time.sleep(0.1)
        niced = [os.getpriority(os.PRIO_PROCESS, pid) for pid in [proc.pid, *children(proc.pid)]]
        assert niced == [own + 7] * len(niced)
        # Its own session (start_new_session), so its own autogroup: niced too, or the
        # scheduler would share the cores between it and the web's session as equals.
        autogroup = Path(f"/proc/{proc.pid}/autogroup")
        if autogroup.exists():  # a kernel with CONFIG_SCHED_AUTOGROUP (this machine's)
            assert autogroup.read_text().split()[-1] == str(own + 7)
