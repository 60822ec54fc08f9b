"""A small process supervisor for ``manage.py up`` and ``manage.py cluster`` (stdlib only).

Children run in their own sessions (Ctrl-C reaches only the supervisor, which
then stops them in reverse start order: SIGTERM, which is graceful for the web
server, Celery and nginx, then SIGKILL of the whole process group after a timeout). A
child started with ``restart=True`` is started again when it exits, the way a
process manager keeps web instances up during a rolling restart or after a
crash; any other child's exit stops everything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Launcher output, distinguishable from the children's JSON lines."""
    print(f"[hmdp] {message}", flush=True)


@dataclass
class Child:
    """One supervised process and how to start it again."""

    name: str
    args: list[str]
    env: dict[str, str]
    restart: bool = False
    stdout: Path | None = None  # None: inherit the launcher's terminal
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


class Supervisor:
    """Starts child processes, restarts the restartable ones, stops them all on a signal."""

    # More restarts than this within RESTART_WINDOW seconds: the child is broken, stop.
    MAX_RESTARTS = 5
    RESTART_WINDOW = 60.0

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.on_change = on_change

    def start(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        restart: bool = False,
        stdout: Path | None = None,
    ) -> Child:
        """Start (or start again) a named child."""
        child = self.children.get(name) or Child(name, args, env, restart, stdout)
        self.children[name] = child
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        log(f"starting {child.name}: {' '.join(child.args)}")
        out = None
        if child.stdout is not None:
            child.stdout.parent.mkdir(parents=True, exist_ok=True)
            out = open(child.stdout, "ab")  # noqa: SIM115 - handed to the child
        try:
            # Own session: Ctrl-C reaches only us, and we stop children in order.
            child.proc = subprocess.Popen(
                child.args,
                cwd=ROOT,
                env=child.env,
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
            )
        finally:
            if out is not None:
                out.close()
        if self.on_change is not None:
            self.on_change()

    def pid(self, name: str) -> int | None:
        child = self.children.get(name)
        return child.proc.pid if child and child.proc else None

    def wait(self) -> int:
        """Block until a signal or a fatal child exit; return the exit code to use."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        while not self.stopping:
            for child in list(self.children.values()):
                proc = child.proc
                if proc is None or proc.poll() is None:
                    continue
                if child.restart and self._may_restart(child):
                    log(f"{child.name} exited with {proc.returncode}; restarting it")
                    self._spawn(child)
                    continue
                log(f"{child.name} exited with {proc.returncode}; stopping everything")
                self.stop()
                return 1
            time.sleep(0.2)
        self.stop()
        return 0

    def _may_restart(self, child: Child) -> bool:
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < self.RESTART_WINDOW]
        if len(child.restarts) >= self.MAX_RESTARTS:
            log(f"{child.name} restarted {len(child.restarts)} times in a minute; giving up")
            return False
        child.restarts.append(now)
        return True

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child (graceful for the web server and Celery), then wait, then kill."""
        self.stopping = True
        for child in reversed(list(self.children.values())):
            if child.proc is not None and child.proc.poll() is None:
                log(f"stopping {child.name}")
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            proc = child.proc
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{child.name} did not stop in {timeout:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
