"""Run one named load-test scenario end to end: ``python3 manage.py bench SCENARIO``.

    python3 manage.py bench list
    python3 manage.py bench seckill-500
    python3 manage.py bench cache-high --duration 60
    python3 manage.py bench shop-peak --server gunicorn --worker-class gevent
    python3 manage.py bench seckill-30k --database-url mysql+pymysql://root@127.0.0.1:3306/
    python3 manage.py bench seckill-peak --appendfsync always   # the AOF fsynced per write
    python3 manage.py bench seckill-peak --wait-replicas 1      # a replica, WAIT after the gate
    python3 manage.py bench seckill-peak --redis-cluster 3      # a 3-master Redis Cluster, RabbitMQ
    python3 manage.py bench seed-matrix    # the seed's matrix with wrk (loadtest/matrix.py)
    python3 manage.py bench headlines      # every headline row (loadtest/headlines.py)
    python3 manage.py bench gate-lua       # the gate script on one shard (loadtest/gate_lua.py)

Each run, on a fresh stack (``loadtest/stack.py``: embedded Redis + SQLite by
default; REDIS_URL / DATABASE_URL or the options for others, MariaDB getting a
database of its own that is dropped afterwards; ``--redis-cluster N``: a Redis
Cluster of N masters of its own, RabbitMQ the broker):

1. seeds the scenario's demo data, writes sessions for its users, starts
   the web server with the deployed command (``deploy/web_server.py``:
   granian, or gunicorn with --server gunicorn; --workers/--threads or
   HMDP_WEB_*) and, when it sells, a Celery worker;
2. measures the same-run baselines: ``redis-benchmark -t get`` against the
   stack's Redis (when the binary exists) and the empty Flask route
   ``/bench/empty`` on the same server with the scenario's own generator;
3. runs the scenario (locust, headless, or wrk for the *-peak runs), then
   waits until the orders Stream is empty (every reservation a row);
4. judges the orders (``loadtest/verify.py`` over ``web.orders.verify_orders``)
   and prints the results table. Exit status 1 on any oversell, lost or
   duplicate order (or a run that could not drain), else 0.

Everything lands in ``loadtest/results/<scenario>-<timestamp>/`` (gitignored):
locust's CSV and HTML report, wrk output, server and worker logs, the plan,
``summary.json`` and ``table.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.cluster import LOCAL_RABBITMQ, safe_url  # noqa: E402
from loadtest import cpu, wrk  # noqa: E402
from loadtest.report import number  # noqa: E402
from loadtest.scenarios import SCENARIOS, Scenario  # noqa: E402
from loadtest.stack import SeedInfo, Stack  # noqa: E402
from loadtest.verify import judge  # noqa: E402
from settings import APPENDFSYNC_MODES, Settings  # noqa: E402
from tasks.app import WORKER_CONCURRENCY  # noqa: E402

RESULTS = ROOT / "loadtest" / "results"
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
HOT_SHARE = 0.8
COLD_SPAN = 1.05  # uniform ids up to 5% above the shop count: ~5% of the cold ones are unknown
GOALS = {
    "shop-peak": "GET /shop/{id} >= 10,000 req/s, p99 <= 10 ms at 64 connections, >= 0.7x empty",
    "seckill-peak": "gate incl. dispatch >= 3,000 req/s, p99 <= 50 ms at 64 connections",
    "drain": "drain into MariaDB >= 1,000 orders/s",
}

MESSAGES_PER_ORDER_GOAL = 0.05  # one Celery message per micro-batch of orders
# redis-benchmark -t get's key (no -r): on a cluster the run targets the master of its slot.
REDIS_BENCHMARK_KEY = b"key:__rand_int__"
# Commands the runner itself sends while it watches the run (backlog XLENs, INFO samples,
# a Redis broker's queue): left out of the Redis calls per order.
RUNNER_COMMANDS = frozenset({"xlen", "info", "llen", "hlen", "ping"})
SCRIPT_COMMANDS = ("evalsha", "eval", "fcall")

BeforeVerify = Callable[[Stack, SeedInfo], None]


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# --- generators --------------------------------------------------------------------------------


def run_locust(
    scenario: Scenario,
    user_class: str,
    base_url: str,
    plan: dict[str, Any],
    out_dir: Path,
    label: str,
    duration: float,
    spawn_rate: float,
) -> dict[str, Any]:
    """One headless locust run; our precise summary (locustfile's ``out``) plus the command."""
    plan = dict(plan, out=str(out_dir / f"{label}-result.json"), users=scenario.users)
    plan_file = out_dir / f"{label}-plan.json"
    plan_file.write_text(json.dumps(plan))
    spawn_time = scenario.users / spawn_rate
    if scenario.loops:
        expected = scenario.users * scenario.loops / scenario.rate if scenario.rate else 120
        run_time = int(spawn_time + 3 * expected + 120)  # a safety cap; locust quits when done
    else:
        run_time = int(spawn_time + duration + 1)
    cmd = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(scenario.users),
        "--spawn-rate",
        f"{spawn_rate:g}",
        "--run-time",
        f"{run_time}s",
        "--host",
        base_url,
        "--csv",
        str(out_dir / label),
        "--html",
        str(out_dir / f"{label}.html"),
        "--only-summary",
        "--stop-timeout",
        "30",
        "--loglevel",
        "WARNING",
        "--hmdp-plan",
        str(plan_file),
        user_class,
    ]
    if not scenario.loops:
        cmd.insert(-1, "--reset-stats")  # measure the steady state, not the ramp-up
    with (out_dir / f"{label}.log").open("w") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    result_file = Path(plan["out"])
    if not result_file.exists():
        raise RuntimeError(f"locust wrote no result (exit {done.returncode}); see {label}.log")
    result = json.loads(result_file.read_text())
    result["cmd"] = " ".join(cmd)
    result["generator"] = "locust"
    result["exit_code"] = done.returncode
    return result


