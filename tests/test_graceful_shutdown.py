"""SIGTERM is graceful: the web server (granian as deployed, and gunicorn) finishes
in-flight requests and publishes the order tasks its workers still queue; a Celery
worker finishes its running task (warm shutdown) and acknowledges it; nothing in
flight is lost.

To hold a request or a task "in flight" for as long as the test needs, the test
makes a REAL dependency wait: it pauses the Redis server (CLIENT PAUSE) or holds
a database write lock, and releases it only after the SIGTERM went out.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from support.procs import celery_worker, children, http, json_lines, wait_for, web_server
from support.seckill import queued_orders

from cache.server import EmbeddedRedis
from deploy.web_server import SERVERS
from models.entities import VoucherOrder

# Every test here starts processes of its own.
pytestmark = pytest.mark.process


ORDER_TASK = "tasks.orders.create_voucher_order"
# What each server's master logs when a SIGTERM starts its graceful stop.
STOPPING = {"granian": "Shutting down granian", "gunicorn": "Handling signal: term"}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _holds_connection_on(pid: int, port: int) -> bool:
    """Has process ``pid`` accepted an (ESTABLISHED) TCP connection on local ``port``?"""
    inodes = _socket_inodes(pid)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                return True
    return False


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_lets_the_web_server_finish_an_in_flight_request(
    server, settings, redis_client, tmp_path
):
    log = tmp_path / "web.log"
    # A socket timeout longer than the pause: the request waits for Redis instead of
    # answering 503 after HMDP_REDIS_SOCKET_TIMEOUT (what a stalled Redis gets).
    patient = {"HMDP_REDIS_SOCKET_TIMEOUT": "10"}
    with web_server(settings, log, workers=1, server=server, **patient) as (base, master):
        port = int(base.rsplit(":", 1)[1])
        (worker,) = children(master.pid)
        result: dict = {}

        def request() -> None:
            try:
                result["answer"] = http(f"{base}/readyz", timeout=30)
            except OSError as exc:  # pragma: no cover - reported by the assertion below
                result["error"] = exc

        # /readyz pings Redis first: with the server paused the request waits in the worker.
        redis_client.client_pause(4000, all=True)
        client = threading.Thread(target=request)
        client.start()
        wait_for(lambda: _holds_connection_on(worker, port), 10, "the request to be accepted")
        master.send_signal(signal.SIGTERM)
        client.join(30)
        assert master.wait(30) == 0
    assert "error" not in result, result
    status, _, body = result["answer"]
    assert status == 200, body  # answered after Redis woke up, during the graceful stop
    lines = json_lines(log)
    assert any(e.get("path") == "/readyz" and e.get("status") == 200 for e in lines)
    assert any(STOPPING[server] in e.get("msg", "") for e in lines)


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_publishes_the_order_tasks_a_web_worker_still_queues(
    server, app, seeded, settings, login_as, tmp_path
):
    """The dispatcher's exit flush runs in the server's workers on a graceful stop.

    granian's workers are multiprocessing children that end with ``os._exit``: an
    ``atexit`` flush never runs there (it did under gunicorn only). The broker is a
    Redis of its own, paused while the task is published, so the task is still in
    the worker's queue when the SIGTERM arrives; it must reach the broker anyway.
    """
    if not any(r.rule.startswith("/voucher-order/seckill/") for r in app.url_map.iter_rules()):
        pytest.skip("route POST /voucher-order/seckill/<id> not registered")
    broker_server = EmbeddedRedis(tmp_path / "broker").start()
    broker = redis.Redis.from_url(broker_server.url)
    log = tmp_path / "web.log"
    try:
        with web_server(
            settings, log, workers=1, server=server, CELERY_BROKER_URL=broker_server.url
        ) as (base, master):
            broker.client_pause(1500, all=True)  # the publish waits ~1.5 s for the broker
            status, _, body = http(
                f"{base}/voucher-order/seckill/11", method="POST", headers=login_as(5)
            )
            assert status == 200, body
            order_id = int(json.loads(body)["data"])
            master.send_signal(signal.SIGTERM)
            assert master.wait(30) == 0
        published = queued_orders(broker)
        assert [int(p["orderId"]) for p in published] == [order_id], log.read_text()[-2000:]
    finally:
        broker.close()
        broker_server.stop()


def _hold_order_table(url: str):
    """A real write lock on tb_voucher_order; returns the connection holding it."""
    engine = sa.create_engine(url)
    conn = engine.connect()
    if conn.dialect.name == "mysql":
        conn.execute(sa.text("LOCK TABLES tb_voucher_order WRITE"))
    else:
        conn.exec_driver_sql("BEGIN EXCLUSIVE")
    return engine, conn


def _release(engine, conn) -> None:
    if conn.dialect.name == "mysql":
        conn.execute(sa.text("UNLOCK TABLES"))
    else:
        conn.exec_driver_sql("COMMIT")
    conn.close()
    engine.dispose()


def _active_order_tasks(dispatcher) -> list[dict]:
    replies = dispatcher.control.inspect(timeout=1.0).active() or {}
    return [t for tasks in replies.values() for t in tasks if t.get("name") == ORDER_TASK]


def test_sigterm_lets_a_celery_worker_finish_its_task(
    app, seeded, settings, login_as, redis_client, tmp_path
):
    if not any(r.rule.startswith("/voucher-order/seckill/") for r in app.url_map.iter_rules()):
        pytest.skip("route POST /voucher-order/seckill/<id> not registered")
    from web.orders import flush_dispatch

    log = tmp_path / "worker.log"
    url = settings.effective_database_url
    dispatcher = app.extensions["hmdp_celery"]
    with celery_worker(settings, log, concurrency=1) as worker:
        engine, conn = _hold_order_table(url)
        released = False
        try:
            reply = app.test_client().post("/voucher-order/seckill/11", headers=login_as(9))
            assert reply.status_code == 200, reply.data
            order_id = int(reply.get_json()["data"])
            assert flush_dispatch(app)
            wait_for(
                lambda: _active_order_tasks(dispatcher), 30, "the order task to start", worker, log
            )
            worker.send_signal(signal.SIGTERM)
            wait_for(
                lambda: (
                    any("Warm shutdown" in e.get("msg", "") for e in json_lines(log))
                    or "Warm shutdown" in log.read_text()
                ),
                15,
                "the worker to begin its warm shutdown",
            )
            time.sleep(0.5)  # the worker is stopping while the task still waits on the lock
            assert worker.poll() is None, "the worker quit without finishing its task"
            _release(engine, conn)
            released = True
            assert worker.wait(60) == 0
        finally:
            if not released:
                _release(engine, conn)
    check = sa.create_engine(url)
    with check.connect() as c:
        rows = c.execute(sa.select(VoucherOrder.id).where(VoucherOrder.id == order_id)).all()
    check.dispose()
    assert len(rows) == 1
    succeeded = [
        e for e in json_lines(log) if e.get("task_name") == ORDER_TASK and " succeeded " in e["msg"]
    ]
    assert len(succeeded) == 1
    # Acknowledged before exit: nothing left for a redelivery.
    assert redis_client.hlen("unacked") == 0
    assert redis_client.llen("orders") == 0
