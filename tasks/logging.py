"""Celery side of structured logging: JSON lines and the request id across the broker.

* ``setup_logging``: a worker or beat process configures :mod:`logsetup` instead
  of Celery's own formatter (Celery skips its set-up when this signal has a receiver).
* ``before_task_publish``: a task sent while serving a web request (or while
  running another task) carries that request id in the message header
  ``hmdp_request_id``.
* ``task_prerun``/``task_postrun``: the worker sets the request id and the task's
  id and name for the run, so every line the task and Celery log about it has them.
"""

from __future__ import annotations

from typing import Any

from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun

import logsetup
from settings import Settings

HEADER = "hmdp_request_id"

# Per process: the context tokens of the task being run, by task id.
_tokens: dict[str, tuple[Any, Any]] = {}


def _on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = logsetup.current_request_id()
    if request_id and headers is not None and not headers.get(HEADER):
        headers[HEADER] = request_id


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is None or task is None:
        return
    request_id = logsetup.valid_request_id(_request_header(task))
    _tokens[task_id] = (
        logsetup.REQUEST_ID.set(request_id),
        logsetup.TASK.set((task_id, task.name)),
    )


def _on_postrun(task_id: str | None = None, **_: Any) -> None:
    tokens = _tokens.pop(task_id, None) if task_id is not None else None
    if tokens is None:
        return
    request_token, task_token = tokens
    try:
        logsetup.TASK.reset(task_token)
        logsetup.REQUEST_ID.reset(request_token)
    except ValueError:  # run in another context: just clear
        logsetup.TASK.set(None)
        logsetup.REQUEST_ID.set(None)


def _request_header(task: Any) -> str | None:
    """The request id header of the message being run (protocol 2 puts headers on the context)."""
    request = task.request
    value = getattr(request, HEADER, None)
    if value is None and isinstance(getattr(request, "headers", None), dict):
        value = request.headers.get(HEADER)
    return value if isinstance(value, str) else None


def install_celery_logging(settings: Settings) -> None:
    """Connect the signals (idempotent: each has a dispatch uid), for this process."""

    def _setup_logging(**_: Any) -> None:
        logsetup.configure(settings.log_format, settings.log_level)

    setup_logging.connect(_setup_logging, weak=False, dispatch_uid="hmdp.setup_logging")
    before_task_publish.connect(_on_publish, weak=False, dispatch_uid="hmdp.request_id.publish")
    task_prerun.connect(_on_prerun, weak=False, dispatch_uid="hmdp.request_id.prerun")
    task_postrun.connect(_on_postrun, weak=False, dispatch_uid="hmdp.request_id.postrun")