def _wrk_summary(result: wrk.WrkResult) -> dict[str, Any]:
    return {
        "requests": result.requests,
        "seconds": result.seconds,
        "rps": result.rps,
        "p50": result.p50,
        "p95": result.p95,
        "p99": result.p99,
        "failures": result.errors,
        "non_2xx": result.non_2xx,
        "socket_errors": result.socket_errors,
        "extra": result.extra,
        "cmd": result.cmd,
        "generator": "wrk",
        "generator_cpu_s": result.cpu_seconds,
        "generator_cores": result.cores,
    }


def redis_benchmark(url: str, out_dir: Path) -> dict[str, Any] | None:
    """``redis-benchmark -t get`` against the stack's Redis (same run, same machine)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    from redis.connection import parse_url

    params = parse_url(url)
    if params.get("path"):  # unix://: the same socket the stack's clients use
        target = ["-s", str(params["path"])]
    else:
        target = ["-h", str(params.get("host", "127.0.0.1")), "-p", str(params.get("port", 6379))]
    cmd = [
        binary,
        *target,
        "--dbnum",
        str(params.get("db", 0)),
        "-t",
        "get",
        "-n",
        "100000",
        "-c",
        "50",
        "--csv",
    ]
    if params.get("password"):
        cmd[1:1] = ["-a", str(params["password"]), "--no-auth-warning"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    (out_dir / "redis-benchmark.csv").write_text(done.stdout + done.stderr)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    if done.returncode != 0 or not rows:
        return None
    row = rows[0]
    shown = [c if c != str(params.get("password")) else "***" for c in cmd]
    return {
        "requests": 100_000,
        "rps": float(row["rps"]),
        "p50": float(row["p50_latency_ms"]) if "p50_latency_ms" in row else None,
        "p95": float(row["p95_latency_ms"]) if "p95_latency_ms" in row else None,
        "p99": float(row["p99_latency_ms"]) if "p99_latency_ms" in row else None,
        "failures": 0,
        "cmd": " ".join(shown),
        "generator": "redis-benchmark",
    }


class BacklogSampler:
    """The unsettled reservations once a second while the workers settle during the load.

    The backlog at the end of the load is one sample of a quantity that moves with
    every batch; the series says whether the drain kept pace all along (a steady
    few batches) or fell behind at moments (a periodic job taking the worker).
    """

    def __init__(self, stack: Stack, every_s: float = 1.0):
        self.stack, self.every_s = stack, every_s
        self.samples: list[tuple[float, int]] = []  # (seconds since the load began, backlog)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backlog-sampler", daemon=True)

    def start(self) -> BacklogSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(Exception):  # a poll that fails is a gap, not a failed run
                self.samples.append(
                    (round(time.monotonic() - self._started, 1), self.stack.backlog())
                )

    def summary(self) -> dict[str, Any] | None:
        """Mean and largest backlog over the samples, and when the largest was seen."""
        if not self.samples:
            return None
        at, largest = max(self.samples, key=lambda sample: sample[1])
        values = [backlog for _, backlog in self.samples]
        return {
            "every_s": self.every_s,
            "mean": sum(values) / len(values),
            "max": largest,
            "max_at_s": at,
            "samples": self.samples,
        }


# --- the run -----------------------------------------------------------------------------------


def _warm(base_url: str, paths: list[str]) -> None:
    """Every hot shop cached (and in each web worker's near-cache it reaches)."""
    for path in paths * 2:
        with contextlib.suppress(OSError), urllib.request.urlopen(base_url + path, timeout=30):
            pass


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "commit": commit,
    }


