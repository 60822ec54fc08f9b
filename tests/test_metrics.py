"""/metrics: route labels, live Redis readings, DB pool, and correctness with two worker
processes under the deployed web server command (granian, and gunicorn to compare)."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.procs import children, http, json_lines, web_server
from support.seckill import add_seckill_voucher

from cache import stream_vouchers
from cache.order_stream import voucher_stream
from cache.server import free_port
from deploy.web_server import SERVERS

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)

DURATION = "flask_http_request_duration_seconds"


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of an exposition as (name, labels, value)."""
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    found = [v for n, lab, v in samples(text) if n == name and labels.items() <= lab.items()]
    return sum(found) if found else None


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.data
    return response.get_data(as_text=True)


# --- in-process app ----------------------------------------------------------------


def test_http_metrics_are_labelled_by_route_template_not_raw_path(app, client):
    app.add_url_rule("/probe/<int:item_id>", "probe", lambda item_id: {"id": item_id})
    for item_id in (1, 2, 3, 3):
        assert client.get(f"/probe/{item_id}").status_code == 200
    assert client.get("/no/such/path/42").status_code == 404
    text = scrape(client)
    count = f"{DURATION}_count"
    assert value(text, count, url_rule="/probe/<int:item_id>", status="200") == 4
    assert value(text, count, url_rule="<unmatched>", status="404") == 1
    rules = {lab.get("url_rule") for n, lab, _ in samples(text) if n == count}
    assert not any(r and ("/probe/1" in r or "/no/such" in r) for r in rules)
    # The scrape itself is not counted.
    assert value(text, count, url_rule="/metrics") is None


def test_metrics_need_no_login_and_are_never_rate_limited(settings):
    from web import create_app

    app = create_app(settings.with_(rate_limit_enabled=True))
    try:
        client = app.test_client()
        statuses = {client.get("/metrics").status_code for _ in range(300)}
        assert statuses == {200}
    finally:
        app.extensions["hmdp"].close()


def test_stream_collector_reads_length_pending_lag_and_dead_letters(
    app, client, services, redis_client
):
    """Summed over the vouchers' streams, each in its own slot (on a cluster: their nodes)."""
    s = services.settings
    first, second = add_seckill_voucher(services), add_seckill_voucher(services)
    one, two = voucher_stream(s, first), voucher_stream(s, second)
    for i in range(4):
        redis_client.xadd(one.key, {"n": str(i)})
        redis_client.xadd(two.key, {"n": str(i)})
    redis_client.xgroup_create(one.key, s.order_group, id="0")
    redis_client.xgroup_create(two.key, s.order_group, id="0")
    # 3 of the first stream delivered to a consumer; 1 of them settled (acked and deleted,
    # as the order task does) -> 2 pending, 1 undelivered; the second's 4 undelivered.
    delivered = redis_client.xreadgroup(s.order_group, "c1", {one.key: ">"}, count=3)
    first_id = delivered[0][1][0][0]
    redis_client.xack(one.key, s.order_group, first_id)
    redis_client.xdel(one.key, first_id)
    redis_client.xadd(one.dead, {"n": "dead"})
    redis_client.xadd(two.dead, {"n": "dead"})
    text = scrape(client)
    assert value(text, "hmdp_redis_up") == 1
    assert value(text, "hmdp_orders_stream_length") == 7
    assert value(text, "hmdp_orders_pending") == 2
    assert value(text, "hmdp_orders_lag") == 5
    assert value(text, "hmdp_orders_backlog") == 7
    assert value(text, "hmdp_orders_dead_letters") == 2


def test_stream_collector_without_group_counts_everything_as_backlog(
    app, client, services, redis_client
):
    voucher = add_seckill_voucher(services)
    for i in range(3):
        redis_client.xadd(voucher_stream(services.settings, voucher).key, {"n": str(i)})
    text = scrape(client)
    assert value(text, "hmdp_orders_pending") == 0
    assert value(text, "hmdp_orders_backlog") == 3


