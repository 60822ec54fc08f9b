"""The delivery of login codes: one sender class per way, behind one interface.

``HMDP_CODE_SENDER`` picks the class (``SENDERS``), as the ``limits`` package
picks a strategy:

* ``http`` (the default) — :class:`HttpGatewaySender`: hands each code to an SMS
  gateway over HTTP (``HMDP_SMS_GATEWAY_URL``, request shape below). Without a
  URL it sends nothing, and ``POST /user/code`` answers 503.
* ``log`` — :class:`LogCodeSender`: writes the code to the log so a developer
  can log in without a gateway (``manage.py up`` chooses it). It is the ONLY
  place a code is ever logged, and a process whose Redis, database or broker
  is on another host looks like a deployment: there it refuses to start.

The app keeps its sender in ``app.extensions["hmdp_code_sender"]``; a test (or
a deployment with its own provider) may store any object with
``send(phone, code)`` there.

A sender raises when a code could not be delivered; the route then forgets the
code and answers 503. Its error messages never contain the code.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from typing import ClassVar
from urllib.parse import urlsplit

from flask import Flask, current_app

from settings import Settings, cluster_nodes, is_cluster_url

log = logging.getLogger(__name__)

EXTENSION = "hmdp_code_sender"


class CodeDeliveryError(Exception):
    """A code could not be handed over (gateway down, refused, not configured)."""


class CodeSender(ABC):
    """Delivers login codes; one subclass per way of delivering them."""

    name: ClassVar[str]

    @abstractmethod
    def send(self, phone: str, code: str) -> None:
        """Deliver ``code`` to ``phone``; raise :class:`CodeDeliveryError` if it could not."""


class HttpGatewaySender(CodeSender):
    """Hands each code to an SMS gateway: one JSON POST per code.

    The request (ours, so any provider fits behind a small adapter)::

        POST <HMDP_SMS_GATEWAY_URL>
        Content-Type: application/json
        Authorization: Bearer <HMDP_SMS_GATEWAY_TOKEN>    (only when a token is set)

        {"phone": "13712345678", "code": "042917", "ttlSeconds": 120}

    Any 2xx answer means "accepted for delivery"; anything else, a timeout
    (``HMDP_SMS_GATEWAY_TIMEOUT``) or a connection error is a failed delivery.
    """

    name = "http"

    def __init__(self, url: str | None, token: str | None, timeout: float, code_ttl: int):
        self.url, self.token, self.timeout, self.code_ttl = url, token, timeout, code_ttl

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpGatewaySender:
        return cls(
            settings.sms_gateway_url,
            settings.sms_gateway_token,
            settings.sms_gateway_timeout,
            settings.login_code_ttl,
        )

    def send(self, phone: str, code: str) -> None:
        """POST the code to the gateway; raise unless it answers 2xx in time."""
        if not self.url:
            raise CodeDeliveryError("no SMS gateway configured (HMDP_SMS_GATEWAY_URL)")
        body = json.dumps({"phone": phone, "code": code, "ttlSeconds": self.code_ttl})
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, body.encode(), headers, method="POST")
        try:
            with _NO_REDIRECTS.open(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:  # non-2xx, redirects included
            raise CodeDeliveryError(f"SMS gateway answered HTTP {exc.code}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, reset, timeout
            raise CodeDeliveryError(f"SMS gateway unreachable: {type(exc).__name__}") from None


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following it would hand the code and token to another URL."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


class LogCodeSender(CodeSender):
    """Development only: writes the code to the log (nothing is delivered)."""

    name = "log"

    def send(self, phone: str, code: str) -> None:
        """Log the code (WARNING, so no log level hides it) for a developer to type in."""
        log.warning("login code for %s: %s (development sender, HMDP_CODE_SENDER=log)", phone, code)


# The senders HMDP_CODE_SENDER chooses from (the names settings.CODE_SENDERS allows).
SENDERS: dict[str, type[CodeSender]] = {
    HttpGatewaySender.name: HttpGatewaySender,
    LogCodeSender.name: LogCodeSender,
}


def remote_hosts(settings: Settings) -> list[str]:
    """The hosts other than this machine that the process's Redis, database or broker are on.

    Any of them means a deployment rather than a developer's machine (embedded
    Redis, SQLite and loopback servers are local).
    """
    hosts = []
    for url in (settings.redis_url, settings.database_url, settings.celery_broker_url):
        if is_cluster_url(url):
            named = [host for host, _ in cluster_nodes(url)[1]]  # type: ignore[arg-type]
        else:
            named = [urlsplit(url).hostname] if url else []
        hosts.extend(host for host in named if host and not _is_local(host))
    return sorted(set(hosts))


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sender_from_settings(settings: Settings) -> CodeSender:
    """The sender ``HMDP_CODE_SENDER`` names; refuses the log sender where it looks deployed."""
    if settings.code_sender == LogCodeSender.name:
        hosts = remote_hosts(settings)
        if hosts:
            raise RuntimeError(
                "HMDP_CODE_SENDER=log writes login codes to the log and is for development "
                f"only, but this process uses servers on {', '.join(hosts)}: it looks like a "
                "deployment, so it refuses to start. Configure an SMS gateway "
                "(HMDP_CODE_SENDER=http, HMDP_SMS_GATEWAY_URL)."
            )
        log.warning("login codes are written to the log (HMDP_CODE_SENDER=log): development only")
        return LogCodeSender()
    sender = HttpGatewaySender.from_settings(settings)
    if not sender.url:
        log.warning("no SMS gateway configured (HMDP_SMS_GATEWAY_URL): POST /user/code answers 503")
    return sender


def install_code_sender(app: Flask, settings: Settings) -> None:
    """Give ``app`` the sender its settings choose (kept if one is installed already)."""
    if EXTENSION not in app.extensions:
        app.extensions[EXTENSION] = sender_from_settings(settings)


def code_sender() -> CodeSender:
    """The current app's code sender."""
    return current_app.extensions[EXTENSION]
