"""Images for readers and for the model, from the study's ``images_root`` only.

A request names an image by its path relative to the root; it is served only when the study lists that exact path
and the resolved file (symlinks followed) lies inside the root, so '..', absolute paths, encoded tricks and symlinks
that lead out are all refused. PNG and JPEG files go out as they are; DICOM is decoded with
:func:`webdata.images.load_image` (windowing, MONOCHROME1, 16-bit) and sent as PNG (no DICOM tag ever leaves).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from webdata.images import ImageError as _LoadError
from webdata.images import is_dicom_path, load_image

if TYPE_CHECKING:  # pragma: no cover
    from chexone.reader_study.study import Study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class ImageError(ValueError):
    """An image that may not or cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


def safe_relative(rel: str) -> str:
    """``rel`` as a clean relative POSIX path, or ImageError for anything that could leave the root."""
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        raise ImageError("invalid image path", 400)
    parts = rel.split("/")
    if any(p in ("..", ".", "") for p in parts):
        raise ImageError("invalid image path", 400)
    return PurePosixPath(*parts).as_posix()


def resolve(study: "Study", rel: str) -> Path:
    """The file for an image path the study lists, checked to lie inside ``images_root``."""
    rel = safe_relative(rel)
    if rel not in study_images(study):
        raise ImageError("no such image in this study", 404)
    root = study.images_root.resolve()
    full = (root / rel).resolve()
    if not full.is_relative_to(root):
        raise ImageError("image outside the images root", 403)
    if not full.is_file():
        raise ImageError("image file missing", 404)
    return full


def study_images(study: "Study") -> frozenset[str]:
    cached = getattr(study, "_image_set", None)
    if cached is None:
        cached = frozenset(rel for it in study.items for rel in it.images)
        study._image_set = cached  # type: ignore[attr-defined]
    return cached


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class ImageServer:
    """Bytes and content type of each study image for the browser, with DICOM conversions cached (small LRU)."""

    def __init__(self, study: "Study", cache_size: int = 32):
        self.study = study
        self.cache_size = cache_size
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, rel: str) -> tuple[bytes, str]:
        full = resolve(self.study, rel)
        if not is_dicom_path(full):
            data = full.read_bytes()
            if data.startswith(PNG_MAGIC):
                return data, "image/png"
            if data.startswith(JPEG_MAGIC):
                return data, "image/jpeg"
            raise ImageError("not a PNG or JPEG file", 415)
        key = str(full)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], "image/png"
        try:
            data = _png(load_image(full, max_pixels=self.study.max_pixels).image)
        except _LoadError as e:
            raise ImageError(f"cannot decode the DICOM file ({getattr(e, 'reason', 'bad_image')})", 422) from None
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return data, "image/png"


def model_png(study: "Study", rel: str) -> bytes:
    """The image as PNG for the model server (any format, within the study's pixel budget)."""
    full = resolve(study, rel)
    try:
        return _png(load_image(full, max_pixels=study.max_pixels).image)
    except _LoadError as e:
        raise ImageError(f"{rel}: {e}") from None
