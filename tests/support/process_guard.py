"""Fails a test that starts a process of its own without ``@pytest.mark.process``.

The fast tier (``manage.py test --fast``) leaves process tests out and must start
no process, so the marker has to be right. Every way this interpreter starts
another process goes through ``_posixsubprocess.fork_exec`` (subprocess,
multiprocessing's spawn and forkserver), ``os.posix_spawn`` or ``os.fork``; each
start is recorded against the test being watched (:func:`watch`). Installed
only for a run that leaves process tests out (``-m "not process ..."``): there a
process start is a mistake, while the full suite runs them all anyway. The run's
shared backends (one redis-server per backend) start inside :func:`shared` and do
not count: every test needs a real Redis, and it is started once per run.
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

_lock = threading.Lock()
_state: dict[str, Any] = {"installed": False, "watching": False, "shared": 0, "starts": []}


def _record(what: str) -> None:
    with _lock:
        if _state["watching"] and not _state["shared"]:
            _state["starts"].append(what)


def _argv(args: tuple[Any, ...]) -> str:
    words = args[0] if args and isinstance(args[0], list | tuple) else []
    return " ".join(w.decode() if isinstance(w, bytes) else str(w) for w in words[:4])


def _wrap(original: Callable[..., Any], describe: Callable[[tuple[Any, ...]], str]) -> Any:
    def started(*args: Any, **kwargs: Any) -> Any:
        _record(describe(args))
        return original(*args, **kwargs)

    return started


def installed() -> bool:
    """Whether this run watches its tests."""
    return _state["installed"]


def install() -> None:
    """Patch the three ways in, once per run (the conftest's pytest_configure)."""
    if _state["installed"]:
        return
    _state["installed"] = True
    fork_exec = _wrap(_posixsubprocess.fork_exec, _argv)
    _posixsubprocess.fork_exec = fork_exec  # multiprocessing looks it up here
    subprocess._fork_exec = fork_exec  # type: ignore[attr-defined]  # subprocess keeps its own name
    if hasattr(os, "posix_spawn"):
        os.posix_spawn = _wrap(os.posix_spawn, lambda args: f"posix_spawn {args[0]}")
    os.register_at_fork(before=lambda: _record("os.fork()"))


@contextlib.contextmanager
def watch() -> Iterator[list[str]]:
    """Record the processes started inside; yields the list they are recorded in."""
    with _lock:
        _state.update(watching=True, starts=[])
        starts = _state["starts"]
    try:
        yield starts
    finally:
        with _lock:
            _state["watching"] = False


@contextlib.contextmanager
def shared() -> Iterator[None]:
    """Starts inside are the run's shared backends: they do not count."""
    with _lock:
        _state["shared"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["shared"] -= 1
