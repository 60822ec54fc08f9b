"""A redis-server of one test's own, for the tests that inject faults into it.

Never the run's shared server: a test that pauses, stops or kills a server
owns it, so no other test sees the fault.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from cache.server import EmbeddedRedis


@contextlib.contextmanager
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test only (it gets stopped), always continued and stopped after."""
    server = EmbeddedRedis(tmp_path / "stalled-redis").start()
    try:
        yield server
    finally:
        if server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.process.pid, signal.SIGCONT)
        server.stop()
