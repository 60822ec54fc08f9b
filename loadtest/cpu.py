"""CPU time per order, by process, over one load-test run (``manage.py bench ... --profile``).

Why CPU time and not req/s: on 2 shared cores the throughput of one tier is
set by what the others take, so the question "what is the next bottleneck"
is answered by where the CPU seconds go per order. Read from the kernel, not
estimated:

* ``web``, ``worker`` and ``beat``: every process of the supervisor child's process
  group (granian's master and workers; Celery's main process and pool children),
  user + system time from ``/proc/<pid>/stat``, plus what their reaped
  children used;
* ``redis``: ``INFO cpu`` of the stack's Redis (the app's keys and the Celery
  broker: one server here; a cluster's masters summed), and ``INFO commandstats``
  for which commands;
* ``database``: the MariaDB/MySQL server processes (``mariadbd``/``mysqld``),
  when the stack uses one. That server is shared with whatever else runs on
  the machine, so its figure is an upper bound;
* ``generator``: this process's reaped children (wrk), ``runner``: this process.

py-spy (``--profile`` also records it when the ``py-spy`` binary is installed:
``pip install py-spy``) adds, per Python process, the functions the samples
fell in (:func:`top_functions`).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

_TICK = os.sysconf("SC_CLK_TCK")
DATABASE_NAMES = ("mariadbd", "mysqld")


def _proc_stats() -> list[tuple[int, str, int, float]]:
    """(pid, comm, process group, CPU seconds incl. reaped children) of every process."""
    rows = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[0] is the state (field 3): pgrp is field 5, utime..cstime fields 14-17
        ticks = sum(int(x) for x in fields[11:15])
        rows.append((int(entry.name), comm, int(fields[2]), ticks / _TICK))
    return rows


def group_pids(pgid: int) -> list[int]:
    """The live processes of one process group."""
    return [pid for pid, _, group, _ in _proc_stats() if group == pgid]


@dataclass
class CpuSample:
    """Cumulative CPU seconds by component, and Redis' command counters, at one moment."""

    at: float
    seconds: dict[str, float]
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)  # calls, usec


class CpuMeter:
    """Samples the stack's processes: web, worker, Redis, database, generator, runner."""

    def __init__(
        self, groups: dict[str, int | None], redis_clients: Sequence[redis.Redis], database: bool
    ):
        self.groups = groups  # component -> process group id (None: not running yet)
        self.redis = list(redis_clients)  # one per master: a cluster's CPU is their sum
        self.database = database

    def sample(self) -> CpuSample:
        seconds: Counter[str] = Counter({name: 0.0 for name in self.groups})
        by_group = {pgid: name for name, pgid in self.groups.items() if pgid}
        for _pid, comm, group, cpu in _proc_stats():
            if group in by_group:
                seconds[by_group[group]] += cpu
            elif self.database and comm in DATABASE_NAMES:
                seconds["database"] += cpu
        for client in self.redis:
            info = client.info("cpu")
            seconds["redis"] += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds["generator"] = children.ru_utime + children.ru_stime
        own = resource.getrusage(resource.RUSAGE_SELF)
        seconds["runner"] = own.ru_utime + own.ru_stime
        commands: dict[str, tuple[int, int]] = {}
        for client in self.redis:
            for name, v in client.info("commandstats").items():
                calls, usec = commands.get(name.removeprefix("cmdstat_"), (0, 0))
                commands[name.removeprefix("cmdstat_")] = (
                    calls + int(v["calls"]),
                    usec + int(v["usec"]),
                )
        return CpuSample(time.monotonic(), dict(seconds), commands)


def per_order(samples: dict[str, CpuSample], orders: int, top: int = 8) -> dict:
    """µs of CPU per order by component between the first and last sample (and per phase)."""
    names = list(samples)
    first, last = samples[names[0]], samples[names[-1]]
    orders = max(orders, 1)
    phases = {}
    for a, b in zip(names, names[1:], strict=False):
        phases[f"{a}->{b}"] = {
            "seconds": samples[b].at - samples[a].at,
            "cpu_s": {
                k: samples[b].seconds.get(k, 0.0) - samples[a].seconds.get(k, 0.0)
                for k in last.seconds
            },
        }
    total = {k: last.seconds.get(k, 0.0) - first.seconds.get(k, 0.0) for k in last.seconds}
    commands = []
    for name, (calls, usec) in last.commands.items():
        calls0, usec0 = first.commands.get(name, (0, 0))
        if calls > calls0:
            commands.append((name, calls - calls0, usec - usec0))
    commands.sort(key=lambda c: -c[2])
    return {
        "orders": orders,
        "wall_s": last.at - first.at,
        "cpu_s": total,
        "us_per_order": {k: v * 1e6 / orders for k, v in total.items()},
        "phases": phases,
        "redis_commands": [
            {"command": n, "calls": c, "calls_per_order": c / orders, "us_per_order": u / orders}
            for n, c, u in commands[:top]
        ],
    }


