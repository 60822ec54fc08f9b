"""The embedded default runs a real redis-server and leaves nothing behind."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
from support.env import ROOT

from cache.server import (
    MAX_SOCKET_PATH,
    DataDirInUse,
    EmbeddedRedis,
    free_port,
    shared_server_url,
    socket_path_in,
    start_shared_server,
)
from deploy.cluster import find_nginx
from settings import Settings

# Every test here starts processes of its own.
pytestmark = pytest.mark.process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_starts_real_server_with_aof_and_stops_cleanly(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "r").start()
    pid = server.process.pid
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.set("k", "v")
    assert client.config_get("appendonly")["appendonly"] == "yes"
    # the AOF fsync policy redis-server has by default is the one Settings declares
    assert client.config_get("appendfsync")["appendfsync"] == Settings().redis_appendfsync
    assert client.config_get("dir")["dir"] == str(tmp_path / "r")
    # the AOF is rewritten at 9x its last rewritten size, not at Redis' default 2x
    assert client.config_get("auto-aof-rewrite-percentage") == {
        "auto-aof-rewrite-percentage": "800"
    }
    info = client.info("server")
    assert info["tcp_port"] == server.port
    client.close()
    server.stop()
    assert not _alive(pid)


def test_data_survives_restart_through_aof(tmp_path: Path):
    with EmbeddedRedis(tmp_path / "r") as server:
        client = redis.Redis.from_url(server.url)
        client.xadd("stream.orders", {"id": "1"})
        client.close()
    with EmbeddedRedis(tmp_path / "r") as again:
        assert redis.Redis.from_url(again.url).xlen("stream.orders") == 1


def test_shared_server_is_found_by_a_second_process_and_stopped_by_its_owner(tmp_path: Path):
    """The owner starts it as its settings say (HMDP_REDIS_APPENDFSYNC=always here)."""
    var = tmp_path / "var"
    script = textwrap.dedent(
        f"""
        import sys, json
        sys.path.insert(0, {str(ROOT)!r})
        from cache.connection import resolve_redis_url
        from settings import Settings
        env = {{"HMDP_VAR_DIR": {str(var)!r}, "HMDP_REDIS_APPENDFSYNC": "always"}}
        print(resolve_redis_url(Settings.from_env(env)), flush=True)
        sys.stdin.read()
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    url = owner.stdout.readline().strip()
    state = json.loads((var / "redis" / "server.json").read_text())
    # Reached over its socket (HMDP_REDIS_UNIX_SOCKET's default); its TCP port is open too.
    assert state["socket"] == str((var / "redis" / "redis.sock").absolute())
    assert url == f"unix://{state['socket']}?db=0"
    client = redis.Redis.from_url(url, decode_responses=True)
    assert client.config_get("appendfsync")["appendfsync"] == "always"
    client.set("over", "the socket")
    client.close()
    over_tcp = redis.Redis(port=state["port"], decode_responses=True)
    assert over_tcp.get("over") == "the socket"
    over_tcp.close()
    # a second process (here: this one) reuses the running server, as it runs
    assert shared_server_url(var) == url
    owner.stdin.close()
    owner.wait(10)
    assert not _alive(state["pid"])
    assert not (var / "redis" / "server.json").exists()


def test_a_socket_path_too_long_for_sun_path_leaves_the_server_on_tcp(tmp_path: Path):
    deep = tmp_path / ("d" * (MAX_SOCKET_PATH - len(str(tmp_path))))
    assert socket_path_in(deep) is None
    with EmbeddedRedis(deep, unix_socket=True) as server:
        assert server.url == server.tcp_url == f"redis://127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping()
        assert not (deep / "redis.sock").exists()


def test_without_the_socket_setting_the_shared_server_is_tcp_only(tmp_path: Path):
    var = tmp_path / "var"
    settings = Settings.from_env({"HMDP_VAR_DIR": str(var), "HMDP_REDIS_UNIX_SOCKET": "0"})
    server = start_shared_server(var, unix_socket=settings.redis_unix_socket)
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert "socket" not in json.loads((var / "redis" / "server.json").read_text())
        assert redis.Redis.from_url(server.url).config_get("unixsocket")["unixsocket"] == ""
    finally:
        server.stop()


# --- operator commands beside a running launcher ------------------------------------


