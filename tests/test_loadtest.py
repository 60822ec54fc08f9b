"""Smoke tests of the load-test runner (loadtest/run.py) with tiny numbers.

Each test runs the real runner in-process: its own embedded Redis and SQLite
(or a fresh MariaDB database), the deployed web server (granian), a real Celery worker and a real
locust, exactly as ``python3 manage.py bench`` does, only with a handful of
users. No timing is asserted: only counts, the orders verdict and the exit code.
The verdict is shown to fail the run by corrupting the real database (a
deleted order row, an order nobody reserved) between the drain and the verdict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from support.procs import children

from cache.server import process_alive
from loadtest import chart, report
from loadtest.run import main
from loadtest.stack import SeedInfo, Stack
from models.entities import VoucherOrder
from settings import Settings

QUIET = ["--baseline-duration", "0", "--no-redis-benchmark"]


def _summary(results: Path) -> dict:
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.process
def test_seckill_smoke_run_verifies_every_order(settings: Settings, tmp_path: Path) -> None:
    """On each backend, through given URLs (an empty Redis; MariaDB: a database of its own)."""
    argv = ["seckill-500", "--users", "20", "--loops", "3", "--rate", "0"]
    argv += ["--redis-url", settings.redis_url or "", "--database-url", settings.database_url or ""]
    code = main([*argv, *QUIET, "--results-dir", str(tmp_path / "results")])

    summary = _summary(tmp_path / "results")
    verdict = summary["verdict"]
    assert code == 0, verdict
    result = summary["result"]
    assert result["requests"] == 60  # 20 users x 3 calls, every answer read
    assert result["failures"] == 0
    # 20 distinct users, 3 distinct vouchers each, 300 stock: every call sells.
    assert result["outcomes"] == {"ok": 60}
    assert verdict["ok"] is True
    assert (
        verdict["successes"]
        == verdict["reservations"]
        == verdict["rows"]
        == verdict["db_deducted"]
        == 60
    )
    assert (verdict["oversell"], verdict["lost"], verdict["duplicates"]) == (0, 0, 0)
    assert summary["drain"]["left"] == 0
    run_dir = Path(summary["results_dir"])
    assert (run_dir / "scenario.html").exists() and (run_dir / "scenario_stats.csv").exists()
    assert "oversell 0  lost 0  duplicates 0" in (run_dir / "table.txt").read_text()
    table = report.markdown(chart.latest([run_dir / "summary.json"]))
    assert "| seckill-500 | locust | 20 | closed loop | 60 |" in table
    assert "60 / 60 / 0, 0, 0 OK" in table
    assert summary["backend"] == ("mysql" if "mysql" in (settings.database_url or "") else "sqlite")
    assert redis.Redis.from_url(settings.redis_url or "").dbsize() == 0  # flushed after the run


@pytest.mark.process
def test_lost_or_oversold_orders_fail_the_run(tmp_path: Path) -> None:
    """Stock 1 per voucher, two buyers each: then one row deleted, one order added."""
    seen: dict[str, int] = {}

    def corrupt(stack: Stack, info: SeedInfo) -> None:
        with stack.services.db.session() as session:
            rows = session.execute(
                sa.select(VoucherOrder.id, VoucherOrder.user_id, VoucherOrder.voucher_id).order_by(
                    VoucherOrder.voucher_id
                )
            ).all()
            seen["rows"] = len(rows)
            lost, oversold = rows[0], rows[1]
            session.execute(sa.delete(VoucherOrder).where(VoucherOrder.id == lost.id))
            buyer = next(u for u in info.user_ids if u != oversold.user_id)
            session.add(
                VoucherOrder(
                    id=max(r.id for r in rows) + 1, user_id=buyer, voucher_id=oversold.voucher_id
                )
            )

    argv = ["seckill-500", "--users", "20", "--loops", "1", "--rate", "0", "--stock", "1"]
    argv += ["--worker-after-load"]  # the drain then meets the whole backlog
    code = main([*argv, *QUIET, "--results-dir", str(tmp_path)], before_verify=corrupt)

    summary = _summary(tmp_path)
    verdict = summary["verdict"]
    drain = summary["drain"]
    assert drain["worker_after_load"] and drain["backlog_at_end_of_load"] == 10
    assert drain["left"] == 0 and drain["tasks_done_after_s"] is not None
    # 20 users over 10 vouchers of stock 1: 10 sales, 10 "sold out", all correct answers.
    assert seen["rows"] == 10
    assert summary["result"]["outcomes"].get("ok") == 10
    assert summary["result"]["failures"] == 0
    assert code == 1
    assert verdict["ok"] is False
    assert verdict["lost"] == 1
    assert verdict["oversell"] >= 1
    assert "FAILED" in (Path(summary["results_dir"]) / "table.txt").read_text()
    table = report.markdown(chart.latest([Path(summary["results_dir"]) / "summary.json"]))
    assert "**FAILED**" in table


@pytest.mark.process
def test_cache_smoke_run_reads_hot_and_cold_shops(tmp_path: Path) -> None:
    """On the runner's own embedded Redis, fsyncing its AOF on every write (--appendfsync)."""
    argv = ["cache-baseline", "--users", "5", "--duration", "3", "--rate", "100", "--shops", "500"]
    code = main([*argv, *QUIET, "--appendfsync", "always", "--results-dir", str(tmp_path)])

    summary = _summary(tmp_path)
    assert code == 0
    assert summary["redis_durability"] == "AOF appendfsync always"  # what the server said
    header = (Path(summary["results_dir"]) / "table.txt").read_text().splitlines()[0]
    assert "Redis AOF appendfsync always" in header
    assert summary["verdict"] is None  # nothing sold, nothing to verify
    by_name = summary["result"]["by_name"]
    assert by_name["/shop/[id]"]["requests"] > 0
    assert sum(r["failures"] for r in by_name.values()) == 0  # unknown ids: 404 as expected
    png = tmp_path / "matrix.png"
    assert chart.main([str(Path(summary["results_dir"]) / "summary.json"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["../etc", "no-such-scenario"])
def test_unknown_scenario_is_refused(tmp_path: Path, name: str) -> None:
    assert main([name, "--results-dir", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_appendfsync_is_refused_for_a_given_redis(tmp_path: Path) -> None:
    """The option configures the runner's own redis-server, not one it is given."""
    argv = ["seckill-peak", "--appendfsync", "always", "--redis-url", "redis://127.0.0.1:1/0"]
    assert main([*argv, "--results-dir", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_wait_replicas_is_refused_for_a_given_redis(tmp_path: Path) -> None:
    """The option starts replicas of the runner's own redis-server, not of one it is given."""
    argv = ["seckill-peak", "--wait-replicas", "1", "--redis-url", "redis://127.0.0.1:1/0"]
    assert main([*argv, "--results-dir", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


@pytest.mark.process
def test_seckill_run_with_a_replica_waits_for_it(tmp_path: Path) -> None:
    """--wait-replicas 1: the embedded Redis has a replica online and the gate WAITs for it."""
    argv = ["seckill-500", "--users", "10", "--loops", "2", "--rate", "0", "--wait-replicas", "1"]
    code = main([*argv, *QUIET, "--results-dir", str(tmp_path / "results")])

    summary = _summary(tmp_path / "results")
    assert code == 0, summary["verdict"]
    assert summary["wait_replicas"] == 1
    assert summary["redis_durability"].endswith("1 replicas: the gate WAITs for 1")
    assert summary["result"]["outcomes"] == {"ok": 20}  # every reservation confirmed
    assert summary["verdict"]["rows"] == 20


@pytest.mark.process
def test_rate_limits_kept_and_dispatch_counted_with_the_worker_after_load(
    settings: Settings, tmp_path: Path
) -> None:
    """--rate-limits keeps the app's limits on; --worker-after-load counts the dispatched tasks."""
    argv = ["seckill-500", "--users", "10", "--loops", "2", "--rate", "0", "--rate-limits"]
    argv += ["--worker-after-load", "--redis-url", settings.redis_url or ""]
    argv += ["--database-url", settings.database_url or ""]
    code = main([*argv, *QUIET, "--results-dir", str(tmp_path / "results")])

    summary = _summary(tmp_path / "results")
    assert code == 0, summary["verdict"]
    assert summary["rate_limits"] is True
    dispatch = summary["dispatch"]
    assert dispatch["reserved_at_end_of_load"] == 20  # 10 users x 2 calls, none settled yet
    assert dispatch["all_published_after_s"] is not None  # every order task reached the broker
    assert summary["verdict"]["rows"] == 20


@pytest.mark.process
def test_seckill_run_counts_messages_per_order_and_profiles_with_beat(
    settings: Settings, tmp_path: Path
) -> None:
    """Messages published, reservations carried, task runs; --profile's CPU per order; --beat."""
    argv = ["seckill-500", "--users", "10", "--loops", "3", "--rate", "0", "--beat", "--profile"]
    argv += ["--redis-url", settings.redis_url or "", "--database-url", settings.database_url or ""]
    code = main([*argv, *QUIET, "--results-dir", str(tmp_path / "results")])

    summary = _summary(tmp_path / "results")
    assert code == 0, summary["verdict"]
    rows = summary["verdict"]["rows"]
    assert rows == 30
    messages = summary["messages"]
    assert messages["orders"] == messages["orders_carried"] == rows  # each order in one message
    assert 1 <= messages["published"] <= rows and messages["task_runs"] >= messages["published"]
    assert messages["per_order"] == messages["published"] / rows
    assert summary["beat"] is True and "beat" in summary["commands"]
    profile = summary["profile"]
    assert profile["orders"] == rows
    assert profile["cpu_s"]["web"] > 0 and profile["cpu_s"]["redis"] > 0
    assert profile["redis_commands"] and list(profile["phases"]) == [
        "load start->load end",
        "load end->tasks done",
    ]
    table = (Path(summary["results_dir"]) / "table.txt").read_text()
    assert "messages/order" in table and "cpu per order" in table


@pytest.mark.slow
@pytest.mark.process
def test_seckill_peak_on_a_redis_cluster_audits_every_order(tmp_path: Path) -> None:
    """--redis-cluster 3: the run's own 3-master cluster, RabbitMQ (a vhost of its own), wrk.

    10 vouchers of stock 4, 40 buyers: the sale sells out, and the audit over every
    voucher's stream and the rows is exact. The vouchers' slots lie on several masters,
    redis-benchmark ran against one of them, and the gate on a cluster makes more than
    one script call per request (the session's, then the gate's).
    """
    from deploy import rabbitmq

    argv = ["seckill-peak", "--redis-cluster", "3", "--users", "8", "--duration", "3"]
    argv += ["--buyers", "40", "--stock", "4", "--baseline-duration", "0"]
    code = main([*argv, "--results-dir", str(tmp_path / "results")])

    summary = _summary(tmp_path / "results")
    verdict = summary["verdict"]
    assert code == 0, verdict
    assert summary["redis"] == "cluster of 3 masters"
    assert summary["redis_durability"] == "AOF appendfsync everysec"
    assert verdict["ok"] is True
    assert verdict["reservations"] == verdict["rows"] == verdict["db_deducted"] == 40
    assert verdict["successes"] <= 40
    assert (verdict["oversell"], verdict["lost"], verdict["duplicates"]) == (0, 0, 0)
    assert summary["drain"]["left"] == 0 and summary["drain"]["tasks_done_after_s"] is not None
    masters = summary["redis_masters"]
    assert len(masters) == 3
    placed = [v for m in masters for v in m["vouchers"]]
    assert len(placed) == len(set(placed)) == 10  # every voucher on exactly one master
    assert sum(1 for m in masters if m["vouchers"]) >= 2
    assert summary["redis_benchmark"]["target"] == "one master of 3"
    assert summary["redis_benchmark"]["rps"] > 0
    assert summary["messages"]["orders"] == 40
    calls = summary["redis_calls"]
    assert calls["masters"] == 3 and calls["scripts_per_request"] > 1.5
    table = (Path(summary["results_dir"]) / "table.txt").read_text()
    assert "redis: cluster of 3 masters; voucher slots: master 0" in table
    assert "redis-benchmark, 1 master" in table and "script calls (EVALSHA)" in table
    assert "oversell 0  lost 0  duplicates 0  -> OK" in table
    prefix = "amqp://guest:***@127.0.0.1:5672/"
    assert summary["broker"].startswith(f"{prefix}hmdp-bench-{os.getpid()}-")
    assert summary["broker"].removeprefix(prefix) not in rabbitmq.vhosts()  # deleted after


def test_redis_cluster_is_refused_for_a_given_redis(tmp_path: Path) -> None:
    """The option starts a cluster of the runner's own, not one it is given."""
    argv = ["seckill-peak", "--redis-cluster", "3", "--redis-url", "redis://127.0.0.1:1/0"]
    assert main([*argv, "--results-dir", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_redis_cluster_is_refused_without_rabbitmq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker that does not answer: exit 1 with the reason, before anything starts."""
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//")
    argv = ["seckill-peak", "--redis-cluster", "3", "--results-dir", str(tmp_path)]
    assert main(argv) == 1
    assert "needs RabbitMQ as the Celery broker" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.process
def test_sigterm_stops_the_run_and_every_process_it_started(tmp_path: Path) -> None:
    """``kill`` of a run (an operator, a CI timeout) leaves no server or worker behind."""
    log = tmp_path / "run.log"
    argv = ["seckill-peak", "--duration", "120", "--buyers", "200", "--stock", "200", *QUIET]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "loadtest/run.py", *argv, "--results-dir", str(tmp_path / "r")],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "running seckill-peak" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        started = _descendants(proc.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in started}
        assert "redis-server" in names and len(started) >= 5, names  # web, worker, beat...
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while alive := {pid for pid in started if process_alive(pid)}:
            assert time.monotonic() < deadline, f"still running after SIGTERM: {alive}"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
