"""Uploaded images: what counts as one, where its file lives, who owns it.

Shared by the upload routes (web/uploads.py) and the blogs (a blog's
``images`` name uploads). The images root is ``settings.images_dir``
(HMDP_UPLOAD_DIR; the Java original points it at the front end's ``imgs``
folder, which nginx serves at ``/imgs/``).

* **Kinds** are decided by the file's first bytes (magic numbers), never by the
  client's file name or Content-Type: JPEG, PNG, GIF and WebP. The stored
  extension follows the content, so the type ``/imgs/`` serves is the real one.
* **Paths** are made here only: ``/blogs/{0-15}/{0-15}/{uuid4}.{ext}``, the Java
  original's layout (two levels of 16 directories). A path a client sends
  back must match that pattern exactly (``/imgs`` in front is accepted: it is
  what the front end shows and sends), so ``..``, absolute paths, backslashes,
  NUL bytes and look-alikes are refused by construction.
* **Files** are written to a hidden temporary name in the target directory and
  then hard-linked to their final name: a reader never sees half a file, and
  the link fails rather than replace an existing file (no overwriting). Every
  directory is checked to resolve inside the root, so a symlink planted in the
  tree cannot redirect a write, a read or a delete elsewhere.
* **Owners** are rows of ``tb_upload`` (not Redis: an ownership record must
  outlive a Redis flush, like the blogs that name the file).
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.entities import Upload

FRONT_END_PREFIX = "/imgs"  # the front end shows (and sends back) '/imgs' + path
MAX_BLOG_IMAGES = 9  # hmdp: "at most 9 photos per blog"
SNIFF_BYTES = 12
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ImageKind:
    """An accepted image format: its stored extension and media type."""

    extension: str
    media_type: str
    label: str


JPEG = ImageKind("jpg", "image/jpeg", "JPEG")
PNG = ImageKind("png", "image/png", "PNG")
GIF = ImageKind("gif", "image/gif", "GIF")
WEBP = ImageKind("webp", "image/webp", "WebP")
KINDS = (JPEG, PNG, GIF, WEBP)
ACCEPTED = ", ".join(k.label for k in KINDS[:-1]) + f" or {KINDS[-1].label}"

# What GET /imgs/... serves, by extension (also the front end's shipped files).
SERVED_TYPES = {k.extension: k.media_type for k in KINDS} | {"jpeg": JPEG.media_type}

_UPLOAD_PATH = re.compile(
    r"/blogs/(?:1[0-5]|[0-9])/(?:1[0-5]|[0-9])/"
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    r"\.(?:" + "|".join(k.extension for k in KINDS) + r")"
)
# One segment of a served path: no leading dot (., .., hidden and temporary files).
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_MAX_SEGMENTS = 8


def sniff(head: bytes) -> ImageKind | None:
    """The kind of image whose file starts with ``head`` (>= 12 bytes), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return None


def upload_path(name: str) -> str | None:
    """The canonical path (``/blogs/...``) of an upload named ``name``, or None.

    ``name`` is what the upload answered, or the front end's ``/imgs`` + that.
    """
    if name.startswith(FRONT_END_PREFIX + "/"):
        name = name[len(FRONT_END_PREFIX) :]
    return name if _UPLOAD_PATH.fullmatch(name) else None


def front_end_url(path: str) -> str:
    """How a page refers to an upload: under ``/imgs`` (nginx's folder, or our route)."""
    return FRONT_END_PREFIX + path


class StorageError(Exception):
    """The images root cannot be written as it must be (a symlinked directory, a full disk)."""


class ImageStore:
    """The files under one images root."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # --- paths ---------------------------------------------------------------------

    def _real_root(self) -> str:
        return os.path.realpath(self.root)

    def _inside(self, real: str) -> bool:
        root = self._real_root()
        return real == root or real.startswith(root + os.sep)

    def _file(self, relative: str) -> Path | None:
        """The regular file at ``relative`` inside the root, following no way out; else None."""
        candidate = self.root / relative.lstrip("/")
        if not self._inside(os.path.realpath(candidate)):
            return None
        try:
            info = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None  # a directory (no listings), a symlink, a device ...
        return candidate

    def served(self, name: str) -> tuple[Path, str] | None:
        """The file and media type GET /imgs/``name`` serves, or None (404).

        Any image file under the root (uploads and the front end's own files),
        by a path of plain segments: no dot segments or hidden files, no
        backslashes, NUL or other characters outside ``[A-Za-z0-9_.-]``.
        """
        segments = name.split("/")
        if len(segments) > _MAX_SEGMENTS or not all(_SEGMENT.fullmatch(s) for s in segments):
            return None
        extension = segments[-1].rpartition(".")[2].lower()
        media_type = SERVED_TYPES.get(extension)
        if media_type is None:
            return None
        found = self._file(name)
        return None if found is None else (found, media_type)

    def exists(self, path: str) -> bool:
        """Whether an upload's file is there (``path`` canonical)."""
        return self._file(path) is not None

    def occupied(self, path: str) -> bool:
        """Whether anything at all (a file, a link, a directory) has that name."""
        return os.path.lexists(self.root / path.lstrip("/"))

    # --- writes ---------------------------------------------------------------------

    def _directory(self, relative_dir: str) -> Path:
        """The directory, made level by level, each level checked before anything goes in it."""
        self.root.mkdir(parents=True, exist_ok=True)
        directory = self.root
        for part in relative_dir.strip("/").split("/"):
            directory = directory / part
            if not self._inside(os.path.realpath(directory)):
                raise StorageError(f"{directory} resolves outside the images root {self.root}")
            directory.mkdir(exist_ok=True)
        return directory

    def save(self, source: BinaryIO, kind: ImageKind) -> str:
        """Copy ``source`` (at its start) to a new random path; returns the path.

        The data lands in a temporary file first, then is hard-linked to its
        name: ``os.link`` refuses an existing name, so nothing is overwritten
        (a collision just draws another name).
        """
        while True:
            name = uuid.uuid4()
            relative_dir = f"/blogs/{name.int & 0xF}/{(name.int >> 4) & 0xF}"
            path = f"{relative_dir}/{name}.{kind.extension}"
            directory = self._directory(relative_dir)
            temporary = directory / f".{name}.part"
            try:
                self._write(temporary, source)
                try:
                    os.link(temporary, directory / f"{name}.{kind.extension}")
                except FileExistsError:
                    source.seek(0)
                    continue
                return path
            finally:
                temporary.unlink(missing_ok=True)

    @staticmethod
    def _write(target: Path, source: BinaryIO) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())

    def delete(self, path: str) -> bool:
        """Remove an upload's file (``path`` canonical); False if there was none."""
        found = self._file(path)
        if found is None:
            return False
        try:
            found.unlink()
        except FileNotFoundError:  # a concurrent delete won
            return False
        return True


# --- owners ------------------------------------------------------------------------------


def owned_uploads(session: Session, user_id: int, paths: Iterable[str]) -> set[str]:
    """The canonical ``paths`` that ``user_id`` uploaded (one query)."""
    wanted = set(paths)
    if not wanted:
        return set()
    query = select(Upload.path).where(Upload.user_id == user_id, Upload.path.in_(wanted))
    return set(session.scalars(query))
