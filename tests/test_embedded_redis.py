"""The embedded default runs a real redis-server and leaves nothing behind."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import redis
from support.env import ROOT

from cache.server import EmbeddedRedis, shared_server_url
from settings import Settings


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
    assert url.endswith(f":{state['port']}/0")
    client = redis.Redis.from_url(url, decode_responses=True)
    assert client.config_get("appendfsync")["appendfsync"] == "always"
    client.close()
    # a second process (here: this one) reuses the running server, as it runs
    assert shared_server_url(var) == url
    owner.stdin.close()
    owner.wait(10)
    assert not _alive(state["pid"])
    assert not (var / "redis" / "server.json").exists()
