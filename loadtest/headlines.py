"""Every headline and goal figure, re-measured in one go: ``python3 manage.py bench headlines``.

    python3 manage.py bench headlines --database-url 'mysql+pymysql://root@127.0.0.1:3306/x'
    python3 manage.py bench headlines --quick ...   # a shorter window: see QUICK below
    python3 manage.py bench headlines --plan         # the commands and their wall time, no run
    python3 manage.py bench headlines --smoke        # every command at tiny sizes (a check)
    python3 manage.py bench seed-full --database-url ...   # `flask seed --full`, timed

The rows of README.md's headline table and BENCHMARKS.md's goals table, each
one ``manage.py bench`` command run in a subprocess exactly as shown beside its
figure (``HMDP_ACCESS_LOG=0`` and the run's own settings, such as the gate over
TCP's ``HMDP_REDIS_UNIX_SOCKET=0``; the given database URL: every run creates and
drops a database of its own), one after the other (run it under ``flock -x
/tmp/hmdp-bench.lock`` so that no other benchmark shares the box). Each bench
run measures its own empty Flask route in the same run; ``seed-full`` and the
drain have none. Two rows are read from one run: the gate alone and the drain
alone are the two phases of ``seckill-peak --worker-after-load``.

Writes ``headlines.md`` (the table: figure, same-run empty route, goal, met,
the command, load and wall time of each run) under
``loadtest/results/headlines-<time>/``, with every run's own results below it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest import matrix  # noqa: E402
from loadtest.report import number  # noqa: E402
from loadtest.run import RESULTS, _log, _machine  # noqa: E402
from settings import Settings  # noqa: E402

START_S = 10  # a bench subprocess's own start: the interpreter, the app's imports
BENCH_ENV = {"HMDP_ACCESS_LOG": "0"}  # behind nginx the proxy writes the access log

# The goals (README, BENCHMARKS.md "Goals at a glance", issues 2, 4, 5 and 18).
SHOP_RPS, SHOP_P99_MS, SHOP_RATIO = 10_000, 10.0, 0.7
ORDERS_PER_S, ORDER_P99_MS, BACKLOG_S, MESSAGES_PER_ORDER = 3_000, 50.0, 1.0, 0.05
GATE_RATIO = 0.6
DRAIN_PER_S = 1_000
SEED_FULL_S = 60
SECKILL_30K = 30_000

# Before each run (not in --smoke): the box under 10 % busy over a 2 s sample, or a minute
# gone. A run's own processes have exited when its command returns; this checks that nothing
# else (a database server's background work, another job on the box) is busy when the next
# starts, and the table says how busy it was: the load average lags by a minute.
QUIET_BUSY, QUIET_SAMPLE_S, QUIET_WAIT_S = 0.10, 2.0, 60.0


@dataclass(frozen=True)
class Run:
    """One bench command: its arguments, at full size, in --quick and in --smoke."""

    name: str
    argv: tuple[str, ...]
    # Wall time at full size on this 2-core box, setup included: the load and the empty route
    # (a wrk run's lasts as long as the load) plus the setup timed in short runs of these
    # commands on 2026-12-02 (seeding, sessions, processes up: 15 s for shop-peak, 21 s for
    # seckill-peak on MariaDB) and the drain.
    estimate_s: float
    quick: tuple[str, ...] | None = ()  # extra arguments in --quick; None: left out
    quick_estimate_s: float | None = None
    smoke: tuple[str, ...] = ()  # tiny sizes: the command runs, its figures mean nothing
    env: tuple[tuple[str, str], ...] = ()  # settings of this run beside BENCH_ENV

    def environment(self) -> dict[str, str]:
        """What the run's command is given beside the caller's environment."""
        return {**BENCH_ENV, **dict(self.env)}


_SECKILL_SMOKE = ("--duration", "2", "--users", "4", "--buyers", "200", "--no-redis-benchmark")
RUNS = [
    Run(
        "shop-peak",
        ("shop-peak",),
        85,
        quick=("--duration", "15"),
        quick_estimate_s=55,
        smoke=("--duration", "1", "--shops", "500", "--no-redis-benchmark"),
    ),
    Run(
        "production",
        # 40,000 buyers x 10 vouchers: more than 60 s can sell here, so the load
        # reserves throughout and no answer is a cheap sold-out.
        (
            "seckill-peak",
            "--rate-limits",
            "--beat",
            "--buyers",
            "40000",
            "--stock",
            "40000",
            "--duration",
            "60",
        ),
        155,
        smoke=_SECKILL_SMOKE,
    ),
    Run(
        "gate",
        ("seckill-peak", "--rate-limits", "--worker-after-load"),
        95,
        quick=("--duration", "10"),
        quick_estimate_s=65,
        smoke=_SECKILL_SMOKE,
    ),
    Run(
        "gate-tcp",
        ("seckill-peak", "--rate-limits", "--worker-after-load"),
        95,
        quick=None,
        smoke=_SECKILL_SMOKE,
        env=(("HMDP_REDIS_UNIX_SOCKET", "0"),),
    ),
    Run(
        "gate-rate-limits-off",
        ("seckill-peak", "--worker-after-load"),
        95,
        quick=None,
        smoke=_SECKILL_SMOKE,
    ),
    Run(
        "appendfsync-always",
        ("seckill-peak", "--rate-limits", "--worker-after-load", "--appendfsync", "always"),
        100,
        quick=None,
        smoke=_SECKILL_SMOKE,
    ),
    Run(
        "seckill-30k",
        ("seckill-30k",),
        90,
        smoke=("--users", "10", "--loops", "3", "--no-redis-benchmark"),
    ),
    Run("seed-full", ("seed-full",), 45, smoke=("--size", "small")),
    Run(
        "seed-matrix",
        ("seed-matrix",),
        0,  # matrix.estimate_seconds
        quick=("--duration", "10", "--baseline-duration", "5"),
        smoke=(
            "--cache",
            "4",
            "--seckill",
            "4",
            "--duration",
            "1",
            "--baseline-duration",
            "1",
            "--shops",
            "500",
            "--buyers",
            "50",
            "--stock",
            "2",
            "--no-redis-benchmark",
        ),
    ),
]
RUN_NAMES = [r.name for r in RUNS]


def planned(mode: str, only: list[str] | None = None) -> list[tuple[Run, list[str] | None, float]]:
    """Each run with its bench arguments in ``mode`` (None: left out there) and estimate."""
    out = []
    for run in RUNS:
        if only and run.name not in only:
            continue
        if mode == "quick" and run.quick is None:
            out.append((run, None, 0.0))
            continue
        extra = {"full": (), "quick": run.quick or (), "smoke": run.smoke}[mode]
        if mode == "smoke":
            estimate = 0.0
        elif run.name == "seed-matrix":  # it knows its own rows and sizes
            estimate = START_S + matrix.estimate_seconds(matrix.build_parser().parse_args(extra))
        elif mode == "quick" and run.quick_estimate_s:
            estimate = run.quick_estimate_s
        else:
            estimate = run.estimate_s
        out.append((run, [*run.argv, *extra], estimate))
    return out


def shown(argv: list[str], database_url: str | None, run_env: dict[str, str] = BENCH_ENV) -> str:
    """The command as the reader runs it (the run adds only its --results-dir)."""
    env = " ".join(f"{k}={v}" for k, v in run_env.items())
    url = ["--database-url", database_url] if database_url else []
    return f"env {env} python3 manage.py bench {shlex.join([*argv, *url])}"


# --- the figures and the goals -----------------------------------------------------------------

Figure = tuple[str, str, str, bool | None]  # figure, empty route, goal, met (None: no goal)


def _ms(result: dict[str, Any]) -> str:
    return " / ".join(number(result.get(k), 1) for k in ("p50", "p95", "p99")) + " ms"


def _empty(summary: dict[str, Any]) -> tuple[str, float | None]:
    empty = summary.get("empty") or {}
    if not empty.get("rps"):
        return "-", None
    return f"{number(empty['rps'])} req/s", summary["result"]["rps"] / empty["rps"]


def _audit(summary: dict[str, Any]) -> tuple[str, bool]:
    verdict = summary.get("verdict")
    if not verdict:
        return "no audit", False
    text = (
        f"{verdict['successes']:,} ok, {verdict['rows']:,} rows = {verdict['db_deducted']:,} "
        f"deducted, oversell {verdict['oversell']} / lost {verdict['lost']} / "
        f"dup {verdict['duplicates']}"
    )
    return text + ("" if verdict["ok"] else " **FAILED**"), bool(verdict["ok"])


def shop_peak(s: dict[str, Any]) -> Figure:
    r = s["result"]
    empty, ratio = _empty(s)
    met = r["rps"] >= SHOP_RPS and r["p99"] <= SHOP_P99_MS and (ratio or 0) >= SHOP_RATIO
    goal = f">= {SHOP_RPS:,} req/s, p99 <= {SHOP_P99_MS:g} ms, >= {SHOP_RATIO}x the empty route"
    return f"{number(r['rps'])} req/s, {_ms(r)}, {ratio or 0:.2f}x", empty, goal, met


def production(s: dict[str, Any]) -> Figure:
    r, drain, messages = s["result"], s["drain"], s["messages"]
    empty, ratio = _empty(s)
    orders_per_s = r.get("successes", 0) / r["seconds"] if r.get("seconds") else 0.0
    backlog_s = drain["backlog_at_end_of_load"] / orders_per_s if orders_per_s else None
    per_order = messages.get("per_order")
    audit, exact = _audit(s)
    refused = (r.get("extra") or {}).get("refused", 0)  # sold out or bought: not a sale
    figure = (
        f"{number(orders_per_s)} orders/s over {r['seconds']:.0f} s, {_ms(r)}, {ratio or 0:.2f}x; "
        + (f"{refused:,} answers refused (sold out: not sustained); " if refused else "")
        + f"backlog at the end {number(backlog_s, 2)} s of sales; "
        f"{number(per_order, 4)} messages/order; {audit}"
    )
    met = (
        orders_per_s >= ORDERS_PER_S
        and r["seconds"] >= 59
        and not refused
        and r["p99"] <= ORDER_P99_MS
        and backlog_s is not None
        and backlog_s <= BACKLOG_S
        and per_order is not None
        and per_order <= MESSAGES_PER_ORDER
        and exact
    )
    goal = (
        f">= {ORDERS_PER_S:,} orders/s over 60 s, p99 <= {ORDER_P99_MS:g} ms, backlog <= "
        f"{BACKLOG_S:g} s of sales, <= {MESSAGES_PER_ORDER} messages/order, exact"
    )
    return figure, empty, goal, met


def _gate_run(s: dict[str, Any]) -> tuple[str, str, float, bool]:
    """A gate run's figure, its empty route, its ratio and whether its audit was exact."""
    r = s["result"]
    empty, ratio = _empty(s)
    audit, exact = _audit(s)
    return (
        f"{number(r['rps'])} req/s, {_ms(r)}, {ratio or 0:.2f}x; {audit}",
        empty,
        ratio or 0,
        exact,
    )


