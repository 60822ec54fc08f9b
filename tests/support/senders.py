"""A login-code sender for tests: it keeps the codes so a test can log in with them."""

from __future__ import annotations

import threading

from web.sms import CodeSender


class MemoryCodeSender(CodeSender):
    """Keeps every code sent, in order, so tests can read them back."""

    name = "memory"

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