def _start_py_spy(stack: Stack, out_dir: Path, seconds: float) -> cpu.PySpy | None:
    """py-spy on the web server and the Celery worker (all their processes), if installed."""
    binary = cpu.py_spy()
    if binary is None:
        _log("py-spy not installed (pip install py-spy): CPU per process only")
        return None
    spy = cpu.PySpy(binary, out_dir)
    for name in ("web", "worker"):
        pid = stack.supervisor.pid(name)
        if pid is not None:
            spy.start(name, pid, seconds)
    return spy


def run_scenario(
    scenario: Scenario,
    args: argparse.Namespace,
    out_dir: Path,
    before_verify: BeforeVerify | None = None,
) -> dict[str, Any]:
    """Stack up, baselines, scenario, drain, verdict; returns the summary (also saved)."""
    settings = Settings.from_env()
    redis_url = args.redis_url or settings.redis_url
    database_url = args.database_url or settings.database_url
    summary: dict[str, Any] = {
        "scenario": scenario.name,
        "kind": scenario.kind,
        "generator": scenario.generator,
        "users": scenario.users,
        "duration": scenario.duration,
        "loops": scenario.loops,
        "rate": scenario.rate,
        "seed": scenario.seed,
        "note": scenario.note,
        "data": asdict(scenario.data),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(),
        "argv": sys.argv,
        # The settings the runner's processes inherit (HMDP_ACCESS_LOG=0 and the like).
        "env": {k: v for k, v in os.environ.items() if k.startswith(("HMDP_", "GRANIAN_"))},
    }
    gunicorn_env = {
        name: str(value)
        for name, value in (
            ("GUNICORN_WORKERS", args.workers),
            ("GUNICORN_WORKER_CLASS", args.worker_class),
            ("GUNICORN_THREADS", args.threads),
        )
        if value is not None
    }
    wrk_binary = wrk.find_wrk() if scenario.generator == "wrk" else None
    if scenario.generator == "wrk" and wrk_binary is None:
        _log("wrk not found (and could not be installed): using locust instead")
        scenario = replace(scenario, generator="locust")
    with (
        tempfile.TemporaryDirectory(prefix="hmdp-bench-") as tmp,
        Stack(
            Path(tmp),
            redis_url=redis_url,
            database_url=database_url,
            appendfsync=args.appendfsync,
            replicas=args.wait_replicas,
            redis_cluster=args.redis_cluster,
            log=_log,
            logs=out_dir / "logs",
            # the app's own rate limits (production default) instead of the stack's "off"
            env_overrides={"HMDP_RATE_LIMIT_ENABLED": "1"} if args.rate_limits else {},
        ) as stack,
    ):
        summary["rate_limits"] = args.rate_limits
        summary["wait_replicas"] = args.wait_replicas
        summary["beat"] = args.beat
        stack.start_backends()
        summary["backend"] = stack.backend
        summary["redis"] = stack.redis_topology()
        summary["broker"] = safe_url(stack.settings.celery_broker_url or stack.redis_url or "")
        summary["redis_durability"] = stack.redis_durability()
        _log(f"redis: {summary['redis']}, {summary['redis_durability']}")
        info = stack.seed(scenario.data)
        summary["seed_seconds"] = info.seconds
        summary["redis_masters"] = _voucher_masters(stack, info)
        tokens: list[str] = []
        if scenario.needs_orders:
            count = scenario.data.users if scenario.kind == "seckill-peak" else scenario.users
            tokens = stack.create_sessions(info.user_ids[:count])
            (out_dir / "tokens.txt").write_text("\n".join(tokens) + "\n")
            _log(f"{len(tokens)} sessions written (cache.login.create_session)")
        port = stack.start_web(server=args.server, **gunicorn_env)
        base_url = f"http://127.0.0.1:{port}"
        if scenario.needs_orders and not args.worker_after_load:
            stack.start_worker(args.worker_concurrency, args.worker_pool)
        if scenario.needs_orders and args.beat:
            stack.start_beat()
        hot_paths = [f"/shop/{i}" for i in info.hot_ids]
        _warm(base_url, hot_paths)
        summary["commands"] = dict(stack.commands)
        summary["server"] = {
            "web": stack.commands.get("web"),
            "worker": stack.commands.get("worker"),
        }

        # Baselines first, while nothing is draining.
        summary["redis_benchmark"] = None
        if not args.no_redis_benchmark:
            from redis.crc import key_slot

            master = stack.master_of(key_slot(REDIS_BENCHMARK_KEY))
            summary["redis_benchmark"] = redis_benchmark(stack.node_url(master), out_dir)
            if summary["redis_benchmark"] and args.redis_cluster:
                summary["redis_benchmark"]["target"] = f"one master of {args.redis_cluster}"
        plan: dict[str, Any] = {
            "hot_ids": info.hot_ids,
            "shop_count": info.shop_count,
            "cold_span": int(info.shop_count * COLD_SPAN),
            "hot_share": HOT_SHARE,
            "vouchers": sorted(info.seckill_stock),
            "loops": scenario.loops,
            "pace": scenario.users / scenario.rate if scenario.rate else 0,
            "tokens_file": str(out_dir / "tokens.txt") if tokens else "",
        }
        spawn_rate = args.spawn_rate or max(50.0, scenario.users / 5)
        duration = scenario.duration
        baseline_duration = min(duration, args.baseline_duration) if duration else 0
        (out_dir / "paths-empty.txt").write_text("/bench/empty\n")
        (out_dir / "paths-hot.txt").write_text("\n".join(hot_paths) + "\n")
        wrk_log = out_dir / "wrk.log"

        def wrk_paths(paths_file: str, seconds: float) -> dict[str, Any]:
            assert wrk_binary is not None
            return _wrk_summary(
                wrk.run(
                    wrk_binary,
                    base_url,
                    "paths",
                    [str(out_dir / paths_file)],
                    scenario.users,
                    seconds,
                    args.wrk_threads,
                    log_file=wrk_log,
                )
            )

        if args.baseline_duration <= 0:
            summary["empty"] = None
        elif scenario.generator == "wrk":
            summary["empty"] = wrk_paths("paths-empty.txt", duration)
        else:
            summary["empty"] = run_locust(
                scenario,
                "EmptyUser",
                base_url,
                plan,
                out_dir,
                "empty",
                baseline_duration,
                spawn_rate,
            )

        meter = spy = None
        samples: dict[str, cpu.CpuSample] = {}
        if args.profile:
            meter = cpu.CpuMeter(
                {name: stack.supervisor.pid(name) for name in ("web", "worker", "beat")},
                stack.node_clients(),
                database=stack.backend == "mysql",
            )
            spy = _start_py_spy(stack, out_dir, (duration or 30) + 5)
            samples["load start"] = meter.sample()
        calls_before = stack.command_calls() if scenario.needs_orders else {}
        _log(f"running {scenario.name} ({scenario.generator}, {scenario.users} users)")
        sampler = None
        if scenario.needs_orders and not args.worker_after_load:
            sampler = BacklogSampler(stack).start()
        started = time.monotonic()
        if scenario.kind == "shop-peak":
            result = wrk_paths("paths-hot.txt", duration)
        elif scenario.kind == "seckill-peak" and scenario.generator == "wrk":
            assert wrk_binary is not None
            result = _wrk_summary(
                wrk.run(
                    wrk_binary,
                    base_url,
                    "seckill",
                    [
                        str(out_dir / "tokens.txt"),
                        ",".join(map(str, sorted(info.seckill_stock))),
                        str(args.wrk_threads),
                    ],
                    scenario.users,
                    duration,
                    args.wrk_threads,
                    log_file=wrk_log,
                )
            )
            # 409 (sold out, already ordered) is a correct answer, not an error.
            result["successes"] = result["extra"].get("ok", 0)
            result["failures"] = result["extra"].get("other", 0) + result["socket_errors"]
        else:
            user_class = scenario.locust_class if scenario.kind != "seckill-peak" else "SeckillUser"
            result = run_locust(
                scenario, user_class, base_url, plan, out_dir, "scenario", duration, spawn_rate
            )
            result["successes"] = result.get("outcomes", {}).get("ok", 0)
        load_seconds = time.monotonic() - started
        if sampler is not None:
            sampler.stop()
        summary["result"] = result
        if meter is not None:
            samples["load end"] = meter.sample()

        def dispatched() -> float | None:
            return stack.web_counter(port, "hmdp_orders_dispatched_total")

        if scenario.needs_orders and args.worker_after_load:
            # Nothing consumes yet: the broker holds exactly the tasks dispatched so far.
            messages = stack.queued_task_messages()
            published = int(dispatched() or 0)
            reserved = stack.backlog()
            rest = stack.wait_dispatched(reserved, dispatched)
            summary["dispatch"] = {
                "reserved_at_end_of_load": reserved,
                "published_at_end_of_load": published,
                "messages_at_end_of_load": messages,
                "all_published_after_s": rest,
            }
        if scenario.needs_orders:
            if args.worker_after_load:
                # The gate measured alone; now the worker meets the whole backlog at once.
                drain = stack.drain_with_new_worker(
                    args.worker_concurrency, args.worker_pool, stall=args.drain_stall
                )
            else:
                drain = stack.wait_drained(stall=args.drain_stall)
            tasks_done = stack.wait_tasks_done()
            if meter is not None:
                meter.groups["worker"] = stack.supervisor.pid("worker")
                samples["tasks done"] = meter.sample()
            summary["redis_calls"] = _redis_calls(
                calls_before, stack.command_calls(), len(stack.masters)
            )
            summary["messages"] = {
                "published": stack.web_counter(port, "hmdp_order_task_messages_total"),
                "orders_carried": dispatched(),
                "task_runs": stack.order_task_runs(),
            }
            summary["drain"] = {
                "tasks_done_after_s": None if tasks_done is None else drain.seconds + tasks_done,
                "backlog_at_end_of_load": drain.backlog_at_start,
                "backlog_during_load": None if sampler is None else sampler.summary(),
                "left": drain.backlog_left,
                "seconds": drain.seconds,
                "rate_after_load": drain.rate,
                "load_seconds": load_seconds,
                "worker_after_load": args.worker_after_load,
            }
            if before_verify is not None:
                before_verify(stack, info)
            verdict = judge(
                stack.services,
                info.seckill_stock,
                successes=result.get("successes", 0),
                client_duplicates=result.get("duplicate_order_ids", 0)
                + result.get("duplicate_purchases", 0),
                unobserved_allowance=scenario.users if scenario.generator == "wrk" else 0,
            )
            rows = verdict.rows
            messages = summary["messages"]
            messages["orders"] = rows
            messages["per_order"] = (messages["published"] or 0) / rows if rows else None
            calls = summary["redis_calls"]
            calls["per_order"] = calls["commands"] / rows if rows else None
            calls["per_request"] = (
                calls["commands"] / result["requests"] if result["requests"] else None
            )
            calls["scripts_per_request"] = (
                calls["scripts"] / result["requests"] if result["requests"] else None
            )
            if meter is not None:
                summary["profile"] = cpu.per_order(samples, rows)
                if spy is not None:
                    summary["profile"]["py_spy"] = spy.finish()
            summary["drain"]["orders_per_second_overall"] = (
                rows / (load_seconds + drain.seconds) if load_seconds + drain.seconds else None
            )
            summary["verdict"] = asdict(verdict) | {"ok": verdict.ok}
        else:
            summary["verdict"] = None
        summary["commands"] = dict(stack.commands)
    # Other work on the machine during the run shows here (the 1-min average lags ~1 min).
    summary["load_after"] = os.getloadavg()
    summary["commands"]["generator"] = result["cmd"]
    if summary.get("empty"):
        summary["commands"]["empty"] = summary["empty"]["cmd"]
    if summary.get("redis_benchmark"):
        summary["commands"]["redis-benchmark"] = summary["redis_benchmark"]["cmd"]
    return summary