def lines(report: dict) -> list[str]:
    """The profile as text lines (the runner's table)."""
    us = report["us_per_order"]
    order = ["web", "redis", "worker", "beat", "database", "generator", "runner"]
    parts = [f"{k} {us[k]:,.0f}" for k in order if k in us]
    out = [
        f"cpu per order (µs, {report['orders']:,} orders, {report['wall_s']:.1f} s from the "
        f"start of the load to the last task done): " + ", ".join(parts),
        f"        system under test (web + redis + worker + beat + database): "
        f"{sum(us.get(k, 0.0) for k in order[:5]):,.0f} µs/order",
    ]
    for phase, values in report["phases"].items():
        cpu = values["cpu_s"]
        out.append(
            f"        {phase} ({values['seconds']:.1f} s): "
            + ", ".join(f"{k} {cpu[k]:.1f} s" for k in order if k in cpu)
        )
    out.append(
        "        redis commands (µs/order, calls/order): "
        + ", ".join(
            f"{c['command']} {c['us_per_order']:.1f} ({c['calls_per_order']:.2f})"
            for c in report["redis_commands"]
        )
    )
    for name, views in report.get("py_spy", {}).items():
        for view, functions in views.items():
            out.append(
                f"        py-spy {name} ({view}): "
                + "; ".join(f"{share:.0%} {function}" for function, share in functions)
            )
    return out


# --- py-spy --------------------------------------------------------------------------------


def py_spy() -> str | None:
    """The py-spy binary next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    """``py-spy record`` of some processes in the background, raw (collapsed) stacks."""

    def __init__(self, binary: str, out_dir: Path):
        self.binary = binary
        self.out_dir = out_dir
        self.runs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, name: str, pid: int, seconds: float, rate: int = 50) -> None:
        out = self.out_dir / f"py-spy-{name}.txt"
        cmd = [
            self.binary,
            "record",
            "--nonblocking",
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--duration",
            str(max(1, int(seconds))),
            "--pid",
            str(pid),
            "--output",
            str(out),
        ]
        log = open(self.out_dir / f"py-spy-{name}.log", "wb")  # noqa: SIM115 (closed by the child's end)
        self.runs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), out)

    def finish(self, timeout: float = 30.0) -> dict[str, dict[str, list[tuple[str, float]]]]:
        """Wait for every recording; the top functions of each (by own samples)."""
        result = {}
        for name, (proc, out) in self.runs.items():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                proc.wait(10)
            if out.exists():
                result[name] = top_functions(out)
        return result


_FRAME = re.compile(r"(.*?) \((.*?)(?::\d+)?\)$")
# Our code in py-spy's frames (paths relative to the working directory or sys.path).
OURS = re.compile(
    r"^(web|cache|tasks|models|beat|deploy|loadtest)/|^(settings|services|metrics|logsetup"
    r"|timestamps|celeryconfig)\.py$"
)


def top_functions(raw: Path, top: int = 6) -> dict[str, list[tuple[str, float]]]:
    """Where the samples were: the innermost frame (``leaf``) and the innermost frame of
    our own code (``ours``: what of ours the time is spent under), each with its share.
    """
    leaf: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_FRAME.match(f) for f in stack.split(";")]
        named = [(m[1], m[2]) for m in frames if m]
        if not named:
            continue
        function, file = named[-1]
        leaf[f"{function} ({Path(file).name})"] += int(count)
        mine = [(f, p) for f, p in named if OURS.search(p)]
        ours[f"{mine[-1][0]} ({mine[-1][1]})" if mine else "(not our code)"] += int(count)
    total = sum(leaf.values())
    if not total:
        return {}
    return {
        "leaf": [(name, n / total) for name, n in leaf.most_common(top)],
        "ours": [(name, n / total) for name, n in ours.most_common(top)],
    }
