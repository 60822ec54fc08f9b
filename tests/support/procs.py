"""Real processes for the operations tests: the deployed web server command
(deploy/web_server.py: granian, or gunicorn), Celery workers, their JSON logs. Each runs in its own session so a test can stop or kill
the whole group and nothing outlives it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

from cache.server import free_port
from deploy.web_server import SERVERS, web_argv
from settings import Settings
from support.env import ROOT, process_env
from tasks.app import worker_argv

START_TIMEOUT_S = 60  # a web server's start, workers' imports included, on a busy box


def http(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, Message, bytes]:
    """One request on a fresh connection: (status, headers, body); raises OSError if none.

    The headers are looked up case-insensitively, as HTTP says (granian sends them
    in lower case, gunicorn as the app wrote them).
    """
    request = urllib.request.Request(url, method=method, headers=headers or {})
    if method == "POST":
        request.data = b""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def json_lines(path: Path) -> list[dict]:
    """The JSON log objects of a process log (other lines ignored)."""
    entries = []
    if not path.exists():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return entries


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log=None):
    """Poll ``predicate`` until truthy (returned) or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.1)


def answers(url: str, timeout: float = 2) -> bool:
    try:
        return http(url, timeout=timeout)[0] == 200
    except OSError:
        return False


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        out.close()


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30) -> int:
    """Signal the process (its group for SIGKILL), wait, then make sure nothing is left."""
    with contextlib.suppress(ProcessLookupError):
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (the web server's workers of its master)."""
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


@contextlib.contextmanager
def web_server(
    settings: Settings, log: Path, workers: int = 1, server: str = "granian", **env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m deploy.web_server`` on a free port, as deployed; yields (base url, master).

    The command execs the server, so the process is the server's master.
    """
    assert server in SERVERS, server
    port = free_port()
    child_env = process_env(settings, HMDP_WEB_SERVER=server, HMDP_WEB_WORKERS=str(workers), **env)
    child_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the launcher picks one per instance
    proc = start([sys.executable, *web_argv(f"127.0.0.1:{port}")], child_env, log)
    base = f"http://127.0.0.1:{port}"
    # Each probe waits for its answer as long as the whole start may take: a probe given
    # up on once a worker has accepted it is still answered, and counted in the metrics,
    # after the caller's first look at them (a refused connection sends nothing).
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        wait_for(
            lambda: answers(f"{base}/healthz", timeout=max(1.0, deadline - time.monotonic())),
            START_TIMEOUT_S,
            f"{server} /healthz",
            proc,
            log,
        )
        yield base, proc
    finally:
        if proc.poll() is None:
            stop_group(proc)


@contextlib.contextmanager
def celery_worker(
    settings: Settings, log: Path, concurrency: int = 2, **env: str
) -> Iterator[subprocess.Popen]:
    """A real Celery worker on every queue; yields once it is ready to consume."""
    name = f"ops-{uuid.uuid4().hex[:8]}@%h"
    proc = start(
        [
            sys.executable,
            "-m",
            "celery",
            *worker_argv(concurrency=concurrency, name=name, standalone=True),
        ],
        process_env(settings, **env),
        log,
    )
    try:
        wait_for(
            lambda: any(e.get("msg", "").endswith(" ready.") for e in json_lines(log)),
            60,
            "the Celery worker to be ready",
            proc,
            log,
        )
        yield proc
    finally:
        if proc.poll() is None:
            stop_group(proc, signal.SIGTERM, wait=30)


@contextlib.contextmanager
def nginx(
    binary: str,
    upstreams: list[str],
    directory: Path,
    frontend_root: Path,
    rate: str = "1000r/s",
    burst: int = 1000,
) -> Iterator[str]:
    """The shipped nginx config (deploy/nginx.conf.template, filled as the local cluster
    fills it) in front of ``upstreams`` on a free port; yields its base URL."""
    from deploy.cluster import cluster_nginx_values, nginx_command, write_nginx_conf

    port = free_port()
    values = cluster_nginx_values(
        f"127.0.0.1:{port}", upstreams, directory, rate, burst, 100, frontend_root
    )
    conf = write_nginx_conf(values, directory)
    log = directory / "nginx.out"
    proc = start(nginx_command(binary, conf, directory), dict(os.environ), log)
    base = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        try:
            http(f"{base}/healthz", timeout=2)  # any answer (a 502 too), never rate limited
        except OSError:
            return False
        return True

    try:
        wait_for(listening, 30, "nginx", proc, log)
        yield base
    finally:
        stop_group(proc, signal.SIGQUIT)
