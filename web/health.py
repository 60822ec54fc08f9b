"""Liveness and readiness for load balancers and operators."""

from __future__ import annotations

import time
from typing import Literal

from flask import Blueprint, Response, current_app
from kombu import Connection
from pydantic import BaseModel
from sqlalchemy import text

from .contract import contract
from .envelope import envelope, json_response, ok
from .runtime import services

bp = Blueprint("health", __name__)


class Check(BaseModel):
    ok: bool
    ms: float
    error: str | None = None


Readiness = dict[str, Check]


@bp.get("/healthz")
@contract(data=Literal["ok"], offline=True)
def healthz() -> Response:
    """Liveness: the process answers. No dependency is touched."""
    return ok("ok")


def _check_redis() -> None:
    services().redis.ping()


def _check_database() -> None:
    with services().db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_broker() -> None:
    with Connection(services().broker_url, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


CHECKS = {"redis": _check_redis, "database": _check_database, "broker": _check_broker}


@bp.get("/readyz")
@contract(data=Readiness, errors={503: "not ready"}, error_data={503: Readiness})
def readyz() -> Response:
    """Readiness: Redis, the database and the broker all answer; says which failed."""
    report: dict[str, dict] = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            check()
            report[name] = {"ok": True}
        except Exception as exc:  # any failure is "not ready", never a 500
            current_app.logger.warning("readiness check %s failed: %s", name, exc)
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        report[name]["ms"] = round((time.perf_counter() - started) * 1000, 2)
    failed = [name for name, result in report.items() if not result["ok"]]
    error = f"not ready: {', '.join(failed)}" if failed else None
    return json_response(envelope(report, error), 503 if failed else 200)
