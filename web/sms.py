"""The delivery of login codes.

Login codes go out through a *code sender*: any object with
``send(phone, code)``. The app keeps one in ``app.extensions["hmdp_code_sender"]``
(see :func:`install_code_sender`); the default only logs the code, since
hmdp-py ships no SMS gateway. A deployment plugs its gateway in by storing its
own sender there; tests use :class:`MemoryCodeSender` to read the codes back.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from flask import Flask, current_app

log = logging.getLogger(__name__)

EXTENSION = "hmdp_code_sender"


class CodeSender(Protocol):
    def send(self, phone: str, code: str) -> None:
        """Deliver ``code`` to ``phone``; raise if it could not be sent."""


class LoggingCodeSender:
    """The default: writes the code to the log (demo and development)."""

    def send(self, phone: str, code: str) -> None:
        """Log the code so a developer can log in without an SMS gateway."""
        log.info("login code for %s: %s", phone, code)


class MemoryCodeSender:
    """Keeps every code sent, in order, so tests (and demos) can read them back."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def send(self, phone: str, code: str) -> None:
        """Record the code instead of delivering it."""
        with self._lock:
            self.sent.append((phone, code))

    def last_code(self, phone: str) -> str | None:
        """The newest code sent to ``phone``, if any."""
        with self._lock:
            for sent_phone, code in reversed(self.sent):
                if sent_phone == phone:
                    return code
        return None


def install_code_sender(app: Flask, sender: CodeSender | None = None) -> None:
    """Give ``app`` a code sender (kept if one is already installed and none is given)."""
    if sender is not None:
        app.extensions[EXTENSION] = sender
    else:
        app.extensions.setdefault(EXTENSION, LoggingCodeSender())


def code_sender() -> CodeSender:
    """The current app's code sender."""
    return current_app.extensions.get(EXTENSION) or LoggingCodeSender()
