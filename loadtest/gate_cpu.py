"""CPU per request of the seckill order vs the empty Flask route, measured in one process.

Wall-clock benchmarks mean little on a shared box; CPU time per request does
not depend on what the neighbours run. This script builds the real app
(``web.create_app``, its fast paths included) against a real embedded
redis-server with the seeded seckill data (loadtest/stack.py), makes one login
session per user, and calls the WSGI app directly:

* ``POST /voucher-order/seckill/{id}`` once per user (distinct tokens, so every
  call reserves), rate limits on by default (the production default);
* ``GET /bench/empty``, the same empty route as the wall-clock benchmark's.

It reports, per request: the request thread's CPU (``time.thread_time``), the
process' CPU (``time.process_time``: the order dispatcher's thread included,
the dispatch flushed before the clock stops), and Redis' own CPU (``INFO cpu``)
and commands (``INFO commandstats``), then the ratio empty / seckill of the
web CPU (what bounds the throughput of a CPU-bound web tier) and of web + Redis.
Every 200 is checked against the Stream (one entry each) before the figures
are printed. The HTTP server's own cost (granian) is not in either figure.

    .venv/bin/python loadtest/gate_cpu.py --requests 5000
    .venv/bin/python loadtest/gate_cpu.py --requests 5000 --no-rate-limits
    .venv/bin/python loadtest/gate_cpu.py --requests 5000 --profile 30   # cProfile top 30

CPU time still varies with what the neighbours do to the caches (up to 2x between
runs on a loaded box): compare runs made alternately, at the same time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from loadtest.stack import DataPlan, Stack  # noqa: E402

EMPTY_PATH = "/bench/empty"


@dataclass
class Figures:
    """One loop's CPU per request (µs) and what Redis did for it."""

    name: str
    requests: int
    thread_us: float
    process_us: float
    redis_us: float
    redis_calls: Counter
    statuses: Counter

    def line(self) -> str:
        total = sum(self.redis_calls.values()) / self.requests
        each = ", ".join(
            f"{name} {count / self.requests:.2f}" for name, count in self.redis_calls.most_common()
        )
        calls = f"{total:.2f} commands: {each}" if each else "no commands"
        return (
            f"{self.name:<8} {self.requests:>7,} requests: request thread {self.thread_us:7.1f} µs,"
            f" process {self.process_us:7.1f} µs, redis {self.redis_us:6.1f} µs"
            f" per request; statuses {dict(self.statuses)}\n         redis: {calls}"
        )


def redis_cpu(client: redis.Redis) -> tuple[float, Counter]:
    """Redis' CPU seconds so far (user + sys, all its threads) and its calls by command."""
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls


def environ(method: str, path: str, token: str | None) -> dict[str, Any]:
    """A WSGI environ as granian hands one over (built before the clock starts)."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8080",
        "CONTENT_LENGTH": "0",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if token is not None:
        env["HTTP_AUTHORIZATION"] = token
    return env


def run_loop(
    name: str,
    app: Callable,
    environs: list[dict[str, Any]],
    client: redis.Redis,
    after: Callable[[], None] = lambda: None,
    profile: cProfile.Profile | None = None,
) -> Figures:
    """Call ``app`` once per environ; CPU per request (``after`` runs inside the clock)."""
    statuses: Counter = Counter()

    def start_response(status: str, headers: list, exc_info: object = None) -> None:
        statuses[status[:3]] += 1

    redis_before, calls_before = redis_cpu(client)
    process_before, thread_before = time.process_time(), time.thread_time()
    if profile is not None:
        profile.enable()
    for env in environs:
        for _chunk in app(env, start_response):
            pass
    thread_after = time.thread_time()
    after()
    process_after = time.process_time()
    if profile is not None:
        profile.disable()
    redis_after, calls_after = redis_cpu(client)
    n = len(environs)
    return Figures(
        name,
        n,
        (thread_after - thread_before) / n * 1e6,
        (process_after - process_before) / n * 1e6,
        (redis_after - redis_before) / n * 1e6,
        calls_after - calls_before - Counter(info=2),  # the two INFO calls of redis_cpu
        statuses,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=5000, help="orders (= users), and empties")
    parser.add_argument(
        "--rate-limits",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the per-user seckill limit on (the production default)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="seckill and empty loops alternately, each round on a voucher of its own (median)",
    )
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N (seckill)")
    parser.add_argument(
        "--callees", default="", help="with --profile: also print the callees of these functions"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    from cache import order_stream
    from web import create_app
    from web.envelope import envelope, json_response
    from web.orders import flush_dispatch

    n = args.requests
    with tempfile.TemporaryDirectory(prefix="gate-cpu-") as tmp:
        workdir = args.workdir or Path(tmp)
        with Stack(workdir) as stack:
            stack.start_backends()
            plan = DataPlan(
                users=n,
                shops=50,
                vouchers=args.rounds + 2,
                seckill_vouchers=args.rounds,
                blogs=0,
                seckill_stock=n * 2,
            )
            info = stack.seed(plan)
            vouchers = list(info.seckill_stock)
            tokens = stack.create_sessions(info.user_ids)
            settings = replace(
                stack.settings, rate_limit_enabled=args.rate_limits, access_log=False
            )
            app = create_app(settings)
            empty = envelope()
            app.add_url_rule(EMPTY_PATH, "bench_empty", lambda: json_response(empty))
            client = stack.services.redis
            paths = [f"/voucher-order/seckill/{voucher}" for voucher in vouchers]
            # Warm-up: connections, scripts, the dispatcher's thread and Celery's producer.
            warm = [environ("GET", EMPTY_PATH, None) for _ in range(200)]
            run_loop("warm-up", app, warm, client)
            run_loop("warm-up", app, [environ("POST", path, tokens[0]) for path in paths], client)
            flush_dispatch(app)
            gc.collect()
            gc.freeze()  # as web/wsgi.py does once the app is built

            stream_before = order_stream.backlog(client, settings, vouchers)
            profile = cProfile.Profile(time.thread_time) if args.profile else None
            rounds: list[tuple[Figures, Figures]] = []
            for path in paths:
                orders = [environ("POST", path, token) for token in tokens[1:]]
                empties = [environ("GET", EMPTY_PATH, None) for _ in orders]
                gate = run_loop(
                    "seckill",
                    app,
                    orders,
                    client,
                    lambda: flush_dispatch(app),
                    profile=profile,
                )
                rounds.append((gate, run_loop("empty", app, empties, client)))
            reserved = order_stream.backlog(client, settings, vouchers) - stream_before
            app.extensions["hmdp"].close()

    print(f"rate limits {'on' if args.rate_limits else 'off'}; access log off")
    ratios = []
    for gate, base in rounds:
        print(base.line())
        print(gate.line())
        ratios.append(
            (
                base.process_us / gate.process_us,
                base.thread_us / gate.thread_us,
                (base.process_us + base.redis_us) / (gate.process_us + gate.redis_us),
            )
        )
        print(
            "ratio empty/seckill: web (process) {:.2f}, request thread {:.2f}, "
            "web + redis {:.2f}".format(*ratios[-1])
        )
    medians = [statistics.median(column) for column in zip(*ratios, strict=True)]
    print(
        "median of {} rounds: web (process) {:.2f}, request thread {:.2f}, "
        "web + redis {:.2f}".format(len(ratios), *medians)
    )
    ok = sum(gate.statuses.get("200", 0) for gate, _ in rounds)
    print(f"200s {ok:,}, Stream entries added {reserved:,}")
    if profile is not None:
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).sort_stats("tottime")
        stats.print_stats(args.profile)
        for name in filter(None, args.callees.split(",")):
            stats.print_callees(name)
        print(out.getvalue())
    return 0 if ok == reserved == len(paths) * (n - 1) else 1


if __name__ == "__main__":
    sys.exit(main())
