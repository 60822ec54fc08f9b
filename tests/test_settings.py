from pathlib import Path

import pytest

from cache.connection import resolve_redis_url
from settings import Settings, cluster_nodes


def test_defaults_mean_embedded_redis_and_sqlite():
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.database_url is None
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.effective_database_url.endswith("var/hmdp.db")


def test_reads_every_documented_variable(tmp_path: Path):
    env = {
        "REDIS_URL": "redis://r:6379/2",
        "DATABASE_URL": "mysql+pymysql://u:p@db/hmdp",
        "CELERY_BROKER_URL": "amqp://guest@mq//",
        "CELERY_RESULT_BACKEND": "redis://r:6379/3",
        "SECRET_KEY": "s3cret",
        "HMDP_VAR_DIR": str(tmp_path),
        "HMDP_SHOP_TTL": "60",
        "HMDP_NULL_TTL": "5",
        "HMDP_SHOP_CACHE_STRATEGY": "logical",
        "HMDP_ADMIN_PHONES": "13900000000, 13900000001",
        "HMDP_RATE_LIMIT_ENABLED": "false",
    }
    settings = Settings.from_env(env)
    assert settings.redis_url == "redis://r:6379/2"
    assert settings.effective_database_url == "mysql+pymysql://u:p@db/hmdp"
    assert settings.celery_broker_url == "amqp://guest@mq//"
    assert settings.celery_result_backend == "redis://r:6379/3"
    assert settings.secret_key == "s3cret"
    assert settings.var_dir == tmp_path
    assert (settings.shop_ttl, settings.null_ttl) == (60, 5)
    assert settings.shop_cache_strategy == "logical"
    assert settings.admin_phones == ("13900000000", "13900000001")
    assert settings.rate_limit_enabled is False


@pytest.mark.parametrize(
    "env, message",
    [
        ({"HMDP_SHOP_TTL": "soon"}, "HMDP_SHOP_TTL must be an integer"),
        ({"HMDP_SHOP_CACHE_STRATEGY": "magic"}, "HMDP_SHOP_CACHE_STRATEGY"),
        ({"HMDP_RATE_LIMIT_ENABLED": "maybe"}, "must be a boolean"),
        ({"HMDP_TTL_JITTER": "2"}, "between 0 and 1"),
        ({"HMDP_NULL_TTL": "-1"}, "must not be negative"),
        ({"HMDP_ORDER_SETTLE_BATCH": "0"}, "HMDP_ORDER_SETTLE_BATCH must be 1..1000"),
        ({"HMDP_REDIS_APPENDFSYNC": "no"}, "HMDP_REDIS_APPENDFSYNC must be everysec or always"),
        ({"HMDP_SECKILL_WAIT_REPLICAS": "17"}, "HMDP_SECKILL_WAIT_REPLICAS must be 0..16"),
        ({"HMDP_SECKILL_WAIT_TIMEOUT_MS": "0"}, "HMDP_SECKILL_WAIT_TIMEOUT_MS must be 1..60000"),
    ],
)
def test_bad_values_fail_at_start_with_the_variable_named(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


CLUSTER = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"REDIS_URL": CLUSTER}, "Celery has no Redis Cluster transport: set CELERY_BROKER_URL"),
        (
            {"REDIS_URL": CLUSTER, "CELERY_BROKER_URL": CLUSTER},
            "Celery has no Redis Cluster transport",
        ),
        ({"CELERY_BROKER_URL": CLUSTER}, "CELERY_BROKER_URL: Celery cannot use a Redis Cluster"),
        (
            {"REDIS_URL": "redis+cluster://10.0.0.1", "CELERY_BROKER_URL": "amqp://mq//"},
            "REDIS_URL redis\\+cluster URL: '10.0.0.1' is not host:port",
        ),
        (
            {
                "REDIS_URL": CLUSTER,
                "CELERY_BROKER_URL": "amqp://mq//",
                "CELERY_RESULT_BACKEND": CLUSTER,
            },
            "CELERY_RESULT_BACKEND: Celery cannot use a Redis Cluster",
        ),
    ],
)
def test_a_redis_cluster_needs_a_broker_of_its_own(env, message):
    """Refused at start, not at the first task."""
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_a_redis_cluster_with_rabbitmq_or_a_standalone_redis_broker_is_accepted():
    for broker in ("amqp://guest:guest@127.0.0.1:5672/hmdp", "redis://10.0.0.9:6379/0"):
        settings = Settings.from_env({"REDIS_URL": CLUSTER, "CELERY_BROKER_URL": broker})
        assert (settings.redis_url, settings.celery_broker_url) == (CLUSTER, broker)
    assert cluster_nodes("redis+cluster://u:p@h1:7000, h2:7001/") == (
        "u:p@",
        [("h1", 7000), ("h2", 7001)],
    )