def gate(s: dict[str, Any]) -> Figure:
    figure, empty, ratio, exact = _gate_run(s)
    return figure, empty, f">= {GATE_RATIO}x the empty route", ratio >= GATE_RATIO and exact


def drain(s: dict[str, Any]) -> Figure:
    d = s["drain"]
    rate = d.get("rate_after_load")
    figure = (
        f"{number(rate)} orders/s ({number(d['backlog_at_end_of_load'])} reservations settled "
        f"in {d['seconds']:.1f} s, {s['backend']})"
    )
    met = rate is not None and rate >= DRAIN_PER_S and s["backend"] == "mysql"
    return figure, "-", f">= {DRAIN_PER_S:,} orders/s into MariaDB", met


def gate_tcp(s: dict[str, Any]) -> Figure:
    figure, empty, _, exact = _gate_run(s)
    return figure, empty, "- (what the Unix socket saves)", None if exact else False


def gate_rate_limits_off(s: dict[str, Any]) -> Figure:
    figure, empty, _, exact = _gate_run(s)
    r = s["result"]
    met = r["rps"] >= ORDERS_PER_S and r["p99"] <= ORDER_P99_MS and exact
    return figure, empty, f">= {ORDERS_PER_S:,} req/s, p99 <= {ORDER_P99_MS:g} ms", met


