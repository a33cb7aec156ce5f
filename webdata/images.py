"""Load radiographs for shards: PNG/JPEG and DICOM, windowing, MONOCHROME1 inversion, 16-to-8-bit, resizing.

Every image leaves here as an 8-bit PIL image ("L" for grayscale, "RGB" for colour) whose pixel count is at most
``max_pixels`` (aspect ratio kept), together with its *original* size — the size that box annotations in pixels
refer to. Nothing else of the file travels on: DICOM tags (patient name, ids, dates, ...) are read only to decode
the pixels and are never copied into a shard.

DICOM pipeline (:func:`dicom_to_array`):

1. ``pixel_array`` (first frame of a multi-frame file; compressed transfer syntaxes need the optional decoders
   ``pylibjpeg``/``pylibjpeg-openjpeg`` or ``python-gdcm``, otherwise the file is reported as unreadable);
2. the modality LUT (RescaleSlope/RescaleIntercept);
3. windowing to [0, 1] (``window``):
   ``"auto"`` — a VOI LUT Sequence if present, else the first WindowCenter/WindowWidth pair with the DICOM linear
   function (PS3.3 C.11.2.1.2; ``LINEAR_EXACT`` and ``SIGMOID`` honoured), else min-max;
   ``"minmax"`` — the pixel range; ``"percentile"`` — the 0.5th-99.5th percentiles, clipped;
4. MONOCHROME1 (bright = low values) is inverted so that bone is white, as in MONOCHROME2;
5. [0, 1] -> 0..255 with rounding.

16-bit PNG/TIFF-style inputs (PIL modes ``I;16``/``I``/``F``) go through the same step 3 (``auto`` = min-max, since a
PNG has no window), so 12-bit data stored in 16-bit PNGs is not left nearly black.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel budget per image: the reference training setting (512 x 512), docs/method.md §1.
DEFAULT_MAX_PIXELS = 262144

WINDOW_MODES = ("auto", "minmax", "percentile")

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


class ImageError(Exception):
    """An image that cannot be used; the message names the file, ``reason`` is a short fixed word for counting."""

    def __init__(self, message: str, reason: str = "bad_image"):
        super().__init__(message)
        self.reason = reason


@dataclass
class LoadedImage:
    """A decoded, windowed, resized 8-bit image and the size (width, height) of the original pixel grid."""

    image: Image.Image
    original_size: tuple[int, int]
    path: str

    @property
    def width(self) -> int:
        return self.original_size[0]

    @property
    def height(self) -> int:
        return self.original_size[1]


# ----------------------------------------------------------------------------------------------------------------------
# Pixel arithmetic
# ----------------------------------------------------------------------------------------------------------------------


def linear_window(values: np.ndarray, center: float, width: float, *, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing of ``values`` to [0, 1] (PS3.3 C.11.2.1.2-3).

    LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1] (w >= 1);
    LINEAR_EXACT: y = (x - c) / w + 0.5, clipped (w > 0);
    SIGMOID: y = 1 / (1 + exp(-4 (x - c) / w)).
    """
    x = values.astype(np.float64, copy=False)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width must be > 0 for SIGMOID, got {width}")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width must be > 0, got {width}")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise ValueError(f"window width must be >= 1, got {width}")
    if width == 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def minmax_window(values: np.ndarray, *, low_pct: float | None = None, high_pct: float | None = None) -> np.ndarray:
    """Scale to [0, 1] by the value range, or by the given percentiles (then clipped). A constant image maps to 0."""
    x = values.astype(np.float64, copy=False)
    if low_pct is None:
        lo, hi = float(x.min()), float(x.max())
    else:
        lo, hi = (float(v) for v in np.percentile(x, [low_pct, high_pct]))
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 0..255 with round-half-up (so 0.5 -> 128)."""
    return np.floor(np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest (w, h) with the same aspect ratio (floored) and w*h <= max_pixels; the size itself if it fits."""
    if max_pixels <= 0 or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    while w * h > max_pixels:  # float rounding at the boundary
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


def resize_to_budget(image: Image.Image, max_pixels: int, *, size: tuple[int, int] | None = None) -> Image.Image:
    """Downscale so the pixel count is <= ``max_pixels`` (to ``size`` when given: the budget size of the original,
    for an image decoded at reduced scale). Lanczos after an integer box pre-reduction (``reducing_gap=2``): 2.5x
    faster than plain Lanczos for a 2048x2500 radiograph, mean difference 0.35 gray levels."""
    size = size or fit_size(image.width, image.height, max_pixels)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def _window(values: np.ndarray, window: str) -> np.ndarray:
    if window == "percentile":
        return minmax_window(values, low_pct=0.5, high_pct=99.5)
    return minmax_window(values)


# ----------------------------------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------------------------------


def _first(value: Any) -> float:
    """First number of a DICOM multi-value (or the value itself)."""
    try:
        return float(value[0])
    except (TypeError, IndexError, KeyError):
        return float(value)