def _servers_on(data_dir: Path) -> list[int]:
    """Pids of the redis-server processes working in ``data_dir`` (Redis chdirs to its --dir;
    it rewrites its command line, so that cannot be read)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            cwd = (entry / "cwd").resolve()
        except OSError:
            continue
        here = name.startswith("redis-server") and cwd == data_dir.resolve()
        if here and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _starts_logged(data_dir: Path) -> int:
    """How many redis-servers ever got ready on ``data_dir`` (they share its log file)."""
    return (data_dir / "redis.log").read_text().count("Ready to accept connections")


def _flask(var: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``flask --app web ARGS`` as an operator runs it: no REDIS_URL, this installation's var."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HMDP_", "REDIS_URL"))}
    env.pop("DATABASE_URL", None)  # the installation's own SQLite file in var
    env.update(HMDP_VAR_DIR=str(var), PYTHONPATH=str(ROOT))
    flask = Path(sys.executable).parent / "flask"
    return subprocess.run(
        [str(flask), "--app", "web", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def launched(tmp_path: Path):
    """The installation's embedded server, started and recorded as ``manage.py up`` does."""
    var = tmp_path / "var"
    server = start_shared_server(var)
    try:
        yield var, server
    finally:
        if server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_an_operator_command_beside_up_uses_its_running_server(launched):
    var, server = launched
    data = server.data_dir
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.set("probe", "set by the test")
    assert _flask(var, "db", "upgrade").returncode == 0
    warm = _flask(var, "cache", "warm")
    assert warm.returncode == 0, warm.stderr
    assert "hot shops warmed" in warm.stdout
    # its writes are in the running server, which still has the test's key
    assert client.get("cache:shop-type") == "[]"
    assert client.get("probe") == "set by the test"
    assert _servers_on(data) == [server.process.pid]
    assert _starts_logged(data) == 1  # no second server ran, not even briefly
    client.close()


def test_a_command_refuses_while_the_running_server_does_not_answer(launched):
    var, server = launched
    assert _flask(var, "db", "upgrade").returncode == 0
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        warm = _flask(var, "cache", "warm")
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert warm.returncode == 1
    assert "Error: the embedded redis-server" in warm.stderr
    assert "does not answer" in warm.stderr and "Set REDIS_URL" in warm.stderr
    assert "Traceback" not in warm.stderr
    assert _servers_on(server.data_dir) == [server.process.pid]
    assert _starts_logged(server.data_dir) == 1
    client = redis.Redis.from_url(server.url)
    assert client.get("cache:shop-type") is None  # the command wrote nothing anywhere
    client.close()


def test_an_unrecorded_server_on_the_data_is_never_joined_by_a_second(launched):
    """A server running on the data without a record (an older launcher, a deleted
    server.json): the command refuses rather than start another on its AOF."""
    var, server = launched
    assert _flask(var, "db", "upgrade").returncode == 0
    (server.data_dir / "server.json").unlink()
    warm = _flask(var, "cache", "warm")
    assert warm.returncode == 1
    assert "already runs on" in warm.stderr and "REDIS_URL" in warm.stderr
    assert "Traceback" not in warm.stderr
    assert _servers_on(server.data_dir) == [server.process.pid]
    assert _starts_logged(server.data_dir) == 1


def _cluster(var: Path) -> subprocess.CompletedProcess[str]:
    """``manage.py cluster`` as an operator runs it: no REDIS_URL, this installation's var."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HMDP_", "REDIS_URL"))}
    env.pop("DATABASE_URL", None)
    env.update(HMDP_VAR_DIR=str(var), PYTHONPATH=str(ROOT))
    args = ["--port", str(free_port()), "--web-ports", str(free_port()), "--no-flower"]
    return subprocess.run(
        [sys.executable, "manage.py", "cluster", *args, "--no-seed", "--no-beat"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.process
@pytest.mark.parametrize("state", ["running", "stalled"])
def test_a_cluster_beside_a_recorded_server_refuses_with_what_to_do(launched, state):
    """The installation's recorded server runs (another launcher's), or runs and does not
    answer (SIGSTOPped): ``manage.py cluster`` says so and what to do, exit 1, no traceback."""
    if find_nginx() is None:
        pytest.skip("nginx not installed (manage.py test installs it when run as root)")
    var, server = launched
    if state == "stalled":
        os.kill(server.process.pid, signal.SIGSTOP)
    try:
        result = _cluster(var)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "cannot start the cluster: " in output
    expected = "already runs at" if state == "running" else "does not answer"
    assert expected in output and "REDIS_URL" in output
    assert "Traceback" not in output
    assert _servers_on(server.data_dir) == [server.process.pid]  # nothing else started
    assert not (var / "cluster" / "state.json").exists()  # no child was started


def test_a_second_launcher_or_server_on_the_same_data_is_refused(launched):
    var, server = launched
    with pytest.raises(DataDirInUse, match="already runs at"):
        start_shared_server(var)
    with pytest.raises(DataDirInUse, match="already runs on"):
        EmbeddedRedis(server.data_dir).start()
    assert shared_server_url(var) == server.url  # a user of it is welcome
    assert _servers_on(server.data_dir) == [server.process.pid]


def test_a_killed_server_lets_the_next_one_start_on_its_data(tmp_path: Path):
    first = EmbeddedRedis(tmp_path / "r").start()
    redis.Redis.from_url(first.url).set("k", "v")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    with EmbeddedRedis(tmp_path / "r") as again:  # the lock died with it
        assert redis.Redis.from_url(again.url).get("k") == b"v"