def appendfsync_always(s: dict[str, Any]) -> Figure:
    figure, empty, _, exact = _gate_run(s)
    return figure, empty, "- (the price of no loss on a host crash)", None if exact else False


def seckill_30k(s: dict[str, Any]) -> Figure:
    r = s["result"]
    empty, _ = _empty(s)
    audit, exact = _audit(s)
    figure = f"{number(r['requests'])} requests, {number(r['rps'])} req/s, {_ms(r)}; {audit}"
    v = s.get("verdict") or {}
    met = exact and v.get("successes") == v.get("rows") == v.get("db_deducted") == SECKILL_30K
    return figure, empty, f"{SECKILL_30K:,} successes = rows = stock deducted, exact", met


def seed_full(s: dict[str, Any]) -> Figure:
    figure = f"{s['wall_s']:.1f} s wall ({number(s.get('inside_s'), 1)} s inside), {s['backend']}"
    met = s["wall_s"] < SEED_FULL_S and s["backend"] == "mysql" and s["size"] == "full"
    return figure, "-", f"< {SEED_FULL_S} s into MariaDB", met


def seed_matrix(s: dict[str, Any]) -> Figure:
    parts, exact, shares = [], True, []
    for kind in ("cache", "seckill"):
        rows = [r for r in s["rows"] if r["kind"] == kind]
        if rows:
            figures = "/".join(number(r["result"]["rps"]) for r in rows)
            clients = "/".join(number(r["connections"]) for r in rows)
            parts.append(f"{kind} {clients}: {figures} req/s")
        for r in rows:
            exact = exact and (r["verdict"] is None or r["verdict"]["ok"])
            share = r["result"]["cpu"]["wrk_share_of_busy"]
            shares.append(share or 0.0)
    figure = "; ".join(parts) + f"; every audit {'exact' if exact else '**FAILED**'}"
    figure += f"; wrk <= {max(shares, default=0):.0%} of the busy CPU (matrix.md)"
    empty = "per row (matrix.md)"
    return figure, empty, "the seed's rows, every seckill row exact", exact


