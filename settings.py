"""All configuration of hmdp-py, read from the environment in one place.

Every process (web, worker, beat, CLI, tests) builds a :class:`Settings` with
:meth:`Settings.from_env` and hands it down; nothing else reads ``os.environ``.
An unset ``REDIS_URL`` means "embedded": the process finds or starts a real
``redis-server`` (see :mod:`cache.server`); an unset ``DATABASE_URL`` means a
SQLite file under ``VAR_DIR``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ROOT = Path(__file__).resolve().parent


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be a boolean, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """Immutable configuration; ``replace()`` it in tests instead of patching."""

    # --- connections ------------------------------------------------------
    redis_url: str | None = None  # None: embedded redis-server
    database_url: str | None = None  # None: sqlite file in var_dir
    celery_broker_url: str | None = None  # None: same as redis_url
    celery_result_backend: str | None = None  # None: no result backend
    var_dir: Path = field(default_factory=lambda: ROOT / "var")

    # --- secrets and roles ------------------------------------------------
    secret_key: str = "dev-secret-change-me"
    admin_phones: tuple[str, ...] = ()

    # --- cache TTLs (seconds) --------------------------------------------
    shop_ttl: int = 30 * 60
    null_ttl: int = 2 * 60
    ttl_jitter: float = 0.1  # fraction of a TTL added at random (avalanche)
    shop_type_ttl: int = 60 * 60
    logical_ttl: int = 30 * 60
    rebuild_lock_ttl: int = 10
    # L1 lifetime. Invalidation (pub/sub + acks) keeps it fresh; the TTL only bounds a
    # process that missed a message. Each expiry of a hot key sends one read through Redis
    # and Flask: at 1 s that was ~1.5% of the hot reads and the p99 of GET /shop/{id}.
    near_cache_ttl: float = 5.0
    near_cache_size: int = 10_000
    shop_cache_strategy: str = "mutex"  # passthrough | mutex | logical
    hot_shop_count: int = 100
    rebuild_wait: float = 3.0  # longest a reader waits for another's rebuild (then 503)
    near_cache_enabled: bool = True  # in-process L1 in front of Redis (pub/sub invalidated)
    shop_fast_path: bool = True  # near-cache hits of GET /shop/{id} answered below Flask
    seckill_fast_path: bool = True  # POST /voucher-order/seckill/{id} answered below Flask
    logical_refresh_ahead: int = 5 * 60  # beat refreshes logical keys this long before expiry
    bloom_expected_shops: int = 200_000  # Bloom filter sizing (m, k) for this many shop ids
    bloom_fp_rate: float = 0.01

    # --- login ------------------------------------------------------------
    login_code_ttl: int = 2 * 60
    login_token_ttl: int = 30 * 60
    login_max_wrong_codes: int = 5
    login_lock_seconds: int = 15 * 60

    # --- social and location (follows, feed, nearby, sign-in, UV) ---------
    feed_page_size: int = 10  # blogs per scroll page of /blog/of/follow
    feed_inbox_size: int = 1000  # newest entries kept in each feed:{userId}
    geo_radius_m: int = 5000  # /shop/of/type with x,y: search radius in meters
    timezone: str = "UTC"  # IANA name; where "today" starts for sign-in and UV
    uv_flush_interval: float = 1.0  # seconds between pipelined PFADD flushes
    uv_buffer_max: int = 100_000  # visits buffered per process before new ones are dropped
    uv_retention_days: int = 31  # uv:shop:{id}:{day} keys expire this long after the day

    # --- seckill ----------------------------------------------------------
    order_stream: str = "stream.orders"
    order_group: str = "g1"
    order_dead_letter_stream: str = "stream.orders.dead"
    order_max_deliveries: int = 5
    order_claim_idle_ms: int = 30_000
    order_lock_lease_ms: int = 30_000
    # Entries one order task may claim from the Stream and settle in one transaction
    # besides its own (group commit, tasks/orders.py); 1 = one order per task.
    order_settle_batch: int = 100

    # --- rate limiting ----------------------------------------------------
    rate_limit_enabled: bool = True
    # Specs parsed by cache.ratelimit.parse_rule: "BURST,SUSTAINED/UNIT" = token
    # bucket, "N/UNIT" = exact sliding window, "off" = no limit.
    rate_limit_seckill: str = "10,5/s"  # per user
    rate_limit_shop_query: str = "100,50/s"  # per client IP, all shop queries together
    rate_limit_login: str = "5,2/min"  # per phone AND per IP (code and login each)
    # Proxies in front that append to X-Forwarded-For (nginx: 1); 0 = use the peer address.
    trusted_proxies: int = 0

    # --- database pool ----------------------------------------------------
    db_pool_size: int = 10
    db_max_overflow: int = 40

    # --- operations: logs and metrics ---------------------------------------
    log_format: str = "json"  # json (one object per line) | text
    log_level: str = "INFO"
    access_log: bool = True  # one hmdp.access line per request
    # Set by the launcher (deploy/web_server.py, deploy/cluster.py, compose) before the
    # process starts: prometheus_client reads it at import to go multiprocess.
    prometheus_multiproc_dir: Path | None = None
    worker_metrics_port: int = 0  # Celery worker's own /metrics (0 = off)
    worker_metrics_host: str = "127.0.0.1"
    metrics_redis_timeout: float = 1.0  # scrape-time Redis reads give up after this

    # --- web server (deploy/web_server.py builds the command from these) ---
    web_server: str = "granian"  # granian (deployed, BENCHMARKS.md) | gunicorn (to compare)
    web_workers: int = 0  # worker processes per instance; 0 = the CPU count
    # Python threads per worker: granian's --blocking-threads, gunicorn's --threads;
    # 0 = the server's default here (granian 2, gunicorn 8).
    web_threads: int = 0
    web_backlog: int = 2048  # listen backlog (granian: at least 128)
    # gunicorn: idle keep-alive seconds; granian has no idle timeout, only on (> 0) or off
    # (nginx closes its idle upstream connections after 20 s either way).
    web_keepalive: int = 30
    # SIGTERM: in-flight requests get this long before workers are killed (granian's
    # --workers-kill-timeout, gunicorn's graceful_timeout); compose's stop_grace_period is longer.
    web_graceful_timeout: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the environment once; every process starts here."""
        env = os.environ if env is None else env
        admin = tuple(p.strip() for p in env.get("HMDP_ADMIN_PHONES", "").split(",") if p.strip())
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            database_url=env.get("DATABASE_URL") or None,
            celery_broker_url=env.get("CELERY_BROKER_URL") or None,
            celery_result_backend=env.get("CELERY_RESULT_BACKEND") or None,
            var_dir=Path(env.get("HMDP_VAR_DIR") or ROOT / "var"),
            secret_key=env.get("SECRET_KEY") or cls.secret_key,
            admin_phones=admin,
            shop_ttl=_int(env, "HMDP_SHOP_TTL", cls.shop_ttl),
            null_ttl=_int(env, "HMDP_NULL_TTL", cls.null_ttl),
            ttl_jitter=_float(env, "HMDP_TTL_JITTER", cls.ttl_jitter),
            shop_type_ttl=_int(env, "HMDP_SHOP_TYPE_TTL", cls.shop_type_ttl),
            logical_ttl=_int(env, "HMDP_LOGICAL_TTL", cls.logical_ttl),
            rebuild_lock_ttl=_int(env, "HMDP_REBUILD_LOCK_TTL", cls.rebuild_lock_ttl),
            near_cache_ttl=_float(env, "HMDP_NEAR_CACHE_TTL", cls.near_cache_ttl),
            near_cache_size=_int(env, "HMDP_NEAR_CACHE_SIZE", cls.near_cache_size),
            shop_cache_strategy=env.get("HMDP_SHOP_CACHE_STRATEGY") or cls.shop_cache_strategy,
            hot_shop_count=_int(env, "HMDP_HOT_SHOP_COUNT", cls.hot_shop_count),
            rebuild_wait=_float(env, "HMDP_REBUILD_WAIT", cls.rebuild_wait),
            near_cache_enabled=_bool(env, "HMDP_NEAR_CACHE", cls.near_cache_enabled),
            shop_fast_path=_bool(env, "HMDP_SHOP_FAST_PATH", cls.shop_fast_path),
            seckill_fast_path=_bool(env, "HMDP_SECKILL_FAST_PATH", cls.seckill_fast_path),
            logical_refresh_ahead=_int(
                env, "HMDP_LOGICAL_REFRESH_AHEAD", cls.logical_refresh_ahead
            ),
            bloom_expected_shops=_int(env, "HMDP_BLOOM_EXPECTED_SHOPS", cls.bloom_expected_shops),
            bloom_fp_rate=_float(env, "HMDP_BLOOM_FP_RATE", cls.bloom_fp_rate),
            login_code_ttl=_int(env, "HMDP_LOGIN_CODE_TTL", cls.login_code_ttl),
            login_token_ttl=_int(env, "HMDP_LOGIN_TOKEN_TTL", cls.login_token_ttl),
            login_max_wrong_codes=_int(
                env, "HMDP_LOGIN_MAX_WRONG_CODES", cls.login_max_wrong_codes
            ),
            login_lock_seconds=_int(env, "HMDP_LOGIN_LOCK_SECONDS", cls.login_lock_seconds),
            feed_page_size=_int(env, "HMDP_FEED_PAGE_SIZE", cls.feed_page_size),
            feed_inbox_size=_int(env, "HMDP_FEED_INBOX_SIZE", cls.feed_inbox_size),
            geo_radius_m=_int(env, "HMDP_GEO_RADIUS_M", cls.geo_radius_m),
            timezone=env.get("HMDP_TIMEZONE") or cls.timezone,
            uv_flush_interval=_float(env, "HMDP_UV_FLUSH_INTERVAL", cls.uv_flush_interval),
            uv_buffer_max=_int(env, "HMDP_UV_BUFFER_MAX", cls.uv_buffer_max),
            uv_retention_days=_int(env, "HMDP_UV_RETENTION_DAYS", cls.uv_retention_days),
            order_stream=env.get("HMDP_ORDER_STREAM") or cls.order_stream,
            order_group=env.get("HMDP_ORDER_GROUP") or cls.order_group,
            order_dead_letter_stream=env.get("HMDP_ORDER_DEAD_LETTER_STREAM")
            or cls.order_dead_letter_stream,
            order_max_deliveries=_int(env, "HMDP_ORDER_MAX_DELIVERIES", cls.order_max_deliveries),
            order_claim_idle_ms=_int(env, "HMDP_ORDER_CLAIM_IDLE_MS", cls.order_claim_idle_ms),
            order_lock_lease_ms=_int(env, "HMDP_ORDER_LOCK_LEASE_MS", cls.order_lock_lease_ms),
            order_settle_batch=_int(env, "HMDP_ORDER_SETTLE_BATCH", cls.order_settle_batch),
            rate_limit_enabled=_bool(env, "HMDP_RATE_LIMIT_ENABLED", cls.rate_limit_enabled),
            rate_limit_seckill=env.get("HMDP_RATE_LIMIT_SECKILL") or cls.rate_limit_seckill,
            rate_limit_shop_query=env.get("HMDP_RATE_LIMIT_SHOP_QUERY")
            or cls.rate_limit_shop_query,
            rate_limit_login=env.get("HMDP_RATE_LIMIT_LOGIN") or cls.rate_limit_login,
            trusted_proxies=_int(env, "HMDP_TRUSTED_PROXIES", cls.trusted_proxies),
            db_pool_size=_int(env, "HMDP_DB_POOL_SIZE", cls.db_pool_size),
            db_max_overflow=_int(env, "HMDP_DB_MAX_OVERFLOW", cls.db_max_overflow),
            log_format=env.get("HMDP_LOG_FORMAT") or cls.log_format,
            log_level=(env.get("HMDP_LOG_LEVEL") or cls.log_level).upper(),
            access_log=_bool(env, "HMDP_ACCESS_LOG", cls.access_log),
            prometheus_multiproc_dir=Path(env["PROMETHEUS_MULTIPROC_DIR"])
            if env.get("PROMETHEUS_MULTIPROC_DIR")
            else None,
            worker_metrics_port=_int(env, "HMDP_WORKER_METRICS_PORT", cls.worker_metrics_port),
            worker_metrics_host=env.get("HMDP_WORKER_METRICS_HOST") or cls.worker_metrics_host,
            metrics_redis_timeout=_float(
                env, "HMDP_METRICS_REDIS_TIMEOUT", cls.metrics_redis_timeout
            ),
            web_server=env.get("HMDP_WEB_SERVER") or cls.web_server,
            web_workers=_int(env, "HMDP_WEB_WORKERS", cls.web_workers),
            web_threads=_int(env, "HMDP_WEB_THREADS", cls.web_threads),
            web_backlog=_int(env, "HMDP_WEB_BACKLOG", cls.web_backlog),
            web_keepalive=_int(env, "HMDP_WEB_KEEPALIVE", cls.web_keepalive),
            web_graceful_timeout=_int(env, "HMDP_WEB_GRACEFUL_TIMEOUT", cls.web_graceful_timeout),
        ).validated()

    def validated(self) -> Settings:
        """Fail at start-up, not at the first request, on settings that cannot work."""
        if self.shop_cache_strategy not in {"passthrough", "mutex", "logical"}:
            raise ValueError(
                "HMDP_SHOP_CACHE_STRATEGY must be passthrough, mutex or logical, "
                f"got {self.shop_cache_strategy!r}"
            )
        if not 0 <= self.ttl_jitter <= 1:
            raise ValueError("HMDP_TTL_JITTER must be between 0 and 1")
        if self.log_format not in {"json", "text"}:
            raise ValueError(f"HMDP_LOG_FORMAT must be json or text, got {self.log_format!r}")
        if self.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"HMDP_LOG_LEVEL must be a logging level, got {self.log_level!r}")
        if self.web_server not in {"granian", "gunicorn"}:
            raise ValueError(
                f"HMDP_WEB_SERVER must be granian or gunicorn, got {self.web_server!r}"
            )
        if self.web_backlog < 128:
            raise ValueError("HMDP_WEB_BACKLOG must be at least 128 (granian's minimum)")
        if not 1 <= self.web_graceful_timeout <= 1800:
            raise ValueError("HMDP_WEB_GRACEFUL_TIMEOUT must be 1..1800 seconds")
        if not 0 < self.bloom_fp_rate < 1:
            raise ValueError("HMDP_BLOOM_FP_RATE must be between 0 and 1 (exclusive)")
        if self.bloom_expected_shops < 1:
            raise ValueError("HMDP_BLOOM_EXPECTED_SHOPS must be at least 1")
        if self.feed_page_size < 1 or self.feed_inbox_size < 1 or self.geo_radius_m < 1:
            raise ValueError(
                "HMDP_FEED_PAGE_SIZE, HMDP_FEED_INBOX_SIZE and HMDP_GEO_RADIUS_M must be >= 1"
            )
        if self.uv_flush_interval <= 0:
            raise ValueError("HMDP_UV_FLUSH_INTERVAL must be positive")
        if not 1 <= self.order_settle_batch <= 1000:
            raise ValueError("HMDP_ORDER_SETTLE_BATCH must be 1..1000")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"HMDP_TIMEZONE must be an IANA zone, got {self.timezone!r}") from None
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{f.name} must not be negative")
        return self

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests, CLI overrides)."""
        return replace(self, **changes).validated()

    @property
    def sqlite_path(self) -> Path:
        return self.var_dir / "hmdp.db"

    @property
    def effective_database_url(self) -> str:
        """The database URL to use: the given one, or the SQLite file."""
        return self.database_url or f"sqlite:///{self.sqlite_path}"