def _voucher_masters(stack: Stack, info: SeedInfo) -> list[dict[str, Any]]:
    """Each master's port and the seckill vouchers whose slot it serves (one entry on one Redis)."""
    from cache.seckill import voucher_slot

    masters: list[dict[str, Any]] = [{"port": p, "vouchers": []} for p in stack.masters]
    for voucher_id in sorted(info.seckill_stock):
        masters[stack.master_of(voucher_slot(voucher_id))]["vouchers"].append(voucher_id)
    return masters


def _redis_calls(before: dict[str, int], after: dict[str, int], masters: int) -> dict[str, Any]:
    """Redis commands from the start of the load to the last task done, summed over the masters.

    ``INFO commandstats`` counts the commands a script runs as well as its EVALSHA,
    so ``scripts`` (EVALSHA/EVAL/FCALL) is the round trips the gate and the workers
    made with scripts; the runner's own polling (:data:`RUNNER_COMMANDS`) is left out.
    """
    delta = {name: after[name] - before.get(name, 0) for name in after}
    counted = {n: c for n, c in delta.items() if c > 0 and n not in RUNNER_COMMANDS}
    top = dict(sorted(counted.items(), key=lambda item: -item[1])[:8])
    return {
        "masters": masters,
        "commands": sum(counted.values()),
        "scripts": sum(counted.get(name, 0) for name in SCRIPT_COMMANDS),
        "top": top,
    }


