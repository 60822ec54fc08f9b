"""The README's run command brings the whole system up and Ctrl-C takes it down."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support.env import ROOT

from cache.server import free_port


def _processes_with_env(marker: str) -> list[int]:
    """Pids of live processes whose environment contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            alive = (entry / "stat").read_text().split()[2] != "Z"
            if alive and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.process
@pytest.mark.slow
def test_up_serves_ready_system_with_demo_data_and_stops_everything(tmp_path: Path):
    var = tmp_path / "var"
    port, flower = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL"}
    }
    env["HMDP_VAR_DIR"] = str(var)
    launcher = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--port", str(port), "--flower-port", str(flower)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            assert launcher.poll() is None, launcher.stdout.read().decode()[-3000:]
            time.sleep(0.5)
        assert status == 200, body
        status, body = _get(f"http://127.0.0.1:{port}/shop-type/list")
        assert status == 200 and b"KTV" in body
        # The development command's code sender: the code is in the log, to type in.
        code_request = urllib.request.Request(
            f"http://127.0.0.1:{port}/user/code?phone=13712345678", method="POST"
        )
        with urllib.request.urlopen(code_request, timeout=10) as response:
            assert response.status == 200
        while time.monotonic() < deadline:  # Flower answers too
            try:
                if _get(f"http://127.0.0.1:{flower}/healthcheck")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("flower never answered")
        assert (var / "hmdp.db").exists()  # the embedded default: SQLite
        assert len(_processes_with_env(f"HMDP_VAR_DIR={var}")) >= 5
    finally:
        launcher.send_signal(signal.SIGINT)
        output = launcher.communicate(timeout=60)[0].decode()
    assert launcher.returncode == 0, output[-3000:]
    assert "stopping embedded redis-server" in output
    assert "starting granian" in output  # the deployed server (deploy/web_server.py)
    assert re.search(r"login code for 13712345678: [0-9]{6}", output), output[-3000:]
    time.sleep(0.5)
    assert _processes_with_env(f"HMDP_VAR_DIR={var}") == []
