"""The seed's load-test matrix with wrk, on one stack: ``python3 manage.py bench seed-matrix``.

    python3 manage.py bench seed-matrix --database-url 'mysql+pymysql://root@127.0.0.1:3306/x'
    python3 manage.py bench seed-matrix --cache 50,500 --seckill 500 --duration 10

The seed ran its matrix with JMeter: cache reads at 50 / 500 / 1,000 / 2,000
concurrent threads, the flash sale at 500 / 1,000 / 2,000. locust cannot offer
more than ~1,000-1,900 req/s on this 2-core box (BENCHMARKS.md, "Load-test
matrix"), so its rows measured the generator. Here each row is a closed loop of
wrk (C, epoll) at that many connections:

* cache rows: ``GET /shop/{id}`` with the locust cache scenarios' mix
  (``loadtest/wrk/shops.lua``: 80 % over the hot shops, the rest uniform over
  the shop ids and a little above, so ~1 % of the answers are 404 for an
  unknown shop, which counts as correct);
* seckill rows: ``POST /voucher-order/seckill/{id}`` (``loadtest/wrk/seckill.lua``),
  each request a different logged-in user's token (more buyers than
  connections, so the requests in flight are distinct buyers), on vouchers of
  the row's own with real stock in the database and Redis; the Celery worker
  settles during the load, and the row ends with the order audit of its
  vouchers (successes = reservations = rows = stock deducted, no oversell,
  loss or duplicate; wrk may stop with one answer per connection unread).

One stack for every row (seed, sessions, web server and worker once), rows in
sequence, each preceded by the empty Flask route at the same connection count
(the same-run yardstick). For every row the generator's cost is measured: wrk's
own CPU time from the kernel (``os.wait4``) against the box's busy CPU over the
row (``/proc/stat``), and the stack's processes' CPU (``loadtest/cpu.py``).

2,000 connections need file descriptors on both sides: the runner raises its
soft ``RLIMIT_NOFILE`` (inherited by wrk and the server) and checks the web
server's listen backlog (``HMDP_WEB_BACKLOG``, also granian's backpressure per
worker) and the kernel's ``somaxconn`` against the largest row.

Writes ``summary.json``, ``matrix.md`` (``loadtest/report.py``) and
``seed-matrix.png`` (``loadtest/chart.py``) under ``loadtest/results/seed-matrix-<time>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest import chart, cpu, report, wrk  # noqa: E402
from loadtest.run import (  # noqa: E402
    COLD_SPAN,
    HOT_SHARE,
    RESULTS,
    _log,
    _machine,
    _warm,
    redis_benchmark,
)
from loadtest.stack import DataPlan, SeedInfo, Stack  # noqa: E402
from loadtest.verify import judge  # noqa: E402
from settings import Settings  # noqa: E402
from tasks.app import WORKER_CONCURRENCY  # noqa: E402

CACHE_CLIENTS = (50, 500, 1_000, 2_000)
SECKILL_CLIENTS = (500, 1_000, 2_000)
FD_MARGIN = 1_024  # descriptors beyond the connections: logs, Redis/DB pools, pipes
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Row:
    """One row of the matrix: what is requested, at how many connections."""

    kind: str  # cache | seckill
    connections: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.connections}"


def _clients(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("connection counts must be positive")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``bench seed-matrix``."""
    parser = argparse.ArgumentParser(
        prog="manage.py bench seed-matrix",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load = parser.add_argument_group("load")
    load.add_argument("--cache", type=_clients, default=CACHE_CLIENTS, help="connections per row")
    load.add_argument("--seckill", type=_clients, default=SECKILL_CLIENTS)
    load.add_argument("--duration", type=float, default=20, help="seconds of each row")
    load.add_argument(
        "--baseline-duration", type=float, default=10, help="seconds of each row's empty route"
    )
    load.add_argument("--wrk-threads", type=int, default=2)
    load.add_argument("--shops", type=int, default=50_000, help="demo shops (the seed's 50,000)")
    load.add_argument("--hot", type=int, default=100, help="hot shops (80%% of the reads)")
    load.add_argument("--buyers", type=int, default=20_000, help="logged-in demo users")
    load.add_argument(
        "--vouchers-per-row", type=int, default=10, help="seckill vouchers of each seckill row"
    )
    load.add_argument(
        "--stock",
        type=int,
        default=20_000,
        help="stock of every seckill voucher (default: nothing sells out in a 20 s row)",
    )
    load.add_argument("--no-redis-benchmark", action="store_true")
    stack = parser.add_argument_group("stack")
    stack.add_argument("--redis-url", help="default: REDIS_URL, else an embedded redis-server")
    stack.add_argument(
        "--database-url", help="default: DATABASE_URL, else SQLite; MySQL: a fresh database"
    )
    stack.add_argument(
        "--worker-concurrency",
        type=int,
        help=f"Celery processes (default: {WORKER_CONCURRENCY}, the deployed count)",
    )
    stack.add_argument("--rate-limits", action="store_true", help="keep the app's rate limits")
    stack.add_argument("--beat", action="store_true", help="run Celery beat too")
    stack.add_argument("--drain-stall", type=float, default=60, help="give up draining after s")
    stack.add_argument("--results-dir", type=Path, default=RESULTS)
    return parser


def rows_of(args: argparse.Namespace) -> list[Row]:
    """The cache rows, then the seckill rows, in the seed's order."""
    return [Row("cache", c) for c in args.cache] + [Row("seckill", c) for c in args.seckill]


def estimate_seconds(args: argparse.Namespace) -> float:
    """A rough wall time of the run (setup, then each row's baseline, load and drain)."""
    setup = 15 + args.shops / 5_000 + args.buyers / 2_000  # seed, sessions, processes up
    per_row = args.duration + args.baseline_duration + 4
    return setup + len(rows_of(args)) * per_row + 10 * len(args.seckill)


# --- limits ------------------------------------------------------------------------------------


def raise_fd_limit(connections: int) -> dict[str, int]:
    """Enough file descriptors for ``connections`` sockets in this process and its children.

    The soft limit goes up to what is needed (the hard one too, when allowed);
    wrk, the web server and Redis inherit it. Raises when it cannot be had.
    """
    need = connections + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new_hard = hard if hard == resource.RLIM_INFINITY or hard >= need else need
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, new_hard))
        except (ValueError, OSError) as exc:
            raise RuntimeError(
                f"{connections} connections need {need} file descriptors; ulimit -n is {soft} "
                f"(hard {hard}) and cannot be raised here ({exc}): raise it and retry"
            ) from exc
    soft_now, hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"needed": need, "soft_before": soft, "soft": soft_now, "hard": hard_now}


