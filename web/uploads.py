"""Photo uploads (hmdp's blog editor) and the images root served at ``/imgs/``.

* ``POST /upload/blog`` (a user; multipart field ``file``): one JPEG, PNG, GIF
  or WebP image of at most ``settings.upload_max_bytes``; data = its path under
  the images root (``/blogs/3/7/<uuid>.jpg``), which the front end shows as
  ``'/imgs' + data``. The route sets its own request-size limit from the
  setting (the app's MAX_CONTENT_LENGTH stays 1 MiB for everything else).
* ``GET /upload/blog/delete?name=`` (a user): deletes an image the caller
  uploaded: 403 for somebody else's (or a file nobody uploaded, such as the
  front end's own), 404 when there is none.
* ``GET /imgs/<path>``: the files of the images root, for deployments without
  a shared folder behind nginx: image types only, no listings, no way out of
  the root (web/images.py).

The file is written before its ``tb_upload`` row and removed again if the row
cannot be written; on delete the file goes first, then the row, so a failure
between the two leaves a row a retry completes, never a file nobody owns.
"""

from __future__ import annotations

import logging
from typing import Annotated, BinaryIO

from flask import Blueprint, Response, request, send_file
from pydantic import BaseModel, Field
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge

from models.entities import Upload, User

from .auth import login_required, require_user
from .contract import contract
from .envelope import ApiError, BadRequest, Forbidden, NotFound, NotLoggedIn, ok
from .images import ACCEPTED, SNIFF_BYTES, ImageKind, ImageStore, StorageError, sniff, upload_path
from .runtime import services, settings
from .schemas import Path, Query, text

log = logging.getLogger(__name__)

bp = Blueprint("uploads", __name__)

# Room for the multipart framing (boundaries, part headers) around the file itself.
MULTIPART_SLACK = 64 * 1024
SERVED_MAX_AGE = 3600  # seconds; uploads never change (random names), shipped files rarely


def image_store() -> ImageStore:
    """The images root of this app."""
    return ImageStore(settings().images_dir)


def _size_text(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


def _too_large(limit: int) -> ApiError:
    return ApiError(f"the image is larger than {_size_text(limit)}", 413)


def _the_file(limit: int) -> FileStorage:
    """The one uploaded file of this request, or the error that says what is wrong."""
    if request.mimetype != "multipart/form-data":
        raise ApiError("send the image as multipart/form-data in the field 'file'", 415)
    request.max_content_length = limit + MULTIPART_SLACK  # this route's limit, not the app's
    try:
        files = request.files.getlist("file")
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    if not files:
        raise BadRequest("multipart field 'file' is required")
    if len(files) > 1:
        raise BadRequest("send one file per upload")
    return files[0]


def _measure(stream: BinaryIO, limit: int) -> tuple[int, ImageKind]:
    """The file's size and kind, read from its content (the stream is left at its start)."""
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    if size == 0:
        raise BadRequest("the uploaded file is empty")
    if size > limit:
        raise _too_large(limit)
    kind = sniff(stream.read(SNIFF_BYTES))
    stream.seek(0)
    if kind is None:
        raise ApiError(f"the file is not an image ({ACCEPTED})", 415)
    return size, kind


class UploadForm(BaseModel):
    file: bytes = Field(
        description="one JPEG, PNG, GIF or WebP image", json_schema_extra={"format": "binary"}
    )


class DeleteQuery(Query):
    name: text(1024, strip=True) = Field(description="the path the upload answered (or /imgs + it)")


class ImagePath(Path):
    name: str


IMAGE = {"schema": {"type": "string", "format": "binary"}}


@bp.post("/upload/blog")
@login_required
@contract(
    form=UploadForm,
    data=Annotated[str, Field(description="its path under the images root")],
    errors={413: "the image is too large", 415: "not multipart, or not an image"},
)
def upload_blog_image() -> Response:
    """Store one image; data = its path under the images root (the page shows /imgs + it)."""
    limit = settings().upload_max_bytes
    upload = _the_file(limit)
    size, kind = _measure(upload.stream, limit)
    me = require_user().id
    svc = services()
    with svc.db.sessions() as session:
        if session.get(User, me) is None:
            raise NotLoggedIn("your account no longer exists")
    store = image_store()
    try:
        path = store.save(upload.stream, kind)
    except (OSError, StorageError) as exc:
        log.error("image not stored: %s", exc)
        raise ApiError("image storage unavailable", 503, {"Retry-After": 1}) from None
    try:
        with svc.db.session() as session:
            session.add(Upload(path=path, user_id=me, media_type=kind.media_type, size=size))
    except BaseException:
        store.delete(path)  # no file without its owner
        raise
    return ok(path)


@bp.get("/upload/blog/delete")
@login_required
@contract(
    query=DeleteQuery,
    errors={403: "this image was not uploaded by you", 404: "no such image"},
)
def delete_blog_image(query: DeleteQuery) -> Response:
    """Delete an image the caller uploaded; ``name`` as answered (or with /imgs in front)."""
    name = query.name
    if not name:
        raise BadRequest("query parameter 'name' is required")
    path = upload_path(name)
    if path is None:
        raise BadRequest("'name' is not the path of an uploaded image")
    me = require_user().id
    store = image_store()
    svc = services()
    with svc.db.session() as session:
        row = session.get(Upload, path)
        if row is None:
            if store.exists(path):
                raise Forbidden("this image was not uploaded by you")
            raise NotFound("no such image")
        if row.user_id != me:
            raise Forbidden("this image was not uploaded by you")
        if not store.delete(path) and store.occupied(path):
            # Something we never wrote sits there (a planted symlink): left alone.
            log.warning("upload %s: not a file of the images root, record removed only", path)
        session.delete(row)  # a file gone already (a retry, removed by hand) is fine
    return ok()


@bp.get("/imgs/<path:name>")
@contract(
    path=ImagePath,
    content={t: IMAGE for t in ("image/jpeg", "image/png", "image/gif", "image/webp")},
    errors={404: "no such image"},
)
def serve_image(path: ImagePath) -> Response:
    """A file of the images root (uploads and the front end's own images); 404 otherwise."""
    found = image_store().served(path.name)
    if found is None:
        raise NotFound("no such image")
    file, media_type = found
    response = send_file(file, mimetype=media_type, conditional=True, max_age=SERVED_MAX_AGE)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
