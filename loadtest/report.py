"""The matrix as a Markdown table for BENCHMARKS.md, from the runner's summaries.

    .venv/bin/python loadtest/report.py loadtest/results/*/summary.json

One row per scenario (the newest run of each, as in ``chart.py``), in the
seed's order, with the same-run baselines and the seed document's figure next
to ours, so the table and the chart always come from the same files. Rows
with orders carry the verifier's verdict: any oversell, lost or duplicate
order shows as FAILED. A ``bench seed-matrix`` summary has a table of its own
(:func:`seed_matrix_markdown`, also its ``matrix.md``): per row our req/s,
p50 and p99 beside the seed's, the same-run empty route and what wrk cost.
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


SEED_MATRIX_HEADER = (
    "| row | connections | requests | req/s | p50 / p95 / p99 ms | errors "
    "| empty route req/s (same run) | ratio | wrk CPU: cores, share of the busy CPU "
    "| box busy | orders: ok / rows / oversell, lost, dup | seed QPS | seed avg / p99 ms |"
)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _seed_matrix_row(row: dict[str, Any]) -> str:
    result, empty, seed = row["result"], row.get("empty") or {}, row.get("seed") or {}
    cost = result["cpu"]
    ratio = result["rps"] / empty["rps"] if empty.get("rps") else None
    cores = "-" if cost["wrk_cores"] is None else f"{cost['wrk_cores']:.2f}"
    cells = [
        row["name"],
        number(row["connections"]),
        number(result["requests"]),
        number(result["rps"]),
        " / ".join(number(result.get(k), 1) for k in ("p50", "p95", "p99")),
        number(result["failures"]),
        number(empty.get("rps")),
        "-" if ratio is None else f"{ratio:.2f}",
        f"{cores}, {_percent(cost['wrk_share_of_busy'])}",
        _percent(cost["box_busy_share"]),
        _orders(row),
        number(seed.get("qps")),
        f"{number(seed.get('avg_ms'), 2)} / {number(seed.get('p99_ms'))}" if seed else "-",
    ]
    return "| " + " | ".join(cells) + " |"


def seed_matrix_markdown(summary: dict[str, Any]) -> str:
    """The seed matrix run as Markdown: the table, the seckill rows' drain, the commands."""
    machine = summary["machine"]
    lines = [
        f"`bench seed-matrix`, {summary['date']}, {summary['backend']}, commit "
        f"{machine.get('commit', '?')}, {machine['cpus']} CPUs, load "
        f"{machine['load_average'][0]:.2f} before / {summary['load_after'][0]:.2f} after, "
        f"{summary['duration']:g} s per row, wall {summary['wall_s'] / 60:.1f} min",
        "",
        SEED_MATRIX_HEADER,
        "|" + "---|" * SEED_MATRIX_HEADER.count(" | ") + "---|",
    ]
    lines += [_seed_matrix_row(row) for row in summary["rows"]]
    lines.append("")
    for row in summary["rows"]:
        extra = row["result"]["extra"]
        if row["kind"] == "cache":
            lines.append(
                f"- `{row['name']}`: {number(extra.get('ok'))} shops, "
                f"{number(extra.get('missing'))} 404 for unknown ids "
                f"({number(extra.get('unknown_sent'))} sent), {number(extra.get('other'))} "
                f"other answers, {number(row['result']['socket_errors'])} socket errors"
            )
            continue
        drain, messages = row["drain"], row["messages"]
        per_order = messages["per_order"]
        lines.append(
            f"- `{row['name']}`: {number(extra.get('ok'))} ok, {number(extra.get('refused'))} "
            f"refused (409), {number(extra.get('other'))} other; "
            f"{number(drain['backlog_at_end_of_load'])} unsettled at the end of the load, "
            f"{number(drain['left'])} after {drain['seconds']:.1f} s; "
            f"{number(messages['published'])} task messages"
            + (f" ({per_order:.4f} per order)" if per_order is not None else "")
        )
    argv = summary["argv"]
    argv = argv[1:] if argv[0].endswith("manage.py") else ["bench", "seed-matrix", *argv[1:]]
    env = " ".join(f"{k}={v}" for k, v in sorted((summary.get("env") or {}).items()))
    lines += ["", "Commands:", ""]
    lines.append(f"- runner: `{' '.join([*([env] if env else []), 'python3 manage.py', *argv])}`")
    lines += [f"- {key}: `{cmd}`" for key, cmd in summary["commands"].items()]
    for row in summary["rows"]:
        lines.append(f"- {row['name']}: `{row['result']['cmd']}`")
        if row.get("empty"):
            lines.append(f"  - empty route: `{row['empty']['cmd']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", type=Path)
    args = parser.parse_args(argv)
    found = latest(args.summaries)
    matrix = found.pop("seed-matrix", None)
    if found:
        print(markdown(found))
    if matrix is not None:
        print(seed_matrix_markdown(matrix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
