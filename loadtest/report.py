"""The matrix as a Markdown table for BENCHMARKS.md, from the runner's summaries.

    .venv/bin/python loadtest/report.py loadtest/results/*/summary.json

One row per scenario (the newest run of each, as in ``chart.py``), in the
seed's order, with the same-run baselines and the seed document's figure next
to ours, so the table and the chart always come from the same files. Rows
with orders carry the verifier's verdict: any oversell, lost or duplicate
order shows as FAILED.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

try:
    from loadtest.chart import latest
except ImportError:  # run as a script from loadtest/
    from chart import latest  # type: ignore[no-redef]

ORDER = [
    "cache-baseline",
    "cache-medium",
    "cache-high",
    "cache-stress",
    "seckill-500",
    "seckill-1k",
    "seckill-2k",
    "seckill-30k",
    "mixed",
    "shop-peak",
    "seckill-peak",
]
HEADER = (
    "| scenario | generator | users | offered req/s | requests | req/s | p50 ms | p95 ms "
    "| p99 ms | errors | empty route req/s (same run) | orders: ok / rows / oversell, lost, dup "
    "| seed (Java, JMeter) |"
)


def number(value: Any, digits: int = 0) -> str:
    """A figure for a table: thousands separated, floats to ``digits``, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _orders(summary: dict[str, Any]) -> str:
    verdict = summary.get("verdict")
    if not verdict:
        return "-"
    state = "OK" if verdict["ok"] else "**FAILED**"
    return (
        f"{verdict['successes']:,} / {verdict['rows']:,} / {verdict['oversell']}, "
        f"{verdict['lost']}, {verdict['duplicates']} {state}"
    )


def row(summary: dict[str, Any]) -> str:
    """One Markdown table row for a run."""
    result, empty = summary["result"], summary.get("empty") or {}
    cells = [
        summary["scenario"],
        result.get("generator", summary["generator"]),
        number(summary["users"]),
        number(summary["rate"]) if summary.get("rate") else "closed loop",
        number(result["requests"]),
        number(result["rps"]),
        number(result.get("p50"), 1),
        number(result.get("p95"), 1),
        number(result.get("p99"), 1),
        number(result.get("failures", 0)),
        number(empty.get("rps")),
        _orders(summary),
        summary.get("seed") or "-",
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(found: dict[str, dict[str, Any]]) -> str:
    """The table, then each run's date, load and exact commands."""
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    lines += [row(found[name]) for name in names]
    lines.append("")
    for name in names:
        s = found[name]
        load = s["machine"]["load_average"][0]
        after = (s.get("load_after") or [None])[0]
        lines.append(
            f"- `{name}`: {s['date']}, {s['backend']}, commit {s['machine'].get('commit', '?')}, "
            f"load {load:.2f} before" + (f" / {after:.2f} after" if after is not None else "")
        )
        env = " ".join(f"{k}={v}" for k, v in sorted((s.get("env") or {}).items()))
        argv = s["argv"][1:] if s["argv"][0].endswith("manage.py") else ["bench", *s["argv"][1:]]
        runner = " ".join([*([env] if env else []), "python3 manage.py", *argv])
        lines.append(f"  - runner: `{runner}`")
        for key, cmd in s["commands"].items():
            lines.append(f"  - {key}: `{cmd}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(markdown(latest(args.summaries)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
