"""``python3 manage.py cluster --redis-cluster 3``: the local topology on a local Redis Cluster.

One launcher for the module (starting it is the expensive part): nginx, three
granian instances, the worker, beat and Flower on a 3-master Redis Cluster of
its own (plain redis-server processes), RabbitMQ as the broker on this run's
vhost. Through nginx: a login by code (read from the development sender's
log), a shop, a follow, a like, a sign-in. The flash sale needs the seckill
gate on the cluster (its keys in one slot): until then its test skips, saying
so. Stopping the launcher stops the Redis Cluster's processes too.

A broker that does not answer is refused before anything starts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from redis.exceptions import ClusterCrossSlotError, RedisClusterException
from support import rabbitmq
from support.cluster_launcher import Launcher
from support.env import ROOT
from support.procs import wait_for

from cache.connection import connect, disconnect
from cache.login import create_session
from cache.seckill import SeckillGate
from cache.server import free_port, process_alive
from deploy.cluster import find_nginx
from models.demo import DemoSize, load_demo_data
from models.entities import VoucherOrder
from models.migrate import upgrade
from models.session import Database
from settings import Settings, is_cluster_url

pytestmark = [pytest.mark.slow, pytest.mark.process]

PHONE = "13812345678"  # not a demo phone: the login creates the user
FOLLOWED = 3  # a demo blogger
BLOG = 1
SHOP = 1
SECKILL_VOUCHER = 11  # demo data: stock 300
UNLOADED_VOUCHER = 10**9  # no such voucher: the gate probe writes nothing
BUYERS = range(2, 42)


def _launch(settings: Settings, log: Path, *options: str) -> Launcher:
    return Launcher(settings, log, "--redis-cluster", "3", *options)


def _settings(tmp: Path, broker: str) -> Settings:
    url = f"sqlite:///{tmp / 'hmdp.db'}"
    return Settings(
        database_url=url, celery_broker_url=broker, var_dir=tmp / "var", rate_limit_enabled=False
    )


@pytest.fixture(scope="module")
def launched(tmp_path_factory, rabbitmq_vhost):
    """The running launcher; demo rows loaded into its database (the Redis side is not seeded)."""
    if find_nginx() is None:
        pytest.skip("nginx not installed (manage.py test installs it when run as root)")
    tmp = tmp_path_factory.mktemp("redis-cluster-launcher")
    settings = _settings(tmp, rabbitmq.broker_url(rabbitmq_vhost))
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    try:
        load_demo_data(db, DemoSize.named("small"))
    finally:
        db.dispose()
    launcher = _launch(settings, tmp / "cluster.log", "--no-seed")
    try:
        launcher.wait_ready(180)
        yield launcher, settings
    finally:
        code = launcher.stop(90)
        state = launcher.state()
        nodes = (state.get("redis_cluster") or {}).get("nodes") or []
        output = launcher.output()
        assert code == 0, output[-3000:]
        assert "stopping the Redis Cluster" in output, output[-3000:]
        # Every node the launcher started is gone with it.
        assert nodes and not [n for n in nodes if n["pid"] and process_alive(n["pid"])], nodes


def _call(launcher, method: str, path: str, token: str | None = None, body=None):
    headers = {"authorization": token} if token else {}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(launcher.url + path, method=method, headers=headers, data=data)
    if method in ("POST", "PUT") and data is None:
        request.data = b""
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _login_code(launcher, phone: str) -> str:
    pattern = re.compile(rf"login code for {phone}: (\d{{6}})")
    logs = Path(launcher.state()["logs"])

    def found() -> str | None:
        for path in sorted(logs.glob("web*.log")):
            match = pattern.search(path.read_text(errors="replace"))
            if match:
                return match.group(1)
        return None

    return wait_for(found, 30, "the login code in a web log")


def test_the_cluster_runs_on_a_redis_cluster_with_rabbitmq(launched):
    launcher, _ = launched
    state = launcher.state()
    assert is_cluster_url(state["redis_url"]), state["redis_url"]
    assert len(state["redis_cluster"]["nodes"]) == 3
    assert state["broker_url"].startswith("amqp://")
    status, body = _call(launcher, "GET", "/readyz")
    assert status == 200, body  # Redis (the cluster), the database and RabbitMQ answer

    # Log in by code, as the hmdp front end does.
    assert _call(launcher, "POST", f"/user/code?phone={PHONE}")[0] == 200
    status, body = _call(
        launcher, "POST", "/user/login", body={"phone": PHONE, "code": _login_code(launcher, PHONE)}
    )
    assert status == 200, body
    token = body["data"]
    status, me = _call(launcher, "GET", "/user/me", token)
    assert status == 200 and me["data"]["id"], me

    status, shop = _call(launcher, "GET", f"/shop/{SHOP}")
    assert status == 200 and shop["data"]["id"] == SHOP, shop
    assert _call(launcher, "GET", f"/shop/{SHOP}")[1]["data"] == shop["data"]  # cached

    status, followed = _call(launcher, "PUT", f"/follow/{FOLLOWED}/true", token)
    assert status == 200 and followed["data"] is True, followed
    assert _call(launcher, "GET", f"/follow/or/not/{FOLLOWED}", token)[1]["data"] is True

    status, liked = _call(launcher, "PUT", f"/blog/like/{BLOG}", token)
    assert status == 200 and liked["data"] == {"isLike": True}, liked
    assert _call(launcher, "GET", f"/blog/{BLOG}", token)[1]["data"]["isLike"] is True

    status, signed = _call(launcher, "POST", "/user/sign", token)
    assert status == 200 and signed["data"] is True, signed
    assert _call(launcher, "GET", "/user/sign/count", token)[1]["data"] == 1


def test_the_flash_sale_on_the_redis_cluster(launched):
    """The seed's Redis side (seckill stock, the Stream's group), orders, the audit."""
    launcher, settings = launched
    env = dict(launcher.env, REDIS_URL=launcher.state()["redis_url"])
    seed = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "web", "seed", "--small"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = seed.stdout + seed.stderr
    if seed.returncode != 0 and re.search(
        r"CROSSSLOT|CrossSlot|map to the same (key )?slot", output
    ):
        pytest.skip(
            "the seckill gate cannot run on a Redis Cluster yet (its keys hash to different "
            "slots: the gate/streams work of issue 19); the lead re-runs this after landing"
        )
    assert seed.returncode == 0, output[-3000:]
    client = connect(env["REDIS_URL"], settings)
    try:
        try:  # a voucher nobody loaded: the gate answers "unknown" and writes nothing
            SeckillGate(client, settings).reserve(UNLOADED_VOUCHER, BUYERS[0])
        except (ClusterCrossSlotError, RedisClusterException, redis.ResponseError) as exc:
            if not re.search(
                r"CROSSSLOT|CrossSlot|same (key )?slot", f"{type(exc).__name__} {exc}"
            ):
                raise
            pytest.skip(
                "the seed runs on a Redis Cluster, the seckill gate not yet (its id counter "
                "hashes to another slot: the gate work of issue 19); re-run after landing it"
            )
        tokens = {}
        for user in BUYERS:
            tokens[user] = uuid.uuid4().hex
            fields = {"id": str(user), "nickName": f"user_{user}", "icon": ""}
            create_session(client, tokens[user], fields, settings.login_token_ttl)
    finally:
        disconnect(client)
    placed = set()
    for user, token in tokens.items():
        status, body = _call(launcher, "POST", f"/voucher-order/seckill/{SECKILL_VOUCHER}", token)
        assert status == 200, (user, status, body)
        placed.add(int(body["data"]))
    # A second order of a buyer is told its id.
    status, body = _call(
        launcher, "POST", f"/voucher-order/seckill/{SECKILL_VOUCHER}", tokens[BUYERS[0]]
    )
    assert status == 409 and int(body["data"]) in placed, body
    verify = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "web", "orders", "verify", "--drained"]
        + ["--wait", "90"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    engine = sa.create_engine(settings.effective_database_url)
    try:
        with engine.connect() as conn:
            rows = set(conn.execute(sa.select(VoucherOrder.id)).scalars())
    finally:
        engine.dispose()
    assert placed <= rows, sorted(placed - rows)[:10]


def test_a_broker_that_does_not_answer_is_refused_before_anything_starts(tmp_path):
    if find_nginx() is None:
        pytest.skip("nginx not installed: the launcher refuses that first")
    settings = _settings(tmp_path, f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    launcher = _launch(settings, tmp_path / "cluster.log")
    started = time.monotonic()
    try:
        launcher.proc.wait(120)
    except subprocess.TimeoutExpired:
        launcher.stop()
        pytest.fail(f"the launcher started without a broker:\n{launcher.output()[-3000:]}")
    output = launcher.output()
    assert launcher.proc.returncode == 1, output[-3000:]
    assert "the Celery broker amqp://guest:***@127.0.0.1:" in output, output[-3000:]
    assert "does not answer" in output and "Traceback" not in output, output[-3000:]
    assert not (settings.var_dir / "redis-cluster").exists()  # no node was started
    print(f"refused in {time.monotonic() - started:.1f} s")