# --- the report --------------------------------------------------------------------------------


def table(summary: dict[str, Any]) -> str:
    """The results table (plain text, also written to table.txt)."""
    lines = [
        f"{summary['scenario']} on {summary['backend']} -- Redis "
        f"{summary.get('redis_durability', 'durability unknown')} -- {summary['date']} -- "
        f"{summary['machine']['cpus']} CPUs, load {summary['machine']['load_average'][0]:.2f} "
        f"before the run, {summary.get('load_after', [0])[0]:.2f} after",
        _redis_line(summary),
        "",
        f"{'':<26}{'generator':<16}{'users':>6}{'requests':>10}{'req/s':>10}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    rows = [
        (summary["scenario"], summary["result"]),
        ("empty route (same run)", summary.get("empty")),
    ]
    bench = summary.get("redis_benchmark")
    label = (
        "redis-benchmark, 1 master" if bench and bench.get("target") else "redis-benchmark -t get"
    )
    rows.append((label, bench))
    for name, r in rows:
        if not r:
            continue
        users = 50 if r["generator"] == "redis-benchmark" else summary["users"]
        lines.append(
            f"{name:<26}{r['generator']:<16}{users:>6}{number(r['requests']):>10}"
            f"{number(r['rps'], 1):>10}{number(r.get('p50'), 2):>9}{number(r.get('p95'), 2):>9}"
            f"{number(r.get('p99'), 2):>9}{number(r.get('failures', 0)):>8}"
        )
        by_name = r.get("by_name") or {}
        for route, n in by_name.items() if len(by_name) > 1 else ():
            lines.append(
                f"  {route:<40}{number(n['requests']):>16}{'':>10}{number(n['p50'], 2):>9}"
                f"{number(n['p95'], 2):>9}{number(n['p99'], 2):>9}{number(n['failures']):>8}"
            )
    empty, result = summary.get("empty"), summary["result"]
    if empty and empty.get("rps"):
        lines.append(
            f"ratio {summary['scenario']} / empty route: {result['rps'] / empty['rps']:.2f}"
        )
    if result.get("generator_cores") is not None:
        lines.append(
            f"generator: wrk used {result['generator_cpu_s']:.1f} CPU s, "
            f"{result['generator_cores']:.2f} of {summary['machine']['cpus']} cores"
        )
    if result.get("cpu_warning") or (empty or {}).get("cpu_warning"):
        lines.append("NOTE: locust warned that its CPU was saturated (the generator was a limit)")
    verdict = summary.get("verdict")
    if verdict:
        lines += [
            "",
            f"orders: successes {verdict['successes']:,}  reservations {verdict['reservations']:,}  "
            f"rows {verdict['rows']:,}  stock deducted {verdict['db_deducted']:,} "
            f"(of {verdict['initial_stock']:,})",
            f"        oversell {verdict['oversell']}  lost {verdict['lost']}  "
            f"duplicates {verdict['duplicates']}  -> {'OK' if verdict['ok'] else 'FAILED'}",
        ]
        outcomes = result.get("outcomes") or {
            k: v for k, v in result.get("extra", {}).items() if k in {"ok", "refused", "other"}
        }
        if outcomes:
            lines.append("        answers: " + ", ".join(f"{k} {v:,}" for k, v in outcomes.items()))
        lines += [f"        PROBLEM: {p}" for p in verdict["problems"]]
        dispatch = summary.get("dispatch")
        if dispatch:
            rest = dispatch["all_published_after_s"]
            lines.append(
                f"dispatch: {dispatch['published_at_end_of_load']:,} of "
                f"{dispatch['reserved_at_end_of_load']:,} reservations published when the load "
                f"ended (in {dispatch.get('messages_at_end_of_load', 0):,} order task messages); "
                + (f"the rest {rest:.1f} s later" if rest is not None else "the rest NEVER")
            )
        messages = summary.get("messages")
        if messages:
            per_order = messages.get("per_order")
            lines.append(
                f"celery: {number(messages['published'])} order task messages published "
                f"(carrying {number(messages['orders_carried'])} reservations), "
                f"{number(messages['task_runs'])} task runs, {messages['orders']:,} orders: "
                + (f"{per_order:.4f} messages/order" if per_order is not None else "-")
                + f" (goal <= {MESSAGES_PER_ORDER_GOAL})"
            )
        calls = summary.get("redis_calls")
        if calls and calls.get("per_order") is not None:
            lines.append(
                f"redis calls: {calls['per_order']:.2f} commands/order, "
                f"{calls['per_request']:.2f} per seckill request, of which "
                f"{calls['scripts_per_request']:.2f} script calls (EVALSHA) per request "
                f"(INFO commandstats over {calls['masters']} master(s), commands inside "
                "scripts included, the runner's polling left out); top: "
                + ", ".join(f"{name} {n:,}" for name, n in calls["top"].items())
            )
        drain = summary["drain"]
        rate = drain["rate_after_load"]
        lines.append(
            f"drain: {drain['backlog_at_end_of_load']:,} unsettled at the end of the load, "
            f"{drain['left']:,} left after {drain['seconds']:.1f} s"
            + (f" ({rate:,.0f} orders/s)" if rate else "")
            + f"; {verdict['rows']:,} rows in {drain['load_seconds'] + drain['seconds']:.1f} s "
            f"from the start of the load"
            + (" (worker started after the load)" if drain.get("worker_after_load") else "")
        )
        during = drain.get("backlog_during_load")
        if during:
            lines.append(
                f"        unsettled during the load ({len(during['samples'])} samples, one "
                f"every {during['every_s']:g} s): mean {during['mean']:,.0f}, "
                f"largest {during['max']:,} at {during['max_at_s']:.0f} s"
            )
        if drain.get("tasks_done_after_s") is not None:
            lines.append(
                f"        last order task message done {drain['tasks_done_after_s']:.1f} s "
                "after the drain began (tasks of orders already settled by a batch return at once)"
            )
    if summary.get("profile"):
        lines += cpu.lines(summary["profile"])
    if summary["scenario"] in GOALS or summary["kind"] in GOALS:
        lines.append(f"goal: {GOALS.get(summary['kind'], '')}")
    if verdict and summary["backend"] == "mysql":
        lines.append(f"goal: {GOALS['drain']}")
    lines.append("")
    lines.append("commands:")
    lines += [f"  {k}: {v}" for k, v in summary["commands"].items()]
    return "\n".join(lines)