# Table rows: (what, the run it is read from, how).
ROWS: list[tuple[str, str, Callable[[dict[str, Any]], Figure]]] = [
    ("`GET /shop/{id}`, wrk, 64 connections", "shop-peak", shop_peak),
    (
        "production: web, one worker and beat during the load, rate limits on",
        "production",
        production,
    ),
    ("the gate alone (rate limits on, worker after the load)", "gate", gate),
    ("the drain alone (the same run's worker, started after the load)", "gate", drain),
    ("the gate alone over TCP loopback (`HMDP_REDIS_UNIX_SOCKET=0`)", "gate-tcp", gate_tcp),
    ("the gate alone, rate limits off", "gate-rate-limits-off", gate_rate_limits_off),
    ("the gate alone with `--appendfsync always`", "appendfsync-always", appendfsync_always),
    ("the seed's 30,000-request run", "seckill-30k", seckill_30k),
    ("`flask seed --full`", "seed-full", seed_full),
    (
        "the seed's matrix with wrk (cache 50-2,000, seckill 500-2,000 clients)",
        "seed-matrix",
        seed_matrix,
    ),
]


# --- the run -------------------------------------------------------------------------------------


def wait_for_quiet() -> dict[str, float]:
    """Wait until the box is idle, at most :data:`QUIET_WAIT_S`, so one row's tail is not
    the next row's load; the seconds waited and the busy share of the last sample."""
    started = time.monotonic()
    while True:
        busy, total = matrix.box_cpu()
        time.sleep(QUIET_SAMPLE_S)
        busy_after, total_after = matrix.box_cpu()
        share = (busy_after - busy) / max(total_after - total, 1e-9)
        waited = time.monotonic() - started
        if share <= QUIET_BUSY or waited >= QUIET_WAIT_S:
            return {"waited_s": waited, "busy": share}