def _weighted_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``np.percentile(sample, q)`` (linear interpolation) of the sample holding ``counts[i]`` copies of
    ``values[i]``, without materialising it."""
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(counts[order])
    pos = q / 100.0 * (cum[-1] - 1)
    i0 = int(np.floor(pos))
    i1 = min(i0 + 1, int(cum[-1]) - 1)
    a0, a1 = float(v[np.searchsorted(cum, i0, side="right")]), float(v[np.searchsorted(cum, i1, side="right")])
    return a0 + (a1 - a0) * (pos - i0)


def _stat_window(values: np.ndarray, counts: np.ndarray | None, mode: str) -> np.ndarray:
    """min-max / percentile windowing of ``values``; with ``counts`` the statistics are those of the sample where
    ``values[i]`` occurs ``counts[i]`` times (``values`` is then a lookup table over stored levels)."""
    if counts is None:
        return _window(values, mode)
    present = counts > 0
    v, c = values[present], counts[present]
    if mode == "percentile":
        lo, hi = _weighted_percentile(v, c, 0.5), _weighted_percentile(v, c, 99.5)
    else:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _dicom_unit(stored: np.ndarray, ds: Any, window: str, counts: np.ndarray | None, source: str) -> np.ndarray:
    """Modality LUT then windowing of stored pixel values to [0, 1] (steps 2-3 of the module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if window == "auto" and "VOILUTSequence" in ds:
        out = np.asarray(apply_voi_lut(apply_modality_lut(stored, ds), ds, index=0), dtype=np.float64)
        return _stat_window(out, counts, "minmax")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if window == "auto" and "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR")
        try:
            return linear_window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function=function)
        except (ValueError, TypeError) as e:
            raise ImageError(f"{source}: invalid window: {e}") from e
    return _stat_window(values, counts, "minmax" if window == "auto" else window)


#: Integer images whose value range is at most this wide are windowed through a lookup table over their levels
#: (a 12-bit radiograph: 4096 entries instead of 5 million float operations per step).
_LUT_MAX_LEVELS = 1 << 20


