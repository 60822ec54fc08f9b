"""Benchmark GET /shop/{id} against an empty Flask route on the same gunicorn.

Starts its own embedded redis-server and a SQLite database under a temporary
directory (or uses ``--database-url``), loads the demo data, warms the cache
(Bloom filter, hot shops' logical keys, then one GET per id), starts gunicorn
on a free port with ``loadtest/bench_shop_wsgi.py`` (the real app plus
``/bench/empty``), and measures both routes in the same run with ``wrk``
(``apt-get install wrk``) or, without it, a small multi-process HTTP client.
Prints req/s, p50/p99, the shop/empty ratio and the exact commands.

Run it only on a quiet machine, e.g.::

    .venv/bin/python loadtest/bench_shop.py --duration 30 --connections 64
    .venv/bin/python loadtest/bench_shop.py --duration 2 --connections 4   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cache.server import EmbeddedRedis, free_port  # noqa: E402
from cache.shop_source import top_shop_ids  # noqa: E402
from models.demo import DemoSize, load_demo_data  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from settings import Settings  # noqa: E402


def prepare(args: argparse.Namespace, var_dir: Path, redis_url: str) -> tuple[str, list[int]]:
    """Migrate, seed and warm (as `flask seed` does); returns (database URL, hot ids)."""
    var_dir.mkdir(parents=True, exist_ok=True)
    database_url = args.database_url or f"sqlite:///{var_dir / 'bench.db'}"
    upgrade(database_url)
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        var_dir=var_dir,
        hot_shop_count=args.hot,
        shop_cache_strategy=args.strategy,
    )
    from web import create_app

    app = create_app(settings)
    services = app.extensions["hmdp"]
    load_demo_data(services.db, DemoSize.named(args.size))
    for step in app.extensions["hmdp_post_seed"]:
        step(services)
    ids = top_shop_ids(services.db, args.hot)
    services.close()
    return database_url, ids


def start_gunicorn(args, env: dict[str, str], port: int) -> tuple[subprocess.Popen, list[str]]:  # type: ignore[no-untyped-def]
    cmd = [
        str(Path(sys.executable).parent / "gunicorn"),
        "-c",
        str(ROOT / "deploy" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(args.workers),
        "--worker-class",
        args.worker_class,
        "--threads",
        str(args.threads),
        "--log-level",
        "warning",
        "bench_shop_wsgi:app",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        url = f"http://127.0.0.1:{port}/healthz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return proc, cmd
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer /healthz in 60 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- wrk ------------------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def run_wrk(args, port: int, paths: list[str], workdir: Path) -> dict:  # type: ignore[no-untyped-def]
    script = workdir / f"paths-{len(paths)}.lua"
    quoted = ",".join(f'"{p}"' for p in paths)
    script.write_text(
        f"local paths = {{{quoted}}}\n"
        "local n = #paths\n"
        "request = function()\n"
        "  return wrk.format('GET', paths[math.random(n)])\n"
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
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "errors": int(errors.group(1)) if errors else 0,
        "cmd": shlex.join(cmd),
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
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker")
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--hot", type=int, default=100, help="hot shops (the id set read)")
    parser.add_argument("--strategy", choices=["passthrough", "mutex", "logical"], default="mutex")
    parser.add_argument("--no-near-cache", action="store_true", help="HMDP_NEAR_CACHE=0")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"

    with tempfile.TemporaryDirectory(prefix="hmdp-bench-") as tmp:
        workdir = Path(tmp)
        with EmbeddedRedis(workdir / "redis", appendonly=False) as redis_server:
            print(f"seeding ({args.size}) and warming ...", flush=True)
            database_url, ids = prepare(args, workdir / "var", redis_server.url)
            port = free_port()
            env = dict(os.environ)
            env.update(
                REDIS_URL=redis_server.url,
                DATABASE_URL=database_url,
                HMDP_VAR_DIR=str(workdir / "var"),
                HMDP_RATE_LIMIT_ENABLED="0",
                HMDP_HOT_SHOP_COUNT=str(args.hot),
                HMDP_SHOP_CACHE_STRATEGY=args.strategy,
                HMDP_NEAR_CACHE="0" if args.no_near_cache else "1",
                PYTHONPATH=os.pathsep.join([str(ROOT / "loadtest"), str(ROOT)]),
            )
            gunicorn, gunicorn_cmd = start_gunicorn(args, env, port)
            try:
                shop_paths = [f"/shop/{i}" for i in ids]
                for path in shop_paths * 2:  # every id cached (and in each L1 it reaches)
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
                        assert r.status == 200
                runner = (
                    (lambda paths: run_wrk(args, port, paths, workdir))
                    if client == "wrk"
                    else (lambda paths: run_python_client(args, port, paths))
                )
                empty = runner(["/bench/empty"])
                shop = runner(shop_paths)
            finally:
                stop(gunicorn)
    print()
    print(f"server : {shlex.join(gunicorn_cmd)}")
    print(
        f"         strategy={args.strategy} near_cache={'off' if args.no_near_cache else 'on'} "
        f"hot ids={len(ids)} size={args.size} cpus={os.cpu_count()}"
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
