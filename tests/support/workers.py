"""Real Celery worker processes for the order tests: start, SIGKILL, stop.

Each worker runs in its own session (process group), so the main process and
its prefork children are killed together and nothing outlives a test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from settings import Settings
from support.env import ROOT, process_env
from tasks.app import worker_argv


def start_worker(settings: Settings, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start one worker (2 prefork children) reading ``settings`` plus ``env``."""
    name = f"orders-{uuid.uuid4().hex[:8]}@%h"
    args = [
        sys.executable,
        "-m",
        "celery",
        *worker_argv(loglevel="WARNING", name=name, standalone=True),
    ]
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child; closed below
    try:
        return subprocess.Popen(
            args,
            env=process_env(settings, **env),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, wait: float = 15) -> None:
    """Send ``sig`` to the worker and all its children; SIGKILL if they linger."""
    if proc.poll() is None or sig == signal.SIGKILL:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(wait)
    # prefork children may outlive the main process briefly: clear the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def celery_worker(settings: Settings, log_path: Path, **env: str) -> Iterator[subprocess.Popen]:
    """A running worker for the ``with`` block; its whole process group killed after it."""
    proc = start_worker(settings, log_path, **env)
    try:
        yield proc
    finally:
        kill_group(proc)  # SIGKILL: fast, and a test keeps nothing of a worker


def log_tail(log_path: Path, lines: int = 40) -> str:
    """The end of a worker log, for assertion messages."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
