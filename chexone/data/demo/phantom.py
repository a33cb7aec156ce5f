"""Deterministic synthetic "phantom" chest radiographs (numpy + PIL), with findings drawn at known places.

Conventions
-----------
- Images are 8-bit grayscale (PIL mode ``"L"``), square, ``size`` pixels a side (default 112 = 8x8 patches of 14 px
  = 16 image tokens after the 2x2 merge of the tiny model). All geometry is in normalised image coordinates
  (x to the right, y downwards, both in [0, 1]), so any size renders the same picture.
- Frontal views (PA, AP) are displayed in the radiological convention: **the patient's left is on the image right**.
  Every ``side`` in this module ("left" / "right") is the *patient's* side; :func:`side_sign` maps it to the image
  (patient right -> image left, x < 0.5).
- Boxes are returned on the CheXagent 0-99 percent grid as integers ``[x1, y1, x2, y2]``, computed from the rendered
  finding's pixel mask (first pixel column * 100 / size ... last pixel column + 1, clamped to 99).
- Everything is a function of the :class:`Phantom` description; the only randomness is the numpy ``Generator``
  passed to :func:`random_anatomy` / :func:`random_findings` and the per-image noise seed stored in the phantom.

Intensity scale (before a global gain of 0.96-1.04 and a little noise/blur) — chosen so that findings are large and
high-contrast, and so the labels can be checked on the pixels:
background 6, soft tissue 40, rib cage / mediastinum 120, aerated lung 45 (+ribs, vessels), spine 155,
pleural effusion 160, heart 200, nodule 235, pneumothorax air 8 with a pleural line at 165.
The cardiothoracic ratio (heart width / outer rib-cage width at the heart's widest row) is > 0.5 exactly when
``Findings.cardiomegaly`` is true (enlarged: 0.56-0.64; normal PA 0.38-0.46, normal AP 0.42-0.48).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageFilter

from chexone.tasks.answers import clamp_grid

VIEWS = ("PA", "AP", "Lateral")
SIDES = ("right", "left")

# --------------------------------------------------------------------------- intensity levels (0-255)
BACKGROUND = 6.0
SOFT_TISSUE = 40.0
RIBCAGE = 120.0
LUNG = 45.0
RIB = 14.0  # added over lung
VESSEL = 22.0  # added over lung
SPINE = 155.0
CLAVICLE = 45.0  # added
SCAPULA = 25.0  # added (AP only, over the lateral upper lungs)
EFFUSION = 160.0
HEART = 200.0
NODULE = 235.0
PTX_AIR = 8.0
PLEURAL_LINE = 165.0
COLLAPSED_LUNG_EXTRA = 25.0
MARKER = 245.0

#: Threshold separating the heart (>= 192 after gain) from effusion / bone (<= 175 after gain).
HEART_THRESHOLD = 184.0
#: Threshold separating nodules (>= 225 after gain) from everything else in the lung zone (<= 210).
NODULE_THRESHOLD = 216.0

# --------------------------------------------------------------------------- fixed frontal geometry
LUNG_CY = 0.48  # vertical centre of the lung ellipses
LUNG_HH = 0.34  # lung ellipse half height (the diaphragm cuts the bottom)
LUNG_OFFSET = 0.19  # lung centre distance from the midline
LUNG_HW = 0.15
HEART_CY = 0.58  # the heart's widest row
HEART_HH = 0.13
HEART_SHIFT = 0.04  # heart centre is shifted to the patient's left (image right)
THORAX_CY = 0.54
THORAX_HH = 0.44
DIAPHRAGM_EDGE = 0.80  # diaphragm height at the lateral lung edge (costophrenic angle)
DIAPHRAGM_DOME = 0.07  # dome rise at the lung centre
HILUM_Y = 0.45


def side_sign(side: str) -> int:
    """Image-x direction of a patient side on a frontal view: patient right -> -1 (image left), left -> +1."""
    if side == "right":
        return -1
    if side == "left":
        return 1
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


@dataclass(frozen=True)
class Nodule:
    side: str
    cx: float  # normalised image x of the centre
    cy: float
    r: float  # radius, fraction of the image size

    @property
    def zone(self) -> str:
        return "upper" if self.cy < 0.34 else "mid"


@dataclass(frozen=True)
class Findings:
    """What is drawn. Sides are the patient's sides."""

    #: Effusion sides -> meniscus level L (normalised y of the effusion top at the medial end; it rises 0.10 laterally).
    effusions: dict = field(default_factory=dict)
    nodules: tuple = ()
    #: Pneumothorax side (at most one) and its size: the fraction of the lung width that has collapsed (0.35-0.5).
    pneumothorax: str | None = None
    pneumothorax_frac: float = 0.0
    #: Cardiothoracic ratio drawn (heart width / rib-cage width at the heart row). Ignored on lateral views.
    ctr: float = 0.42

    @property
    def cardiomegaly(self) -> bool:
        return self.ctr > 0.5

    @property
    def effusion_sides(self) -> list[str]:
        return [s for s in SIDES if s in self.effusions]

    @property
    def any_abnormality(self) -> bool:
        return bool(self.effusions or self.nodules or self.pneumothorax or self.cardiomegaly)

    def labels(self) -> dict:
        """Plain-JSON description (stored in sample meta)."""
        return {
            "effusion": self.effusion_sides,
            "effusion_level": {s: round(v, 4) for s, v in self.effusions.items()},
            "cardiomegaly": self.cardiomegaly,
            "ctr": round(self.ctr, 4),
            "pneumothorax": self.pneumothorax,
            "nodules": [{"side": n.side, "zone": n.zone, "r": round(n.r, 4)} for n in self.nodules],
        }