def _redis_line(summary: dict[str, Any]) -> str:
    """``redis: cluster of N masters`` (or single Redis) and which master holds which voucher."""
    line = f"redis: {summary.get('redis', 'single Redis')}"
    masters = summary.get("redis_masters") or []
    if len(masters) > 1:
        line += "; voucher slots: " + "; ".join(
            f"master {i} (:{m['port']}) vouchers {', '.join(map(str, m['vouchers'])) or '-'}"
            for i, m in enumerate(masters)
        )
    return line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manage.py bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", help=f"one of: list, {', '.join(SCENARIOS)}")
    size = parser.add_argument_group("load")
    size.add_argument("--users", type=int, help="locust users (wrk: connections)")
    size.add_argument("--duration", type=float, help="seconds of steady load")
    size.add_argument("--loops", type=int, help="calls per user (seckill scenarios)")
    size.add_argument("--rate", type=float, help="offered req/s in total (0: closed loop)")
    size.add_argument("--stock", type=int, help="stock of every seckill voucher")
    size.add_argument("--shops", type=int, help="demo shops (cache scenarios: 50,000)")
    size.add_argument("--hot", type=int, help="hot shops (the 80%% share of the reads)")
    size.add_argument("--buyers", type=int, help="demo users with a session (seckill-peak: 20,000)")
    size.add_argument("--spawn-rate", type=float, help="locust users started per second")
    size.add_argument("--wrk-threads", type=int, default=2)
    size.add_argument(
        "--baseline-duration",
        type=float,
        default=15,
        help="seconds of the empty-route baseline for duration runs (0: no baseline)",
    )
    size.add_argument("--no-redis-benchmark", action="store_true")
    stack = parser.add_argument_group("stack")
    stack.add_argument("--redis-url", help="default: REDIS_URL, else an embedded redis-server")
    stack.add_argument(
        "--appendfsync",
        choices=APPENDFSYNC_MODES,
        help="the embedded redis-server's AOF fsync policy (default: HMDP_REDIS_APPENDFSYNC, "
        "everysec); always = fsync before every answer",
    )
    stack.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        metavar="N",
        help="N replicas of the embedded redis-server, and HMDP_SECKILL_WAIT_REPLICAS=N: every "
        "reservation waits (WAIT) for N of them (timeout HMDP_SECKILL_WAIT_TIMEOUT_MS); default 0",
    )
    stack.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="a real Redis Cluster of N masters of the run's own instead of the embedded "
        "redis-server (AOF as it, --appendfsync and --wait-replicas apply per master), with "
        "RabbitMQ as the broker: CELERY_BROKER_URL, else a vhost of the run's own on "
        f"{LOCAL_RABBITMQ.split('@')[1].rstrip('/')} (created and deleted); default 0: none",
    )
    stack.add_argument(
        "--database-url",
        help="default: DATABASE_URL, else SQLite; MySQL/MariaDB: a fresh database, dropped after",
    )
    stack.add_argument(
        "--server",
        choices=["granian", "gunicorn"],
        default="granian",
        help="WSGI server: granian (deployed) or gunicorn (to compare); deploy/web_server.py",
    )
    stack.add_argument("--workers", type=int, help="web worker processes (HMDP_WEB_WORKERS)")
    stack.add_argument("--worker-class", help="gunicorn only: worker class (GUNICORN_WORKER_CLASS)")
    stack.add_argument(
        "--threads", type=int, help="threads per web worker (HMDP_WEB_THREADS; granian: blocking)"
    )
    stack.add_argument(
        "--worker-concurrency",
        type=int,
        help=f"Celery processes (default: {WORKER_CONCURRENCY}, the deployed count)",
    )
    stack.add_argument("--worker-pool", default="prefork", help="Celery pool")
    stack.add_argument(
        "--worker-after-load",
        action="store_true",
        help="start the Celery worker only when the load ends (gate alone, then a pure drain)",
    )
    stack.add_argument(
        "--rate-limits",
        action="store_true",
        help="keep the app's rate limits on (off by default: every generator request comes "
        "from 127.0.0.1; per-user limits, e.g. the seckill one, still apply per user)",
    )
    stack.add_argument(
        "--beat",
        action="store_true",
        help="run Celery beat too (the production arrangement: order recovery every 15 s, "
        "reconciliation every 30 s)",
    )
    stack.add_argument(
        "--profile",
        action="store_true",
        help="CPU time per order of the web server, Redis, the worker, the database and the "
        "generator over the load and the drain (loadtest/cpu.py; py-spy too if installed)",
    )
    stack.add_argument("--drain-stall", type=float, default=60, help="give up draining after s")
    stack.add_argument("--results-dir", type=Path, default=RESULTS)
    return parser


