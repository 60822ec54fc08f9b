"""Login code senders (web/sms.py): the HTTP gateway against a real local HTTP server,
the development sender, and where codes may (never) be logged."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cache.login import CODE_KEY
from cache.server import free_port
from settings import CODE_SENDERS, Settings
from web.sms import (
    EXTENSION,
    SENDERS,
    CodeDeliveryError,
    HttpGatewaySender,
    LogCodeSender,
    sender_from_settings,
)

PHONE = "13712345678"
TOKEN = "gateway-secret-token"


class Gateway:
    """A small SMS gateway on a free loopback port: records requests, answers as told."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        self.delay = 0.0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                gateway.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": self.rfile.read(length),
                    }
                )
                time.sleep(gateway.delay)
                self.send_response(gateway.status)
                if gateway.status in (301, 302, 307, 308):
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:  # keep the test output quiet
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/sms/send"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    server = Gateway()
    yield server
    server.close()


@pytest.fixture
def all_logs() -> Iterator[list[str]]:
    """Every log record of the test, any logger, any level, as formatted text."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def gateway_app(app_with, gateway):  # type: ignore[no-untyped-def]
    return app_with(
        code_sender="http",
        sms_gateway_url=gateway.url,
        sms_gateway_token=TOKEN,
        sms_gateway_timeout=0.5,
    )


def test_every_sender_setting_has_its_class():
    assert tuple(SENDERS) == CODE_SENDERS
    assert Settings().code_sender == "http"  # the default is never the development one


def test_the_gateway_gets_the_documented_request_and_the_code_logs_in(
    gateway_app, gateway, all_logs
):
    client = gateway_app.test_client()
    assert isinstance(gateway_app.extensions[EXTENSION], HttpGatewaySender)
    response = client.post(f"/user/code?phone={PHONE}")
    assert response.status_code == 200, response.data
    (sent,) = gateway.requests
    assert sent["path"] == "/sms/send"
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["Authorization"] == f"Bearer {TOKEN}"
    body = json.loads(sent["body"])
    assert set(body) == {"phone", "code", "ttlSeconds"}
    assert body["phone"] == PHONE and body["ttlSeconds"] == 120
    code = body["code"]
    assert len(code) == 6 and code.isdigit()
    login = client.post("/user/login", json={"phone": PHONE, "code": code})
    assert login.status_code == 200, login.data
    assert all(code not in line for line in all_logs), [x for x in all_logs if code in x]
    assert all(TOKEN not in line for line in all_logs)


@pytest.mark.parametrize(
    "status, delay",
    [(500, 0.0), (429, 0.0), (302, 0.0), (307, 0.0), (200, 2.0)],
    ids=["5xx", "refused", "redirect", "redirect-307", "timeout"],
)
def test_a_failed_delivery_is_503_and_no_code_is_kept(
    gateway_app, gateway, redis_client, all_logs, status, delay
):
    gateway.status, gateway.delay = status, delay
    response = gateway_app.test_client().post(f"/user/code?phone={PHONE}")
    assert response.status_code == 503 and response.is_json
    assert response.get_json()["success"] is False
    assert redis_client.exists(CODE_KEY.format(phone=PHONE)) == 0
    assert len(gateway.requests) == 1  # a redirect is not followed (code and token stay put)
    code = json.loads(gateway.requests[0]["body"])["code"]
    assert any("not delivered" in line for line in all_logs)  # the operator sees why ...
    assert all(code not in line for line in all_logs)  # ... never the code


def test_a_gateway_that_is_down_or_not_configured_is_503(app_with, redis_client, all_logs):
    down = app_with(sms_gateway_url=f"http://127.0.0.1:{free_port()}/sms")
    assert down.test_client().post(f"/user/code?phone={PHONE}").status_code == 503
    unset = app_with()  # http, no URL: nothing sent anywhere, login by code unavailable
    assert unset.test_client().post(f"/user/code?phone={PHONE}").status_code == 503
    assert any("no SMS gateway configured" in line for line in all_logs)
    assert redis_client.exists(CODE_KEY.format(phone=PHONE)) == 0


def test_the_sender_alone_raises_without_the_code_in_its_message(gateway):
    gateway.status = 503
    sender = HttpGatewaySender(gateway.url, None, 1.0, 120)
    with pytest.raises(CodeDeliveryError) as caught:
        sender.send(PHONE, "987654")
    assert "503" in str(caught.value) and "987654" not in str(caught.value)
    assert "Authorization" not in gateway.requests[0]["headers"]  # no token: no header


def test_the_development_sender_logs_the_code(app_with, redis_client, all_logs):
    app = app_with(code_sender="log")  # this test's Redis and database are on loopback
    assert isinstance(app.extensions[EXTENSION], LogCodeSender)
    assert any("development only" in line for line in all_logs)
    assert app.test_client().post(f"/user/code?phone={PHONE}").status_code == 200
    code = redis_client.get(CODE_KEY.format(phone=PHONE))
    assert any(f"login code for {PHONE}: {code}" in line for line in all_logs)


DEPLOYED = {
    "redis_url": "redis://redis:6379/0",
    "database_url": "mysql+pymysql://hmdp:db-password@mysql:3306/hmdp",
    "celery_broker_url": "amqp://guest:broker-password@rabbit.internal:5672//",
}


@pytest.mark.parametrize("field", sorted(DEPLOYED))
def test_the_development_sender_refuses_a_deployment(field):
    settings = Settings(code_sender="log", **{field: DEPLOYED[field]})
    with pytest.raises(RuntimeError, match="refuses to start") as caught:
        sender_from_settings(settings)
    message = str(caught.value)
    assert "password" not in message  # hosts only, never a URL's credentials
    assert ("redis" in message) or ("mysql" in message) or ("rabbit.internal" in message)


def test_the_development_sender_refuses_to_build_a_deployed_app():
    from web import create_app

    with pytest.raises(RuntimeError, match="HMDP_CODE_SENDER=log"):
        create_app(Settings(code_sender="log", **DEPLOYED))


@pytest.mark.parametrize(
    "local",
    [
        {},  # embedded Redis, SQLite
        {"redis_url": "redis://127.0.0.1:6390/0", "database_url": "sqlite:////tmp/x.db"},
        {"redis_url": "redis://localhost:6390/0", "celery_broker_url": "amqp://[::1]:5672//"},
        {"database_url": "mysql+pymysql://root@127.0.0.1:3306/hmdp"},
    ],
)
def test_the_development_sender_runs_on_a_developers_machine(local):
    assert isinstance(sender_from_settings(Settings(code_sender="log", **local)), LogCodeSender)


def test_gateway_settings_are_checked():
    env = {"HMDP_CODE_SENDER": "http", "HMDP_SMS_GATEWAY_URL": "https://sms.example/v1/send"}
    settings = Settings.from_env({**env, "HMDP_SMS_GATEWAY_TIMEOUT": "2.5"})
    assert settings.sms_gateway_url == "https://sms.example/v1/send"
    assert settings.sms_gateway_timeout == 2.5
    for name, bad in [
        ("HMDP_CODE_SENDER", "sms"),
        ("HMDP_SMS_GATEWAY_URL", "ftp://sms.example/"),
        ("HMDP_SMS_GATEWAY_URL", "sms.example"),
        ("HMDP_SMS_GATEWAY_TIMEOUT", "0"),
    ]:
        with pytest.raises(ValueError, match=name):
            Settings.from_env({**env, name: bad})
