"""A tests/support/lock_worker.py child process whose stdout lines a test waits for."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support.env import ROOT, process_env

WORKER = Path(__file__).parent / "lock_worker.py"


class Child:
    """A lock_worker.py process whose stdout lines we can wait for."""

    def __init__(self, settings, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), args[0], settings.redis_url, *args[1:]],
            env=process_env(settings),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def expect(self, want: str, timeout: float = 60) -> None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"child printed nothing in {timeout}s (wanted {want!r})")
        if line != want:
            stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""
            pytest.fail(f"child printed {line!r}, wanted {want!r}\n{stderr}")

    def finish(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