def _somaxconn() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None


def check_listen_backlog(settings: Settings, connections: int) -> list[str]:
    """Warnings when the web server could refuse or stall some of ``connections`` at once."""
    warnings = []
    if settings.web_backlog < connections:
        warnings.append(
            f"HMDP_WEB_BACKLOG={settings.web_backlog} < {connections} connections: granian's "
            "backlog and backpressure per worker may hold some of them back; raise it"
        )
    somaxconn = _somaxconn()
    if somaxconn is not None and somaxconn < min(settings.web_backlog, connections):
        warnings.append(
            f"net.core.somaxconn={somaxconn} caps the listen backlog below {connections}"
        )
    return warnings


# --- CPU -----------------------------------------------------------------------------------------


def box_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (``/proc/stat``'s cpu line)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / _TICK, (busy + idle + iowait) / _TICK


@dataclass
class Measured:
    """A wrk run with what the generator and the stack cost while it ran."""

    result: wrk.WrkResult
    box_busy_s: float
    box_total_s: float
    stack_cpu_s: dict[str, float]

    def cost(self) -> dict[str, Any]:
        """The generator's CPU next to the box's and the stack's, over this run."""
        wrk_cpu = self.result.cpu_seconds or 0.0
        return {
            "wrk_cpu_s": wrk_cpu,
            "wrk_cores": self.result.cores,
            "box_busy_cores": self.box_busy_s / self.result.wall_seconds
            if self.result.wall_seconds
            else None,
            "box_busy_share": self.box_busy_s / self.box_total_s if self.box_total_s else None,
            "wrk_share_of_busy": wrk_cpu / self.box_busy_s if self.box_busy_s else None,
            "stack_cpu_s": self.stack_cpu_s,
        }


def measure(meter: cpu.CpuMeter, run: Any) -> Measured:
    """Call ``run()`` (one wrk run) between two samples of the box and of the stack."""
    busy0, total0 = box_cpu()
    before = meter.sample()
    result = run()
    after = meter.sample()
    busy1, total1 = box_cpu()
    stack = {
        k: after.seconds.get(k, 0.0) - before.seconds.get(k, 0.0)
        for k in ("web", "worker", "beat", "redis", "database")
        if k in after.seconds
    }
    return Measured(result, busy1 - busy0, total1 - total0, stack)


def _summary_of(measured: Measured) -> dict[str, Any]:
    r = measured.result
    return {
        "requests": r.requests,
        "seconds": r.seconds,
        "rps": r.rps,
        "p50": r.p50,
        "p90": r.p90,
        "p95": r.p95,
        "p99": r.p99,
        "socket_errors": r.socket_errors,
        "non_2xx": r.non_2xx,
        "extra": r.extra,
        "cmd": r.cmd,
        "cpu": measured.cost(),
    }


# --- the run -------------------------------------------------------------------------------------


def open_stack(
    workdir: Path, args: argparse.Namespace, out_dir: Path, env: dict[str, str] | None = None
) -> Stack:
    """The stack on ``args.redis_url`` / ``args.database_url`` (else the settings'), logs in out_dir."""
    settings = Settings.from_env()
    return Stack(
        workdir,
        redis_url=args.redis_url or settings.redis_url,
        database_url=args.database_url or settings.database_url,
        log=_log,
        logs=out_dir / "logs",
        env_overrides=dict(env or {}),
    )


def run_matrix(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Stack up once, then every row in sequence; the summary (also saved by :func:`main`)."""
    rows = rows_of(args)
    settings = Settings.from_env()
    most = max(r.connections for r in rows)
    summary: dict[str, Any] = {
        "scenario": "seed-matrix",
        "kind": "seed-matrix",
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(),
        "argv": sys.argv,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("HMDP_", "GRANIAN_"))},
        "limits": raise_fd_limit(most),
        "warnings": check_listen_backlog(settings, most),
        "estimate_s": estimate_seconds(args),
        "duration": args.duration,
        "rows": [],
    }
    for warning in summary["warnings"]:
        _log(f"WARNING: {warning}")
    binary = wrk.find_wrk()
    if binary is None:
        raise RuntimeError("wrk not found (apt-get install wrk)")
    seckill_rows = [r for r in rows if r.kind == "seckill"]
    plan = DataPlan(
        users=args.buyers,
        shops=args.shops,
        hot=args.hot,
        vouchers=args.vouchers_per_row * len(seckill_rows) + 5,
        seckill_vouchers=args.vouchers_per_row * len(seckill_rows),
        seckill_stock=args.stock,
    )
    started = time.monotonic()
    overrides = {"HMDP_RATE_LIMIT_ENABLED": "1"} if args.rate_limits else {}
    with (
        tempfile.TemporaryDirectory(prefix="hmdp-matrix-") as tmp,
        open_stack(Path(tmp), args, out_dir, overrides) as stack,
    ):
        stack.start_backends()
        summary["backend"] = stack.backend
        summary["redis_durability"] = stack.redis_durability()
        info = stack.seed(plan)
        summary["seed_seconds"] = info.seconds
        tokens = stack.create_sessions(info.user_ids[: args.buyers])
        (out_dir / "tokens.txt").write_text("\n".join(tokens) + "\n")
        port = stack.start_web()
        base_url = f"http://127.0.0.1:{port}"
        if seckill_rows:
            stack.start_worker(args.worker_concurrency)
            if args.beat:
                stack.start_beat()
        _warm(base_url, [f"/shop/{i}" for i in info.hot_ids])
        summary["redis_benchmark"] = (
            None if args.no_redis_benchmark else redis_benchmark(stack.redis_url or "", out_dir)
        )
        meter = cpu.CpuMeter(
            {name: stack.supervisor.pid(name) for name in ("web", "worker", "beat")},
            stack.node_clients(),
            database=stack.backend == "mysql",
        )
        runner = _RowRunner(args, stack, info, binary, base_url, port, meter, out_dir)
        vouchers = sorted(info.seckill_stock)
        for row in rows:
            row_vouchers: list[int] = []
            if row.kind == "seckill":
                index = seckill_rows.index(row)
                per = args.vouchers_per_row
                row_vouchers = vouchers[index * per : (index + 1) * per]
            _log(f"row {row.name}: {row.connections} connections, {args.duration:g} s")
            summary["rows"].append(runner.run(row, row_vouchers))
        summary["commands"] = dict(stack.commands)
    summary["wall_s"] = time.monotonic() - started
    summary["load_after"] = os.getloadavg()
    return summary


@dataclass
class _RowRunner:
    """Runs one row on the started stack: its empty route, its load, its drain and audit."""

    args: argparse.Namespace
    stack: Stack
    info: SeedInfo
    binary: str
    base_url: str
    port: int
    meter: cpu.CpuMeter
    out_dir: Path

    def _wrk(self, script: str, script_args: list[str], connections: int, seconds: float):
        return lambda: wrk.run(
            self.binary,
            self.base_url,
            script,
            script_args,
            connections,
            seconds,
            self.args.wrk_threads,
            log_file=self.out_dir / "wrk.log",
        )

    def _counter(self, name: str) -> float:
        return self.stack.web_counter(self.port, name) or 0.0

    def run(self, row: Row, vouchers: list[int]) -> dict[str, Any]:
        out = self.out_dir
        (out / "paths-empty.txt").write_text("/bench/empty\n")
        (out / "hot-ids.txt").write_text("\n".join(map(str, self.info.hot_ids)) + "\n")
        entry: dict[str, Any] = {"name": row.name, "kind": row.kind, "connections": row.connections}
        entry["seed"] = chart.seed_figures(row.kind, row.connections)
        if self.args.baseline_duration > 0:
            empty = self._wrk(
                "paths",
                [str(out / "paths-empty.txt")],
                row.connections,
                self.args.baseline_duration,
            )
            entry["empty"] = _summary_of(measure(self.meter, empty))
        else:
            entry["empty"] = None
        if row.kind == "cache":
            shop_count = self.info.shop_count
            script_args = [str(out / "hot-ids.txt"), str(shop_count)]
            script_args += [str(int(shop_count * COLD_SPAN)), str(HOT_SHARE)]
            load = self._wrk("shops", script_args, row.connections, self.args.duration)
            entry["result"] = result = _summary_of(measure(self.meter, load))
            extra = result["extra"]
            # 404 is the answer for an unknown shop; every 404 must be one of those requests.
            result["failures"] = extra.get("other", 0) + result["socket_errors"]
            if extra.get("missing", 0) > extra.get("unknown_sent", 0):
                result["failures"] += extra["missing"] - extra["unknown_sent"]
            entry["verdict"] = None
            return entry
        messages0 = self._counter("hmdp_order_task_messages_total")
        carried0 = self._counter("hmdp_orders_dispatched_total")
        script_args = [str(out / "tokens.txt"), ",".join(map(str, vouchers))]
        script_args.append(str(self.args.wrk_threads))
        load = self._wrk("seckill", script_args, row.connections, self.args.duration)
        entry["result"] = result = _summary_of(measure(self.meter, load))
        result["successes"] = result["extra"].get("ok", 0)
        # 409 (sold out, already ordered) is a correct answer, not an error.
        result["failures"] = result["extra"].get("other", 0) + result["socket_errors"]
        drain = self.stack.wait_drained(stall=self.args.drain_stall)
        tasks_done = self.stack.wait_tasks_done()
        stock = {v: self.info.seckill_stock[v] for v in vouchers}
        verdict = judge(
            self.stack.services,
            stock,
            successes=result["successes"],
            unobserved_allowance=row.connections,
        )
        published = self._counter("hmdp_order_task_messages_total") - messages0
        entry["drain"] = {
            "backlog_at_end_of_load": drain.backlog_at_start,
            "left": drain.backlog_left,
            "seconds": drain.seconds,
            "tasks_done_after_s": None if tasks_done is None else drain.seconds + tasks_done,
        }
        entry["messages"] = {
            "published": published,
            "orders_carried": self._counter("hmdp_orders_dispatched_total") - carried0,
            "per_order": published / verdict.rows if verdict.rows else None,
        }
        entry["vouchers"] = vouchers
        entry["verdict"] = asdict(verdict) | {"ok": verdict.ok}
        return entry


def main(argv: list[str] | None = None) -> int:
    """``bench seed-matrix``: the run, its table (printed, matrix.md) and its chart."""
    args = build_parser().parse_args(argv)
    if not rows_of(args):
        print("no rows: give --cache and/or --seckill connection counts", file=sys.stderr)
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.results_dir / f"seed-matrix-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    _log(f"results in {out_dir}; estimated wall time {estimate_seconds(args) / 60:.1f} min")
    summary = run_matrix(args, out_dir)
    summary["results_dir"] = str(out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    text = report.seed_matrix_markdown(summary)
    (out_dir / "matrix.md").write_text(text + "\n")
    chart.plot_seed_matrix(summary, out_dir / "seed-matrix.png")
    print()
    print(text)
    _log(f"wall time {summary['wall_s'] / 60:.1f} min (estimated {summary['estimate_s'] / 60:.1f})")
    failed = [r["name"] for r in summary["rows"] if r["verdict"] and not r["verdict"]["ok"]]
    if failed:
        _log(f"order audit FAILED in {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
