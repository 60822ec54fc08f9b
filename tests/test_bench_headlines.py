"""The seed's matrix with wrk (``bench seed-matrix``) and the headline runs (``bench headlines``).

The process tests run the real commands at tiny sizes, on their own embedded
Redis and SQLite, with the deployed web server, a real Celery worker and a real
wrk: the figures mean nothing, the counts and the order audits do. The rest
checks the plan (every headline row has a command; the full run's estimate fits
the quiet window) and the table's verdicts from given summaries.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import pytest

from loadtest import chart, headlines, matrix, wrk

TINY_MATRIX = ["--cache", "8,50", "--seckill", "8", "--duration", "1", "--baseline-duration", "1"]
TINY_MATRIX += ["--shops", "500", "--buyers", "60", "--stock", "3", "--no-redis-benchmark"]


@pytest.mark.process
@pytest.mark.slow
def test_seed_matrix_runs_every_row_on_one_stack_and_audits_each_exactly(tmp_path: Path) -> None:
    """Cache rows: shops and 404s for unknown ids only; seckill rows: real stock, exact audit."""
    code = matrix.main([*TINY_MATRIX, "--results-dir", str(tmp_path)])

    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert code == 0
    assert [r["name"] for r in summary["rows"]] == ["cache-8", "cache-50", "seckill-8"]
    for row in summary["rows"]:
        result = row["result"]
        assert result["requests"] > 0 and result["failures"] == 0
        assert row["empty"]["requests"] > 0  # its same-run empty route, same connections
        cost = result["cpu"]
        assert cost["wrk_cpu_s"] > 0 and 0 < cost["wrk_share_of_busy"] <= 1
    cache = summary["rows"][1]
    extra = cache["result"]["extra"]
    assert extra["ok"] > 0 and extra["missing"] <= extra["unknown_sent"]
    assert cache["seed"] == {"qps": 1_002, "avg_ms": 1.0, "p99_ms": 1.0}  # the seed's 50 row
    seckill = summary["rows"][2]
    verdict = seckill["verdict"]
    assert verdict["ok"] is True, verdict
    # 3 stock on each of the row's 10 vouchers: real stock, sold out within the row.
    assert len(seckill["vouchers"]) == 10 and verdict["initial_stock"] == 30
    assert verdict["rows"] == verdict["reservations"] == verdict["db_deducted"]
    assert 0 < verdict["rows"] <= 30
    assert verdict["successes"] <= verdict["reservations"] <= verdict["successes"] + 8
    assert (verdict["oversell"], verdict["lost"], verdict["duplicates"]) == (0, 0, 0)
    assert seckill["drain"]["left"] == 0
    assert summary["limits"]["soft"] >= 50 + matrix.FD_MARGIN
    table = (run_dir / "matrix.md").read_text()
    assert "| cache-50 | 50 |" in table and "| 1,002 | 1.00 / 1 |" in table
    assert f"{verdict['rows']:,} / {verdict['rows']:,} / 0, 0, 0 OK" in table
    assert (run_dir / "seed-matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.process
@pytest.mark.slow
def test_headlines_smoke_runs_every_command_and_writes_the_table(tmp_path: Path) -> None:
    """Every run's command at tiny sizes exits 0, and each table row shows its command."""
    code = headlines.main(["--smoke", "--results-dir", str(tmp_path)])

    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    report = json.loads((run_dir / "headlines.json").read_text())
    assert code == 0
    assert {n: r["exit_code"] for n, r in report["runs"].items()} == dict.fromkeys(
        headlines.RUN_NAMES, 0
    )
    table = (run_dir / "headlines.md").read_text()
    assert "FAILED" not in table
    for what, name, _ in headlines.ROWS:
        line = next(row for row in table.splitlines() if row.startswith(f"| {what} |"))
        assert f"`{report['runs'][name]['command']}`" in line
        assert "(smoke)" in line
    seed_full = report["runs"]["seed-full"]["summary"]
    assert seed_full["exit_code"] == 0 and seed_full["said"].startswith("seeded (small)")
    # The production run samples its backlog while the worker settles during the load.
    during = report["runs"]["production"]["summary"]["drain"]["backlog_during_load"]
    assert during["samples"] and during["every_s"] == 1.0
    assert (during["max_at_s"], during["max"]) in [tuple(s) for s in during["samples"]]
    assert during["max"] == max(backlog for _, backlog in during["samples"])
    assert report["runs"]["gate"]["summary"]["drain"]["backlog_during_load"] is None
    # A run's own settings reach its command: the TCP comparison measured TCP.
    assert report["runs"]["gate"]["summary"]["redis"] == "single Redis (Unix socket)"
    assert report["runs"]["gate-tcp"]["summary"]["redis"] == "single Redis (TCP)"


@pytest.mark.process
def test_wrk_runs_are_reaped_with_their_own_cpu_time() -> None:
    """The generator's cost comes from the kernel (wait4), not from a sample."""
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    done = wrk._run_measured([sys.executable, "-c", busy + "\nprint('done')"], timeout=30)
    assert done.returncode == 0 and done.stdout == "done\n"
    assert done.cpu_seconds >= 0.25 and done.wall_seconds >= done.cpu_seconds * 0.9


