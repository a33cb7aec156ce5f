"""Grounding metrics: IoU per sample, mIoU, and mAP at stated IoU thresholds.

Geometry follows ``torchvision.ops.box_iou``: boxes ``(x1, y1, x2, y2)`` with ``x1 <= x2``, ``y1 <= y2``, continuous
areas ``(x2 - x1) * (y2 - y1)`` (no "+1" pixel convention), IoU = intersection / union (torchvision gives NaN for two
zero-area boxes; here 0). Coordinates may be on the CheXagent 0-99 grid (percent of width/height, what the model
writes) or in pixels (:func:`grid_to_pixels` / :func:`pixels_to_grid` convert with the demo data's convention
``pixel = grid * size / 100``); IoU is invariant to that per-axis scaling.

``update(preds, targets)`` takes answer strings (``<|ref|>name<|/ref|><|box|>(x1,y1),(x2,y2)<|/box|>``..., or
"No {name} detected." for none; parsed with ``chexone.tasks.answers.parse_boxes``) or, per sample, a list of boxes
(``RefBox``, ``(name, [x1, y1, x2, y2])`` or bare ``[x1, y1, x2, y2]``) in any one frame.

* :class:`GroundingIoU` (``iou``): per-sample IoU of the *union* of predicted boxes with the union of true boxes
  (``mode="union"``, exact area of the union of rectangles; equals the plain IoU for one box each) or of the first
  box of each (``mode="first"``, as the GRPO reward). Samples whose truth has no box are skipped
  (``negatives="skip"``) or scored 1 when the prediction has no box and 0 otherwise (``negatives="score"``).
  ``compute()``: ``miou`` (primary) and ``acc@t`` = fraction with IoU >= t for ``acc_thresholds`` (default 0.5).
* :class:`GroundingMAP` (``map``): detection mAP. Per class (the ref name, case-insensitive; one class with
  ``class_agnostic=True``), predictions are matched greedily in score order to the unmatched true box of the same
  sample with the highest IoU >= t; AP = area under the precision envelope (all-point interpolation, VOC2010+/COCO
  style without 101-point sampling), with predictions of equal score taken as one operating point (generated boxes
  have no confidence: every box scores 1, so AP = precision x recall of the class). mAP = mean AP over classes with
  at least one true box; ``compute()`` gives ``map`` (mean over ``iou_thresholds``, primary) and ``map@t``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from chexone.metrics._common import check_pairs
from chexone.tasks.answers import RefBox, parse_boxes

__all__ = [
    "GroundingIoU",
    "GroundingMAP",
    "average_precision",
    "box_area",
    "box_iou",
    "grid_to_pixels",
    "match_detections",
    "pixels_to_grid",
    "to_boxes",
    "union_area",
    "union_iou",
]

Box = tuple[float, float, float, float]


# ------------------------------------------------------------------------------------------------ geometry
def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``[N, 4]`` boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor | Sequence[Box], boxes2: Tensor | Sequence[Box]) -> Tensor:
    """``[N, M]`` pairwise IoU, ``torchvision.ops.box_iou`` semantics (0 instead of NaN for empty unions)."""
    a = torch.as_tensor(boxes1, dtype=torch.float64).reshape(-1, 4)
    b = torch.as_tensor(boxes2, dtype=torch.float64).reshape(-1, 4)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(inter))


def union_area(boxes: Sequence[Box]) -> float:
    """Exact area of the union of axis-aligned rectangles (coordinate compression)."""
    boxes = [tuple(map(float, b)) for b in boxes if b[2] > b[0] and b[3] > b[1]]
    if not boxes:
        return 0.0
    xs = sorted({v for b in boxes for v in (b[0], b[2])})
    ys = sorted({v for b in boxes for v in (b[1], b[3])})
    area = 0.0
    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            cx, cy = (xs[i] + xs[i + 1]) / 2, (ys[j] + ys[j + 1]) / 2
            if any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes):
                area += (xs[i + 1] - xs[i]) * (ys[j + 1] - ys[j])
    return area


def _intersections(a: Sequence[Box], b: Sequence[Box]) -> list[Box]:
    out = []
    for p in a:
        for q in b:
            x1, y1, x2, y2 = max(p[0], q[0]), max(p[1], q[1]), min(p[2], q[2]), min(p[3], q[3])
            if x2 > x1 and y2 > y1:
                out.append((x1, y1, x2, y2))
    return out


def union_iou(pred: Sequence[Box], truth: Sequence[Box]) -> float:
    """IoU of the region covered by ``pred`` boxes with the region covered by ``truth`` boxes."""
    inter = union_area(_intersections(pred, truth))
    union = union_area(list(pred) + list(truth))
    return inter / union if union > 0 else 0.0


def grid_to_pixels(box: Sequence[float], width: float, height: float) -> Box:
    """0-99 grid (percent) -> pixels: ``x * width / 100``, ``y * height / 100``."""
    x1, y1, x2, y2 = box
    return (x1 * width / 100.0, y1 * height / 100.0, x2 * width / 100.0, y2 * height / 100.0)


def pixels_to_grid(box: Sequence[float], width: float, height: float) -> tuple[int, int, int, int]:
    """Pixels -> integer 0-99 grid (rounded, clamped), the inverse of :func:`grid_to_pixels` up to rounding."""
    from chexone.tasks.answers import clamp_grid

    x1, y1, x2, y2 = box
    return (clamp_grid(x1 * 100.0 / width), clamp_grid(y1 * 100.0 / height),
            clamp_grid(x2 * 100.0 / width), clamp_grid(y2 * 100.0 / height))


def to_boxes(item: Any) -> list[tuple[str, Box]]:
    """(name, box) pairs of one sample: an answer string, or a list of ``RefBox`` / ``(name, box)`` / ``box``."""
    if item is None:
        return []
    if isinstance(item, str):
        return [(b.name, tuple(float(v) for v in b.coords)) for b in parse_boxes(item)]  # type: ignore[misc]
    out: list[tuple[str, Box]] = []
    for b in item:
        if isinstance(b, RefBox):
            out.append((b.name, tuple(float(v) for v in b.coords)))  # type: ignore[arg-type]
        elif len(b) == 2 and isinstance(b[0], str):
            out.append((b[0], tuple(float(v) for v in b[1])))  # type: ignore[arg-type]
        else:
            out.append(("", tuple(float(v) for v in b)))  # type: ignore[arg-type]
    for _, (x1, y1, x2, y2) in out:
        if x2 < x1 or y2 < y1:
            raise ValueError(f"box ({x1}, {y1}, {x2}, {y2}) must have x1 <= x2 and y1 <= y2")
    return out


# ------------------------------------------------------------------------------------------------ IoU metric
class GroundingIoU(Metric):
    """Per-sample IoU and mIoU (see module docstring for ``mode`` and ``negatives``)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    primary = "miou"
    paired_test = "paired_t"

    def __init__(self, mode: str = "union", negatives: str = "skip", acc_thresholds: Sequence[float] = (0.5,),
                 **kwargs: Any):
        super().__init__(**kwargs)
        if mode not in ("union", "first"):
            raise ValueError(f"mode={mode!r}; choose 'union' or 'first'")
        if negatives not in ("skip", "score"):
            raise ValueError(f"negatives={negatives!r}; choose 'skip' or 'score'")
        self.mode, self.negatives = mode, negatives
        self.acc_thresholds = tuple(float(t) for t in acc_thresholds)
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def sample_iou(self, pred: Any, truth: Any) -> float | None:
        p = [b for _, b in to_boxes(pred)]
        t = [b for _, b in to_boxes(truth)]
        if not t:
            if self.negatives == "skip":
                return None
            return 1.0 if not p else 0.0
        if not p:
            return 0.0
        if self.mode == "first":
            return float(box_iou([p[0]], [t[0]])[0, 0])
        return union_iou(p, t)

    def score(self, preds: Sequence[Any], refs: Sequence[Any]) -> list[float | None]:
        return [self.sample_iou(p, t) for p, t in zip(preds, refs)]

    def update(self, preds: Sequence[Any], targets: Sequence[Any]) -> None:
        check_pairs(preds, targets)
        vals = self.score(preds, targets)
        kept = [v for v in vals if v is not None]
        self.skipped += len(vals) - len(kept)
        if kept:
            self.values.append(torch.tensor(kept, dtype=torch.float64))

    def per_sample(self) -> Tensor:
        if isinstance(self.values, Tensor):
            return self.values
        return dim_zero_cat(self.values) if self.values else torch.zeros(0, dtype=torch.float64)

    def compute(self) -> dict[str, Tensor]:
        v = self.per_sample()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        out = {"miou": v.mean() if v.numel() else nan}
        for t in self.acc_thresholds:
            out[f"acc@{t:g}"] = (v >= t).double().mean() if v.numel() else nan
        out["n"] = torch.tensor(v.numel())
        return out