NO_FINDINGS = Findings()


@dataclass(frozen=True)
class Anatomy:
    """Per-patient jitter of the normal anatomy (kept small so the labels stay true)."""

    dx: float = 0.0  # global shift
    dy: float = 0.0
    thorax_hw: float = 0.42  # rib cage half width
    gain: float = 1.0
    vessel_angles: tuple = (-1.1, -0.6, -0.15, 0.3, 0.75, 1.15)
    rib_phase: float = 0.0


@dataclass(frozen=True)
class Phantom:
    view: str = "PA"
    anatomy: Anatomy = Anatomy()
    findings: Findings = NO_FINDINGS
    #: Seed of the pixel noise (so the same phantom always renders the same bytes).
    noise_seed: int = 0

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")


@dataclass
class Rendered:
    image: Image.Image
    #: Named pixel masks of the drawn findings (boolean HxW): "nodule:<i>", "effusion:<side>", "pneumothorax", "heart".
    masks: dict

    def box(self, key: str) -> list[int]:
        """0-99 grid box of a mask."""
        return mask_box(self.masks[key])

    def boxes(self, prefix: str) -> list[list[int]]:
        """Boxes of every mask whose name starts with ``prefix`` (e.g. "nodule", "effusion")."""
        return [mask_box(m) for k, m in sorted(self.masks.items()) if k.split(":")[0] == prefix and m.any()]