def test_stream_collector_reads_recent_and_lingering_vouchers_only(
    app, client, services, redis_client
):
    """A sale ended long ago is read only while recovery keeps it lingering (its dead
    letters too: the alert must not stop while one is unreplayed)."""
    s = services.settings
    recent = add_seckill_voucher(services, ends_in=-timedelta(hours=1))
    old = add_seckill_voucher(services, ends_in=-timedelta(seconds=s.order_stream_horizon_s + 60))
    redis_client.xadd(voucher_stream(s, recent).key, {"n": "1"})
    redis_client.xadd(voucher_stream(s, old).key, {"n": "1"})
    redis_client.xadd(voucher_stream(s, old).dead, {"n": "dead"})
    text = scrape(client)
    assert value(text, "hmdp_orders_stream_length") == 1
    assert value(text, "hmdp_orders_dead_letters") == 0
    stream_vouchers.linger(redis_client, s, [old])
    text = scrape(client)
    assert value(text, "hmdp_orders_stream_length") == 2
    assert value(text, "hmdp_orders_dead_letters") == 1


@pytest.mark.redis_cluster(single="the legacy single stream exists on a single Redis only")
def test_stream_collector_counts_the_legacy_stream_while_it_exists(
    app, client, services, redis_client
):
    s = services.settings
    voucher = add_seckill_voucher(services)
    redis_client.xadd(voucher_stream(s, voucher).key, {"n": "1"})
    for i in range(2):
        redis_client.xadd(s.order_stream, {"n": str(i)})  # written by an older version
    redis_client.xadd(s.order_dead_letter_stream, {"n": "dead"})
    text = scrape(client)
    assert value(text, "hmdp_orders_stream_length") == 3
    assert value(text, "hmdp_orders_dead_letters") == 1


def test_stream_collector_reads_the_vouchers_of_the_last_scrape_with_the_database_down(
    settings, services, redis_client
):
    from web.metrics import StreamCollector

    voucher = add_seckill_voucher(services)
    redis_client.xadd(voucher_stream(settings, voucher).key, {"n": "1"})
    answers: list = [[voucher], RuntimeError("database down")]

    def vouchers(client) -> list[int]:  # type: ignore[no-untyped-def]
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    collector = StreamCollector(settings, lambda: settings.redis_url, vouchers)
    for _ in range(2):
        readings = {m.name: m.samples[0].value for m in collector.collect() if m.samples}
        assert readings["hmdp_redis_up"] == 1 and readings["hmdp_orders_stream_length"] == 1