# Commands of their own, each with its own options (``bench COMMAND --help``):
# name -> (module, its entry point, what it does).
COMMANDS = {
    "seed-matrix": ("loadtest.matrix", "main", "the seed's matrix with wrk on one stack, audited"),
    "headlines": ("loadtest.headlines", "main", "every headline and goal row, with its command"),
    "seed-full": ("loadtest.headlines", "seed_full_main", "times `flask seed --full`"),
    "gate-lua": ("loadtest.gate_lua", "main", "the gate script's throughput on one Redis shard"),
}


def _command(name: str, argv: list[str]) -> int:
    import importlib

    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), function)(argv)


def _cluster_refusal(args: argparse.Namespace) -> int:
    """Why ``--redis-cluster`` cannot run here, said on stderr: an exit code (0: it can)."""
    from deploy.cluster import broker_problem

    settings = Settings.from_env()
    if args.redis_url or settings.redis_url:
        print(
            "--redis-cluster starts a Redis Cluster of its own: give no --redis-url / REDIS_URL",
            file=sys.stderr,
        )
        return 2
    broker = settings.celery_broker_url or LOCAL_RABBITMQ
    problem = broker_problem(broker)
    if problem is not None:
        print(
            f"--redis-cluster needs RabbitMQ as the Celery broker (Celery has no Redis Cluster "
            f"transport), and {safe_url(broker)} does not answer ({problem}): start RabbitMQ "
            "or set CELERY_BROKER_URL to one that answers",
            file=sys.stderr,
        )
        return 1
    return 0


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a CI timeout) end a run as Ctrl-C does: the stack stopped.

    Its servers and workers run in sessions of their own, so only this process
    gets the signal; by default it would die at once and leave them running.
    """
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None, before_verify: BeforeVerify | None = None) -> int:
    """The command line; ``before_verify`` lets tests corrupt real state before the verdict."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return _command(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    if args.scenario == "list":
        for name, (_, _, note) in COMMANDS.items():
            print(f"{name:<15} {'':<7} {'':>6}        {'':<14} {'':<20} {note}")
        for s in SCENARIOS.values():
            load = f"{s.loops} calls each" if s.loops else f"{s.duration:g} s"
            rate = f"{s.rate:,.0f} req/s offered" if s.rate else "closed loop"
            print(
                f"{s.name:<15} {s.generator:<7} {s.users:>6} users  {load:<14} {rate:<20} {s.note}"
            )
        return 0
    if args.scenario not in SCENARIOS:
        print(f"unknown scenario {args.scenario!r}; try 'list'", file=sys.stderr)
        return 2
    if args.appendfsync and (args.redis_url or Settings.from_env().redis_url):
        print(
            "--appendfsync applies to the embedded redis-server; configure the given Redis itself",
            file=sys.stderr,
        )
        return 2
    if args.wait_replicas and (args.redis_url or Settings.from_env().redis_url):
        print(
            "--wait-replicas starts replicas of the embedded redis-server; with a given Redis "
            "set HMDP_SECKILL_WAIT_REPLICAS instead",
            file=sys.stderr,
        )
        return 2
    if args.wait_replicas < 0 or args.redis_cluster < 0:
        print("--wait-replicas and --redis-cluster must not be negative", file=sys.stderr)
        return 2
    if args.redis_cluster:
        code = _cluster_refusal(args)
        if code:
            return code
    base = SCENARIOS[args.scenario]
    data = replace(
        base.data,
        seckill_stock=base.data.seckill_stock if args.stock is None else args.stock,
        shops=args.shops or base.data.shops,
        hot=base.data.hot if args.hot is None else args.hot,
        users=args.buyers or base.data.users,
    )
    scenario = base.scaled(
        users=args.users, duration=args.duration, loops=args.loops, rate=args.rate, data=data
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.results_dir / f"{scenario.name}-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    _log(f"results in {out_dir}")
    summary = run_scenario(scenario, args, out_dir, before_verify)
    summary["results_dir"] = str(out_dir)
    text = table(summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out_dir / "table.txt").write_text(text + "\n")
    print()
    print(text)
    verdict = summary.get("verdict")
    return 1 if verdict and not verdict["ok"] else 0


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