def mask_box(mask: np.ndarray) -> list[int]:
    """Integer [x1, y1, x2, y2] on the 0-99 percent grid covering the mask's pixels."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("empty mask has no box")
    return [
        clamp_grid(xs.min() * 100.0 / w),
        clamp_grid(ys.min() * 100.0 / h),
        clamp_grid((xs.max() + 1) * 100.0 / w),
        clamp_grid((ys.max() + 1) * 100.0 / h),
    ]


# --------------------------------------------------------------------------- random phantom descriptions

def random_anatomy(rng: np.random.Generator) -> Anatomy:
    base = np.array([-1.1, -0.6, -0.15, 0.3, 0.75, 1.15])
    return Anatomy(
        dx=float(rng.uniform(-0.015, 0.015)),
        dy=float(rng.uniform(-0.015, 0.015)),
        thorax_hw=float(rng.uniform(0.40, 0.43)),
        gain=float(rng.uniform(0.96, 1.04)),
        vessel_angles=tuple(float(a) for a in base + rng.uniform(-0.15, 0.15, size=base.size)),
        rib_phase=float(rng.uniform(-0.01, 0.01)),
    )


def random_ctr(rng: np.random.Generator, view: str, enlarged: bool) -> float:
    if enlarged:
        return float(rng.uniform(0.56, 0.64))
    return float(rng.uniform(0.42, 0.48) if view == "AP" else rng.uniform(0.38, 0.46))


def random_effusion_level(rng: np.random.Generator, size: str | None = None) -> float:
    """Meniscus level: "small" 0.71-0.74, "large" 0.54-0.57, None anywhere in 0.56-0.70."""
    if size == "small":
        return float(rng.uniform(0.71, 0.74))
    if size == "large":
        return float(rng.uniform(0.54, 0.57))
    return float(rng.uniform(0.56, 0.70))


def random_nodule(rng: np.random.Generator, side: str, r: float | None = None) -> Nodule:
    lung_cx = 0.5 + side_sign(side) * LUNG_OFFSET
    return Nodule(
        side=side,
        cx=float(lung_cx + rng.uniform(-0.4, 0.4) * LUNG_HW),
        cy=float(rng.uniform(0.27, 0.40)),
        r=float(r if r is not None else rng.uniform(0.06, 0.085)),
    )


class _Random:
    def __repr__(self):
        return "RANDOM"


#: Sentinel for :func:`random_findings`: draw this finding at random.
RANDOM = _Random()


def random_findings(
    rng: np.random.Generator,
    view: str = "PA",
    *,
    effusion=RANDOM,
    pneumothorax=RANDOM,
    nodules=RANDOM,
    cardiomegaly=RANDOM,
    p: float = 0.25,
) -> Findings:
    """Random findings for a frontal view, with some of them fixed.

    effusion: None | "left" | "right" | "both" | True (random side); pneumothorax: None | side | True;
    nodules: number of nodules (0-2, at most one per lung) or a list of sides; cardiomegaly: bool.
    Unfixed findings appear with probability ``p`` where they fit: a pneumothorax never shares a side with an
    effusion or a nodule. Raises ValueError when fixed findings conflict.
    """
    if view == "Lateral":
        raise ValueError("findings are only drawn on frontal views")
    pick = lambda: SIDES[int(rng.integers(2))]

    if effusion is RANDOM:
        effusion = pick() if rng.random() < p else None
    elif effusion is True:
        effusion = pick()
    eff_sides = list(SIDES) if effusion == "both" else ([effusion] if effusion else [])

    free = [s for s in SIDES if s not in eff_sides]
    if pneumothorax is RANDOM:
        pneumothorax = free[int(rng.integers(len(free)))] if free and rng.random() < p * 0.6 else None
    elif pneumothorax is True:
        if not free:
            raise ValueError("no side left for a pneumothorax")
        pneumothorax = free[int(rng.integers(len(free)))]
    if pneumothorax and pneumothorax in eff_sides:
        raise ValueError("pneumothorax and effusion on the same side")

    ok_sides = [s for s in SIDES if s != pneumothorax]
    if nodules is RANDOM:
        nodules = 1 if rng.random() < p else 0
    if isinstance(nodules, int):
        if nodules > len(ok_sides):
            raise ValueError(f"{nodules} nodules do not fit beside a pneumothorax")
        order = list(rng.permutation(len(ok_sides)))
        nodule_sides = sorted((ok_sides[i] for i in order[:nodules]), key=SIDES.index)
    else:
        nodule_sides = list(nodules)
        if pneumothorax in nodule_sides:
            raise ValueError("nodule on the pneumothorax side")
    if cardiomegaly is RANDOM:
        cardiomegaly = rng.random() < p

    return Findings(
        effusions={s: random_effusion_level(rng) for s in eff_sides},
        nodules=tuple(random_nodule(rng, s) for s in nodule_sides),
        pneumothorax=pneumothorax,
        pneumothorax_frac=float(rng.uniform(0.38, 0.5)) if pneumothorax else 0.0,
        ctr=random_ctr(rng, view, bool(cardiomegaly)),
    )


def random_phantom(rng: np.random.Generator, view: str = "PA", findings: Findings | None = None, **kw) -> Phantom:
    """A random patient; ``findings`` default to :func:`random_findings` (``kw`` forwarded) on frontal views."""
    if findings is None:
        findings = NO_FINDINGS if view == "Lateral" else random_findings(rng, view, **kw)
    return Phantom(view=view, anatomy=random_anatomy(rng), findings=findings, noise_seed=int(rng.integers(2**31)))


def follow_up(rng: np.random.Generator, prior: Phantom, findings: Findings) -> Phantom:
    """The same patient imaged again (tiny repositioning, new noise) with new findings."""
    a = prior.anatomy
    anatomy = replace(a, dx=a.dx + float(rng.uniform(-0.006, 0.006)), dy=a.dy + float(rng.uniform(-0.006, 0.006)))
    return replace(prior, anatomy=anatomy, findings=findings, noise_seed=int(rng.integers(2**31)))


# --------------------------------------------------------------------------- rendering helpers

def _grid(size: int):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)  # xx, yy


def _ellipse(xx, yy, cx, cy, hw, hh, power: float = 2.0):
    return (np.abs((xx - cx) / hw) ** 2 + np.abs((yy - cy) / hh) ** power) <= 1.0


def _segment(xx, yy, x0, y0, x1, y1, width):
    """Soft line of half-width ``width`` (0..1 profile) and the position t along it (computed in its bounding box)."""
    n = xx.shape[0]
    c0, c1 = max(0, int((min(x0, x1) - width) * n) - 1), min(n, int((max(x0, x1) + width) * n) + 2)
    r0, r1 = max(0, int((min(y0, y1) - width) * n) - 1), min(n, int((max(y0, y1) + width) * n) + 2)
    prof, t = np.zeros_like(xx), np.zeros_like(xx)
    if c0 >= c1 or r0 >= r1:
        return prof, t
    X, Y = xx[r0:r1, c0:c1], yy[r0:r1, c0:c1]
    dx, dy = x1 - x0, y1 - y0
    tt = np.clip(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    d = np.hypot(X - x0 - tt * dx, Y - y0 - tt * dy)
    prof[r0:r1, c0:c1] = np.clip(1.0 - d / width, 0.0, 1.0)
    t[r0:r1, c0:c1] = tt
    return prof, t


def _thorax_hw_at(anatomy: Anatomy, y: float) -> float:
    t = (y - (THORAX_CY + anatomy.dy)) / THORAX_HH
    return anatomy.thorax_hw * float(np.sqrt(max(0.0, 1.0 - t**4)))


def heart_half_width(anatomy: Anatomy, ctr: float) -> float:
    """Heart half width so that heart width / rib-cage width at the heart row == ctr."""
    return ctr * _thorax_hw_at(anatomy, HEART_CY + anatomy.dy)


def _finish(img: np.ndarray, phantom: Phantom, size: int) -> Image.Image:
    noise_rng = np.random.default_rng(phantom.noise_seed)
    img = img * phantom.anatomy.gain + noise_rng.normal(0.0, 2.5, size=img.shape)
    out = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="L")
    return out.filter(ImageFilter.GaussianBlur(radius=0.6 * size / 112))


def render(phantom: Phantom, size: int = 112) -> Rendered:
    """Draw the phantom; returns the image and the masks of what was drawn."""
    if size < 28:
        raise ValueError(f"image size {size} is too small (min 28)")
    if phantom.view == "Lateral":
        return _render_lateral(phantom, size)
    return _render_frontal(phantom, size)


def _render_frontal(ph: Phantom, size: int) -> Rendered:
    a, f = ph.anatomy, ph.findings
    ap = ph.view == "AP"
    xx, yy = _grid(size)
    mid, dy = 0.5 + a.dx, a.dy
    img = np.full((size, size), BACKGROUND, np.float32)
    masks: dict[str, np.ndarray] = {}

    # body envelope and rib cage (flattened ellipse)
    img[_ellipse(xx, yy, mid, THORAX_CY + dy + 0.02, a.thorax_hw + 0.055, THORAX_HH + 0.06, 4)] = SOFT_TISSUE
    thorax = _ellipse(xx, yy, mid, THORAX_CY + dy, a.thorax_hw, THORAX_HH, 4)
    img[thorax] = RIBCAGE

    # lungs: ellipses cut by the diaphragm domes (right hemidiaphragm slightly higher: liver)
    lung_hh = LUNG_HH - (0.03 if ap else 0.0)  # AP: poorer inspiration
    lungs, lung_cx = {}, {}
    for side in SIDES:
        cx = mid + side_sign(side) * LUNG_OFFSET
        lung_cx[side] = cx
        u = np.clip((xx - cx) / LUNG_HW, -1, 1)
        dome = DIAPHRAGM_EDGE + dy - DIAPHRAGM_DOME * (1 - u**2) - (0.015 if side == "right" else 0.0)
        lungs[side] = _ellipse(xx, yy, cx, LUNG_CY + dy, LUNG_HW, lung_hh) & (yy < dome) & thorax
    lung_any = lungs["right"] | lungs["left"]
    img[lung_any] = LUNG

    # pneumothorax: lateral + apical air without markings, collapsed lung medially with a pleural line
    air = np.zeros_like(lung_any)
    if f.pneumothorax:
        s, frac = f.pneumothorax, f.pneumothorax_frac
        o = side_sign(s)
        ccx = lung_cx[s] - o * frac * LUNG_HW
        chw, chh = LUNG_HW * (1 - frac), lung_hh * (1 - 0.55 * frac)
        ccy = LUNG_CY + dy + (lung_hh - chh) * 0.9
        q = np.sqrt(((xx - ccx) / chw) ** 2 + ((yy - ccy) / chh) ** 2)
        collapsed = lungs[s] & (q <= 1.0)
        air = lungs[s] & ~collapsed
        img[collapsed] += COLLAPSED_LUNG_EXTRA
        img[air] = PTX_AIR
        line_t = 1.6 / (size * chw)
        line = lungs[s] & (q > 1.0 - line_t) & (q <= 1.0)
        img[line] = PLEURAL_LINE
        masks["pneumothorax"] = air

    # ribs (faint arcs over the lungs, also over the pneumothorax air)
    rib = np.zeros_like(img)
    ax = np.abs(xx - mid)
    for k in range(8):
        y_k = 0.20 + 0.072 * k + a.rib_phase + dy
        yc = y_k - 0.10 * ax + 0.55 * ax**2
        rib = np.maximum(rib, np.clip(1.0 - np.abs(yy - yc) / 0.014, 0, 1))
    img += np.where(lung_any, RIB * rib, 0.0)

    # vessels fanning out from the hila (not in the pneumothorax air)
    ves = np.zeros_like(img)
    for side in SIDES:
        o = side_sign(side)
        hx, hy = mid + o * 0.08, HILUM_Y + dy
        for ang in a.vessel_angles:
            length = 0.17 if abs(ang) < 0.9 else 0.13
            x1, y1 = hx + o * length * np.cos(ang), hy + length * np.sin(ang)
            prof, t = _segment(xx, yy, hx, hy, x1, y1, 0.012)
            ves = np.maximum(ves, prof * (1.0 - 0.6 * t))
    img += np.where(lung_any & ~air, VESSEL * ves, 0.0)

    # trachea, spine, clavicles (+ scapulae on AP)
    trachea = (np.abs(xx - mid) < 0.018) & (yy > 0.06 + dy) & (yy < 0.36 + dy)
    img[trachea & thorax] = LUNG + 10
    spine = (np.abs(xx - mid) < 0.035) & thorax & ~trachea & (yy > 0.12 + dy)
    img[spine] = SPINE - 8 * (np.sin((yy[spine] - dy) * 2 * np.pi / 0.07) > 0.85)
    for o in (-1, 1):
        if ap:  # more horizontal, projected higher
            p, _ = _segment(xx, yy, mid + o * 0.05, 0.12 + dy, mid + o * 0.32, 0.10 + dy, 0.018)
        else:
            p, _ = _segment(xx, yy, mid + o * 0.05, 0.17 + dy, mid + o * 0.30, 0.125 + dy, 0.018)
        img += CLAVICLE * p * thorax
        if ap:
            scap = _ellipse(xx, yy, mid + o * 0.31, 0.30 + dy, 0.06, 0.15) & thorax
            img[scap] += SCAPULA

    # heart (shifted to the patient's left = image right) and its mask
    hhw = heart_half_width(a, f.ctr)
    heart_hh = HEART_HH + (0.01 if ap else 0.0)
    heart = _ellipse(xx, yy, mid + HEART_SHIFT, HEART_CY + dy, hhw, heart_hh) & thorax
    # effusions: lung base below a meniscus that rises laterally
    for side, level in f.effusions.items():
        lat = np.clip(side_sign(side) * (xx - lung_cx[side]) / LUNG_HW * 0.5 + 0.5, 0, 1)
        fluid = lungs[side] & (yy > level + dy - 0.10 * lat) & ~heart
        img[fluid] = EFFUSION + 12 * (yy[fluid] - level - dy)
        masks[f"effusion:{side}"] = fluid
    img[heart] = HEART
    masks["heart"] = heart

    # nodules last (on top of ribs/vessels)
    for i, n in enumerate(f.nodules):
        nod = ((xx - (n.cx + a.dx)) ** 2 + (yy - (n.cy + dy)) ** 2) <= n.r**2
        img[nod] = NODULE
        masks[f"nodule:{i}"] = nod

    # view markers: PA -> small "R" block at the top left; AP -> a long "AP PORTABLE" bar at the top right
    if ap:
        img[(xx > 0.68) & (xx < 0.95) & (yy > 0.03) & (yy < 0.085)] = MARKER
        img[(xx > 0.70) & (xx < 0.93) & (yy > 0.05) & (yy < 0.065)] = BACKGROUND
    else:
        img[(xx > 0.04) & (xx < 0.10) & (yy > 0.04) & (yy < 0.10)] = MARKER
        img[(xx > 0.06) & (xx < 0.08) & (yy > 0.06) & (yy < 0.10)] = BACKGROUND
    return Rendered(_finish(img, ph, size), masks)


def _render_lateral(ph: Phantom, size: int) -> Rendered:
    """Lateral view: one large lung field, heart anterior-inferior (image left), spine posterior (image right)."""
    a = ph.anatomy
    xx, yy = _grid(size)
    dx, dy = a.dx, a.dy
    img = np.full((size, size), BACKGROUND, np.float32)
    img[_ellipse(xx, yy, 0.50 + dx, 0.56 + dy, 0.42, 0.48, 4)] = SOFT_TISSUE
    thorax = _ellipse(xx, yy, 0.50 + dx, 0.53 + dy, 0.36, 0.43, 3)
    img[thorax] = RIBCAGE
    diaphragm = 0.76 + dy + 0.12 * (xx - 0.5 - dx)
    lung = _ellipse(xx, yy, 0.50 + dx, 0.46 + dy, 0.27, 0.31) & (yy < diaphragm) & thorax
    img[lung] = LUNG
    # oblique ribs
    rib = np.zeros_like(img)
    for k in range(7):
        yc = 0.20 + 0.08 * k + a.rib_phase + dy + 0.18 * (xx - 0.5 - dx)
        rib = np.maximum(rib, np.clip(1.0 - np.abs(yy - yc) / 0.012, 0, 1))
    img += np.where(lung, RIB * rib, 0.0)
    # trachea
    p, _ = _segment(xx, yy, 0.55 + dx, 0.05 + dy, 0.50 + dx, 0.36 + dy, 0.022)
    img = np.where((p > 0) & thorax, np.minimum(img, LUNG + 10), img)
    # heart anterior-inferior
    heart = _ellipse(xx, yy, 0.36 + dx, 0.62 + dy, 0.15, 0.15) & thorax
    img[heart] = HEART - 25
    # sternum (anterior, image left)
    p, _ = _segment(xx, yy, 0.165 + dx, 0.20 + dy, 0.185 + dx, 0.62 + dy, 0.015)
    img += 40 * p
    # vertebral bodies (posterior, image right)
    for k in range(11):
        y0 = 0.12 + dy + 0.072 * k
        body = (xx > 0.735 + dx) & (xx < 0.835 + dx) & (yy > y0) & (yy < y0 + 0.058)
        img[body] = SPINE + 15
    return Rendered(_finish(img, ph, size), {"heart": heart})
