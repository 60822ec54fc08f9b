"""The system under test for every load test: Redis, a database, the web server, a Celery worker.

One piece of start-up code for ``loadtest/run.py`` (the scenario runner) and
``loadtest/bench_shop.py``:

* Redis: our own embedded ``redis-server`` (AOF on, as in production) in the
  work directory, with ``replicas`` replicas of it when asked (and
  ``HMDP_SECKILL_WAIT_REPLICAS`` set to that number: the gate's ``WAIT``), or a
  given ``REDIS_URL`` whose database must be empty (it is flushed afterwards, so
  nobody else's keys are ever touched); or, with ``redis_cluster`` N, a real
  Redis Cluster of N masters of its own (``cache.redis_cluster.EmbeddedCluster``,
  AOF as above, ``replicas`` replicas per master when asked) with RabbitMQ as the
  Celery broker (Celery has no Redis Cluster transport): ``CELERY_BROKER_URL``,
  else a vhost of the run's own on this machine's RabbitMQ, deleted afterwards;
* the database: a SQLite file in the work directory, or, for a MySQL/MariaDB
  server URL, a fresh database of our own (``hmdp_bench_<pid>_<hex>``) that is
  dropped afterwards, whatever database the URL names;
* demo data at the size a scenario needs (``models.demo``) plus every
  ``post_seed`` step (Bloom filter, hot shops, seckill stock in Redis), i.e.
  what ``flask seed`` does; seckill stock can be raised before Redis loads it;
* sessions written with the login route's own code (``cache.login``), so that
  thousands of distinct logged-in users exist without the rate-limited API;
* the deployed web server command (``deploy/web_server.py``: granian, or
  gunicorn to compare; HMDP_WEB_* env tunes it) serving the real app plus
  ``/bench/empty`` (``loadtest/bench_shop_wsgi.py``), and a Celery worker, both
  under ``deploy.supervisor.Supervisor``, logging to files.

Rate limits are OFF in the stack (HMDP_RATE_LIMIT_ENABLED=0): every generator
request comes from 127.0.0.1, which the per-IP limits would reject.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cache import login as login_store  # noqa: E402
from cache.connection import client_options, connect  # noqa: E402
from cache.redis_cluster import EmbeddedCluster  # noqa: E402
from cache.replication import online_replicas  # noqa: E402
from cache.server import EmbeddedRedis, free_port  # noqa: E402
from cache.shop_source import top_shop_ids  # noqa: E402
from deploy import rabbitmq  # noqa: E402
from deploy.cluster import REDIS_CLUSTER_NODE_TIMEOUT_MS  # noqa: E402
from deploy.supervisor import Supervisor  # noqa: E402
from deploy.web_server import log_config_path, server_argv, web_argv  # noqa: E402
from models.demo import DemoSize, load_demo_data  # noqa: E402
from models.entities import SeckillVoucher  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from services import Services  # noqa: E402
from settings import Settings  # noqa: E402
from tasks.app import worker_argv  # noqa: E402

WSGI_APP = "loadtest.bench_shop_wsgi:app"  # the real app + GET /bench/empty


@dataclass(frozen=True)
class DataPlan:
    """How much demo data a scenario needs, and any seckill stock to raise."""

    users: int = 200
    shops: int = 500
    vouchers: int = 20
    seckill_vouchers: int = 10
    blogs: int = 40  # the small demo's: the home page and feeds have something to read
    hot: int = 100
    seckill_stock: int | None = None  # None: the demo's 300 per seckill voucher

    def demo_size(self) -> DemoSize:
        return DemoSize(
            users=self.users,
            shops=self.shops,
            vouchers=self.vouchers,
            seckill_vouchers=self.seckill_vouchers,
            blogs=self.blogs,
        )


@dataclass
class SeedInfo:
    """What the seeded stack holds that generators and the verifier need."""

    hot_ids: list[int]
    shop_count: int
    user_ids: list[int]  # demo users (not user 1, the admin phone)
    seckill_stock: dict[int, int]  # voucher id -> stock before any sale
    seconds: float = 0.0


@dataclass
class Stack:
    """Start it with :meth:`start_backends`, :meth:`seed`, :meth:`start_web`...; close() undoes all."""

    workdir: Path
    redis_url: str | None = None  # None: embedded redis-server
    database_url: str | None = None  # None: SQLite; mysql URL: a fresh database of ours
    env_overrides: dict[str, str] = field(default_factory=dict)
    # The embedded Redis' AOF fsync policy; None: Settings' (HMDP_REDIS_APPENDFSYNC).
    appendfsync: str | None = None
    # Replicas of the embedded Redis, and the gate waits for that many (WAIT); 0: none.
    replicas: int = 0
    # Masters of a Redis Cluster of the stack's own instead of the single Redis; 0: none.
    redis_cluster: int = 0
    log: Callable[[str], None] = print
    logs: Path | None = None  # children's log files (default: workdir/logs)
    supervisor: Supervisor = field(default_factory=Supervisor)
    _redis_server: EmbeddedRedis | None = None
    _replica_servers: list[EmbeddedRedis] = field(default_factory=list)
    _cluster: EmbeddedCluster | None = None
    _node_clients: list[redis.Redis] = field(default_factory=list)
    _vhost: str | None = None  # our RabbitMQ vhost (deleted on close)
    broker_url: str | None = None  # CELERY_BROKER_URL of the children (None: Settings')
    _mysql_server: str | None = None
    _mysql_database: str | None = None
    _services: Services | None = None
    _voucher_ids: list[int] | None = None  # the seeded seckill vouchers (backlog's streams)
    commands: dict[str, str] = field(default_factory=dict)

    # --- backends -------------------------------------------------------------------------

    def start_backends(self) -> None:
        """Redis and an empty migrated database, both ours (see the module doc)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "var").mkdir(exist_ok=True)
        if self.redis_cluster:
            self._start_cluster(Settings.from_env())
        elif self.redis_url is None:
            settings = Settings.from_env()
            self._redis_server = EmbeddedRedis(
                self.workdir / "redis",
                appendfsync=self.appendfsync or settings.redis_appendfsync,
                binary=settings.redis_server,
                unix_socket=settings.redis_unix_socket,
            ).start()
            self.redis_url = self._redis_server.url
            self._start_replicas(settings)
        else:
            client = connect(self.redis_url, Settings.from_env())
            try:
                if client.dbsize():
                    raise RuntimeError(
                        f"{self.redis_url} is not empty; give an empty Redis database "
                        "(it is flushed after the run)"
                    )
            finally:
                client.close()
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.workdir / 'var' / 'bench.db'}"
        elif self.database_url.startswith("mysql"):
            self._create_mysql_database(self.database_url)
        upgrade(self.database_url)
        self.log(
            f"redis {self.redis_url}; database {make_url(self.database_url).render_as_string()}"
        )

    def _start_cluster(self, settings: Settings) -> None:
        """RabbitMQ as the broker (a vhost of ours unless CELERY_BROKER_URL), then the cluster."""
        if self.redis_url is not None:
            raise RuntimeError("redis_cluster starts a cluster of its own: give no redis_url")
        self.broker_url = settings.celery_broker_url
        if self.broker_url is None:
            self._vhost = rabbitmq.create_vhost("hmdp-bench")
            self.broker_url = rabbitmq.broker_url(self._vhost)
        self._cluster = EmbeddedCluster(
            self.workdir / "redis-cluster",
            masters=self.redis_cluster,
            replicas=self.replicas,
            # A busy bench box must not fail a master over (with replicas) on a slow ping.
            node_timeout_ms=REDIS_CLUSTER_NODE_TIMEOUT_MS,
            appendfsync=self.appendfsync or settings.redis_appendfsync,
            binary=settings.redis_server,
        ).start(timeout=60)
        self.redis_url = self._cluster.url
        if self.replicas:
            self.env_overrides.setdefault("HMDP_SECKILL_WAIT_REPLICAS", str(self.replicas))

    @property
    def masters(self) -> list[int]:
        """The ports of the stack's Redis masters: the cluster's (in slot order), or the one."""
        if self._cluster is not None:
            return [node.port for node in self._cluster.nodes[: self._cluster.masters]]
        if self._redis_server is not None:
            return [self._redis_server.port]
        assert self.redis_url, "start_backends() first"
        from redis.connection import parse_url

        return [int(parse_url(self.redis_url).get("port", 6379))]

    def node_clients(self) -> list[redis.Redis]:
        """A plain client of each master (INFO, CONFIG, commandstats), kept until close()."""
        if not self._node_clients:
            if self._cluster is None:
                assert self.redis_url, "start_backends() first"
                options = client_options(Settings.from_env())
                client = redis.Redis.from_url(self.redis_url, decode_responses=True, **options)
                self._node_clients = [client]
            else:
                masters = self._cluster.nodes[: self._cluster.masters]
                self._node_clients = [node.client(timeout=5) for node in masters]
        return self._node_clients

    def node_url(self, index: int = 0) -> str:
        """A plain redis:// URL of one master (redis-benchmark's target)."""
        if self._cluster is None:
            assert self.redis_url, "start_backends() first"
            return self.redis_url
        return f"redis://127.0.0.1:{self.masters[index]}/0"

    def master_of(self, slot: int) -> int:
        """The index (in :attr:`masters`) of the master serving hash ``slot``; 0 on one Redis."""
        if self._cluster is None:
            return 0
        return self.masters.index(self._cluster.master_of_slot(slot).port)

    def redis_topology(self) -> str:
        """ "single Redis (Unix socket)", "... (TCP)" or "cluster of N masters" (the table's
        and summary.json's words): the socket is part of what was measured."""
        if self._cluster is None:
            assert self.redis_url, "start_backends() first"
            over = "Unix socket" if self.redis_url.startswith("unix://") else "TCP"
            return f"single Redis ({over})"
        replicas = f", {self.replicas} replicas each" if self.replicas else ""
        return f"cluster of {self._cluster.masters} masters{replicas}"

    def command_calls(self) -> dict[str, int]:
        """``INFO commandstats`` calls per command, summed over the masters.

        Commands a script runs (``redis.call``) are counted too, beside its EVALSHA.
        """
        calls: dict[str, int] = {}
        for client in self.node_clients():
            for name, value in client.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                calls[command] = calls.get(command, 0) + int(value["calls"])
        return calls

    def _start_replicas(self, settings: Settings, timeout: float = 60.0) -> None:
        """``replicas`` replicas of the embedded Redis, online; the gate told to wait for them."""
        if not self.replicas:
            return
        assert self._redis_server is not None
        master = self._redis_server
        for index in range(self.replicas):
            # No AOF: a replica rewrites it after every full sync, and its copy is the stream.
            replica = EmbeddedRedis(
                self.workdir / f"redis-replica-{index}",
                appendonly=False,
                extra_args=("--replicaof", "127.0.0.1", str(master.port)),
                binary=settings.redis_server,
            )
            self._replica_servers.append(replica.start())
        client = redis.Redis(port=master.port, decode_responses=True, socket_timeout=5)
        try:
            deadline = time.monotonic() + timeout
            while online_replicas(client) < self.replicas:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.replicas} replicas not online after {timeout}s")
                time.sleep(0.1)
        finally:
            client.close()
        self.env_overrides.setdefault("HMDP_SECKILL_WAIT_REPLICAS", str(self.replicas))

    def redis_durability(self) -> str:
        """What the stack's Redis does with its writes, as it says (``CONFIG GET``)."""
        assert self.redis_url, "start_backends() first"
        try:
            configs = [client.config_get("append*") for client in self.node_clients()]
        except redis.RedisError as exc:  # e.g. a managed Redis without CONFIG
            return f"durability unknown ({exc})"
        config = configs[0]
        if any(c != config for c in configs):
            return f"durability differs between the masters ({configs})"
        aof = "no AOF"
        if config.get("appendonly") == "yes":
            aof = f"AOF appendfsync {config.get('appendfsync')}"
        if not self.replicas:
            return aof
        return f"{aof}, {self.replicas} replicas: the gate WAITs for {self.replicas}"

    def _create_mysql_database(self, url: str) -> None:
        # Not .set(database=None): URL.set ignores None, and the named database may not exist.
        server = make_url(url)._replace(database=None)
        name = f"hmdp_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        engine = sa.create_engine(server)
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        engine.dispose()
        self._mysql_server = server.render_as_string(hide_password=False)
        query = dict(make_url(url).query)
        query.setdefault("charset", "utf8mb4")
        self.database_url = (
            make_url(url).set(database=name, query=query).render_as_string(hide_password=False)
        )
        self._mysql_database = name

    @property
    def log_dir(self) -> Path:
        return self.logs or self.workdir / "logs"

    @property
    def backend(self) -> str:
        assert self.database_url is not None
        return "sqlite" if self.database_url.startswith("sqlite") else "mysql"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every child (and of our own Settings)."""
        assert self.redis_url and self.database_url, "start_backends() first"
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            **({"CELERY_BROKER_URL": self.broker_url} if self.broker_url else {}),
            DATABASE_URL=self.database_url,
            HMDP_VAR_DIR=str(self.workdir / "var"),
            HMDP_RATE_LIMIT_ENABLED="0",
            PYTHONPATH=str(ROOT),
        )
        env.update(self.env_overrides)
        env.update(extra)
        return env

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env())

    @property
    def services(self) -> Services:
        """This process's connections to the stack (seeding, sessions, verifying)."""
        if self._services is None:
            self._services = Services(self.settings)
        return self._services

    # --- data -----------------------------------------------------------------------------

    def seed(self, plan: DataPlan) -> SeedInfo:
        """Demo rows, optional seckill stock, then every post_seed step (as `flask seed`)."""
        from web import create_app

        started = time.perf_counter()
        self.env_overrides.setdefault("HMDP_HOT_SHOP_COUNT", str(plan.hot))
        svc = self.services
        load_demo_data(svc.db, plan.demo_size())
        if plan.seckill_stock is not None:
            with svc.db.session() as session:
                session.execute(sa.update(SeckillVoucher).values(stock=plan.seckill_stock))
        app = create_app(self.settings)
        app_services = app.extensions["hmdp"]
        try:
            for step in app.extensions["hmdp_post_seed"]:
                step(app_services)
        finally:
            app_services.close()
        with svc.db.session() as session:
            stock = dict(
                session.execute(sa.select(SeckillVoucher.voucher_id, SeckillVoucher.stock)).all()
            )
        info = SeedInfo(
            hot_ids=top_shop_ids(svc.db, plan.hot),
            shop_count=plan.shops,
            user_ids=list(range(2, plan.users + 2)),  # models.demo: id 1 has the admin phone
            seckill_stock={int(k): int(v) for k, v in sorted(stock.items())},
            seconds=time.perf_counter() - started,
        )
        self.log(
            f"seeded {plan.users} users, {plan.shops} shops, {len(info.seckill_stock)} seckill "
            f"vouchers in {info.seconds:.1f}s"
        )
        return info

    def create_sessions(self, user_ids: Iterable[int]) -> list[str]:
        """One session per user, written exactly as the login route writes it; the tokens.

        ``web.users`` builds a UserSummary and calls ``cache.login.create_session``;
        so do we (demo users' nick names are ``user_{id:06d}``, see models.demo).
        """
        from web.auth import UserSummary

        client, ttl = self.services.redis, self.settings.login_token_ttl

        def one(user_id: int) -> str:
            token = secrets.token_urlsafe(32)
            summary = UserSummary(id=user_id, nick_name=f"user_{user_id:06d}", icon="")
            login_store.create_session(client, token, summary.to_hash(), ttl)
            return token

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, user_ids))

    # --- processes ------------------------------------------------------------------------

    def start_web(
        self,
        port: int | None = None,
        timeout: float = 60.0,
        server: str | None = None,
        **server_env: str,
    ) -> int:
        """The deployed web server command (deploy/web_server.py) on a free port; its port.

        ``server``: granian (default, what is deployed) or gunicorn (to compare);
        ``server_env``: HMDP_WEB_* (or GUNICORN_WORKER_CLASS) for this run. The
        runner's --workers/--threads arrive as GUNICORN_WORKERS/GUNICORN_THREADS
        and mean the same for either server (processes; threads per process).
        """
        port = port or free_port()
        aliases = {"GUNICORN_WORKERS": "HMDP_WEB_WORKERS", "GUNICORN_THREADS": "HMDP_WEB_THREADS"}
        extra = {aliases.get(k, k): v for k, v in server_env.items()}
        if server is not None:
            extra["HMDP_WEB_SERVER"] = server
        env = self.env(**extra)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # deploy/web_server.py: one dir per instance
        settings = Settings.from_env(env)  # refuses an unknown server before starting anything
        server = settings.web_server
        bind = f"127.0.0.1:{port}"
        cmd = [sys.executable, *web_argv(bind, app=WSGI_APP)]
        shown = [
            f"{k}={v}" for k, v in sorted(env.items()) if k.startswith(("HMDP_WEB_", "GUNICORN_"))
        ]
        log_config = log_config_path(settings, bind) if server == "granian" else None
        shown += server_argv(settings, bind, app=WSGI_APP, log_config=log_config)  # what it execs
        self.supervisor.start("web", cmd, env, stdout=self.log_dir / "web.log")
        self.commands["web"] = " ".join(shown)
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{port}/healthz"
        while time.monotonic() < deadline:
            proc = self.supervisor.children["web"].proc
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{server} exited with {proc.returncode}; see logs/web.log")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return port
            time.sleep(0.2)
        raise RuntimeError(f"{server} did not answer /healthz in {timeout:.0f}s")

    def start_worker(
        self, concurrency: int | None = None, pool: str = "prefork", timeout: float = 60.0
    ) -> None:
        """A Celery worker on every queue; returns once it answers a ping."""
        celery = str(Path(sys.executable).parent / "celery")
        cmd = [
            celery,
            *worker_argv(
                concurrency=concurrency,
                loglevel="WARNING",
                name=f"bench-{os.getpid()}@%h",
                pool=pool,
                standalone=True,
            ),
        ]
        self.supervisor.start("worker", cmd, self.env(), stdout=self.log_dir / "worker.log")
        self.commands["worker"] = " ".join(cmd)
        from tasks.app import create_celery

        app = create_celery(self.settings, self.services)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                proc = self.supervisor.children["worker"].proc
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"celery exited with {proc.returncode}; see logs/worker.log")
                if app.control.ping(timeout=0.5):
                    return
            raise RuntimeError(f"the Celery worker did not answer a ping in {timeout:.0f}s")
        finally:
            app.close()

    def start_beat(self) -> None:
        """Celery beat, as deployed: order recovery every 15 s, reconciliation every 30 s..."""
        celery = str(Path(sys.executable).parent / "celery")
        schedule = self.workdir / "var" / "celerybeat-schedule"
        cmd = [celery, "-A", "tasks.worker", "beat", "--loglevel", "WARNING"]
        cmd += ["--schedule", str(schedule)]
        self.supervisor.start("beat", cmd, self.env(), stdout=self.log_dir / "beat.log")
        self.commands["beat"] = " ".join(cmd)

    # --- the orders backlog -------------------------------------------------------------------

    def backlog(self) -> int:
        """Reservations not yet settled: the vouchers' orders Streams hold exactly those."""
        from cache import order_stream
        from cache.stream_vouchers import all_vouchers

        if self._voucher_ids is None:  # polled often: the seeded vouchers, read once
            self._voucher_ids = all_vouchers(self.services.db)
        return order_stream.backlog(self.services.redis, self.settings, self._voucher_ids)

    def drain_with_new_worker(
        self, concurrency: int | None, pool: str, stall: float = 60.0, poll: float = 0.02
    ) -> DrainResult:
        """Start the worker on a standing backlog; time the drain from its first settled order.

        :meth:`start_worker` returns only when the worker answers a ping, and a
        worker settling batches empties a backlog of tens of thousands before
        that, so the backlog is watched while the worker starts (in a thread):
        the clock starts at the last sample that still saw the whole backlog.
        """
        first = self.backlog()
        with ThreadPoolExecutor(1) as pool_:
            started = pool_.submit(self.start_worker, concurrency, pool)
            began: float | None = None
            last, last_change = first, time.monotonic()
            sampled_at = last_change
            while last:
                time.sleep(poll)
                now_backlog, now = self.backlog(), time.monotonic()
                if now_backlog != last:
                    if began is None:
                        began = sampled_at
                    last, last_change = now_backlog, now
                elif started.done() and now - last_change > stall:
                    break
                sampled_at = now
                if started.done() and started.exception() is not None:
                    break
            started.result()  # raises what the start raised
        end = time.monotonic()
        return DrainResult(first, last, end - (began if began is not None else end))

    @contextlib.contextmanager
    def _broker(self) -> Iterator[redis.Redis]:
        """The Celery broker's Redis: the stack's own client unless CELERY_BROKER_URL differs."""
        url = self.settings.celery_broker_url
        if url is None or url == self.redis_url:
            yield self.services.redis
            return
        broker = redis.Redis.from_url(url, **client_options(self.settings))
        try:
            yield broker
        finally:
            broker.close()

    def _amqp_vhost(self) -> str | None:
        """The vhost of an ``amqp://`` broker (None: the broker is a Redis)."""
        url = self.settings.celery_broker_url or ""
        if not url.startswith(("amqp://", "pyamqp://")):
            return None
        from kombu import Connection

        return str(Connection(url).virtual_host)

    def _order_queue(self) -> tuple[int, int]:
        """The ``orders`` queue's messages: (waiting, delivered to a worker and not acked).

        kombu's Redis transport: the ``orders`` list and the ``unacked`` hash; RabbitMQ
        (this machine's, through rabbitmqctl): the queue's ready and unacknowledged.
        """
        vhost = self._amqp_vhost()
        if vhost is not None:
            return rabbitmq.queue_depth(vhost, "orders")
        with self._broker() as broker:
            pipe = broker.pipeline(transaction=False)
            pipe.llen("orders")
            pipe.hlen("unacked")
            ready, unacked = pipe.execute()
        return int(ready), int(unacked)

    def queued_task_messages(self) -> int:
        """Order task messages waiting in the broker (Redis or RabbitMQ: see _order_queue)."""
        return self._order_queue()[0]

    def wait_dispatched(
        self,
        expected: int,
        dispatched: Callable[[], float | None],
        timeout: float = 120.0,
        poll: float = 0.1,
    ) -> float | None:
        """Seconds until ``dispatched()`` reservations reached the broker (None: timeout).

        The web tier publishes order tasks off the request path (web/order_dispatch.py),
        one message per micro-batch; ``dispatched`` counts the reservations those
        messages carry (the web's hmdp_orders_dispatched_total): what was published when
        the load ended, and this is how long the rest took.
        """
        started = time.monotonic()
        while (dispatched() or 0) < expected:
            if time.monotonic() - started > timeout:
                return None
            time.sleep(poll)
        return time.monotonic() - started

    def web_counter(self, port: int, name: str) -> float | None:
        """A counter summed over the web instance's workers (its ``/metrics``; None: no answer)."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return None
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        )

    def order_task_runs(self) -> int | None:
        """Order task runs the stack's Celery worker did since it started (None: no answer).

        Celery's own count (``inspect stats``: tasks received per name), retries included.
        """
        from tasks.app import create_celery
        from tasks.orders import TASK_NAME

        app = create_celery(self.settings, self.services)
        try:
            stats = app.control.inspect(timeout=2.0).stats()
        finally:
            app.close()
        if not stats:
            return None
        return sum(int(s.get("total", {}).get(TASK_NAME, 0)) for s in stats.values())

    def wait_tasks_done(self, timeout: float = 600.0, poll: float = 0.2) -> float | None:
        """Seconds until no order task message is queued or unacknowledged (None: timeout).

        With group commit the rows are in long before the last task message is
        done: most of those tasks find their order settled and return at once,
        but each still costs a broker round trip, so this is reported next to
        the drain rate (the broker's queue read as :meth:`_order_queue` says).
        """
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if sum(self._order_queue()) == 0:
                return time.monotonic() - started
            time.sleep(poll)
        return None

    def wait_drained(self, stall: float = 60.0, poll: float = 0.2) -> DrainResult:
        """Wait until the orders Stream is empty, or it has not shrunk for ``stall`` s."""
        started = time.monotonic()
        first = last = self.backlog()
        last_change = started
        while last:
            time.sleep(poll)
            now_backlog = self.backlog()
            now = time.monotonic()
            if now_backlog != last:
                last, last_change = now_backlog, now
            elif now - last_change > stall:
                break
        return DrainResult(first, last, time.monotonic() - started)

    # --- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop our processes, drop our database, stop or flush our Redis."""
        self.supervisor.stop()
        for client in self._node_clients:
            client.close()
        self._node_clients.clear()
        if self._services is not None:
            with contextlib.suppress(Exception):
                if self._redis_server is None and self._cluster is None and self.redis_url:
                    self._services.redis.flushdb()
            self._services.close()
            self._services = None
        if self._mysql_database and self._mysql_server:
            engine = sa.create_engine(self._mysql_server)
            with engine.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{self._mysql_database}`"))
            engine.dispose()
            self._mysql_database = None
        for replica in self._replica_servers:
            replica.stop()
        self._replica_servers.clear()
        if self._redis_server is not None:
            self._redis_server.stop()
            self._redis_server = None
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None
        if self._vhost is not None:
            rabbitmq.delete_vhost(self._vhost)
            self._vhost = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class DrainResult:
    """The orders backlog from the end of the load to empty (or to the stall)."""

    backlog_at_start: int
    backlog_left: int
    seconds: float

    @property
    def rate(self) -> float | None:
        """Orders settled per second while draining (None without a real backlog)."""
        settled = self.backlog_at_start - self.backlog_left
        return settled / self.seconds if settled >= 100 and self.seconds > 0 else None
