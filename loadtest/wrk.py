"""wrk, the light load generator: find (or install) it, run a Lua script, parse the report.

locust needs a core of its own on this 2-core machine, so peak-throughput
figures come from wrk (C, epoll, a few % of a core). Scripts live in
``loadtest/wrk/*.lua``; the runner writes their data files (paths, tokens).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent / "wrk"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def find_wrk(install: bool = True) -> str | None:
    """The wrk binary; as root with apt-get, install Debian's package when missing."""
    found = shutil.which("wrk")
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install_cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"]
    for before in ([], [["apt-get", "update", "-q"]]):
        try:
            for cmd in before:
                subprocess.run(cmd, env=env, check=True, timeout=600, capture_output=True)
            subprocess.run(install_cmd, env=env, check=True, timeout=600, capture_output=True)
            break
        except (subprocess.SubprocessError, OSError):
            continue
    return shutil.which("wrk")


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class WrkResult:
    """One wrk run: totals, latency percentiles (ms) and the exact command."""

    requests: int
    seconds: float
    rps: float
    p50: float
    p90: float
    p95: float | None  # from our scripts' done() (wrk prints 50/75/90/99 only)
    p99: float
    non_2xx: int
    socket_errors: int
    cmd: str
    extra: dict[str, int] = field(default_factory=dict)  # "HMDP k=v" lines from done()
    # wrk's own CPU (user + system, from the kernel when it was reaped) and its wall time:
    # what the generator cost, to show it was not the bottleneck.
    cpu_seconds: float | None = None
    wall_seconds: float | None = None

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def cores(self) -> float | None:
        """Cores wrk kept busy on average over its run (CPU seconds / wall seconds)."""
        if self.cpu_seconds is None or not self.wall_seconds:
            return None
        return self.cpu_seconds / self.wall_seconds


def parse(output: str, cmd: str) -> WrkResult:
    """Read wrk's --latency report (and our scripts' HMDP line)."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output)
        if match is None:
            raise ValueError(f"wrk output has no {pattern!r}:\n{output}")
        return match

    total = find(r"(\d+) requests in ([\d.]+)(us|ms|s|m)")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    extra: dict[str, int] = {}
    for line in re.findall(r"^HMDP (.*)$", output, re.MULTILINE):
        for key, value in re.findall(r"(\w+)=(\d+)", line):
            extra[key] = int(value)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(find(r"Requests/sec:\s+([\d.]+)").group(1)),
        p50=_ms(find(r"\s50%\s+(\S+)").group(1)),
        p90=_ms(find(r"\s90%\s+(\S+)").group(1)),
        p95=extra["p95_us"] / 1000 if "p95_us" in extra else None,
        p99=_ms(find(r"\s99%\s+(\S+)").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        cmd=cmd,
        extra=extra,
    )


def run(
    binary: str,
    url: str,
    script: str,
    script_args: list[str],
    connections: int,
    duration: float,
    threads: int = 2,
    timeout_s: int = 10,
    log_file: Path | None = None,
) -> WrkResult:
    """Run ``loadtest/wrk/<script>.lua`` against ``url``; raises if wrk fails."""
    cmd = [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(SCRIPTS / f"{script}.lua"),
        url,
        "--",
        *script_args,
    ]
    done = _run_measured(cmd, timeout=duration + 120)
    if log_file is not None:
        with log_file.open("a") as out:
            out.write(f"$ {shlex.join(cmd)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse(done.stdout, shlex.join(cmd))
    result.cpu_seconds, result.wall_seconds = done.cpu_seconds, done.wall_seconds
    return result


@dataclass
class _Finished:
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float
    wall_seconds: float


def _run_measured(cmd: list[str], timeout: float, poll: float = 0.05) -> _Finished:
    """Run ``cmd`` and reap it with ``os.wait4``: its exit code, output and its own CPU time.

    ``subprocess.run`` reaps the child without its resource usage; ``wait4`` returns
    the child's user + system time exactly (no sampling, nobody else's children).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - started > timeout:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(poll)
        except BaseException:  # the run is ending (SIGTERM, Ctrl-C): wrk with it
            proc.kill()
            os.wait4(proc.pid, 0)
            raise
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return _Finished(
            proc.returncode, out.read(), err.read(), usage.ru_utime + usage.ru_stime, wall
        )
