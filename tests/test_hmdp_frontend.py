"""The hmdp front end's flows in its own terms, through the shipped nginx config's /api/.

The hmdp front end (static Vue 2 + axios pages) calls ``/api/...``; nginx
(deploy/nginx.conf.template) strips the prefix and turns the hmdp compatibility
mode on. What its pages show follows one rule (:func:`shown`): a 2xx answer with
``success`` true hands the page ``data``, with ``success`` false shows ``errorMsg``;
a 401 sends the user to the login page, any other status shows a generic "server
error". Its query parameters with a falsy value are not sent at all. Each flow
asserts what the page would show: a real web server (granian) behind a real
nginx (Debian's, which ``manage.py test`` installs; skipped where it is absent),
the login code read from the development sender's log (HMDP_CODE_SENDER=log).
"""

from __future__ import annotations

import http.client
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.images import PNG
from support.procs import nginx, web_server

from deploy.cluster import find_nginx
from web.exchange import REAL_STATUS_HEADER

pytestmark = pytest.mark.process

SECKILL_VOUCHER = 11  # the small demo's first seckill voucher (stock 300, on sale)
INDEX = "<!doctype html><title>hmdp</title>"


@dataclass(frozen=True)
class Shown:
    """What a page of the hmdp front end shows for one answer."""

    what: str  # "data", "message" (errorMsg), "login page" or "server error"
    value: Any = None


def shown(status: int, body: bytes) -> Shown:
    """The front end's rule (its axios interceptor): 2xx + success decides, else only 401 counts."""
    if 200 <= status < 300:
        envelope = json.loads(body)
        if envelope["success"]:
            return Shown("data", envelope["data"])
        return Shown("message", envelope["errorMsg"])
    if status == 401:
        return Shown("login page")
    return Shown("server error")


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def shown(self) -> Shown:
        return shown(self.status, self.body)


