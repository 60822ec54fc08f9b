"""``python3 manage.py cluster ...`` as the tests run it: free ports, its log, its state file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from cache.server import free_port
from settings import Settings
from support.env import ROOT, process_env
from support.procs import wait_for


class Launcher:
    """The launcher process (one web worker each, two Celery processes) and its state file."""

    def __init__(self, settings: Settings, log: Path, *options: str):
        self.ports = [free_port() for _ in range(3)]
        self.port = free_port()
        self.log = log
        self.state_file = settings.var_dir / "cluster" / "state.json"
        self.env = process_env(settings)
        args = [
            sys.executable,
            "manage.py",
            "cluster",
            "--port",
            str(self.port),
            "--web-ports",
            ",".join(map(str, self.ports)),
            "--flower-port",
            str(free_port()),
            "--worker-metrics-port",
            str(free_port()),
            "--web-workers",
            "1",
            "--concurrency",
            "2",
            *options,
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(lambda: self.state().get("ready"), timeout, "the cluster", self.proc, self.log)

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C (SIGINT), as an operator stops it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
