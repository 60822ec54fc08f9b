"""Benchmark the seckill pipeline: gate throughput, drain rate, the seed's 30k run.

Three phases (``--phases``, default all), on its own embedded redis-server (AOF
on, as in production) and SQLite in a temp dir, or ``--database-url`` (use
MariaDB for the drain goal):

* ``gate``: ``POST /voucher-order/seckill/{id}`` on the deployed web server (``deploy/web_server.py``, ``web.wsgi``) with
  ``wrk`` (or a Python client), every request a fresh (user, voucher) pair so
  that nearly all succeed and are dispatched: req/s and p50/p99 *including*
  the dispatch (goal >= 3,000 req/s, p99 <= 50 ms at 64 connections, 2 cores).
  No Celery worker runs during it: the tasks queue up in the broker.
* ``drain``: Celery workers start on that backlog; orders persisted per second
  from the first row to the last (goal >= 1,000 orders/s into MariaDB).
* ``run30k``: the seed document's run: ``--requests`` (30,000) requests by
  random demo users against the demo seckill vouchers (``--size full``: 100
  vouchers x 300 stock), then a drain; successes, order rows, database stock
  deducted and Redis stock deducted must be exactly equal, and ``verify``
  (web.orders.verify_orders) must pass with nothing unsettled.

Every phase ends with the audit. Exit status 0 only if all audits pass.
Run it only on a quiet machine, e.g.::

    .venv/bin/python loadtest/bench_seckill.py --size full --database-url \\
        'mysql+pymysql://root@127.0.0.1:3306/hmdp_bench?charset=utf8mb4'
    .venv/bin/python loadtest/bench_seckill.py --tiny          # smoke: a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from cache.server import EmbeddedRedis, free_port  # noqa: E402
from deploy.web_server import web_argv  # noqa: E402
from models.demo import DemoSize, load_demo_data  # noqa: E402
from models.entities import SeckillVoucher, Voucher, VoucherOrder, utcnow  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from settings import Settings  # noqa: E402
from tasks.app import worker_argv  # noqa: E402

BENCH_VOUCHER_BASE = 900_000  # gate-phase vouchers: ids far from the demo ones
BENCH_USER_BASE = 5_000_000  # gate-phase users (sessions only; orders need no user row)
SEED_TOKEN = "seed-{user}"
GATE_TOKEN = "gate-{user}"


# --- setup -----------------------------------------------------------------------------------


def make_settings(args: argparse.Namespace, var_dir: Path, redis_url: str) -> Settings:
    var_dir.mkdir(parents=True, exist_ok=True)
    return Settings(
        redis_url=redis_url,
        database_url=args.database_url or f"sqlite:///{var_dir / 'bench.db'}",
        var_dir=var_dir,
        rate_limit_enabled=False,
    )


def open_app(settings: Settings):  # type: ignore[no-untyped-def]
    from web import create_app

    return create_app(settings)


def seed(app, size: str) -> None:  # type: ignore[no-untyped-def]
    """Demo data + every post-seed step (stock into Redis, stream group), as `flask seed`."""
    services = app.extensions["hmdp"]
    upgrade(services.settings.effective_database_url)
    load_demo_data(services.db, DemoSize.named(size))
    for step in app.extensions["hmdp_post_seed"]:
        step(services)


def add_sessions(services, users: list[int], token_format: str) -> None:  # type: ignore[no-untyped-def]
    """Session hashes as the login route writes them, with predictable tokens."""
    pipe = services.redis.pipeline(transaction=False)
    ttl = 24 * 3600
    for n, user in enumerate(users, 1):
        key = f"login:token:{token_format.format(user=user)}"
        pipe.hset(key, mapping={"id": user, "nickName": f"u{user}", "icon": "", "role": "user"})
        pipe.expire(key, ttl)
        if n % 5000 == 0:
            pipe.execute()
    pipe.execute()


def add_bench_vouchers(app, count: int, stock: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Seckill vouchers with a stock no run exhausts (gate phase), loaded into Redis."""
    from web.vouchers import load_all_seckill_vouchers

    services = app.extensions["hmdp"]
    now = utcnow()
    ids = [BENCH_VOUCHER_BASE + i for i in range(count)]
    with services.db.session() as session:
        for voucher_id in ids:
            if session.get(Voucher, voucher_id) is None:
                session.add(
                    Voucher(
                        id=voucher_id, shop_id=1, title="bench", pay_value=1, actual_value=1, type=1
                    )
                )
                session.flush()
                session.add(
                    SeckillVoucher(
                        voucher_id=voucher_id,
                        stock=stock,
                        begin_time=now - timedelta(days=1),
                        end_time=now + timedelta(days=1),
                    )
                )
    load_all_seckill_vouchers(services)
    return ids


