"""Chart the matrix: throughput and p99 against users, ours next to the seed's.

    .venv/bin/python loadtest/chart.py loadtest/results/*/summary.json \\
        --out loadtest/bench-matrix.png
    .venv/bin/python loadtest/chart.py loadtest/results/seed-matrix-*/summary.json \\
        --out loadtest/seed-matrix.png

Reads the runner's ``summary.json`` files (the newest run of each scenario
wins), plots the cache scenarios (50/500/1,000/2,000 users) and the seckill
ones (500/1,000/2,000 users) with the seed document's figures as dashed lines,
and the offered load as a dotted one. A ``bench seed-matrix`` summary (every
row of one run, wrk) is charted by :func:`plot_seed_matrix`: req/s, p50 and
p99 per row next to the seed's, with the same-run empty route. Needs
matplotlib (a dev dependency).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The seed document's reported figures: users -> (QPS, p99 ms or None).
SEED_CACHE = {50: (1_002, 1.0), 500: (4_986, 1.0), 1_000: (9_955, 3.0), 2_000: (12_012, 516.0)}
SEED_SECKILL = {500: (999, 4.0), 1_000: (999, 4.0), 2_000: (1_006, 4.0)}
# Its average latencies (ms); it gives no median.
SEED_AVG_MS = {
    "cache": {50: 1.0, 500: 1.0, 1_000: 2.0, 2_000: 71.0},
    "seckill": {500: 2.0, 1_000: 1.0, 2_000: 0.82},
}
CACHE = ["cache-baseline", "cache-medium", "cache-high", "cache-stress"]
SECKILL = ["seckill-500", "seckill-1k", "seckill-2k"]


def latest(paths: list[Path]) -> dict[str, dict]:
    """The newest summary per scenario (``bench seed-full``'s, a timing, has nothing to chart)."""
    found: dict[str, dict] = {}
    for path in sorted(paths):
        summary = json.loads(path.read_text())
        name = summary["scenario"]
        if summary.get("kind") == "seed-full":
            continue
        if name not in found or summary["date"] > found[name]["date"]:
            found[name] = summary
    return found


def _series(
    found: dict[str, dict], names: list[str]
) -> tuple[list[int], list[float], list[float], list[float]]:
    users, rps, p99, offered = [], [], [], []
    for name in names:
        if name in found:
            s = found[name]
            users.append(s["users"])
            rps.append(s["result"]["rps"])
            p99.append(s["result"]["p99"])
            offered.append(s["rate"] or float("nan"))
    return users, rps, p99, offered


def seed_figures(kind: str, clients: int) -> dict[str, float] | None:
    """The seed's QPS, average and p99 (ms) at ``clients`` threads of one kind (None: no row)."""
    figures = (SEED_CACHE if kind == "cache" else SEED_SECKILL).get(clients)
    if figures is None:
        return None
    return {"qps": figures[0], "avg_ms": SEED_AVG_MS[kind][clients], "p99_ms": figures[1]}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_seed_matrix(summary: dict, out: Path) -> None:
    """Write the PNG of one ``bench seed-matrix`` run: req/s (left), p50 and p99 (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for kind, label, color in (
        ("cache", "GET /shop/{id}", "tab:blue"),
        ("seckill", "seckill POST", "tab:red"),
    ):
        rows = [r for r in summary["rows"] if r["kind"] == kind]
        clients = [r["connections"] for r in rows]
        if rows:
            left.plot(
                clients,
                [r["result"]["rps"] for r in rows],
                "o-",
                color=color,
                label=f"{label}: hmdp-py",
            )
            empty = [(r["connections"], r["empty"]["rps"]) for r in rows if r.get("empty")]
            if empty:
                left.plot(
                    *zip(*empty, strict=True),
                    ":",
                    color=color,
                    alpha=0.6,
                    label=f"{label}: empty route, same run",
                )
            right.plot(
                clients,
                [r["result"]["p99"] for r in rows],
                "o-",
                color=color,
                label=f"{label}: hmdp-py p99",
            )
            right.plot(
                clients,
                [r["result"]["p50"] for r in rows],
                "^-.",
                color=color,
                alpha=0.7,
                label=f"{label}: hmdp-py p50",
            )
        seed = SEED_CACHE if kind == "cache" else SEED_SECKILL
        seed_clients = sorted(seed)
        for ax, index, what in ((left, 0, "seed (Java, JMeter)"), (right, 1, "seed p99")):
            ax.plot(
                seed_clients,
                [seed[c][index] for c in seed_clients],
                "s--",
                color=color,
                alpha=0.5,
                label=f"{label}: {what}",
            )
    left.set(
        xlabel="concurrent clients (wrk connections; seed: JMeter threads)",
        ylabel="requests / s",
        title="Throughput (closed loop)",
    )
    right.set(xlabel="concurrent clients", ylabel="latency (ms, log)", title="p50 and p99")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    machine = summary["machine"]
    fig.suptitle(
        f"hmdp-py, the seed's matrix with wrk, {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"generator and server on the same machine, {summary['date'][:10]}, "
        f"commit {machine.get('commit', '?')}",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def plot(found: dict[str, dict], out: Path) -> None:
    """Write the PNG: throughput (left) and p99 (right, log scale) against users."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for names, seed, label, color in (
        (CACHE, SEED_CACHE, "GET /shop/{id}", "tab:blue"),
        (SECKILL, SEED_SECKILL, "seckill POST", "tab:red"),
    ):
        users, rps, p99, offered = _series(found, names)
        if users:
            left.plot(users, rps, "o-", color=color, label=f"{label}: hmdp-py")
            left.plot(users, offered, ":", color=color, alpha=0.6, label=f"{label}: offered")
            right.plot(users, p99, "o-", color=color, label=f"{label}: hmdp-py")
        seed_users = sorted(seed)
        left.plot(
            seed_users,
            [seed[u][0] for u in seed_users],
            "s--",
            color=color,
            alpha=0.5,
            label=f"{label}: seed (Java)",
        )
        with_p99 = [u for u in seed_users if seed[u][1] is not None]
        right.plot(
            with_p99,
            [seed[u][1] for u in with_p99],
            "s--",
            color=color,
            alpha=0.5,
            label=f"{label}: seed (Java)",
        )
    left.set(xlabel="locust users", ylabel="requests / s", title="Throughput")
    right.set(xlabel="locust users", ylabel="p99 latency (ms, log)", title="p99 latency")
    right.set_yscale("log")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    some = next(iter(found.values()), None)
    if some:
        machine = some["machine"]
        fig.suptitle(
            f"hmdp-py load-test matrix, {machine['cpus']} CPUs ({machine['cpu_model']}), "
            f"generator and server on the same machine, {some['date'][:10]}",
            fontsize=9,
        )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "bench-matrix.png")
    args = parser.parse_args(argv)
    found = latest(args.summaries)
    if "seed-matrix" in found:
        plot_seed_matrix(found.pop("seed-matrix"), args.out)
        if found:
            print(f"one chart per command: left out {', '.join(sorted(found))}")
            found = {}
        print(f"{args.out}: seed-matrix")
        return 0
    plot(found, args.out)
    print(f"{args.out}: {', '.join(sorted(found))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