def test_with_changes_a_copy_and_validates():
    base = Settings.from_env({})
    changed = base.with_(shop_ttl=5)
    assert changed.shop_ttl == 5 and base.shop_ttl != 5
    with pytest.raises(ValueError):
        base.with_(shop_cache_strategy="nope")


def test_every_field_is_declared_once_with_its_variable():
    from dataclasses import fields

    declared = [f.metadata.get("env") for f in fields(Settings)]
    assert all(declared), "a Settings field without setting(...) is never read"
    assert len(set(declared)) == len(declared)


def test_every_variable_is_read_through_its_declared_parser(tmp_path: Path):
    env = {
        "HMDP_NEAR_CACHE_TTL": "2.5",
        "HMDP_NEAR_CACHE": "off",
        "HMDP_LOG_LEVEL": "debug",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "HMDP_TIMEZONE": "Asia/Shanghai",
        "HMDP_ORDER_STREAM": "",  # empty counts as unset
    }
    settings = Settings.from_env(env)
    assert settings.near_cache_ttl == 2.5
    assert settings.near_cache_enabled is False
    assert settings.log_level == "DEBUG"
    assert settings.prometheus_multiproc_dir == tmp_path
    assert settings.timezone == "Asia/Shanghai"
    assert settings.order_stream == Settings.order_stream
    with pytest.raises(ValueError, match="HMDP_TIMEZONE must be an IANA zone"):
        Settings.from_env({"HMDP_TIMEZONE": "Mars/Olympus"})


@pytest.mark.process  # forks a child whose exec of the missing binary fails
def test_the_redis_server_setting_is_the_binary_the_embedded_redis_runs(tmp_path: Path):
    """HMDP_REDIS_SERVER reaches the embedded server through Settings (nothing else reads it)."""
    missing = tmp_path / "no-redis-server"
    env = {"HMDP_REDIS_SERVER": str(missing), "HMDP_VAR_DIR": str(tmp_path / "var")}
    settings = Settings.from_env(env)
    assert settings.redis_server == str(missing)
    with pytest.raises(FileNotFoundError, match="no-redis-server"):
        resolve_redis_url(settings)


def _environment_reads(path: Path) -> list[str]:
    """``os.environ.get(...)``, ``os.getenv(...)``, ``os.environ[...]`` and ``... in os.environ``."""
    import ast

    def is_os(node: ast.AST, attr: str) -> bool:
        return (
            isinstance(node, ast.Attribute)
            and node.attr == attr
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        )

    def is_environ(node: ast.AST) -> bool:
        return is_os(node, "environ")

    reads = []
    for node in ast.walk(ast.parse(path.read_text())):
        func = node.func if isinstance(node, ast.Call) else None
        if (
            (isinstance(func, ast.Attribute) and func.attr == "get" and is_environ(func.value))
            or (func is not None and is_os(func, "getenv"))
            or (
                isinstance(node, ast.Subscript)
                and is_environ(node.value)
                and isinstance(node.ctx, ast.Load)
            )
            or (isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators))
        ):
            reads.append(ast.get_source_segment(path.read_text(), node) or "")
    return reads


def test_nothing_but_settings_reads_the_environment():
    """Configuration comes from Settings; copying the environment for a child is no read."""
    from support.env import ROOT

    skip = {"tests", ".venv", "var", "build"}
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in skip or relative == Path("settings.py"):
            continue
        reads = _environment_reads(path)
        if reads:
            found[str(relative)] = reads
    # The one exception: where the virtualenv lives, read before anything is installed.
    assert found == {"manage.py": ['os.environ.get("HMDP_VENV", ROOT / ".venv")']}


def test_the_gate_waits_for_replicas_only_when_asked():
    from cache.replication import ReplicaWait

    assert ReplicaWait.of(Settings()) is None  # 0 replicas: off
    env = {"HMDP_SECKILL_WAIT_REPLICAS": "1", "HMDP_SECKILL_WAIT_TIMEOUT_MS": "80"}
    assert ReplicaWait.of(Settings.from_env(env)) == ReplicaWait(1, 80)
    assert ReplicaWait.of(Settings(seckill_wait_replicas=2)) == ReplicaWait(2, 250)
