"""A Redis that stops answering: bounded waits, fast 503s, and a sale that goes on after it.

Each test stalls a redis-server of its own for real (SIGSTOP, then SIGCONT),
never the run's shared one: cache/connection.py's timeouts and breaker, the
seckill fast path's single timeout, the unlock listener's health check and a
whole sale across a 10 s stall with real web servers (the WSGI fast paths and
the Flask routes) and a real Celery worker, audited exactly afterwards.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pytest
import redis
from support.redis_server import own_redis
from support.seckill import add_shop, create_seckill, db_orders, stream_length, wait_for
from support.sessions import set_role
from support.workers import celery_worker, log_tail

from beat.order_jobs import run_recovery
from cache.connection import FAIL_FAST_S, block_seconds, connect
from cache.locks import RLock
from cache.server import EmbeddedRedis
from services import Services
from web.auth import ADMIN
from web.orders import verify_orders

SOCKET_TIMEOUT = 1.0
CONNECT_TIMEOUT = 0.5
STALL_S = 10.0
# A request waits about one timeout (its own, or one of a request ahead of it on the same
# web thread); a thread hung on the stalled server would wait out the stall. The bound is
# between the two, far from both: this asserts "does not hang", not a speed.
ANSWER_BOUND = STALL_S / 2
REDIS_DOWN = "service temporarily unavailable (cache)"


def stop(server: EmbeddedRedis) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def resume(server: EmbeddedRedis) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)


# --- the client: timeouts, blocking commands, the breaker --------------------------------


def test_block_seconds_reads_each_blocking_command():
    assert block_seconds(("BLPOP", "a", "b", 2.5)) == 2.5
    assert block_seconds((b"XREADGROUP", b"GROUP", "g", "c", b"BLOCK", "1500", "STREAMS")) == 1.5
    assert block_seconds(("XREAD", "COUNT", 1, "STREAMS", "s", "0")) is None  # no BLOCK
    assert block_seconds(("BLMPOP", 3, 1, "k", "LEFT")) == 3.0
    assert block_seconds(("WAIT", 1, 200)) == 0.2
    assert block_seconds(("GET", "k")) is None


def test_every_client_gets_both_timeouts_from_settings(settings):
    """The pool, the Celery transport (workers, dispatch, beat), Flower's broker
    client (built from the same transport options) and the metrics collector."""
    from flower.utils.broker import Broker

    from tasks.app import create_celery
    from web.metrics import StreamCollector

    local = settings.with_(redis_socket_timeout=1.5, redis_connect_timeout=0.7)
    services = Services(local)
    try:
        pool = services.redis.connection_pool.connection_kwargs
        assert (pool["socket_timeout"], pool["socket_connect_timeout"]) == (1.5, 0.7)
        options = create_celery(local, services).conf.broker_transport_options
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (1.5, 0.7)
        assert options["visibility_timeout"] == 300  # celeryconfig's options are kept
        flower = Broker(services.broker_url, broker_options=options)
        assert (flower.socket_timeout, flower.socket_connect_timeout) == (1.5, 0.7)
    finally:
        services.close()
    collector = StreamCollector(local.with_(metrics_redis_timeout=1.0), lambda: local.redis_url)
    kwargs = collector.client().connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.0, 0.7)


def test_no_client_retries_a_command_that_timed_out(settings):
    """A retry would add a whole socket timeout (plus backoff) to a request's wait.

    redis-py 8 retries 10 times with backoff on a client built from host and port;
    ours are built from pools that retry nothing: the app's pool (and the
    near-cache and lock-wait subscribers on it), the Celery transport, Flower's
    broker client (which passes its own no-retry policy), the metrics collector.
    """
    from flower.utils.broker import Broker

    from cache.lock_wait import UnlockListener
    from tasks.app import create_celery
    from web.metrics import StreamCollector

    def retries(pool) -> int:
        connection = pool.make_connection()
        try:
            return connection.retry.get_retries()
        finally:
            connection.disconnect()

    services = Services(settings)
    try:
        assert retries(services.redis.connection_pool) == 0
        assert services.redis.pubsub().connection_pool is services.redis.connection_pool
        assert retries(UnlockListener(services.redis).pubsub.connection_pool) == 0
        app = create_celery(settings, services)
        with app.connection_for_write() as connection:
            assert retries(connection.default_channel.client.connection_pool) == 0
        options = app.conf.broker_transport_options
        flower = Broker(services.broker_url, broker_options=options)
        assert flower.redis.connection_pool.connection_kwargs["retry"].get_retries() == 0
    finally:
        services.close()
    collector = StreamCollector(settings, lambda: settings.redis_url)
    assert retries(collector.client().connection_pool) == 0


def test_a_blocking_command_may_block_longer_than_the_socket_timeout(settings):
    """BLPOP and XREAD BLOCK wait their own time: the socket timeout does not cut them."""
    client = connect(settings.redis_url, settings.with_(redis_socket_timeout=0.3))
    try:
        started = time.monotonic()
        assert client.blpop([f"empty:{uuid.uuid4().hex}"], timeout=0.8) is None
        assert client.xread({f"s:{uuid.uuid4().hex}": "$"}, block=800) in ([], None)
        assert time.monotonic() - started >= 1.6  # both waited their whole block
        assert client.ping()  # and nothing tripped the breaker
    finally:
        client.connection_pool.disconnect()


@pytest.mark.process
def test_a_stalled_server_fails_one_call_after_the_timeout_then_fails_fast(settings, tmp_path):
    with own_redis(tmp_path) as server:
        client = connect(server.url, settings.with_(redis_socket_timeout=SOCKET_TIMEOUT))
        client.set("k", "v")
        stop(server)
        try:
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                client.get("k")
            waited = time.monotonic() - started
            assert SOCKET_TIMEOUT * 0.9 <= waited < 2 * SOCKET_TIMEOUT  # one wait, no retry
            started = time.monotonic()
            with pytest.raises(redis.ConnectionError, match="failing fast"):
                client.get("k")
            assert time.monotonic() - started < SOCKET_TIMEOUT / 2  # the breaker: no second wait
            time.sleep(FAIL_FAST_S + 0.1)
            with pytest.raises(redis.TimeoutError):  # one probe, still stalled
                client.get("k")
        finally:
            resume(server)
        time.sleep(FAIL_FAST_S + 0.1)
        assert client.get("k") == "v"  # the probe's reply closes the breaker
        assert client.get("k") == "v"
        client.connection_pool.disconnect()


@pytest.mark.process
def test_the_unlock_listener_notices_a_stall_and_resubscribes_after_it(settings, tmp_path):
    """A waiter sleeping on an unlock message is woken by the listener's missed PONG
    (not left asleep for the lock's whole TTL), and after the stall a release
    reaches the waiters again over the listener's new connection."""
    from cache import lock_wait

    with own_redis(tmp_path) as server:
        local = settings.with_(redis_socket_timeout=SOCKET_TIMEOUT)
        holder_client, waiter_client = connect(server.url, local), connect(server.url, local)
        holder = RLock(holder_client, "lock:stall", lease_ms=60_000)
        holder.acquire()
        outcome: dict[str, object] = {}

        def wait_for_lock() -> None:
            started = time.monotonic()
            try:
                lock = RLock(waiter_client, "lock:stall")
                outcome["acquired"] = lock.acquire(wait_timeout=50)
            except redis.RedisError as exc:
                outcome["error"] = exc
            outcome["after"] = time.monotonic() - started

        waiter = threading.Thread(target=wait_for_lock, daemon=True)
        waiter.start()
        listener = lock_wait.listener_for(waiter_client)
        wait_for(lambda: listener.channels, 10, what="the waiter to subscribe")
        stop(server)
        try:
            waiter.join(lock_wait.HEALTH_CHECK_S + 3 * SOCKET_TIMEOUT + 5)
        finally:
            resume(server)
        assert not waiter.is_alive(), "the waiter slept through the stall"
        assert isinstance(outcome.get("error"), redis.RedisError), outcome

        # After the stall: a new waiter, a release, and the listener (reconnected) wakes it.
        time.sleep(FAIL_FAST_S + 0.1)
        outcome.clear()
        waiter = threading.Thread(target=wait_for_lock, daemon=True)
        waiter.start()
        wait_for(lambda: listener.channels, 10, what="the second waiter to subscribe")
        time.sleep(0.3)
        holder.release()
        waiter.join(10)
        assert outcome.get("acquired") is True, outcome
        assert outcome["after"] < 10  # woken by the release, not by the 60 s lease
        for client in (holder_client, waiter_client):
            client.connection_pool.disconnect()


# --- a sale across a 10 s stall, through the deployed web server and a real worker --------


@dataclass
class Answer:
    path: str  # "fast" (the WSGI fast paths) or "flask" (the Flask routes)
    user: int
    started: float
    ended: float
    status: int
    body: dict
    retry_after: str | None

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


def _call(
    path: str, url: str, method: str = "GET", headers=None, body: dict | None = None, user: int = 0
) -> Answer:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, retry = response.status, response.read(), response.headers["Retry-After"]
    except urllib.error.HTTPError as error:
        status, raw, retry = error.code, error.read(), error.headers["Retry-After"]
    return Answer(path, user, started, time.monotonic(), status, json.loads(raw), retry)


def _assert_unavailable(answer: Answer) -> None:
    assert answer.status == 503, answer
    assert answer.body == {"success": False, "errorMsg": REDIS_DOWN, "data": None, "total": None}
    assert answer.retry_after == "1"
    assert answer.elapsed < ANSWER_BOUND, answer


def _order(path: str, base: str, voucher_id: int, user: int, token: str) -> Answer:
    url = f"{base}/voucher-order/seckill/{voucher_id}"
    return _call(path, url, "POST", {"authorization": token}, user=user)


@pytest.mark.process
@pytest.mark.slow
def test_a_10s_stall_answers_503_in_time_and_the_sale_goes_on(settings, tmp_path):
    """Two web servers on one stalled Redis: one with the WSGI fast paths, one without
    (the Flask routes), a real Celery worker; audited exactly after SIGCONT."""
    from support.procs import web_server

    from web import create_app

    with own_redis(tmp_path) as server:
        local = settings.with_(
            redis_url=server.url,
            redis_socket_timeout=SOCKET_TIMEOUT,
            redis_connect_timeout=CONNECT_TIMEOUT,
        )
        app = create_app(local)
        services: Services = app.extensions["hmdp"]
        try:
            add_shop(services)
            admin = {"authorization": uuid.uuid4().hex}
            pipe = services.redis.pipeline(transaction=False)
            set_role(services, 1, ADMIN)  # an admin is a role of the user row
            admin_session = {"id": 1, "nickName": "admin", "icon": ""}
            pipe.hset(f"login:token:{admin['authorization']}", mapping=admin_session)
            tokens = {u: uuid.uuid4().hex for u in range(100, 4102)}
            for user, token in tokens.items():
                pipe.hset(f"login:token:{token}", mapping={"id": user, "nickName": "", "icon": ""})
            pipe.execute()
            last_users = {"fast": 4100, "flask": 4101}  # one order each after it all
            voucher_id = create_seckill(app.test_client(), admin, stock=5000)
            env = {
                "HMDP_REDIS_SOCKET_TIMEOUT": str(SOCKET_TIMEOUT),
                "HMDP_REDIS_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
                "HMDP_ORDER_LOCK_LEASE_MS": "3000",
            }
            flask_only = {"HMDP_SECKILL_FAST_PATH": "0", "HMDP_SHOP_FAST_PATH": "0"}
            worker_log = tmp_path / "worker.log"
            with (
                celery_worker(local, worker_log, **env),
                web_server(local, tmp_path / "fast.log", workers=1, **env) as (fast, _),
                web_server(local, tmp_path / "flask.log", workers=1, **env, **flask_only) as (
                    flask,
                    _,
                ),
            ):
                bases = {"fast": fast, "flask": flask}
                sale = {u: t for u, t in tokens.items() if u not in last_users.values()}
                answers = _sale_across_a_stall(server, bases, voucher_id, sale)
                # The worker and the web's dispatchers came through: no task message is
                # left queued, and a new order on each server becomes its row through
                # them alone (recovery has not run yet).
                wait_for(
                    lambda: services.redis.llen("orders") == 0,
                    60,
                    what=f"the worker to consume every task\n{log_tail(worker_log)}",
                )
                for path, user in last_users.items():
                    answer = _order(path, bases[path], voucher_id, user, tokens[user])
                    assert answer.status == 200, answer
                    answers.append(answer)
                    order_id = int(answer.body["data"])
                    wait_for(
                        lambda oid=order_id: oid in dict(db_orders(services, voucher_id)),
                        60,
                        what=f"the {path} order to be settled by the worker",
                    )
                _recover_until_drained(local, services)
            audit = verify_orders(services, voucher_id)
            rows = dict(db_orders(services, voucher_id))
            stranded = _unacked_order_ids(services)
        finally:
            services.close()
        assert audit.ok and audit.unsettled == 0 and audit.dead_letters == 0, audit.lines()
        sold = [a for a in answers if a.status == 200]
        for answer in sold:  # the id each client was given is its row
            assert rows[int(answer.body["data"])] == answer.user
        # A 503 during the stall may still have reserved (its script ran after SIGCONT):
        # that user then has exactly one row too, and the audit above found it.
        assert len(rows) >= len(sold)
        assert len(set(rows.values())) == len(rows)  # one row per user
        for answer in (a for a in answers if a.status == 409):  # told their id on retry
            assert rows[int(answer.body["data"])] == answer.user, answer
        # A worker whose broker connection dropped mid-stall cannot hand its prefetched
        # messages back (kombu's restore meets the stalled Redis too): they stay
        # unacknowledged until the visibility timeout and then run again. Their orders
        # are rows already, so that run finds them settled and writes nothing.
        assert stranded <= set(rows), stranded - set(rows)


def _unacked_order_ids(services: Services) -> set[int]:
    """The order ids of the task messages delivered to a worker and never acknowledged."""
    ids = set()
    for raw in services.redis.hvals("unacked"):
        message = json.loads(raw)[0]  # [message, exchange, routing key]
        args = json.loads(base64.b64decode(message["body"]))[0]  # Celery: [args, kwargs, embed]
        ids.add(int(args[0]["orderId"]))
    return ids


def _sale_across_a_stall(
    server: EmbeddedRedis, bases: dict[str, str], voucher_id: int, tokens: dict[int, str]
) -> list[Answer]:
    """Orders from 8 clients (4 per server) before, during and after a 10 s SIGSTOP;
    a shop read and a login on each server during it; a user told 503 retries."""
    users = collections.deque(tokens)
    lock = threading.Lock()
    done = threading.Event()
    orders: list[Answer] = []

    def client(path: str) -> None:
        while not done.is_set():
            with lock:
                if not users:
                    return
                user = users.popleft()
            answer = _order(path, bases[path], voucher_id, user, tokens[user])
            with lock:
                orders.append(answer)
                if answer.status == 503:
                    users.appendleft(user)  # it retries next, as an impatient client does
            time.sleep(0.02)

    threads = [
        threading.Thread(target=client, args=(p,), daemon=True) for p in bases for _ in "1234"
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    stop(server)
    stopped_at = time.monotonic()
    try:
        time.sleep(3.0)  # the near-cache stops serving without its heartbeat (2.5 s)
        others = []
        for path, base in bases.items():
            others.append(_call(path, f"{base}/shop/1"))
            login = {"phone": "13800000001", "code": "123456"}
            others.append(_call(path, f"{base}/user/login", "POST", body=login))
        time.sleep(max(0.0, stopped_at + STALL_S - time.monotonic()))
    finally:
        resume(server)
    resumed_at = time.monotonic()
    time.sleep(4.0)
    done.set()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)  # every request was answered

    for answer in others:
        _assert_unavailable(answer)
    assert all(a.elapsed < ANSWER_BOUND for a in orders), max(orders, key=lambda a: a.elapsed)
    refused = {a.user for a in orders if a.status == 503}
    for path in bases:
        mine = [a for a in orders if a.path == path]
        during = [a for a in mine if a.started > stopped_at + 0.05 and a.ended < resumed_at]
        assert len(during) > 10, (path, len(during))  # requests kept coming and were answered
        for answer in during:
            _assert_unavailable(answer)
        before = [a for a in mine if a.ended < stopped_at]
        assert before and all(a.status == 200 for a in before), before[:3]
        # After the stall the sale goes on: new users buy; a user whose 503 had reserved
        # anyway (the script ran once Redis woke) is told "already ordered" on retry.
        after = [a for a in mine if a.started > resumed_at + FAIL_FAST_S + SOCKET_TIMEOUT]
        assert any(a.status == 200 for a in after), (path, after[:3])
        for answer in after:
            assert answer.status == 200 or (answer.status == 409 and answer.user in refused), answer
    return orders


def _recover_until_drained(settings, services: Services) -> None:
    """Beat's recovery, in-process: it settles the reservations whose dispatch failed."""
    recovery = Services(settings.with_(order_claim_idle_ms=1000))
    try:

        def drained() -> bool:
            run_recovery(recovery)
            return stream_length(services) == 0

        wait_for(drained, 90, interval=1.0, what="the order stream to drain")
    finally:
        recovery.close()
