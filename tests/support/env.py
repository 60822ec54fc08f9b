"""The environment a child process (worker, web server, script) needs to read given Settings."""

from __future__ import annotations

import os
from pathlib import Path

from settings import Settings

ROOT = Path(__file__).resolve().parents[2]


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
    if settings.celery_broker_url:  # a Redis Cluster's broker (RabbitMQ)
        env["CELERY_BROKER_URL"] = settings.celery_broker_url
    env.update(extra)
    return env
