"""Structured logs: one JSON object per line, with the request id of the work being done.

Every process (web server and its workers, Celery workers, beat) logs through one handler
on the root logger whose formatter writes ``{"ts", "level", "logger", "msg",
"request_id", ...}``. The request id lives in a context variable: the web tier
sets it per request (:mod:`web.exchange`), the Celery hooks carry it in a message
header into the task it dispatched and set it again around the task run
(:mod:`tasks.logging`), so one grep follows a flash-sale order from nginx to
the database write.
"""

from __future__ import annotations

import json
import logging
import logging.config
import random
import re
import sys
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# The request id of the work this thread/greenlet/task is doing (None outside one).
REQUEST_ID: ContextVar[str | None] = ContextVar("hmdp_request_id", default=None)
# The Celery task being run by this process, as (task_id, task_name).
TASK: ContextVar[tuple[str, str] | None] = ContextVar("hmdp_task", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# A client-sent id is kept only if it is short and made of safe characters:
# it is echoed in a header and written into every log line.
REQUEST_ID_MAX_LENGTH = 128
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]*")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "request_id", "task_id", "task_name"}


def valid_request_id(value: str | None) -> str | None:
    """The client's id if it is safe to log and echo, else None (the caller makes one)."""
    if not value or len(value) > REQUEST_ID_MAX_LENGTH:
        return None
    return value if _REQUEST_ID_RE.fullmatch(value) else None


def new_request_id() -> str:
    """A fresh id for a request that did not bring a valid one.

    128 random bits as 32 hex digits. An id must be unique, not secret, so the
    bits come from the process's Mersenne Twister (reseeded from the OS in a
    forked child), without a system call: this runs on every request.
    """
    return "%032x" % random.getrandbits(128)  # noqa: UP031 (the fastest of the formats)


def current_request_id() -> str | None:
    """The request id of the work in progress (a web request or a task), if any."""
    return REQUEST_ID.get()


class ContextFilter(logging.Filter):
    """Stamps request_id (and task_id/task_name in workers) on every record it sees.

    Installed on the handler, not on a logger, so records propagated from any
    library logger get the fields too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        task = TASK.get()
        if task is not None and getattr(record, "task_id", None) is None:
            record.task_id, record.task_name = task
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if getattr(record, "task_id", None) is not None:
            entry["task_id"] = record.task_id  # type: ignore[attr-defined]
            entry["task_name"] = getattr(record, "task_name", None)
        entry["pid"] = record.process
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def logging_config(fmt: str = "json", level: str = "INFO") -> dict[str, Any]:
    """The dictConfig for a process: root -> one stderr handler with our filter.

    Also handed to granian (deploy/web_server.py, ``--log-config``) and to gunicorn
    (deploy/gunicorn.conf.py, ``logconfig_dict``) so that the server's own loggers
    write the same JSON lines as the app.
    """
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": f"{__name__}.ContextFilter"}},
        "formatters": {"hmdp": formatter},
        "handlers": {
            "hmdp": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "hmdp",
                "filters": ["context"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["hmdp"]},
        "loggers": {
            # gunicorn's loggers do not propagate; give them our handler.
            "gunicorn.error": {"level": level.upper(), "handlers": ["hmdp"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["hmdp"], "propagate": False},
        },
    }


def configure(fmt: str = "json", level: str = "INFO") -> None:
    """Install the handler on the root logger (a process entry point calls this once)."""
    logging.config.dictConfig(logging_config(fmt, level))
    logging.captureWarnings(True)
    sys.stderr.flush()