def process_env(settings: Settings, args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=settings.redis_url or "",
        DATABASE_URL=settings.effective_database_url,
        HMDP_VAR_DIR=str(settings.var_dir),
        HMDP_RATE_LIMIT_ENABLED="0",
        HMDP_ACCESS_LOG="1" if args.access_log else "0",
        HMDP_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    return env


def start_web(
    args: argparse.Namespace, env: dict[str, str], port: int, log: Path
) -> subprocess.Popen:
    """The deployed web server command (deploy/web_server.py) with this run's tuning."""
    env = dict(
        env,
        HMDP_WEB_SERVER=args.server,
        HMDP_WEB_WORKERS=str(args.workers),
        GUNICORN_WORKER_CLASS=args.worker_class,
    )
    if args.threads:
        env["HMDP_WEB_THREADS"] = str(args.threads)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # one per instance, chosen by the launcher
    cmd = [sys.executable, *web_argv(f"127.0.0.1:{port}")]
    print(f"server : {shlex.join(cmd)}  ({args.server}; log: {log})", flush=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args.server} exited with {proc.returncode}")
        url = f"http://127.0.0.1:{port}/healthz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return proc
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"{args.server} did not answer /healthz in 60 s")


def start_celery(
    args: argparse.Namespace, env: dict[str, str], log: Path
) -> list[subprocess.Popen]:
    procs = []
    for n in range(args.celery_workers):
        cmd = [
            sys.executable,
            "-m",
            "celery",
            *worker_argv(
                concurrency=args.celery_concurrency,
                loglevel="WARNING",
                name=f"bench{n}-{os.getpid()}@%h",
            ),
        ]
        print(f"worker : {shlex.join(cmd)}", flush=True)
        with open(log, "ab") as out:
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return procs


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- clients -----------------------------------------------------------------------------------


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def run_wrk_gate(args, port: int, vouchers: list[int], users: int, workdir: Path) -> dict:  # type: ignore[no-untyped-def]
    """wrk: each thread walks its own slice of (user, voucher) pairs, all distinct."""
    script = workdir / "gate.lua"
    script.write_text(
        f"local vouchers = {{{','.join(map(str, vouchers))}}}\n"
        f"local nv, users, base = #vouchers, {users}, {BENCH_USER_BASE}\n"
        "local threads, counter = {}, 0\n"
        "function setup(thread)\n"
        "  thread:set('tid', counter); counter = counter + 1\n"
        "  table.insert(threads, thread)\n"
        "end\n"
        "function init(args)\n"
        f"  i = tid * math.floor(users * nv / {args.wrk_threads})\n"
        "end\n"
        "request = function()\n"
        "  local n = i % (users * nv); i = i + 1\n"
        "  local user, voucher = base + n % users, vouchers[math.floor(n / users) + 1]\n"
        "  return wrk.format('POST', '/voucher-order/seckill/' .. voucher,\n"
        f"    {{['authorization'] = '{GATE_TOKEN.split('{')[0]}' .. user}})\n"
        "end\n"
    )
    cmd = [
        "wrk",
        f"-t{args.wrk_threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": int(errors.group(1)) if errors else 0,
        "cmd": shlex.join(cmd),
    }


def _client_proc(port: int, jobs: list[tuple[int, str]], threads: int, out) -> None:  # type: ignore[no-untyped-def]
    """POST each (voucher, token) once; report (status, order id or None, ms) per request."""
    results: list[tuple[int, str | None, float]] = []
    lock = threading.Lock()
    cursor = iter(jobs)

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while True:
            with lock:
                job = next(cursor, None)
            if job is None:
                break
            voucher, token = job
            t0 = time.perf_counter()
            try:
                conn.request(
                    "POST", f"/voucher-order/seckill/{voucher}", headers={"authorization": token}
                )
                response = conn.getresponse()
                body = json.loads(response.read() or b"{}")
                status = response.status
            except (OSError, http.client.HTTPException, ValueError):
                status, body = 0, {}
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            data = body.get("data") if status == 200 else None
            mine.append((status, data, (time.perf_counter() - t0) * 1000))
        with lock:
            results.extend(mine)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(results)


