"""Benchmark cache/locks.py: uncontended acquire+release rate and hand-off latency.

Two measurements per lock kind (rlock, simple):

* uncontended: one thread, ``--iterations`` acquire+release pairs of one lock;
  reports pairs per second and per-pair latency percentiles.
* contended: ``--processes`` x ``--threads`` workers fight for ONE lock, each
  doing ``--iterations`` acquisitions. Hand-off latency = from the moment the
  previous holder starts its release to the moment the next holder's acquire
  returns (measured with wall clocks of one machine). Reports acquisitions per
  second and hand-off percentiles.

Without ``--redis-url`` it starts its own embedded redis-server (cache.server).
Run it only when the machine is quiet, e.g.::

    .venv/bin/python loadtest/bench_locks.py --iterations 20000 --processes 4 --threads 4
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cache.connection import connect, disconnect  # noqa: E402
from cache.locks import RLock, SimpleLock  # noqa: E402
from cache.server import EmbeddedRedis  # noqa: E402
from settings import Settings  # noqa: E402

LAST_RELEASE = "bench:locks:last_release"


def _make_lock(client, kind: str, name: str):
    return RLock(client, name) if kind == "rlock" else SimpleLock(client, name)


def _acquire(lock, kind: str) -> None:
    if kind == "rlock":
        lock.acquire()
    else:
        lock.acquire(blocking=True)


def _take_token(client, key: str, limit: float) -> None:
    """BLPOP in short slices: redis-py 8's default socket timeout is 5 s."""
    deadline = time.monotonic() + limit
    while client.blpop([key], timeout=1) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no token on {key} within {limit}s (a worker did not start?)")


def uncontended(url: str, kind: str, iterations: int) -> tuple[float, list[float]]:
    """Pairs per second and per-pair latencies (s) of one thread alone."""
    client = connect(url, Settings.from_env())
    lock = _make_lock(client, kind, f"bench:lock:solo:{kind}")
    latencies: list[float] = []
    start = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        _acquire(lock, kind)
        lock.release()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    disconnect(client)
    return iterations / elapsed, latencies


def _contended_worker(url: str, kind: str, threads: int, iterations: int, name: str, out) -> None:
    """One process: ``threads`` threads taking the shared lock ``iterations`` times."""
    client = connect(url, Settings.from_env())
    handoffs: list[float] = []
    guard = threading.Lock()
    barrier_key = f"{name}:go"

    def work() -> None:
        lock = _make_lock(client, kind, name)
        mine: list[float] = []
        for _ in range(iterations):
            _acquire(lock, kind)
            acquired = time.time()
            previous = client.get(LAST_RELEASE)
            if previous is not None:
                mine.append(acquired - float(previous))
            client.set(LAST_RELEASE, repr(time.time()))
            lock.release()
        with guard:
            handoffs.extend(mine)

    client.rpush(f"{name}:ready", "1")
    _take_token(client, barrier_key, limit=600)
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(handoffs)


def contended(
    url: str, kind: str, processes: int, threads: int, iterations: int
) -> tuple[float, list[float]]:
    """Acquisitions per second and hand-off latencies (s) of P x T competing workers."""
    name = f"bench:lock:shared:{kind}"
    client = connect(url, Settings.from_env())
    client.delete(LAST_RELEASE, name, f"{name}:go", f"{name}:ready")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_contended_worker, args=(url, kind, threads, iterations, name, out))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:  # every child imported and connected: start together
        _take_token(client, f"{name}:ready", limit=300)
    start = time.perf_counter()
    client.rpush(f"{name}:go", *["go"] * processes)
    handoffs: list[float] = []
    for _ in procs:
        handoffs.extend(out.get(timeout=600))
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.join()
    disconnect(client)
    return processes * threads * iterations / elapsed, handoffs


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="an existing Redis (default: start an embedded one)")
    parser.add_argument("--iterations", type=int, default=10_000, help="per worker")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="per process")
    parser.add_argument("--kind", choices=("rlock", "simple", "both"), default="both")
    args = parser.parse_args(argv)

    command = shlex.join([sys.executable, *sys.argv])
    kinds = ("rlock", "simple") if args.kind == "both" else (args.kind,)
    server = None
    url = args.redis_url
    tmp = None
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-locks-")
        server = EmbeddedRedis(Path(tmp.name), appendonly=False).start()
        url = server.url
    try:
        rows = []
        for kind in kinds:
            rate, lat = uncontended(url, kind, args.iterations)
            rows.append((kind, "uncontended x1", args.iterations, rate, lat))
            workers = args.processes * args.threads
            rate, lat = contended(url, kind, args.processes, args.threads, args.iterations)
            label = f"contended {args.processes}p x {args.threads}t"
            rows.append((kind, label, workers * args.iterations, rate, lat))
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()

    print(f"command: {command}")
    print(f"redis: {'embedded' if server is not None else args.redis_url}")
    header = f"{'kind':<7} {'scenario':<22} {'ops':>8} {'ops/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean ms':>8}"
    print(header)
    print("-" * len(header))
    for kind, scenario, ops, rate, lat in rows:
        mean = statistics.fmean(lat) * 1000 if lat else float("nan")
        print(
            f"{kind:<7} {scenario:<22} {ops:>8} {rate:>10.0f} "
            f"{_pct(lat, 0.50):>8.3f} {_pct(lat, 0.95):>8.3f} {_pct(lat, 0.99):>8.3f} {mean:>8.3f}"
        )
    print("(uncontended latency = one acquire+release; contended latency = hand-off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
