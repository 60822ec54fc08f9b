"""Benchmark GET /shop/{id} against an empty Flask route on the same web server.

Starts the stack with ``loadtest/stack.py`` (the runner's start-up code: an
embedded redis-server and SQLite in a temporary directory, or a fresh database
on ``--database-url``), loads the demo data and warms the cache (Bloom filter,
hot shops' logical keys, then one GET per id), starts the web server (granian,
or ``--server gunicorn``) on a free port
with ``loadtest/bench_shop_wsgi.py`` (the real app plus ``/bench/empty``), and
measures both routes in the same run with ``wrk`` (``loadtest/wrk/paths.lua``)
or, without it, a small multi-process HTTP client. ``python3 manage.py bench
shop-peak`` is the same measurement inside the runner's report.
Prints req/s, p50/p99, the shop/empty ratio and the exact commands.

Run it only on a quiet machine, e.g.::

    .venv/bin/python loadtest/bench_shop.py --duration 30 --connections 64
    .venv/bin/python loadtest/bench_shop.py --duration 2 --connections 4   # smoke
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest import wrk  # noqa: E402
from loadtest.stack import DataPlan, Stack  # noqa: E402
from models.demo import DemoSize  # noqa: E402


def run_wrk(args, binary: str, port: int, paths: list[str], workdir: Path) -> dict:  # type: ignore[no-untyped-def]
    paths_file = workdir / f"paths-{len(paths)}.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    result = wrk.run(
        binary,
        f"http://127.0.0.1:{port}",
        "paths",
        [str(paths_file)],
        args.connections,
        args.duration,
        args.wrk_threads,
    )
    return {
        "rps": result.rps,
        "p50": result.p50,
        "p99": result.p99,
        "errors": result.errors,
        "cmd": result.cmd,
    }


# --- fallback client: processes x threads, keep-alive, bounded by time -------------------
def _client_proc(port: int, paths: list[str], threads: int, duration: float, out) -> None:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        bad = 0
        rng = random.Random()
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                conn.request("GET", rng.choice(paths))
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((latencies, errors[0]))


def run_python_client(args, port: int, paths: list[str]) -> dict:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    per_proc = max(1, args.connections // args.client_procs)
    procs = [
        ctx.Process(target=_client_proc, args=(port, paths, per_proc, args.duration, out))
        for _ in range(args.client_procs)
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=args.duration + 120) for _ in procs]
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join(30)
    latencies = sorted(x for lat, _ in results for x in lat)
    if not latencies:
        raise RuntimeError("the client made no request")

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "rps": len(latencies) / elapsed,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "errors": sum(e for _, e in results),
        "cmd": f"python client: {args.client_procs} processes x {per_proc} threads, "
        f"{args.duration}s, keep-alive",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds per route")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--client-procs", type=int, default=2, help="python client only")
    parser.add_argument("--server", choices=["granian", "gunicorn"], default="granian")
    parser.add_argument("--workers", type=int, default=2, help="web worker processes")
    parser.add_argument(
        "--threads", type=int, default=0, help="threads per web worker (0: the server's default)"
    )
    parser.add_argument("--worker-class", default="gthread", help="gunicorn only")
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--hot", type=int, default=100, help="hot shops (the id set read)")
    parser.add_argument("--strategy", choices=["passthrough", "mutex", "logical"], default="mutex")
    parser.add_argument("--no-near-cache", action="store_true", help="HMDP_NEAR_CACHE=0")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    binary = wrk.find_wrk() if args.client in {"auto", "wrk"} else None
    if args.client == "wrk" and binary is None:
        parser.error("wrk not found (apt-get install wrk)")
    client = "wrk" if binary else "python"

    size = DemoSize.named(args.size)
    plan = DataPlan(
        users=size.users,
        shops=size.shops,
        vouchers=size.vouchers,
        seckill_vouchers=size.seckill_vouchers,
        hot=args.hot,
    )
    with tempfile.TemporaryDirectory(prefix="hmdp-bench-") as tmp:
        workdir = Path(tmp)
        overrides = {
            "HMDP_SHOP_CACHE_STRATEGY": args.strategy,
            "HMDP_NEAR_CACHE": "0" if args.no_near_cache else "1",
        }
        with Stack(workdir, database_url=args.database_url, env_overrides=overrides) as stack:
            print(f"seeding ({args.size}) and warming ...", flush=True)
            stack.start_backends()
            ids = stack.seed(plan).hot_ids
            port = stack.start_web(
                server=args.server,
                HMDP_WEB_WORKERS=str(args.workers),
                HMDP_WEB_THREADS=str(args.threads),
                GUNICORN_WORKER_CLASS=args.worker_class,
            )
            shop_paths = [f"/shop/{i}" for i in ids]
            for path in shop_paths * 2:  # every id cached (and in each L1 it reaches)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
                    assert r.status == 200
            runner = (
                (lambda paths: run_wrk(args, binary, port, paths, workdir))
                if binary
                else (lambda paths: run_python_client(args, port, paths))
            )
            empty = runner(["/bench/empty"])
            shop = runner(shop_paths)
            server_cmd = stack.commands["web"]
    print()
    print(f"server : {server_cmd}")
    print(
        f"         strategy={args.strategy} near_cache={'off' if args.no_near_cache else 'on'} "
        f"hot ids={len(ids)} size={args.size} cpus={os.cpu_count()} client={client}"
    )
    for name, result in (("empty route", empty), (f"GET /shop/{{id}} x{len(ids)}", shop)):
        print(f"client : {result['cmd']}")
        print(
            f"  {name:<24} {result['rps']:>10.0f} req/s   p50 {result['p50']:.2f} ms   "
            f"p99 {result['p99']:.2f} ms   non-2xx/errors {result['errors']}"
        )
    print(f"ratio  : shop / empty = {shop['rps'] / empty['rps']:.2f}")
    return 0 if shop["errors"] == 0 and empty["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