def run_one(
    argv: list[str],
    database_url: str | None,
    out_dir: Path,
    quiet: bool = True,
    run_env: dict[str, str] = BENCH_ENV,
) -> dict[str, Any]:
    """One bench command in a subprocess (after :func:`wait_for_quiet` unless ``quiet`` is
    False); its summary plus exit code, wall time, load and how busy the box was before."""
    out_dir.mkdir(parents=True, exist_ok=True)
    before = wait_for_quiet() if quiet else None
    url = ["--database-url", database_url] if database_url else []
    cmd = [sys.executable, str(ROOT / "manage.py"), "bench", *argv, *url]
    cmd += ["--results-dir", str(out_dir)]
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with (out_dir / "bench.log").open("w") as log:
        code = subprocess.call(
            cmd, cwd=ROOT, env=dict(os.environ, **run_env), stdout=log, stderr=subprocess.STDOUT
        )
    found = sorted(out_dir.glob("*/summary.json"))
    summary = json.loads(found[-1].read_text()) if found else None
    return {
        "exit_code": code,
        "wall_s": time.monotonic() - started,
        "load": [load_before, os.getloadavg()[0]],
        "quiet": before,
        "summary": summary,
        "log": str(out_dir / "bench.log"),
    }


def markdown(report: dict[str, Any]) -> str:
    """The headline table: figure, same-run empty route, goal, met, command, load, wall."""
    machine = report["machine"]
    lines = [
        f"`bench headlines{' --' + report['mode'] if report['mode'] != 'full' else ''}`, "
        f"{report['date']}, commit {machine.get('commit', '?')}, {machine['cpus']} CPUs "
        f"({machine['cpu_model']}), wall {report['wall_s'] / 60:.1f} min "
        f"(estimated {report['estimate_s'] / 60:.1f})",
        "",
        "| row | today | empty route (same run) | goal | met? | command | load before / after "
        "| wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for what, name, figure_of in ROWS:
        run = report["runs"].get(name)
        if run is None:
            continue
        if run.get("skipped"):
            cells = [what, f"not run ({run['skipped']})", "-", "-", "-", f"`{run['command']}`"]
            lines.append("| " + " | ".join([*cells, "-", "-"]) + " |")
            continue
        summary = run["summary"]
        if summary is None or (run["exit_code"] not in (0, 1)):
            figure, empty, goal, met = (
                f"**FAILED** (exit {run['exit_code']}, {run['log']})",
                "-",
                "-",
                False,
            )
        else:
            figure, empty, goal, met = figure_of(summary)
        if report["mode"] == "smoke":
            verdict = "(smoke)"
        else:
            verdict = "-" if met is None else ("yes" if met else "**no**")
        load = f"{run['load'][0]:.2f} / {run['load'][1]:.2f}"
        if run.get("quiet"):
            quiet = run["quiet"]
            load += (
                f" (box {quiet['busy']:.0%} busy at the start, {quiet['waited_s']:.0f} s waited)"
            )
        cells = [what, figure, empty, goal, verdict, f"`{run['command']}`", load]
        lines.append("| " + " | ".join([*cells, f"{run['wall_s']:.0f} s"]) + " |")
    lines += ["", "Each run's own table, with the web, worker and generator commands:", ""]
    for name, run in report["runs"].items():
        if not run.get("skipped") and run.get("summary"):
            lines.append(f"- {name}: `{run['summary'].get('results_dir', run['log'])}`")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manage.py bench headlines",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="shorter runs, three comparison rows left out"
    )
    mode.add_argument("--smoke", action="store_true", help="every command at tiny sizes")
    parser.add_argument("--plan", action="store_true", help="print the commands and estimates")
    parser.add_argument("--only", help=f"comma-separated runs of: {', '.join(RUN_NAMES)}")
    parser.add_argument("--database-url", help="default: DATABASE_URL, else SQLite")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``bench headlines``: every run in sequence, then the table (printed, headlines.md)."""
    args = build_parser().parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    only = [n.strip() for n in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or ()) - set(RUN_NAMES))
    if unknown:
        print(f"unknown runs {unknown}; choose from {RUN_NAMES}", file=sys.stderr)
        return 2
    database_url = args.database_url or Settings.from_env().database_url
    plan = planned(mode, only)
    estimate = sum(e for _, _, e in plan)
    for run, bench_argv, seconds in plan:
        if bench_argv is None:
            print(f"  {run.name:<22} not run in --{mode}")
        else:
            command = shown(bench_argv, database_url, run.environment())
            print(f"  {run.name:<22} ~{seconds / 60:4.1f} min  {command}")
    print(f"  estimated wall time: {estimate / 60:.1f} min (this 2-core box, quiet)")
    if args.plan:
        return 0
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.results_dir / f"headlines-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "mode": mode,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(),
        "estimate_s": estimate,
        "runs": {},
    }
    started = time.monotonic()
    for run, bench_argv, seconds in plan:
        command = shown(bench_argv or [*run.argv], database_url, run.environment())
        if bench_argv is None:
            report["runs"][run.name] = {"skipped": f"--{mode}", "command": command}
            continue
        _log(f"{run.name} (~{seconds / 60:.1f} min): {command}")
        done = run_one(
            bench_argv,
            database_url,
            out_dir / run.name,
            quiet=mode != "smoke",
            run_env=run.environment(),
        )
        report["runs"][run.name] = done | {"command": command}
        _log(f"{run.name}: exit {done['exit_code']} after {done['wall_s']:.0f} s")
    report["wall_s"] = time.monotonic() - started
    (out_dir / "headlines.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    (out_dir / "headlines.md").write_text(text + "\n")
    print()
    print(text)
    failed = [n for n, r in report["runs"].items() if not r.get("skipped") and r["exit_code"]]
    return 1 if failed else 0


# --- seed-full: `flask seed --full`, timed --------------------------------------------------------


def seed_full_main(argv: list[str] | None = None) -> int:
    """``bench seed-full``: `flask seed --full` into a fresh database of its own, timed."""
    parser = argparse.ArgumentParser(prog="manage.py bench seed-full", description=__doc__)
    parser.add_argument("--size", choices=["full", "small"], default="full")
    parser.add_argument("--database-url", help="default: DATABASE_URL, else SQLite")
    parser.add_argument("--redis-url", help="default: REDIS_URL, else an embedded redis-server")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.results_dir / f"seed-full-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "scenario": "seed-full",
        "kind": "seed-full",
        "size": args.size,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(),
        "argv": sys.argv,
    }
    flask = [str(Path(sys.executable).parent / "flask"), "--app", "web", "seed", f"--{args.size}"]
    with (
        tempfile.TemporaryDirectory(prefix="hmdp-seed-") as tmp,
        matrix.open_stack(Path(tmp), args, out_dir) as stack,
    ):
        stack.start_backends()  # a fresh, migrated, empty database: the seed's own start
        summary["backend"] = stack.backend
        started = time.perf_counter()
        done = subprocess.run(flask, cwd=ROOT, env=stack.env(), capture_output=True, text=True)
        summary["wall_s"] = time.perf_counter() - started
        (out_dir / "seed.log").write_text(done.stdout + done.stderr)
        summary["exit_code"] = done.returncode
        said = [line for line in done.stdout.splitlines() if line.startswith("seeded")]
        summary["said"] = said[-1] if said else None
        summary["inside_s"] = float(said[-1].split(" in ")[1].split("s:")[0]) if said else None
        from sqlalchemy.engine import make_url

        shown_db = make_url(stack.database_url or "").render_as_string()
        summary["cmd"] = (
            f"DATABASE_URL='{shown_db}' REDIS_URL={stack.redis_url} {shlex.join(flask)}"
        )
    summary["load_after"] = os.getloadavg()
    summary["results_dir"] = str(out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    text = (
        f"flask seed --{args.size} on {summary['backend']}: {summary['wall_s']:.1f} s wall, "
        f"exit {done.returncode}\n  {summary['said']}\n  command: {summary['cmd']}"
    )
    (out_dir / "table.txt").write_text(text + "\n")
    print(text)
    return done.returncode
