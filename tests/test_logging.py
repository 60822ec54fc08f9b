"""Structured JSON logs and the request id: from the client, through the web tier, into
the Celery task the request dispatched."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from support.procs import celery_worker, http, json_lines, wait_for, web_server

import logsetup

ORDER_TASK = "tasks.orders.create_voucher_order"


# --- formatter and validation -----------------------------------------------------------


def _format(record_logger: str, msg: str, **extra) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logsetup.JsonFormatter())
    handler.addFilter(logsetup.ContextFilter())
    logger = logging.getLogger(record_logger)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.info(msg, extra=extra, exc_info=extra.pop("_exc", False))
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_json_lines_carry_context_extras_and_exceptions():
    token = logsetup.REQUEST_ID.set("rid-1")
    task = logsetup.TASK.set(("task-9", "tasks.x"))
    try:
        entry = _format("hmdp.test.fmt", "hello %s", route="/x", _exc=True)
    finally:
        logsetup.TASK.reset(task)
        logsetup.REQUEST_ID.reset(token)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "hmdp.test.fmt"
    assert entry["msg"] == "hello %s"
    assert entry["request_id"] == "rid-1"
    assert entry["task_id"] == "task-9" and entry["task_name"] == "tasks.x"
    assert entry["route"] == "/x"
    assert "ValueError: boom" in entry["exc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["ts"])


def test_outside_a_request_the_request_id_is_null():
    entry = _format("hmdp.test.fmt2", "plain")
    assert entry["request_id"] is None
    assert "task_id" not in entry


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("abc-123", True),
        ("0f" * 16, True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("has space", False),
        ("line\nbreak", False),
        ('quote"', False),
        ("../etc", False),
        ("-leading-dash", False),
    ],
)
def test_client_request_ids_are_validated(raw, kept):
    assert (logsetup.valid_request_id(raw) == raw) is kept


# --- the web tier -----------------------------------------------------------------------


def test_client_request_id_is_echoed_and_logged(client, access_lines):
    response = client.get("/healthz", headers={"X-Request-ID": "client-rid-42"})
    assert response.headers["X-Request-ID"] == "client-rid-42"
    (line,) = access_lines()
    assert line["request_id"] == "client-rid-42"
    assert line["route"] == "/healthz" and line["status"] == 200 and line["method"] == "GET"
    assert logsetup.current_request_id() is None  # reset after the request


def test_invalid_or_missing_request_id_is_replaced_by_a_fresh_one(client, access_lines):
    bad = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    none = client.get("/no/such/route")
    ids = [bad.headers["X-Request-ID"], none.headers["X-Request-ID"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[0] != ids[1]
    assert [line["request_id"] for line in access_lines()] == ids
    assert none.status_code == 404  # the envelope error path also carries the id


def test_tasks_sent_during_a_request_carry_its_id_in_a_message_header(app, redis_client):
    dispatcher = app.extensions["hmdp_celery"]
    queue = "ops-test-request-id"
    token = logsetup.REQUEST_ID.set("rid-in-header")
    try:
        dispatcher.send_task(ORDER_TASK, args=[{}], queue=queue)
    finally:
        logsetup.REQUEST_ID.reset(token)
    dispatcher.send_task(ORDER_TASK, args=[{}], queue=queue)  # outside any request
    messages = [json.loads(m) for m in redis_client.lrange(queue, 0, -1)]
    headers = sorted((m["headers"].get("hmdp_request_id") or "" for m in messages), reverse=True)
    assert headers == ["rid-in-header", ""]


# --- end to end: web server -> broker -> Celery worker -------------------------------------


@pytest.mark.process
def test_request_id_reaches_the_order_task_logs(app, seeded, settings, login_as, tmp_path):
    if not any(r.rule.startswith("/voucher-order/seckill/") for r in app.url_map.iter_rules()):
        pytest.skip("route POST /voucher-order/seckill/<id> not registered")
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    headers = {**login_as(7), "X-Request-ID": "e2e-rid-7f3a"}
    with celery_worker(settings, worker_log), web_server(settings, web_log) as (base, _):
        status, reply_headers, body = http(
            f"{base}/voucher-order/seckill/11", method="POST", headers=headers
        )
        assert status == 200, body
        assert reply_headers["X-Request-ID"] == "e2e-rid-7f3a"

        def task_lines() -> list[dict]:
            return [
                e
                for e in json_lines(worker_log)
                if e.get("task_name") == ORDER_TASK and e.get("msg", "").find(" succeeded ") > 0
            ]

        done = wait_for(task_lines, 60, "the order task to run", log=worker_log)
    web_lines = [e for e in json_lines(web_log) if e.get("request_id") == "e2e-rid-7f3a"]
    assert any(e["logger"] == "hmdp.access" and e["status"] == 200 for e in web_lines)
    assert all(e["task_id"] for e in done)
    # Nothing was logged in Celery's ("[2026-...") or granian's ("[INFO] ...") own text format:
    # the server's own lines are JSON too (deploy/web_server.py hands granian our config).
    assert any(e["logger"].startswith("_granian") for e in json_lines(web_log))
    for log in (web_log, worker_log):
        plain = [
            x
            for x in log.read_text().splitlines()
            if re.match(r"\[(\d{4}-\d\d-\d\d|INFO|WARNING|ERROR|DEBUG)", x)
        ]
        assert plain == [], plain[:3]
    # The order dispatcher publishes from its own thread: it must carry the request's
    # context into the publish (web/order_dispatch.py), or this id is lost.
    assert [e["request_id"] for e in done] == ["e2e-rid-7f3a"]
