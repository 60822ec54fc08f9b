"""Shared fixtures: real Redis servers and real databases, never fakes.

Every test that asks for ``settings`` (directly or through ``app``) runs once
per backend of the run (:func:`support.backends.backends`: sqlite, and mysql
where one answers; ``HMDP_TEST_BACKENDS`` narrows it); tests marked
``redis_cluster`` also run on ``cluster``: a real 3-master Redis Cluster with
RabbitMQ as the broker. Helpers the test modules import live in the
``support`` package beside this file.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import process_guard, rabbitmq
from support.backends import (
    CLUSTER,
    backends,
    cluster_wanted,
    database_for,
    drop_databases,
    flush_redis,
    redis_for,
    wipe_database,
)

import logsetup
from cache.server import EmbeddedRedis
from settings import Settings


def pytest_configure(config: pytest.Config) -> None:
    if "not process" in (config.getoption("markexpr") or ""):  # the fast tier
        process_guard.install()


@pytest.fixture(autouse=True)
def _no_unmarked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that starts processes of its own must say so (support/process_guard.py)."""
    if not process_guard.installed() or request.node.get_closest_marker("process"):
        yield
        return
    with process_guard.watch() as starts:
        yield
    if starts:
        pytest.fail(f"starts processes of its own, so mark it @pytest.mark.process: {starts}")


def pytest_report_header(config: pytest.Config) -> str:
    return f"hmdp backends: {', '.join(backends())}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test using the ``backend`` fixture runs once per backend of the run.

    A test marked ``redis_cluster`` runs on the cluster backend too (a process test);
    ``@pytest.mark.redis_cluster(single="why")`` on a test of such a module keeps
    that one test on the single Redis.
    """
    if "backend" in metafunc.fixturenames:
        params: list[object] = list(backends())
        marker = metafunc.definition.get_closest_marker("redis_cluster")
        if marker is not None and "single" not in marker.kwargs and cluster_wanted():
            params.append(pytest.param(CLUSTER, marks=pytest.mark.process))
        metafunc.parametrize("backend", params, indirect=True)


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


@pytest.fixture(scope="session")
def databases(tmp_root: Path) -> Iterator[dict[str, str]]:
    """One migrated database per backend for the whole run; MySQL ones are dropped."""
    created: dict[str, str] = {}
    yield created
    drop_databases(created)


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this run's own (deleted at the end): the cluster backend's broker."""
    name = rabbitmq.create_vhost()
    yield name
    rabbitmq.delete_vhost(name)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def broker_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """CELERY_BROKER_URL of the backend: None (the app's Redis) but RabbitMQ beside a cluster."""
    if backend != CLUSTER:
        return None
    return rabbitmq.broker_url(request.getfixturevalue("rabbitmq_vhost"))


@pytest.fixture
def settings(
    backend: str, broker_url, redis_servers, databases, tmp_root: Path, tmp_path: Path
) -> Settings:
    """Settings pointing at this backend's own Redis and database, both emptied."""
    with process_guard.shared():  # the run's redis-server, started by the first test here
        server = redis_for(backend, redis_servers, tmp_root)
    url = database_for(backend, databases, tmp_root)
    flush_redis(server.url)
    wipe_database(url)
    return Settings(
        redis_url=server.url,
        celery_broker_url=broker_url,
        database_url=url,
        var_dir=tmp_path / "var",
        rate_limit_enabled=False,
        admin_phones=("13900000000",),
    )


@pytest.fixture
def app(settings: Settings):
    from web import close_app, create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.fixture
def app_with(settings: Settings):
    """Build more apps on this test's backends with changed settings (closed after the test)."""
    from web import close_app, create_app

    apps = []

    def _build(**changes: object):  # type: ignore[no-untyped-def]
        built = create_app(settings.with_(**changes))
        built.config["TESTING"] = True
        apps.append(built)
        return built

    yield _build
    for built in apps:
        close_app(built)


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


@pytest.fixture
def login_as(services):
    """Log a user in the way the login route does (a real session hash in Redis).

    Returns a function ``(user_id, role="user") -> headers`` for the test client;
    an admin gets a user row whose role is admin (support.sessions.session_for).
    The users/login tests cover the route that creates these sessions.
    """
    from support.sessions import session_for

    def _login(user_id: int, role: str = "user", nick_name: str | None = None) -> dict[str, str]:
        return session_for(services, user_id, role, nick_name)

    return _login


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _no_unexpected_500(request: pytest.FixtureRequest) -> Iterator[None]:
    """A request that reached the unexpected-error handler (a 500) fails its test.

    Bad input must never get there (web/errors.py answers it with a bare 500
    envelope); only a test marked ``answers_500``, which provokes a bug in a
    route on purpose, may.
    """
    records = _Records()
    logger = logging.getLogger("web.errors")
    logger.addHandler(records)
    try:
        yield
    finally:
        logger.removeHandler(records)
    if request.node.get_closest_marker("answers_500") is None:
        unexpected = [r for r in records.records if r.getMessage() == "unhandled error"]
        if unexpected:
            pytest.fail(
                f"{len(unexpected)} request(s) answered 500 (unhandled error):\n"
                + logging.Formatter().formatException(unexpected[0].exc_info or (None, None, None)),
                pytrace=False,
            )


@pytest.fixture
def children():
    """lock_worker.py children a test starts (support.lock_child.Child), SIGKILLed after it."""
    started = []
    yield started
    for child in started:
        child.kill()


@pytest.fixture
def access_lines():
    """The hmdp.access records of this test, formatted as the processes do."""
    from web.exchange import access_log

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
