"""Synthetic bedside chest radiographs with support devices drawn at known places (numpy + PIL only).

All geometry is in normalised image coordinates (x to the right, y downwards, both in [0, 1]); frontal AP view in
the radiological convention, so the **patient's right is on the image left**. The anatomy is deliberately simple:
thorax, lungs, mediastinum, heart, trachea dividing at the carina (:data:`CARINA_Y`) and the diaphragm
(:data:`DIAPHRAGM_Y`, the stomach below it on the image right). Devices are radiopaque (bright) lines and shapes
whose tips sit where their label says:

============================  ====================================================================================
device / position             tip
============================  ====================================================================================
ETT well positioned           mid trachea, 0.07-0.12 above the carina
ETT malpositioned             ``high``: above the thoracic inlet (y 0.08-0.12); ``bronchus``: right main bronchus
NGT well positioned           in the stomach, below the diaphragm
NGT malpositioned             ``oesophagus``: above the diaphragm (y 0.50-0.62); ``bronchus``: right lower lobe
CVC well positioned           lower SVC / cavo-atrial junction (y 0.40-0.46)
CVC malpositioned             ``neck``: turned up into the internal jugular vein; ``deep``: right heart (y 0.60-0.66)
chest tube                    from the lateral chest wall up to the apex, on one side
pacemaker                     generator under the left clavicle (image right), lead to the right ventricle
============================  ====================================================================================

:func:`render` returns the image and one pixel mask per drawn device, so tests can check every label on the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CARINA_Y = 0.36
DIAPHRAGM_Y = 0.78
THORACIC_INLET_Y = 0.14

BACKGROUND, SOFT_TISSUE, RIBCAGE, LUNG, MEDIASTINUM, HEART, AIRWAY, ABDOMEN = 6, 40, 110, 45, 150, 185, 30, 95
DEVICE = 240

#: Device -> possible positions ("ok" = well positioned). Presence-only devices have the single position "present".
POSITIONS: dict[str, tuple[str, ...]] = {
    "ett": ("ok", "high", "bronchus"),
    "ngt": ("ok", "oesophagus", "bronchus"),
    "cvc": ("ok", "neck", "deep"),
    "chest_tube": ("left", "right"),
    "pacemaker": ("present",),
}


@dataclass(frozen=True)
class Device:
    kind: str  # a key of POSITIONS
    position: str
    #: Polyline (normalised points), tip last.
    path: tuple[tuple[float, float], ...]
    #: Line width as a fraction of the image size.
    width: float

    @property
    def tip(self) -> tuple[float, float]:
        return self.path[-1]

    @property
    def well_positioned(self) -> bool:
        return self.position == "ok"


@dataclass(frozen=True)
class Film:
    """One radiograph: anatomy jitter, devices, noise seed."""

    dx: float = 0.0
    dy: float = 0.0
    gain: float = 1.0
    devices: tuple[Device, ...] = ()
    noise_seed: int = 0

    def device(self, kind: str) -> Device | None:
        return next((d for d in self.devices if d.kind == kind), None)


@dataclass
class Rendered:
    image: Image.Image
    #: kind -> boolean HxW mask of the device's pixels
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def make_device(kind: str, position: str, rng: np.random.Generator, dx: float = 0.0, dy: float = 0.0) -> Device:
    """A device of ``kind`` at ``position`` (see :data:`POSITIONS`), with a little random jitter."""
    if position not in POSITIONS.get(kind, ()):
        raise ValueError(f"device {kind!r} has no position {position!r}; choose from {POSITIONS.get(kind)}")
    mid = 0.5 + dx
    cy = CARINA_Y + dy
    if kind == "ett":
        if position == "ok":
            pts = [(mid, 0.0), (mid, cy - _u(rng, 0.07, 0.12))]
        elif position == "high":
            pts = [(mid, 0.0), (mid, _u(rng, 0.08, 0.12) + dy)]
        else:  # right main bronchus: image left of the carina, below it
            pts = [(mid, 0.0), (mid, cy - 0.01), (mid - _u(rng, 0.08, 0.10), cy + _u(rng, 0.08, 0.10))]
        return Device(kind, position, tuple(pts), 0.022)
    if kind == "ngt":
        x = mid + 0.03
        if position == "ok":
            pts = [(x, 0.0), (x, 0.55 + dy), (x + 0.01, DIAPHRAGM_Y + dy), (x + 0.07, DIAPHRAGM_Y + 0.06 + dy),
                   (x + _u(rng, 0.12, 0.15), DIAPHRAGM_Y + _u(rng, 0.07, 0.10) + dy)]
        elif position == "oesophagus":
            pts = [(x, 0.0), (x, _u(rng, 0.50, 0.62) + dy)]
        else:  # down the right main bronchus into the right lower lobe
            pts = [(mid, 0.0), (mid, cy - 0.01), (mid - _u(rng, 0.12, 0.15), cy + _u(rng, 0.20, 0.25))]
        return Device(kind, position, tuple(pts), 0.012)
    if kind == "cvc":  # right subclavian approach (image left), down the SVC just right of the midline
        x = mid - 0.04
        start = [(0.10 + dx, 0.20 + dy), (0.30 + dx, 0.22 + dy), (x - 0.01, 0.27 + dy)]
        if position == "ok":
            pts = start + [(x, _u(rng, 0.40, 0.46) + dy)]
        elif position == "neck":
            pts = start[:2] + [(x - 0.02, 0.25 + dy), (x - 0.03, _u(rng, 0.03, 0.06))]
        else:
            pts = start + [(x, 0.50 + dy), (x + 0.03, _u(rng, 0.60, 0.66) + dy)]
        return Device(kind, position, tuple(pts), 0.011)
    if kind == "chest_tube":
        s = 1.0 if position == "left" else -1.0  # patient left = image right
        pts = [(0.5 + s * 0.45 + dx, 0.72 + dy), (0.5 + s * 0.34 + dx, 0.66 + dy), (0.5 + s * 0.28 + dx, 0.45 + dy),
               (0.5 + s * _u(rng, 0.22, 0.26) + dx, _u(rng, 0.20, 0.24) + dy)]
        return Device(kind, position, tuple(pts), 0.03)
    if kind == "pacemaker":
        pts = [(0.78 + dx, 0.13 + dy), (0.62 + dx, 0.22 + dy), (0.53 + dx, 0.32 + dy), (0.51 + dx, 0.55 + dy),
               (0.57 + dx, _u(rng, 0.66, 0.70) + dy)]
        return Device(kind, position, tuple(pts), 0.01)
    raise ValueError(f"unknown device kind {kind!r}; choose from {sorted(POSITIONS)}")


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, hw: float, hh: float) -> np.ndarray:
    return ((xx - cx) / hw) ** 2 + ((yy - cy) / hh) ** 2 <= 1.0


def _anatomy(film: Film, size: int) -> np.ndarray:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    xx, yy = np.meshgrid(c, c)
    mid, dy = 0.5 + film.dx, film.dy
    img = np.full((size, size), BACKGROUND, np.float32)
    img[_ellipse(xx, yy, mid, 0.56 + dy, 0.47, 0.52)] = SOFT_TISSUE
    img[_ellipse(xx, yy, mid, 0.52 + dy, 0.42, 0.42)] = RIBCAGE
    for side in (-1, 1):
        lung = _ellipse(xx, yy, mid + side * 0.19, 0.47 + dy, 0.15, 0.32) & (yy < DIAPHRAGM_Y + dy)
        img[lung] = LUNG
    img[(np.abs(xx - mid) < 0.06) & (yy > THORACIC_INLET_Y + dy) & (yy < DIAPHRAGM_Y + dy)] = MEDIASTINUM
    img[_ellipse(xx, yy, mid + 0.05, 0.62 + dy, 0.15, 0.12)] = HEART
    trachea = (np.abs(xx - mid) < 0.018) & (yy < CARINA_Y + dy)
    img[trachea] = AIRWAY
    img[(yy > DIAPHRAGM_Y + dy) & _ellipse(xx, yy, mid, 0.56 + dy, 0.47, 0.52)] = ABDOMEN
    img[_ellipse(xx, yy, mid + 0.2, DIAPHRAGM_Y + 0.08 + dy, 0.09, 0.05)] = 20  # gastric bubble
    return img


def _draw(device: Device, size: int) -> np.ndarray:
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    pts = [(x * size, y * size) for x, y in device.path]
    width = max(1, round(device.width * size))
    draw.line(pts, fill=255, width=width, joint="curve")
    r = width / 2
    tx, ty = pts[-1]
    draw.ellipse([tx - r, ty - r, tx + r, ty + r], fill=255)  # a round tip, exactly at the path's end
    if device.kind == "pacemaker":
        gx, gy = pts[0]
        draw.rounded_rectangle([gx - 0.07 * size, gy - 0.04 * size, gx + 0.05 * size, gy + 0.04 * size],
                               radius=max(1, size // 40), fill=255)
    return np.asarray(layer) > 0


def render(film: Film, size: int = 112) -> Rendered:
    """Draw the film; returns the 8-bit grayscale image and the mask of every device."""
    if size < 56:
        raise ValueError(f"image size {size} is too small (min 56)")
    img = _anatomy(film, size)
    masks = {}
    for d in film.devices:
        mask = _draw(d, size)
        masks[d.kind] = mask
        img[mask] = DEVICE
    noise = np.random.default_rng(film.noise_seed).normal(0.0, 2.5, size=img.shape)
    out = Image.fromarray(np.clip(np.rint(img * film.gain + noise), 0, 255).astype(np.uint8))
    return Rendered(out.filter(ImageFilter.GaussianBlur(radius=0.5 * size / 112)), masks)
