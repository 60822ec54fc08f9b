"""Chart the matrix: throughput and p99 against users, ours next to the seed's.

    .venv/bin/python loadtest/chart.py loadtest/results/*/summary.json \\
        --out loadtest/bench-matrix.png

Reads the runner's ``summary.json`` files (the newest run of each scenario
wins), plots the cache scenarios (50/500/1,000/2,000 users) and the seckill
ones (500/1,000/2,000 users) with the seed document's figures as dashed lines,
and the offered load as a dotted one. Needs matplotlib (a dev dependency).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The seed document's reported figures: users -> (QPS, p99 ms or None).
SEED_CACHE = {50: (1_002, 1.0), 500: (4_986, 1.0), 1_000: (9_955, 3.0), 2_000: (12_012, 516.0)}
SEED_SECKILL = {500: (999, 4.0), 1_000: (999, 4.0), 2_000: (1_006, 4.0)}
CACHE = ["cache-baseline", "cache-medium", "cache-high", "cache-stress"]
SECKILL = ["seckill-500", "seckill-1k", "seckill-2k"]


def latest(paths: list[Path]) -> dict[str, dict]:
    """The newest summary per scenario."""
    found: dict[str, dict] = {}
    for path in sorted(paths):
        summary = json.loads(path.read_text())
        name = summary["scenario"]
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


def plot(found: dict[str, dict], out: Path) -> None:
    """Write the PNG: throughput (left) and p99 (right, log scale) against users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    plot(found, args.out)
    print(f"{args.out}: {', '.join(sorted(found))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