class FrontEnd:
    """The front end's HTTP client (its js/common.js): the token of its session storage
    raw in ``authorization``, query parameters as its serializer writes them."""

    def __init__(self, base: str, prefix: str = "/api"):
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.prefix = prefix
        self.token: str | None = None

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        file: bytes | None = None,
    ) -> Answer:
        # its paramsSerializer: "&k=v" per truthy value, unencoded (ours are ASCII)
        query = "".join(f"&{k}={v}" for k, v in (params or {}).items() if v)
        url = self.prefix + path + (f"?{query}" if params else "")
        headers = {"authorization": self.token} if self.token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if file is not None:
            boundary = uuid.uuid4().hex
            data = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    f'filename="photo.png"\r\nContent-Type: image/png\r\n\r\n'
                ).encode()
                + file
                + f"\r\n--{boundary}--\r\n".encode()
            )
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request(method, url, body=data, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()


@pytest.fixture
def nginx_binary() -> str:
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (manage.py test installs Debian's nginx as root)")
    return binary


@pytest.fixture
def frontend_root(tmp_path: Path) -> Path:
    """A stand-in for the front end's folder: its index page and one script."""
    root = tmp_path / "frontend"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / "js" / "common.js").write_text("// the front end's script\n")
    return root


@pytest.fixture
def stack(seeded, settings, tmp_path, nginx_binary, frontend_root):
    """The small demo behind one granian instance behind the shipped nginx config."""
    log = tmp_path / "web.log"
    with (
        web_server(settings, log, HMDP_CODE_SENDER="log", HMDP_TRUSTED_PROXIES="127.0.0.1/32") as (
            base,
            _,
        ),
        nginx(nginx_binary, [urlsplit(base).netloc], tmp_path / "nginx", frontend_root) as lb,
    ):
        yield lb, log


def _code_sent_to(log: Path, phone: str) -> str:
    """The last code the development sender logged for ``phone``."""
    deadline = time.monotonic() + 10
    pattern = re.compile(rf"login code for {phone}: (\d{{6}})")
    while True:
        codes = pattern.findall(log.read_text(errors="replace"))
        if codes:
            return codes[-1]
        assert time.monotonic() < deadline, "no login code in the web server's log"
        time.sleep(0.05)


def _log_in(page: FrontEnd, log: Path, phone: str) -> int:
    """The login page: request a code, type a wrong one, then the right one; the user's id."""
    assert page.call("POST", "/user/code", {"phone": phone}).shown == Shown("data", None)
    code = _code_sent_to(log, phone)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    refused = page.call("POST", "/user/login", body={"phone": phone, "code": wrong})
    assert refused.shown == Shown("message", "wrong code; 2 guesses left for this code")
    assert refused.headers[REAL_STATUS_HEADER] == "401"
    logged_in = page.call("POST", "/user/login", body={"phone": phone, "code": code}).shown
    assert logged_in.what == "data" and isinstance(logged_in.value, str)
    page.token = logged_in.value
    me = page.call("GET", "/user/me").shown
    assert me.what == "data"
    return me.value["id"]


def test_the_front_end_flows_through_nginx_api(stack):
    lb, log = stack
    page = FrontEnd(lb)
    # nginx serves the pages; a page without a login is sent to the login page
    status, body = _get(lb, "/")
    assert (status, body) == (200, INDEX.encode())
    assert page.call("GET", "/user/me").shown == Shown("login page")
    writer_id = _log_in(page, log, "13812340001")

    # the flash sale: the second click shows "already ordered"
    first = page.call("POST", f"/voucher-order/seckill/{SECKILL_VOUCHER}").shown
    assert first.what == "data" and first.value.isdigit()
    second = page.call("POST", f"/voucher-order/seckill/{SECKILL_VOUCHER}")
    assert second.shown == Shown("message", "already ordered")
    assert second.headers[REAL_STATUS_HEADER] == "409"
    assert json.loads(second.body)["data"] == first.value  # the order it already has

    # the blog editor (blog-edit.html): its shop picker, photos, the blog
    picker = page.call("GET", "/shop/of/name?name=").shown  # its URL, as it writes it
    assert picker.what == "data" and len(picker.value) == 10
    uploaded = page.call("POST", "/upload/blog", file=PNG).shown
    assert uploaded.what == "data" and uploaded.value.startswith("/blogs/")
    image = "/imgs" + uploaded.value  # how the editor shows it; nginx hands it to the app
    assert _get(lb, image) == (200, PNG)
    not_an_image = page.call("POST", "/upload/blog", file=b"just text").shown
    assert not_an_image.what == "message" and "not an image" in not_an_image.value
    removed = "/imgs" + page.call("POST", "/upload/blog", file=PNG).shown.value
    assert page.call("GET", "/upload/blog/delete?name=" + removed).shown.what == "data"
    assert _get(lb, removed)[0] == 404

    # a reader who follows the writer sees the blog, with its photo, in the feed
    reader = FrontEnd(lb)
    _log_in(reader, log, "13812340002")
    assert reader.call("PUT", f"/follow/{writer_id}/true").shown == Shown("data", True)
    blog = {"shopId": picker.value[0]["id"], "title": "t", "content": "c", "images": image}
    published = page.call("POST", "/blog", body=blog).shown
    assert published.what == "data"
    feed = reader.call("GET", "/blog/of/follow", {"lastId": int(time.time() * 1000) + 1000})
    assert feed.shown.what == "data"
    (entry,) = feed.shown.value["list"]
    assert (entry["id"], entry["images"], entry["userId"]) == (published.value, image, writer_id)

    # the bare API through the same nginx keeps the real statuses
    bare = FrontEnd(lb, prefix="")
    bare.token = page.token
    again = bare.call("POST", f"/voucher-order/seckill/{SECKILL_VOUCHER}")
    assert again.status == 409 and again.shown == Shown("server error")
    assert REAL_STATUS_HEADER not in again.headers


def test_nginx_s_own_errors_under_api_are_compat_answers(nginx_binary, frontend_root, tmp_path):
    """Upstream down (502), a body above nginx's limit (413), its rate limit (429)."""
    dead = f"127.0.0.1:{_closed_port()}"
    with nginx(nginx_binary, [dead], tmp_path / "nginx", frontend_root, "1r/m", 2) as lb:
        page, bare = FrontEnd(lb), FrontEnd(lb, prefix="")
        big = {"phone": "13812340001", "code": "x" * (2 * 1024 * 1024)}
        too_large = page.call("POST", "/user/login", body=big)
        assert too_large.shown == Shown("message", "request body too large")
        assert too_large.headers[REAL_STATUS_HEADER] == "413"
        assert bare.call("POST", "/user/login", body=big).status == 413
        for _ in range(2):
            down = page.call("GET", "/shop/1")
            assert down.shown == Shown("message", "service temporarily unavailable")
            assert down.headers[REAL_STATUS_HEADER] == "502"
        assert bare.call("GET", "/shop/1").status == 502
        assert _get(lb, "/js/common.js")[0] == 200  # the front end's files need no upstream
        limited = page.call("GET", "/shop/1")  # the fourth proxied in a minute, burst 2
        assert limited.shown == Shown("message", "too many requests")
        assert limited.headers[REAL_STATUS_HEADER] == "429"
        assert bare.call("GET", "/shop/1").status == 429


def _get(base: str, path: str) -> tuple[int, bytes]:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _closed_port() -> int:
    from cache.server import free_port

    return free_port()  # nothing listens there