# ------------------------------------------------------------------------------------------------ mAP
def average_precision(scores: Sequence[float], tp: Sequence[bool], n_true: int) -> float:
    """All-point-interpolated AP of detections with ``scores`` and true-positive flags, ``n_true`` true boxes.

    Detections with equal scores form one operating point (order among them does not matter). NaN if ``n_true`` is 0.
    """
    if n_true <= 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    recalls, precisions = [0.0], [1.0]
    ctp = cfp = 0
    i = 0
    while i < len(order):
        j = i
        s = float(scores[order[i]])
        while j < len(order) and float(scores[order[j]]) == s:
            if tp[order[j]]:
                ctp += 1
            else:
                cfp += 1
            j += 1
        recalls.append(ctp / n_true)
        precisions.append(ctp / (ctp + cfp))
        i = j
    # precision envelope, then area under the step curve over recall
    for k in range(len(precisions) - 2, -1, -1):
        precisions[k] = max(precisions[k], precisions[k + 1])
    return sum((recalls[k] - recalls[k - 1]) * precisions[k] for k in range(1, len(recalls)))


def match_detections(pred: Sequence[Box], truth: Sequence[Box], threshold: float,
                     scores: Sequence[float] | None = None) -> list[bool]:
    """Greedy matching in one sample and class: each prediction (score order, stable) takes the unmatched true box
    with the highest IoU if that IoU >= ``threshold``. Returns the true-positive flag of each prediction."""
    flags = [False] * len(pred)
    if not pred or not truth:
        return flags
    ious = box_iou(pred, truth)
    scores = list(scores) if scores is not None else [1.0] * len(pred)
    used = [False] * len(truth)
    for i in sorted(range(len(pred)), key=lambda k: -scores[k]):
        best, best_j = -1.0, -1
        for j in range(len(truth)):
            if not used[j] and float(ious[i, j]) >= threshold and float(ious[i, j]) > best:
                best, best_j = float(ious[i, j]), j
        if best_j >= 0:
            used[best_j] = True
            flags[i] = True
    return flags


