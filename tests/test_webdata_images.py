"""webdata.images: DICOM windowing (values computed by hand from the DICOM formula), MONOCHROME1 inversion, 16-bit to
8-bit, rescale slope/intercept, resizing to the pixel budget, broken files named in errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webdata.images import (
    ImageError,
    ImageLoader,
    fit_size,
    linear_window,
    load_image,
    to_uint8,
)
from webdata.synthetic import write_dicom, write_jpeg, write_png

pydicom = pytest.importorskip("pydicom")


def row_image(values: list[int], height: int = 4) -> np.ndarray:
    """A (height, len(values)) uint16 image whose every row is ``values``."""
    return np.tile(np.array(values, dtype=np.uint16), (height, 1))


def first_row(path, **kw) -> list[int]:
    return np.asarray(load_image(path, max_pixels=0, **kw).image)[0].tolist()


def test_linear_window_matches_dicom_formula_by_hand():
    # c=1000, w=200: y = (x - 999.5)/199 + 0.5, clipped. x=950 -> 0.25126 -> 64; x=1000 -> 0.50251 -> 128.
    got = to_uint8(linear_window(np.array([899.0, 950.0, 1000.0, 1100.0]), 1000, 200)).tolist()
    assert got == [0, 64, 128, 255]
    # LINEAR_EXACT: y = (x - c)/w + 0.5 -> x=950: 0.25 -> 63.75 -> 64 ; x=1050: 0.75 -> 191.25 -> 191
    assert to_uint8(linear_window(np.array([950.0, 1050.0]), 1000, 200, function="LINEAR_EXACT")).tolist() == [64, 191]
    with pytest.raises(ValueError):
        linear_window(np.zeros(2), 0, 0)


def test_dicom_12bit_window_monochrome2_and_monochrome1(tmp_path):
    values = [0, 1024, 2048, 4095]
    # window c=2048, w=4096: 0 -> 0; 1024 -> (1024-2047.5)/4095+0.5 = 0.25006 -> 64; 2048 -> 0.50012 -> 128; 4095 -> 255
    m2 = write_dicom(tmp_path / "m2.dcm", row_image(values), window=(2048, 4096))
    assert first_row(m2) == [0, 64, 128, 255]
    # MONOCHROME1: low values are bright, so the same pixels come out inverted
    m1 = write_dicom(tmp_path / "m1.dcm", row_image(values), photometric="MONOCHROME1", window=(2048, 4096))
    assert first_row(m1) == [255, 191, 127, 0]


def test_dicom_without_window_uses_min_max_and_other_modes(tmp_path):
    # no window: min-max over the pixels: 1000/4000*255 = 63.75 -> 64
    path = write_dicom(tmp_path / "nowin.dcm", row_image([0, 1000, 2000, 4000]))
    assert first_row(path) == [0, 64, 128, 255]
    # a window present but --window minmax ignores it
    path = write_dicom(tmp_path / "win.dcm", row_image([0, 1000, 2000, 4000]), window=(1000, 200))
    assert first_row(path) == [0, 128, 255, 255]  # c=1000: 1000 -> 0.5025 -> 128
    assert first_row(path, window="minmax") == [0, 64, 128, 255]


def test_dicom_rescale_slope_intercept_before_window(tmp_path):
    # stored 500 -> 2*500 - 1000 = 0 HU; window c=0, w=1000: 0 HU -> (0+0.5)/999+0.5 = 0.5005 -> 128
    path = write_dicom(tmp_path / "hu.dcm", row_image([0, 250, 500, 1000]), window=(0, 1000), rescale=(2, -1000),
                       extra={"RescaleType": "HU"})
    # -1000 HU -> 0 ; -500 HU -> (-500+0.5)/999+0.5 = 0.0 (clipped) -> 0; 0 HU -> 128; 1000 HU -> 255
    assert first_row(path) == [0, 0, 128, 255]


def test_sixteen_bit_png_is_scaled_not_truncated(tmp_path):
    path = write_png(tmp_path / "x16.png", row_image([0, 1000, 2000, 4000]))
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path, max_pixels=0)
    assert loaded.image.mode == "L"
    assert np.asarray(loaded.image)[0].tolist() == [0, 64, 128, 255]


def test_jpeg_and_png_load_as_8bit_gray(tmp_path):
    arr = np.full((10, 20), 77, np.uint8)
    for path in (write_png(tmp_path / "a.png", arr), write_jpeg(tmp_path / "a.jpg", arr)):
        loaded = load_image(path)
        assert loaded.image.mode == "L" and loaded.image.size == (20, 10) and loaded.original_size == (20, 10)
        assert abs(int(np.asarray(loaded.image).mean()) - 77) <= 1


def test_resize_keeps_aspect_and_budget(tmp_path):
    # 2048 x 2500 with 262144 pixels: scale = sqrt(262144 / 5120000) = 0.226274 -> 463 x 565 = 261595 <= 262144
    assert fit_size(2048, 2500, 262144) == (463, 565)
    assert fit_size(500, 400, 262144) == (500, 400)  # fits: unchanged
    assert fit_size(1000, 800, 262144) == (572, 457)
    arr = (np.arange(800 * 1000) % 4096).astype(np.uint16).reshape(800, 1000)
    loaded = load_image(write_dicom(tmp_path / "big.dcm", arr), max_pixels=262144)
    assert loaded.image.size == (572, 457) and loaded.original_size == (1000, 800)
    assert loaded.image.width * loaded.image.height <= 262144


def test_broken_files_raise_image_error_naming_the_path(tmp_path):
    bad_png = tmp_path / "broken.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(ImageError, match="broken.png") as e:
        load_image(bad_png)
    assert e.value.reason == "bad_image"
    not_dicom = tmp_path / "nodata.dcm"
    not_dicom.write_bytes(b"this is not a dicom file at all")
    with pytest.raises(ImageError, match="nodata.dcm"):
        load_image(not_dicom)
    with pytest.raises(ImageError, match="missing.jpg") as e:
        load_image(tmp_path / "missing.jpg")
    assert e.value.reason == "missing_image"


def test_loader_caches_within_a_unit(tmp_path):
    path = write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    loader = ImageLoader(root=tmp_path)
    a, b = loader("a.png"), loader(str(path))
    assert a is b and loader.loaded == 1
    loader.clear()
    assert loader("a.png") is not a and loader.loaded == 2


@pytest.mark.parametrize("window", ["auto", "minmax", "percentile"])
@pytest.mark.parametrize("kind", ["mono2-window", "mono1-rescale", "signed"])
def test_lookup_table_path_equals_direct_arithmetic(tmp_path, window, kind):
    """The fast path (a lookup table over stored levels) gives the same bytes as windowing every pixel."""
    from webdata.images import _dicom_unit, dicom_to_array

    rng = np.random.default_rng(0)
    if kind == "signed":
        pixels = rng.integers(-1500, 2500, size=(37, 41)).astype(np.int16)
        path = write_dicom(tmp_path / "s.dcm", pixels, extra={"PixelRepresentation": 1}, window=(300, 1500))
    elif kind == "mono1-rescale":
        pixels = rng.integers(0, 4096, size=(37, 41)).astype(np.uint16)
        path = write_dicom(tmp_path / "r.dcm", pixels, photometric="MONOCHROME1", rescale=(0.5, -100))
    else:
        pixels = (rng.normal(2000, 400, size=(37, 41)).clip(0, 4095)).astype(np.uint16)
        path = write_dicom(tmp_path / "w.dcm", pixels, window=(2100, 900))
    ds = pydicom.dcmread(path)
    if kind == "signed":
        assert ds.pixel_array.min() < 0
    fast = dicom_to_array(ds, window=window).astype(int)
    unit = _dicom_unit(ds.pixel_array, ds, window, None, "x")
    direct = to_uint8(1.0 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit).astype(int)
    tolerance = 1 if window == "percentile" else 0  # float rounding of the interpolated percentile
    assert fast.shape == direct.shape and np.abs(fast - direct).max() <= tolerance
    assert len(np.unique(fast)) > 50  # not a degenerate image


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_result(tmp_path):
    from webdata.images import resize_to_budget
    from webdata.synthetic import phantom

    pixels = (phantom(2544, 3056, bits=8, seed=3)).astype(np.uint8)
    path = write_jpeg(tmp_path / "big.jpg", pixels)
    fast = load_image(path, max_pixels=262144)
    # 2544 x 3056 -> sqrt(262144 / 7774464) = 0.18363 -> 467 x 561 (= 261987 pixels)
    assert fast.original_size == (2544, 3056) and fast.image.size == (467, 561) == fit_size(2544, 3056, 262144)
    full = resize_to_budget(Image.open(path).convert("L"), 262144)  # decoded at full size, then resized
    diff = np.abs(np.asarray(fast.image, float) - np.asarray(full, float))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 6