def run_requests(port: int, jobs: list[tuple[int, str]], procs: int, threads: int) -> dict:
    """Exactly ``len(jobs)`` requests from ``procs`` x ``threads`` keep-alive clients."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    slices = [jobs[i::procs] for i in range(procs)]
    workers = [ctx.Process(target=_client_proc, args=(port, s, threads, out)) for s in slices]
    started = time.perf_counter()
    for w in workers:
        w.start()
    results = [r for _ in workers for r in out.get(timeout=3600)]
    elapsed = time.perf_counter() - started
    for w in workers:
        w.join(30)
    latencies = sorted(ms for _, _, ms in results)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return {
        "requests": len(results),
        "rps": len(results) / elapsed,
        "p50": pct(0.5),
        "p99": pct(0.99),
        "status": {s: sum(1 for r in results if r[0] == s) for s in {r[0] for r in results}},
        "orders": [int(d) for s, d, _ in results if s == 200],
        "cmd": f"python client: {procs} processes x {threads} threads, keep-alive",
    }


# --- measurements -------------------------------------------------------------------------------


def order_rows(services, vouchers: list[int]) -> int:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(VoucherOrder)
                .where(VoucherOrder.voucher_id.in_(vouchers))
            )
        )


def drain(services, vouchers: list[int], expected: int, timeout: float) -> dict:  # type: ignore[no-untyped-def]
    """Wait for ``expected`` rows; rate from the first new row to the last."""
    from beat.order_jobs import run_recovery
    from cache import order_stream

    start_rows = order_rows(services, vouchers)
    deadline = time.monotonic() + timeout
    first_at = None
    rows = start_rows
    while rows < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = order_rows(services, vouchers)
        if first_at is None and rows > start_rows:
            first_at = time.monotonic()
    done_at = time.monotonic()
    rate = (rows - start_rows) / (done_at - first_at) if first_at and done_at > first_at else 0.0
    # whatever no task settled (lost dispatch): the recovery job's code, right away
    recovery_services = type(services)(services.settings.with_(order_claim_idle_ms=0))
    recovered = 0
    try:
        while (
            order_stream.backlog(services.redis, services.settings, vouchers)
            and time.monotonic() < deadline
        ):
            report = run_recovery(recovery_services)
            recovered += sum(report.get("settled", {}).values()) if "settled" in report else 0
            time.sleep(0.2)
    finally:
        recovery_services.close()
    return {"rows": order_rows(services, vouchers), "rate": rate, "recovered": recovered}


def audit(services, vouchers: list[int]) -> bool:  # type: ignore[no-untyped-def]
    from web.orders import verify_orders

    ok = True
    for voucher in vouchers:
        result = verify_orders(services, voucher)
        bad = not result.ok or result.unsettled
        if bad or len(vouchers) <= 3:
            print("  " + "\n  ".join(result.lines()))
        ok = ok and not bad
    print(f"  verify: {'OK' if ok else 'MISMATCH'} ({len(vouchers)} vouchers)")
    return ok


def stock_deducted(services, vouchers: list[int], initial: dict[int, int]) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        db = sum(
            initial[v] - session.get(SeckillVoucher, v).stock
            for v in vouchers  # type: ignore[union-attr]
        )
    redis_values = services.redis.mget([f"seckill:stock:{{{v}}}" for v in vouchers])
    rd = sum(initial[v] - int(s) for v, s in zip(vouchers, redis_values, strict=True))
    return db, rd


# --- phases --------------------------------------------------------------------------------------


def phase_gate_and_drain(args, app, env, port, workdir: Path, phases: set[str]) -> bool:  # type: ignore[no-untyped-def]
    services = app.extensions["hmdp"]
    vouchers = add_bench_vouchers(app, args.gate_vouchers, stock=10_000_000)
    users = list(range(BENCH_USER_BASE, BENCH_USER_BASE + args.gate_users))
    add_sessions(services, users, GATE_TOKEN)
    print(f"\n[gate] {len(vouchers)} vouchers x {len(users)} users, {args.duration}s", flush=True)
    if args.client == "wrk":
        result = run_wrk_gate(args, port, vouchers, len(users), workdir)
    else:
        jobs = [(v, GATE_TOKEN.format(user=u)) for v in vouchers for u in users][
            : args.python_requests
        ]
        result = run_requests(port, jobs, args.client_procs, args.connections // args.client_procs)
        result["non_2xx"] = result["requests"] - result["status"].get(200, 0)
    buyers = sum(services.redis.scard(f"seckill:order:{{{v}}}") for v in vouchers)
    print(f"client : {result['cmd']}")
    print(
        f"  gate incl. dispatch: {result['rps']:.0f} req/s  p50 {result['p50']:.2f} ms  "
        f"p99 {result['p99']:.2f} ms  non-2xx {result['non_2xx']}  orders reserved {buyers}"
    )
    if "drain" not in phases:
        return True
    print(
        f"\n[drain] {buyers} queued orders, {args.celery_workers} worker(s) x "
        f"{args.celery_concurrency}",
        flush=True,
    )
    procs = start_celery(args, env, workdir / "celery.log")
    try:
        drained = drain(services, vouchers, buyers, args.drain_timeout)
    finally:
        for proc in procs:
            stop(proc)
    print(
        f"  drain: {drained['rate']:.0f} orders/s  rows {drained['rows']}/{buyers}  "
        f"settled by recovery {drained['recovered']}"
    )
    return audit(services, vouchers) and drained["rows"] == buyers


def phase_run30k(args, app, env, port, workdir: Path) -> bool:  # type: ignore[no-untyped-def]
    services = app.extensions["hmdp"]
    size = DemoSize.named(args.size)
    first = size.vouchers - size.seckill_vouchers + 1
    vouchers = list(range(first, size.vouchers + 1))
    with services.db.session() as session:
        initial = {v: session.get(SeckillVoucher, v).stock for v in vouchers}  # type: ignore[union-attr]
    users = list(range(2, size.users + 2))
    add_sessions(services, users, SEED_TOKEN)
    rng = random.Random(30_000)
    jobs = [
        (rng.choice(vouchers), SEED_TOKEN.format(user=rng.choice(users)))
        for _ in range(args.requests)
    ]
    print(
        f"\n[run30k] {args.requests} requests, {len(users)} users, {len(vouchers)} vouchers "
        f"(stock {sum(initial.values())})",
        flush=True,
    )
    result = run_requests(port, jobs, args.client_procs, args.run_threads)
    successes = len(result["orders"])
    print(f"client : {result['cmd']}")
    print(
        f"  {result['requests']} requests: {result['rps']:.0f} req/s  p50 {result['p50']:.2f} ms  "
        f"p99 {result['p99']:.2f} ms  status {dict(sorted(result['status'].items()))}"
    )
    procs = start_celery(args, env, workdir / "celery.log")
    try:
        drained = drain(services, vouchers, successes, args.drain_timeout)
    finally:
        for proc in procs:
            stop(proc)
    db_deducted, redis_deducted = stock_deducted(services, vouchers, initial)
    rows = drained["rows"]
    equal = successes == rows == db_deducted == redis_deducted == len(set(result["orders"]))
    print(
        f"  successes {successes} = rows {rows} = db stock deducted {db_deducted} = "
        f"redis stock deducted {redis_deducted}: {'EXACT' if equal else 'MISMATCH'}  "
        f"(drain {drained['rate']:.0f} orders/s, recovered {drained['recovered']})"
    )
    return audit(services, vouchers) and equal and result["status"].get(0, 0) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="gate,drain,run30k")
    parser.add_argument("--duration", type=int, default=30, help="gate phase seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--python-requests", type=int, default=60_000, help="python gate client")
    parser.add_argument("--server", choices=["granian", "gunicorn"], default="granian")
    parser.add_argument("--workers", type=int, default=2, help="web worker processes")
    parser.add_argument(
        "--threads", type=int, default=0, help="threads per web worker (0: the server's default)"
    )
    parser.add_argument("--worker-class", default="gthread", help="gunicorn only")
    parser.add_argument("--access-log", action="store_true", help="keep the per-request log")
    parser.add_argument("--celery-workers", type=int, default=1)
    parser.add_argument("--celery-concurrency", type=int, default=2)
    parser.add_argument("--gate-vouchers", type=int, default=20)
    parser.add_argument("--gate-users", type=int, default=20_000)
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--requests", type=int, default=30_000, help="run30k requests")
    parser.add_argument("--run-threads", type=int, default=100, help="run30k threads/process")
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny numbers")
    args = parser.parse_args()
    if args.tiny:
        args.duration, args.connections, args.gate_users, args.gate_vouchers = 2, 4, 500, 2
        args.size, args.requests, args.run_threads, args.python_requests = "small", 300, 4, 400
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}

    ok = True
    with tempfile.TemporaryDirectory(prefix="hmdp-seckill-") as tmp:
        workdir = Path(tmp)
        with EmbeddedRedis(workdir / "redis", appendonly=True) as redis_server:
            settings = make_settings(args, workdir / "var", redis_server.url)
            app = open_app(settings)
            print(f"seeding ({args.size}) ...", flush=True)
            seed(app, args.size)
            env = process_env(settings, args)
            port = free_port()
            web = start_web(args, env, port, workdir / "web.log")
            try:
                if phases & {"gate", "drain"}:
                    ok &= phase_gate_and_drain(args, app, env, port, workdir, phases)
                if "run30k" in phases:
                    ok &= phase_run30k(args, app, env, port, workdir)
            finally:
                stop(web)
                app.extensions["hmdp"].close()
    print(f"\nresult: {'OK' if ok else 'FAILED'} (cpus={os.cpu_count()})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
