"""Photo uploads, their deletion and the /imgs route, with real files on disk.

hmdp's blog editor posts ``multipart/form-data`` with the field ``file``,
shows ``'/imgs' + data`` and deletes with ``?name=`` + that shown path.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select
from support.images import GIF, IMAGES, JPEG, PNG, WEBP
from support.procs import http as http_get
from support.procs import web_server
from support.social import make_shop, make_upload, make_users

from models.entities import Blog, Upload
from web import images as image_module
from web.images import ImageStore, upload_path

UPLOAD_PATH = re.compile(r"^/blogs/(\d|1[0-5])/(\d|1[0-5])/[0-9a-f-]{36}\.(jpg|png|gif|webp)$")


MEDIA = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}


@pytest.fixture
def world(services):
    make_users(services, 5)
    make_shop(services, 1)
    return services


@pytest.fixture
def root(settings) -> Path:
    settings.images_dir.mkdir(parents=True, exist_ok=True)
    return settings.images_dir


def upload(client, headers, data: bytes, filename: str = "photo.jpg", **extra):
    form = {"file": (io.BytesIO(data), filename), **extra}
    return client.post(
        "/upload/blog", data=form, headers=headers, content_type="multipart/form-data"
    )


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def upload_rows(services) -> int:
    with services.db.sessions() as session:
        return session.scalar(select(func.count()).select_from(Upload))


def assert_error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.data[:300])
    body = response.get_json()
    assert body["success"] is False and body["data"] is None and body["errorMsg"]
    return body["errorMsg"]


# --- uploading -----------------------------------------------------------------------------


@pytest.mark.parametrize("extension", sorted(IMAGES))
def test_an_image_is_stored_at_a_random_path_named_by_its_content(
    client, world, login_as, root, extension
):
    # the client's name says .exe: the stored extension follows the bytes
    r = upload(client, login_as(2), IMAGES[extension], filename="../../evil.exe")
    assert r.status_code == 200, r.json
    path = r.json["data"]
    assert UPLOAD_PATH.match(path) and path.endswith("." + extension), path
    stored = root / path.lstrip("/")
    assert stored.read_bytes() == IMAGES[extension]
    assert files_under(root) == [stored]  # no temporary file left beside it
    with world.db.sessions() as session:
        row = session.get(Upload, path)
    assert (row.user_id, row.media_type, row.size) == (2, MEDIA[extension], len(IMAGES[extension]))


def test_two_uploads_of_the_same_bytes_get_two_paths(client, world, login_as, root):
    first = upload(client, login_as(2), PNG).json["data"]
    second = upload(client, login_as(2), PNG).json["data"]
    assert first != second and len(files_under(root)) == 2


def test_a_name_that_exists_is_never_overwritten(world, root, monkeypatch):
    taken = uuid.UUID("12345678-1234-4234-8234-123456789abc")
    fresh = uuid.UUID("87654321-4321-4321-8321-cba987654321")
    store = ImageStore(root)
    existing = root / f"blogs/{taken.int & 0xF}/{(taken.int >> 4) & 0xF}/{taken}.png"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"the first upload")
    draws = iter([taken, fresh])
    monkeypatch.setattr(image_module.uuid, "uuid4", lambda: next(draws))
    path = store.save(io.BytesIO(PNG), image_module.PNG)
    assert path.endswith(f"/{fresh}.png")
    assert existing.read_bytes() == b"the first upload"
    assert (root / path.lstrip("/")).read_bytes() == PNG


def test_an_upload_above_the_apps_body_limit_is_taken_up_to_the_setting(
    client, world, login_as, root, app
):
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024  # every other route: 1 MiB
    big = PNG + b"\0" * (3 * 1024 * 1024)  # 3 MiB: within the 5 MiB default
    r = upload(client, login_as(2), big)
    assert r.status_code == 200, r.json
    assert (root / r.json["data"].lstrip("/")).stat().st_size == len(big)
    # the app's own limit still holds elsewhere
    assert_error(client.post("/blog", data=b"x" * (2 * 1024 * 1024), headers=login_as(2)), 413)


def test_the_size_limit_is_the_setting_and_413_above_it(app_with, world, login_as, settings):
    client = app_with(upload_max_bytes=1000).test_client()
    exact = PNG + b"\0" * (1000 - len(PNG))
    assert upload(client, login_as(2), exact).status_code == 200
    message = assert_error(upload(client, login_as(2), exact + b"\0"), 413)
    assert "1000 bytes" in message
    # a body far above the limit is refused from its Content-Length, unread
    assert_error(upload(client, login_as(2), exact * 200), 413)
    assert len(files_under(settings.images_dir)) == 1 and upload_rows(world) == 1


def _multipart(data: bytes) -> bytes:
    return (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n"
    )


def test_a_chunked_upload_without_a_length_is_cut_at_the_limit(app_with, world, login_as):
    """No Content-Length (chunked, as a server hands it on): the read stops at the limit."""
    client = app_with(upload_max_bytes=1000).test_client()

    def send(data: bytes):
        return client.post(
            "/upload/blog",
            input_stream=io.BytesIO(_multipart(data)),
            content_type="multipart/form-data; boundary=b",
            headers={**login_as(2), "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )

    assert send(PNG).status_code == 200
    assert_error(send(PNG + b"\0" * 200_000), 413)  # above limit + multipart slack
    assert upload_rows(world) == 1


@pytest.mark.parametrize(
    "content, status",
    [
        (b"", 400),  # an empty file
        (b"hello, I am text", 415),
        (b"<html><script>alert(1)</script></html>", 415),
        (b"GIF8", 415),  # a truncated header
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", 415),  # RIFF, but not WebP
        (b"\x89PNG\r\n", 415),
    ],
)
def test_what_is_not_an_image_is_refused_and_nothing_is_written(
    client, world, login_as, root, content, status
):
    assert_error(upload(client, login_as(2), content, filename="cat.jpg"), status)
    assert files_under(root) == [] and upload_rows(world) == 0


def test_requests_that_carry_no_single_file_are_400_or_415(client, world, login_as, root):
    me = login_as(2)
    assert_error(client.post("/upload/blog", json={"file": "x"}, headers=me), 415)
    assert_error(client.post("/upload/blog", data={"file": "x"}, headers=me), 415)  # urlencoded
    assert_error(client.post("/upload/blog", data=PNG, headers=me, content_type="image/png"), 415)
    assert_error(client.post("/upload/blog", headers=me), 415)  # no body at all
    no_file = client.post(
        "/upload/blog", data={"other": "x"}, headers=me, content_type="multipart/form-data"
    )
    assert "'file'" in assert_error(no_file, 400)
    broken = client.post(
        "/upload/blog", data=b"--x\r\nnonsense", headers=me, content_type="multipart/form-data"
    )  # no boundary parameter: nothing can be parsed
    assert_error(broken, 400)
    two = client.post(
        "/upload/blog",
        data={"file": [(io.BytesIO(PNG), "a.png"), (io.BytesIO(GIF), "b.gif")]},
        headers=me,
        content_type="multipart/form-data",
    )
    assert_error(two, 400)
    assert files_under(root) == [] and upload_rows(world) == 0


def test_an_unusable_images_root_is_503_and_records_nothing(app_with, world, login_as, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the images root should be")
    client = app_with(upload_dir=blocker).test_client()
    r = upload(client, login_as(2), PNG)
    assert_error(r, 503)
    assert r.headers["Retry-After"] == "1" and upload_rows(world) == 0


def test_a_symlinked_directory_in_the_root_cannot_redirect_a_write(
    client, world, login_as, root, tmp_path, monkeypatch
):
    outside = tmp_path / "outside"
    outside.mkdir()
    name = uuid.UUID("12345678-1234-4234-8234-123456789abc")
    (root / "blogs").mkdir(parents=True)
    (root / "blogs" / str(name.int & 0xF)).symlink_to(outside)
    monkeypatch.setattr(image_module.uuid, "uuid4", lambda: name)
    assert_error(upload(client, login_as(2), PNG), 503)
    assert list(outside.iterdir()) == [] and upload_rows(world) == 0


def test_uploads_are_rate_limited_per_user(app_with, world, login_as):
    client = app_with(rate_limit_enabled=True, rate_limit_upload="2/min").test_client()
    assert [upload(client, login_as(2), PNG).status_code for _ in range(3)] == [200, 200, 429]
    assert upload(client, login_as(3), PNG).status_code == 200  # another user's own budget


# --- deleting -------------------------------------------------------------------------------


def test_the_front_end_flow_upload_show_publish_delete(client, world, login_as, root):
    me = login_as(2)
    data = upload(client, me, JPEG).json["data"]
    shown = "/imgs" + data  # what blog-edit.html puts in <img src> and sends back
    page = client.get(shown)
    assert page.status_code == 200 and page.data == JPEG
    body = {"shopId": 1, "title": "t", "content": "c", "images": shown}
    blog_id = client.post("/blog", json=body, headers=me).json["data"]
    assert client.get(f"/blog/{blog_id}").json["data"]["images"] == shown
    r = client.get(f"/upload/blog/delete?name={shown}", headers=me)
    assert r.status_code == 200 and r.json["success"], r.json
    assert files_under(root) == [] and upload_rows(world) == 0
    assert_error(client.get(shown), 404)
    assert_error(client.get(f"/upload/blog/delete?name={shown}", headers=me), 404)  # again


def test_the_bare_path_the_upload_answered_deletes_too(client, world, login_as, root):
    me = login_as(2)
    data = upload(client, me, GIF).json["data"]
    assert client.get(f"/upload/blog/delete?name={data}", headers=me).status_code == 200
    assert files_under(root) == []


def test_only_the_uploader_may_delete(client, world, login_as, root):
    data = upload(client, login_as(2), PNG).json["data"]
    assert "not uploaded by you" in assert_error(
        client.get(f"/upload/blog/delete?name={data}", headers=login_as(3)), 403
    )
    assert (root / data.lstrip("/")).read_bytes() == PNG and upload_rows(world) == 1


def test_a_file_nobody_uploaded_is_403_and_stays(client, world, login_as, root):
    # e.g. one of the front end's own photos in a shared imgs folder
    shipped = root / "blogs/7/14/4771fefb-1a87-4252-816c-9f7ec41ffa4a.jpg"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(JPEG)
    name = "/imgs/blogs/7/14/4771fefb-1a87-4252-816c-9f7ec41ffa4a.jpg"
    assert_error(client.get(f"/upload/blog/delete?name={name}", headers=login_as(2)), 403)
    assert shipped.read_bytes() == JPEG


def test_an_absent_image_is_404(client, world, login_as):
    name = f"/blogs/1/2/{uuid.uuid4()}.jpg"
    assert_error(client.get(f"/upload/blog/delete?name={name}", headers=login_as(2)), 404)


def test_a_record_whose_file_is_gone_is_cleaned_up(client, world, login_as, root):
    data = upload(client, login_as(2), PNG).json["data"]
    (root / data.lstrip("/")).unlink()  # removed by hand
    assert client.get(f"/upload/blog/delete?name={data}", headers=login_as(2)).status_code == 200
    assert upload_rows(world) == 0


BAD_NAMES = [
    "",
    "   ",
    "..",
    "/blogs/../../settings.py",
    "/blogs/1/2/../../../x.jpg",
    "/etc/passwd",
    "etc/passwd",
    "//blogs/1/2/{u}.jpg",
    "/imgs/imgs/blogs/1/2/{u}.jpg",
    "\\blogs\\1\\2\\{u}.jpg",
    "/blogs/1/2/{u}.jpg%00.png",
    "/blogs/1/2/{u}.jpg/",
    "/blogs/16/2/{u}.jpg",
    "/blogs/01/2/{u}.jpg",
    "/blogs/1/2/{U}.jpg",
    "/blogs/1/2/{u}.exe",
    "/blogs/1/2/{u}.JPG",
    "/blogs/1/2/{u}",
    "blogs/1/2/{u}.jpg",
    "https://evil.example/blogs/1/2/{u}.jpg",
]


@pytest.mark.parametrize("template", BAD_NAMES)
def test_a_name_that_is_not_an_upload_path_is_400_and_deletes_nothing(
    client, world, login_as, root, template
):
    u = uuid.uuid4()
    name = template.format(u=u, U=str(u).upper())
    victim = root.parent / "settings.py"
    victim.write_text("keep me")
    r = client.get("/upload/blog/delete", query_string={"name": name}, headers=login_as(2))
    assert_error(r, 400)
    assert victim.read_text() == "keep me"


def test_a_missing_name_is_400(client, world, login_as):
    assert "'name'" in assert_error(client.get("/upload/blog/delete", headers=login_as(2)), 400)


def test_upload_path_accepts_exactly_our_paths():
    u = uuid.uuid4()
    assert upload_path(f"/blogs/15/0/{u}.webp") == f"/blogs/15/0/{u}.webp"
    assert upload_path(f"/imgs/blogs/3/7/{u}.png") == f"/blogs/3/7/{u}.png"
    assert upload_path(f"/blogs/3/7/{u}.png\n") is None
    assert upload_path(f"/blogs/3/7/{u}.png\x00") is None


def test_a_symlink_at_an_upload_path_is_not_followed(client, world, login_as, root, tmp_path):
    target = tmp_path / "precious.jpg"
    target.write_bytes(b"outside the root")
    path = make_upload(world, 2)  # a record of ours, a planted symlink on disk
    link = root / path.lstrip("/")
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    assert_error(client.get("/imgs" + path), 404)  # not served either
    # the record goes (its file is not there as ours); the link and its target stay
    r = client.get(f"/upload/blog/delete?name={path}", headers=login_as(2))
    assert r.status_code == 200 and upload_rows(world) == 0
    assert target.read_bytes() == b"outside the root" and link.is_symlink()


def test_a_symlinked_directory_cannot_redirect_a_delete(client, world, login_as, root, tmp_path):
    outside = tmp_path / "outside"
    (outside / "3").mkdir(parents=True)
    u = uuid.uuid4()
    (outside / "3" / f"{u}.jpg").write_bytes(b"outside the root")
    (root / "blogs").mkdir(parents=True)
    (root / "blogs" / "5").symlink_to(outside)
    path = f"/blogs/5/3/{u}.jpg"
    with world.db.session() as session:
        session.add(Upload(path=path, user_id=2, media_type="image/jpeg", size=1))
    assert_error(client.get("/imgs" + path), 404)
    r = client.get(f"/upload/blog/delete?name={path}", headers=login_as(2))
    assert r.status_code == 200 and upload_rows(world) == 0
    assert (outside / "3" / f"{u}.jpg").read_bytes() == b"outside the root"


# --- serving /imgs ------------------------------------------------------------------------


def test_served_files_have_their_type_caching_and_no_sniffing(client, world, login_as, root):
    data = upload(client, login_as(2), WEBP).json["data"]
    r = client.get("/imgs" + data)
    assert r.status_code == 200 and r.data == WEBP
    assert r.mimetype == "image/webp"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "max-age=3600" in r.headers["Cache-Control"]
    again = client.get("/imgs" + data, headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304
    head = client.head("/imgs" + data)
    assert head.status_code == 200 and head.data == b""
    assert int(head.headers["Content-Length"]) == len(WEBP)


def test_the_front_ends_own_images_are_served_by_extension(client, root):
    (root / "types").mkdir(parents=True)
    (root / "types" / "ms.png").write_bytes(PNG)
    (root / "icons").mkdir()
    (root / "icons" / "default-icon.jpeg").write_bytes(JPEG)
    r = client.get("/imgs/types/ms.png")
    assert r.status_code == 200 and r.mimetype == "image/png" and r.data == PNG
    assert client.get("/imgs/icons/default-icon.jpeg").mimetype == "image/jpeg"
    # hmdp's index page asks for '/imgs/' + '/types/ms.png': redirected to the one path
    doubled = client.get("/imgs//types/ms.png")
    assert doubled.status_code == 308 and doubled.location.endswith("/imgs/types/ms.png")


@pytest.mark.parametrize(
    "path",
    [
        "/imgs/",
        "/imgs/types",  # a directory: no listing
        "/imgs/types/",
        "/imgs/types/missing.png",
        "/imgs/../settings.py",
        "/imgs/%2e%2e/settings.py",
        "/imgs/types/%2e%2e/%2e%2e/settings.py",
        "/imgs/.secret.png",
        "/imgs/types/.x.png.part",
        "/imgs/notes.txt",
        "/imgs/page.html",
        "/imgs/types\\ms.png",
        "/imgs/types/ms.png%00.txt",
        "/imgs/out.png",  # a symlink out of the root
        "/imgs/../escape.png",
        "/imgs/%2e%2e/escape.png",
        "/imgs/types/%2e%2e/%2e%2e/escape.png",
        "/imgs/types/..%2f..%2fescape.png",
    ],
)
def test_nothing_but_image_files_inside_the_root_is_served(client, root, tmp_path, path):
    (root / "types").mkdir(parents=True)
    (root / "types" / "ms.png").write_bytes(PNG)
    (root / ".secret.png").write_bytes(PNG)
    (root / "notes.txt").write_text("private")
    (root / "page.html").write_text("<script>alert(1)</script>")
    (root.parent / "settings.py").write_text("SECRET")
    (root.parent / "escape.png").write_bytes(PNG)  # an image just outside the root
    (tmp_path / "elsewhere.png").write_bytes(PNG)
    (root / "out.png").symlink_to(tmp_path / "elsewhere.png")
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert r.is_json and r.get_json()["success"] is False


def test_a_symlink_that_stays_inside_the_root_is_served(client, root):
    (root / "types").mkdir(parents=True)
    (root / "types" / "ms.png").write_bytes(PNG)
    os.symlink("types", root / "alias")  # a directory alias inside the root
    assert client.get("/imgs/alias/ms.png").status_code == 200


# --- blogs name uploads ----------------------------------------------------------------------


def _blog(client, headers, images):
    return client.post(
        "/blog", json={"shopId": 1, "title": "t", "content": "c", "images": images}, headers=headers
    )


def test_a_blog_names_only_its_authors_uploads(client, world, login_as):
    mine = make_upload(world, 2)
    theirs = make_upload(world, 3)
    assert _blog(client, login_as(2), "/imgs" + mine).status_code == 200
    assert "not one of your uploads" in assert_error(
        _blog(client, login_as(2), f"/imgs{mine},/imgs{theirs}"), 400
    )
    assert_error(_blog(client, login_as(2), f"/imgs/blogs/1/2/{uuid.uuid4()}.jpg"), 400)


@pytest.mark.parametrize(
    "images",
    [
        "a.jpg",
        "/imgs/blogs/blog1.jpg",  # a front-end file, not an upload
        "https://img.example/1.jpg",
        "/imgs/../settings.py",
        "{p},",  # an empty entry
        "{p},{p}",  # the same image twice
        ",".join(["{p}"] * 10),
    ],
)
def test_blog_images_that_are_not_uploads_are_400_and_nothing_is_published(
    client, world, login_as, images
):
    path = "/imgs" + make_upload(world, 2)
    assert_error(_blog(client, login_as(2), images.format(p=path)), 400)
    with world.db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Blog)) == 0


def test_a_blog_shows_up_to_nine_uploads_without_images_too(client, world, login_as):
    paths = [make_upload(world, 2) for _ in range(9)]
    r = _blog(client, login_as(2), [*paths])
    assert r.status_code == 200, r.json
    shown = client.get(f"/blog/{r.json['data']}").json["data"]["images"].split(",")
    assert shown == ["/imgs" + p for p in paths]
    assert _blog(client, login_as(2), "").status_code == 200
    assert _blog(client, login_as(2), None).status_code == 200


# --- through the deployed web server ---------------------------------------------------------


def _post_file(base: str, headers: dict, data: bytes) -> tuple[int, dict]:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(
            "POST",
            "/upload/blog",
            body=_multipart(data),
            headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.process
def test_uploads_through_granian_above_the_apps_body_limit(settings, world, login_as, tmp_path):
    limit = 3 * 1024 * 1024
    me = login_as(2)
    with web_server(settings, tmp_path / "web.log", HMDP_UPLOAD_MAX_BYTES=str(limit)) as (base, _):
        photo = PNG + b"\0" * (limit - len(PNG))  # exactly the limit, 3x the app's 1 MiB
        status, body = _post_file(base, me, photo)
        assert status == 200, body
        served_status, served_headers, served = http_get(base + "/imgs" + body["data"])
        assert served_status == 200 and served == photo
        assert served_headers["Content-Type"] == "image/png"
        status, body = _post_file(base, me, photo + b"\0")
        assert status == 413 and body["success"] is False, body
    assert len(files_under(settings.images_dir)) == 1 and upload_rows(world) == 1