def test_redis_down_gives_redis_up_zero_not_a_500(settings):
    from web import create_app

    app = create_app(settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        text = scrape(app.test_client())
    finally:
        app.extensions["hmdp"].close()
    assert value(text, "hmdp_redis_up") == 0
    assert value(text, "hmdp_orders_backlog") is None  # no made-up readings


def test_hung_redis_times_out_into_redis_up_zero(settings, redis_client):
    from web import create_app

    app = create_app(settings.with_(metrics_redis_timeout=0.3))
    try:
        redis_client.client_pause(1500, all=True)  # the real server stops answering
        text = scrape(app.test_client())
    finally:
        app.extensions["hmdp"].close()
        time.sleep(1.3)  # let the pause run out before the next test flushes
    assert value(text, "hmdp_redis_up") == 0


def test_db_pool_gauge_follows_checkouts(app, client, services):
    """One checkout shows as +1, its checkin as -1.

    The gauge is one per process (one pool per process in production), but a
    test process holds earlier tests' pools too: a connection of theirs that the
    garbage collector returns meanwhile moves the gauge. So the collector runs
    first, and the reading is taken again (3 tries) if something else moved it.
    """
    assert value(scrape(client), "hmdp_db_pool_capacity") > 0
    readings = []
    for _ in range(3):
        gc.collect()
        before = value(scrape(client), "hmdp_db_pool_checked_out")
        conn = services.db.engine.connect()
        try:
            during = value(scrape(client), "hmdp_db_pool_checked_out")
        finally:
            conn.close()
        after = value(scrape(client), "hmdp_db_pool_checked_out")
        readings.append((before, during, after))
        if during == before + 1 and after == before:
            break
    else:
        raise AssertionError(f"the gauge did not follow the checkout: {readings}")


# --- a real web server with two workers ---------------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    status, _, body = http(url)
    return status, body


def _pids_serving(log: Path, path: str) -> set[int]:
    """Pids of the web server's workers that logged an access line for ``path``."""
    return {
        e["pid"]
        for e in json_lines(log)
        if e.get("logger") == "hmdp.access" and e.get("path") == path
    }


@pytest.fixture(params=SERVERS)
def two_workers(request, settings, tmp_path):
    """``deploy.web_server`` with 2 workers serving the test settings; yields (url, log, master)."""
    log = tmp_path / "web.log"
    with web_server(settings, log, workers=2, server=request.param, HMDP_WEB_THREADS="4") as (
        base,
        proc,
    ):
        yield base, log, proc


@pytest.mark.process
@pytest.mark.redis_cluster(single="web servers' metrics processes, not Redis (30 s of shutdown)")
def test_two_workers_metrics_count_all_traffic(two_workers, settings):
    base, log, proc = two_workers
    workers = children(proc.pid)
    assert len(workers) == 2

    # What the start-up probes already sent: each was answered (none given up on, see
    # support.procs.web_server), so counted before this scrape (which is not counted).
    before = value(_get(f"{base}/metrics")[1].decode(), f"{DURATION}_count", url_rule="/healthz")
    # Parallel clients on fresh connections, until both workers served some.
    sent = 0
    failed: list[str] = []  # a request the client lost may still be counted: say so
    lock = threading.Lock()

    def client(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            try:
                status, _ = _get(f"{base}/healthz")
            except OSError as exc:
                with lock:
                    failed.append(repr(exc))
                return
            with lock:
                if status == 200:
                    sent += 1
                else:
                    failed.append(f"status {status}")

    while True:
        threads = [threading.Thread(target=client, args=(25,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failed, f"requests without their answer, the count is unknown: {failed}"
        if _pids_serving(log, "/healthz") == workers or sent >= 2000:
            break
    assert _pids_serving(log, "/healthz") == workers, "traffic never reached both workers"
    assert sent >= 200

    # Scrape until both workers have served a scrape: each must count ALL requests.
    counts = []
    for _ in range(200):
        status, body = _get(f"{base}/metrics")
        assert status == 200
        counts.append(value(body.decode(), f"{DURATION}_count", url_rule="/healthz"))
        if len(counts) >= 4 and _pids_serving(log, "/metrics") == workers:
            break
    assert _pids_serving(log, "/metrics") == workers
    assert set(counts) == {before + sent}

    # One live series per worker for the pool gauges ("liveall" keeps a pid label).
    text = _get(f"{base}/metrics")[1].decode()
    pool_pids = {int(lab["pid"]) for n, lab, _ in samples(text) if n == "hmdp_db_pool_capacity"}
    assert pool_pids == workers

    # A worker dies: its requests stay counted, its live gauges go (gunicorn: child_exit;
    # granian: the respawned worker drops them, web.metrics.drop_dead_processes).
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = children(proc.pid)
        if victim not in now and len(now) == 2:
            break
        time.sleep(0.1)
    text = ""
    while time.monotonic() < deadline:
        text = _get(f"{base}/metrics")[1].decode()
        pool_pids = {int(lab["pid"]) for n, lab, _ in samples(text) if n == "hmdp_db_pool_capacity"}
        if victim not in pool_pids and len(pool_pids) == 2:
            break
        time.sleep(0.1)
    assert victim not in pool_pids and len(pool_pids) == 2
    assert value(text, f"{DURATION}_count", url_rule="/healthz") == before + sent