def test_every_headline_row_is_read_from_a_planned_run() -> None:
    runs = {name for _, name, _ in headlines.ROWS}
    assert runs == set(headlines.RUN_NAMES)
    for mode in ("full", "quick", "smoke"):
        assert [run.name for run, _, _ in headlines.planned(mode)] == headlines.RUN_NAMES


def test_the_full_run_fits_the_quiet_window_and_quick_leaves_out_the_comparisons() -> None:
    full = headlines.planned("full")
    assert sum(estimate for _, _, estimate in full) <= 30 * 60
    quick = headlines.planned("quick")
    left_out = [run.name for run, argv, _ in quick if argv is None]
    assert left_out == ["gate-tcp", "gate-rate-limits-off", "appendfsync-always"]
    assert sum(e for _, _, e in quick) < sum(e for _, _, e in full)
    production = next(argv for run, argv, _ in quick if run.name == "production")
    assert production[-2:] == ["--duration", "60"]  # the goal's 60 s, even in --quick


def test_a_run_with_settings_of_its_own_shows_them_in_its_command() -> None:
    tcp = next(run for run in headlines.RUNS if run.name == "gate-tcp")
    assert tcp.environment() == {"HMDP_ACCESS_LOG": "0", "HMDP_REDIS_UNIX_SOCKET": "0"}
    command = headlines.shown(list(tcp.argv), None, tcp.environment())
    assert command.startswith("env HMDP_ACCESS_LOG=0 HMDP_REDIS_UNIX_SOCKET=0 python3 manage.py")


def _seckill_summary(**changes: object) -> dict:
    summary = {
        "backend": "mysql",
        "result": {
            "rps": 3_100.0,
            "successes": 186_000,
            "seconds": 60.0,
            "p50": 19.0,
            "p95": 38.0,
            "p99": 45.0,
        },
        "empty": {"rps": 5_500.0},
        "drain": {"backlog_at_end_of_load": 1_500},
        "messages": {"per_order": 0.012},
        "verdict": {
            "ok": True,
            "successes": 186_000,
            "rows": 186_000,
            "db_deducted": 186_000,
            "oversell": 0,
            "lost": 0,
            "duplicates": 0,
        },
    }
    for key, value in changes.items():
        section, field = key.split("__")
        summary[section][field] = value
    return summary


@pytest.mark.parametrize(
    ("changes", "met"),
    [
        ({}, True),
        ({"result__p99": 56.1}, False),
        ({"drain__backlog_at_end_of_load": 5_861}, False),  # 1.9 s of sales
        ({"messages__per_order": 0.13}, False),
        ({"result__seconds": 20.0, "result__successes": 62_000}, False),  # not 60 s
        ({"verdict__ok": False}, False),
        ({"result__extra": {"ok": 186_000, "refused": 60_533}}, False),  # sold out
    ],
)
def test_the_production_row_meets_its_goal_only_when_every_part_does(
    changes: dict, met: bool
) -> None:
    figure, empty, goal, verdict = headlines.production(_seckill_summary(**changes))
    assert verdict is met
    assert empty == "5,500 req/s" and "p99 <= 50 ms" in goal
    assert "orders/s over" in figure


def test_a_failed_run_shows_as_failed_in_the_table() -> None:
    report = {
        "mode": "full",
        "date": "2026-12-02T20:30:00+00:00",
        "machine": {"commit": "abc1234", "cpus": 2, "cpu_model": "AMD EPYC"},
        "wall_s": 60.0,
        "estimate_s": 90.0,
        "runs": {
            "shop-peak": {
                "exit_code": 2,
                "summary": None,
                "log": "x/bench.log",
                "command": "env HMDP_ACCESS_LOG=0 python3 manage.py bench shop-peak",
                "load": [0.1, 0.2],
                "wall_s": 3.0,
            },
            "gate-rate-limits-off": {"skipped": "--quick", "command": "c"},
        },
    }
    table = headlines.markdown(report)
    shop = next(line for line in table.splitlines() if line.startswith("| `GET /shop/{id}`"))
    assert "**FAILED** (exit 2, x/bench.log)" in shop and "| **no** |" in shop
    assert "not run (--quick)" in table


def test_the_fd_limit_covers_the_connections() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = matrix.raise_fd_limit(100)
    assert limits["needed"] == 100 + matrix.FD_MARGIN
    assert (
        resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        == limits["soft"]
        >= max(soft, limits["needed"])
    )


def test_the_matrix_and_report_tools_read_a_results_directory_with_every_command(
    tmp_path: Path,
) -> None:
    """``report.py``/``chart.py loadtest/results/*/summary.json`` meet these commands' summaries."""
    for name, kind, date in [
        ("seed-full", "seed-full", "2026-12-02T20:00"),
        ("seed-matrix", "seed-matrix", "2026-12-02T20:05"),
        ("seed-matrix", "seed-matrix", "2026-12-02T20:01"),
    ]:
        run = tmp_path / f"{name}-{date}"
        run.mkdir()
        (run / "summary.json").write_text(
            json.dumps({"scenario": name, "kind": kind, "date": date})
        )
    found = chart.latest(sorted(tmp_path.glob("*/summary.json")))
    assert list(found) == ["seed-matrix"] and found["seed-matrix"]["date"] == "2026-12-02T20:05"