def dicom_to_array(ds: Any, *, window: str = "auto", source: str = "?") -> np.ndarray:
    """8-bit grayscale (H, W) array of a pydicom dataset, following the module docstring's pipeline.

    Integer pixel data is mapped through a lookup table built over its stored levels — the same arithmetic per
    level as per pixel, so the result equals the direct computation — which makes windowing ~10x cheaper.
    """
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
    if "PixelData" not in ds:
        raise ImageError(f"{source}: DICOM has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # missing decoder plugin, corrupt data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageError(f"{source}: cannot decode DICOM pixel data (transfer syntax {name}): {e}") from e
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # colour DICOM (rare for radiographs): pixel_array is RGB already (pydicom converts YBR by default)
        if pixels.ndim == 3 and pixels.shape[-1] == 3:
            gray = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            return to_uint8(minmax_window(gray))
        raise ImageError(f"{source}: unsupported PhotometricInterpretation {photometric!r}")
    if pixels.ndim != 2 or pixels.size == 0:
        raise ImageError(f"{source}: expected a 2-D grayscale image, got pixel array of shape {pixels.shape}")
    invert = photometric == "MONOCHROME1"
    lo, hi = (int(pixels.min()), int(pixels.max())) if pixels.dtype.kind in "iu" else (0, -1)
    if pixels.dtype.kind not in "iu" or hi - lo >= _LUT_MAX_LEVELS:
        unit = _dicom_unit(pixels, ds, window, None, source)
        return to_uint8(1.0 - unit if invert else unit)
    # lookup table over the levels lo..hi (0..hi for unsigned data, so the pixels index it directly)
    base = 0 if pixels.dtype.kind == "u" else lo
    index = pixels if base == 0 else (pixels.astype(np.int64) - base)
    levels = np.arange(base, hi + 1, dtype=np.int64)
    needs_stats = not (window == "auto" and "VOILUTSequence" not in ds and "WindowCenter" in ds
                       and "WindowWidth" in ds)
    counts = np.bincount(index.ravel(), minlength=levels.size) if needs_stats else None
    unit = _dicom_unit(levels, ds, window, counts, source)
    return to_uint8(1.0 - unit if invert else unit)[index]


def load_dicom(path: str | os.PathLike | io.BytesIO, *, window: str = "auto", source: str | None = None) -> Image.Image:
    """Read a DICOM file (a path, or its bytes in a ``BytesIO``) and return its 8-bit grayscale image (full
    resolution). ``source`` names the input in errors (default: the path)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    source = source or str(path)
    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError) as e:
        raise ImageError(f"{source}: not a readable DICOM file: {type(e).__name__}: {e}") from e
    return Image.fromarray(dicom_to_array(ds, window=window, source=source), mode="L")


# ----------------------------------------------------------------------------------------------------------------------
# PNG / JPEG
# ----------------------------------------------------------------------------------------------------------------------


def normalise_mode(image: Image.Image, *, window: str = "auto") -> Image.Image:
    """8-bit "L" or "RGB": 16/32-bit and float grayscale are windowed (``auto`` = min-max); alpha is dropped."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(to_uint8(_window(values, "minmax" if window == "auto" else window)), mode="L")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


_EXIF_ORIENTATION = 0x0112


def load_raster(path: str | os.PathLike, *, window: str = "auto", max_pixels: int = 0
                ) -> tuple[Image.Image, tuple[int, int]]:
    """Read a PNG/JPEG (or any raster PIL opens) as 8-bit L/RGB, EXIF orientation applied; returns (image, original
    size). With ``max_pixels``, a JPEG at least 2x larger than the budget (per side) is decoded at 1/2, 1/4 or 1/8
    scale by the JPEG decoder itself (DCT scaling), still at least the budget size — a 2544x3056 MIMIC-CXR-JPG image
    decodes ~4x faster."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"{path}: cannot read image: {type(e).__name__}: {e}") from e
    return decode_raster(data, source=str(path), window=window, max_pixels=max_pixels)


def decode_raster(data: bytes, *, source: str, window: str = "auto", max_pixels: int = 0
                  ) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_raster` on bytes already in memory; ``source`` names them in errors."""
    try:
        image = Image.open(io.BytesIO(data))
        original = image.size
        if image.format == "JPEG":
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                original = (original[1], original[0])
            if max_pixels:
                w, h = fit_size(image.width, image.height, max_pixels)
                if w * 2 <= image.width and h * 2 <= image.height:
                    image.draft(image.mode, (w, h))
        image.load()
    except UnidentifiedImageError as e:
        raise ImageError(f"{source}: cannot decode image: not a recognised image format") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{source}: cannot decode image: {type(e).__name__}: {e}") from e
    if image.format == "JPEG":
        image = ImageOps.exif_transpose(image)
    return normalise_mode(image, window=window), original


def is_dicom_path(path: str | os.PathLike) -> bool:
    """DICOM by suffix, or by the 'DICM' magic at byte 128 for files without a known suffix."""
    p = str(path).lower()
    if p.endswith(DICOM_SUFFIXES):
        return True
    if p.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        return head[128:132] == b"DICM"
    except OSError:
        return False


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, window: str = "auto") -> LoadedImage:
    """Load any supported image as a :class:`LoadedImage` (8-bit, resized to the pixel budget, original size kept)."""
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
    path = str(path)
    if not os.path.isfile(path):
        raise ImageError(f"{path}: image file not found", "missing_image")
    if is_dicom_path(path):
        image = load_dicom(path, window=window)
        original = image.size
    else:
        image, original = load_raster(path, window=window, max_pixels=max_pixels)
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{path}: empty image")
    return LoadedImage(resize_to_budget(image, max_pixels, size=fit_size(*original, max_pixels)), original, path)


def is_dicom_bytes(data: bytes) -> bool:
    """The DICOM Part 10 'DICM' magic at byte 128."""
    return data[128:132] == b"DICM"


def load_image_bytes(data: bytes, *, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
                     window: str = "auto") -> LoadedImage:
    """:func:`load_image` for an image already in memory (an upload, a data URL): DICOM (recognised by its magic) or
    any raster PIL decodes; ``source`` names it in errors and in ``LoadedImage.path``."""
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
    if not data:
        raise ImageError(f"{source}: empty image data")
    if is_dicom_bytes(data):
        image = load_dicom(io.BytesIO(data), window=window, source=source)
        original = image.size
    else:
        image, original = decode_raster(data, source=source, window=window, max_pixels=max_pixels)
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{source}: empty image")
    return LoadedImage(resize_to_budget(image, max_pixels, size=fit_size(*original, max_pixels)), original, source)


class ImageLoader:
    """Loads images for one conversion unit with a small cache, so an image used by several samples of the unit is
    decoded once (and, being the same object, stored once by ``ShardWriter.write_group``)."""

    def __init__(self, *, max_pixels: int = DEFAULT_MAX_PIXELS, window: str = "auto", root: str | Path | None = None):
        if window not in WINDOW_MODES:
            raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
        self.max_pixels = int(max_pixels)
        self.window = window
        self.root = Path(root) if root else None
        self._cache: dict[str, LoadedImage] = {}
        self.loaded = 0

    def resolve(self, path: str | os.PathLike) -> str:
        p = Path(path)
        if not p.is_absolute() and self.root is not None:
            p = self.root / p
        return str(p)

    def __call__(self, path: str | os.PathLike) -> LoadedImage:
        full = self.resolve(path)
        hit = self._cache.get(full)
        if hit is None:
            hit = load_image(full, max_pixels=self.max_pixels, window=self.window)
            self._cache[full] = hit
            self.loaded += 1
        return hit

    def clear(self) -> None:
        self._cache.clear()