def _class_id(name: str) -> int:
    return zlib.crc32(" ".join(name.lower().split()).encode())


class GroundingMAP(Metric):
    """mAP at ``iou_thresholds`` (default 0.5) over answer strings or box lists (see module docstring).

    States (all concatenated across ranks): per prediction its class id, score and true-positive flags (one per
    threshold); per true box its class id. Matching is done within each sample at ``update``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    primary = "map"

    def __init__(self, iou_thresholds: Sequence[float] = (0.5,), class_agnostic: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        if not self.iou_thresholds or not all(0 < t <= 1 for t in self.iou_thresholds):
            raise ValueError(f"iou_thresholds must be in (0, 1], got {iou_thresholds}")
        self.class_agnostic = bool(class_agnostic)
        self.add_state("pred_class", default=[], dist_reduce_fx="cat")
        self.add_state("pred_score", default=[], dist_reduce_fx="cat")
        self.add_state("pred_tp", default=[], dist_reduce_fx="cat")
        self.add_state("true_class", default=[], dist_reduce_fx="cat")

    def _cls(self, name: str) -> int:
        return 0 if self.class_agnostic else _class_id(name)

    def update(self, preds: Sequence[Any], targets: Sequence[Any], scores: Sequence[Sequence[float]] | None = None
               ) -> None:
        """``scores`` (optional): per sample, one confidence per predicted box (default 1.0 each)."""
        check_pairs(preds, targets)
        pc: list[int] = []
        ps: list[float] = []
        pt: list[list[bool]] = []
        tc: list[int] = []
        for k, (p, t) in enumerate(zip(preds, targets)):
            pb, tb = to_boxes(p), to_boxes(t)
            sc = list(scores[k]) if scores is not None else [1.0] * len(pb)
            if len(sc) != len(pb):
                raise ValueError(f"sample {k}: {len(sc)} scores for {len(pb)} predicted boxes")
            tc.extend(self._cls(n) for n, _ in tb)
            for cls in {self._cls(n) for n, _ in pb}:
                idx = [i for i, (n, _) in enumerate(pb) if self._cls(n) == cls]
                truth = [b for n, b in tb if self._cls(n) == cls]
                flags = [match_detections([pb[i][1] for i in idx], truth, thr, [sc[i] for i in idx])
                         for thr in self.iou_thresholds]
                for pos, i in enumerate(idx):
                    pc.append(cls)
                    ps.append(sc[i])
                    pt.append([f[pos] for f in flags])
        if pc:
            self.pred_class.append(torch.tensor(pc, dtype=torch.long))
            self.pred_score.append(torch.tensor(ps, dtype=torch.float64))
            self.pred_tp.append(torch.tensor(pt, dtype=torch.bool).reshape(-1, len(self.iou_thresholds)))
        if tc:
            self.true_class.append(torch.tensor(tc, dtype=torch.long))

    @staticmethod
    def _cat(state: Any, shape_tail: tuple = (), dtype: torch.dtype = torch.long) -> Tensor:
        if isinstance(state, Tensor):  # after a DDP sync; a rank without entries contributes an empty 1-d tensor
            return state.reshape((-1, *shape_tail)) if shape_tail else state.reshape(-1)
        return dim_zero_cat(state) if state else torch.zeros((0, *shape_tail), dtype=dtype)

    def compute(self) -> dict[str, Tensor]:
        pc = self._cat(self.pred_class)
        ps = self._cat(self.pred_score, dtype=torch.float64)
        pt = self._cat(self.pred_tp, (len(self.iou_thresholds),), torch.bool)
        tc = self._cat(self.true_class)
        classes = sorted(set(tc.tolist()))
        out: dict[str, Tensor] = {}
        maps = []
        for ti, thr in enumerate(self.iou_thresholds):
            aps = []
            for c in classes:
                n_true = int((tc == c).sum())
                sel = pc == c
                aps.append(average_precision(ps[sel].tolist(), pt[sel, ti].tolist(), n_true))
            m = sum(aps) / len(aps) if aps else float("nan")
            maps.append(m)
            out[f"map@{thr:g}"] = torch.tensor(m, dtype=torch.float64)
        out["map"] = torch.tensor(sum(maps) / len(maps) if not any(math.isnan(m) for m in maps) else float("nan"),
                                  dtype=torch.float64)
        out["n_classes"] = torch.tensor(len(classes))
        return out

