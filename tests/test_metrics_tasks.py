"""Accuracy / exact match, grounding IoU and mAP, self-consistency (hand-computed values, DDP-style reduction), the
RadCliQ-v1 golden values, and the metric registry entries (no optional package needed here)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torchmetrics import Metric

from chexone.metrics.classification import OTHER, Accuracy, ExactMatch
from chexone.metrics.grounding import (
    GroundingIoU,
    GroundingMAP,
    average_precision,
    box_iou,
    grid_to_pixels,
    pixels_to_grid,
    union_area,
    union_iou,
)
from chexone.metrics.radcliq import radcliq_v1
from chexone.metrics.reasoning import SelfConsistency, self_consistency
from chexone.metrics.testing import simulated_ranks
from chexone.tasks.answers import format_boxes

# ------------------------------------------------------------------------------------------------ classification
PREDS = ["(A) pneumonia", "B", "The answer is C.", "A, C", ""]
TARGETS = ["(A)", "(C)", "C", "(A), (C)", "(B)"]


def test_accuracy_and_per_option_confusion_by_hand():
    m = Accuracy()
    m.update(PREDS, TARGETS)
    out = m.compute()
    assert float(out["accuracy"]) == pytest.approx(3 / 5)
    assert (int(out["correct"]), int(out["total"])) == (3, 5)
    conf = out["confusion"]
    assert int(conf.sum()) == 5
    A, B, C = 0, 1, 2
    assert conf[A, A] == 1 and conf[C, B] == 1 and conf[C, C] == 1
    assert conf[OTHER, OTHER] == 1  # multi-answer question answered with two letters
    assert conf[B, OTHER] == 1  # nothing parsed
    prec, rec = out["option_precision"], out["option_recall"]
    assert float(prec[A]) == 1.0 and float(rec[A]) == 1.0  # A: tp 2
    assert float(prec[B]) == 0.0 and float(rec[B]) == 0.0  # B: tp 0, fp 1, fn 1
    assert float(prec[C]) == 1.0 and float(rec[C]) == pytest.approx(2 / 3)  # C: tp 2, fn 1
    assert math.isnan(float(prec[3]))  # D never seen
    assert m.per_sample().tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_accuracy_reduces_like_ddp_and_merges():
    r0, r1 = simulated_ranks(lambda **kw: Accuracy(**kw), 2)
    r0.update(PREDS[:2], TARGETS[:2])
    r1.update(PREDS[2:], TARGETS[2:])
    full = Accuracy()
    full.update(PREDS, TARGETS)
    for r in (r0, r1):
        out, ref = r.compute(), full.compute()
        assert float(out["accuracy"]) == pytest.approx(float(ref["accuracy"]))
        assert torch.equal(out["confusion"], ref["confusion"])
    a, b = Accuracy(), Accuracy()
    a.update(PREDS[:3], TARGETS[:3])
    b.update(PREDS[3:], TARGETS[3:])
    a.merge_state(b)
    assert torch.equal(a.compute()["confusion"], full.compute()["confusion"])


def test_exact_match_uses_the_task_parser():
    m = ExactMatch()
    m.update(["Left lower lobe.", "right", None], ["left  lower lobe", "left", "x"])
    assert m.per_sample().tolist() == [1.0, 0.0, 0.0]
    assert float(m.compute()) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------ grounding
def tv_box_iou(b1: list, b2: list) -> np.ndarray:
    """Hand-written torchvision.ops.box_iou (torchvision cannot be imported here)."""
    out = np.zeros((len(b1), len(b2)))
    for i, a in enumerate(b1):
        for j, b in enumerate(b2):
            area_a = (a[2] - a[0]) * (a[3] - a[1])
            area_b = (b[2] - b[0]) * (b[3] - b[1])
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = w * h
            out[i, j] = inter / (area_a + area_b - inter)
    return out


def random_boxes(rng: random.Random, n: int, hi: float = 99) -> list:
    out = []
    for _ in range(n):
        x1, x2 = sorted(rng.uniform(0, hi) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, hi) for _ in range(2))
        out.append((x1, y1, x2 + 0.5, y2 + 0.5))
    return out


def test_box_iou_matches_torchvision_semantics():
    rng = random.Random(0)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    a += [(0, 0, 10, 10), (0, 0, 10, 10), (20, 20, 30, 30)]
    b += [(10, 0, 20, 10), (2, 2, 5, 5)]  # touching edge (IoU 0), contained box
    np.testing.assert_allclose(box_iou(a, b).numpy(), tv_box_iou(a, b), atol=1e-12)
    assert float(box_iou([(0, 0, 10, 10)], [(5, 0, 15, 10)])[0, 0]) == pytest.approx(50 / 150)
    assert float(box_iou([(1, 1, 1, 1)], [(1, 1, 1, 1)])[0, 0]) == 0.0  # torchvision: nan


def raster_union_iou(pred: list, truth: list) -> float:
    """Independent check on integer boxes: count covered unit cells."""
    grid_p = np.zeros((100, 100), bool)
    grid_t = np.zeros((100, 100), bool)
    for g, boxes in ((grid_p, pred), (grid_t, truth)):
        for x1, y1, x2, y2 in boxes:
            g[int(y1):int(y2), int(x1):int(x2)] = True
    union = (grid_p | grid_t).sum()
    return float((grid_p & grid_t).sum() / union) if union else 0.0


def test_union_iou_by_hand_and_by_rasterisation():
    truth = [(0, 0, 10, 10), (5, 0, 15, 10)]
    assert union_area(truth) == 150
    assert union_iou([(0, 0, 15, 10)], truth) == pytest.approx(1.0)
    assert union_iou([(0, 0, 10, 10)], truth) == pytest.approx(100 / 150)
    rng = random.Random(1)
    for _ in range(40):
        p: list = []
        t: list = []
        for boxes, k in ((p, rng.randint(1, 3)), (t, rng.randint(1, 3))):
            for _ in range(k):
                x1, x2 = sorted(rng.sample(range(100), 2))
                y1, y2 = sorted(rng.sample(range(100), 2))
                boxes.append((x1, y1, x2, y2))
        assert union_iou(p, t) == pytest.approx(raster_union_iou(p, t), abs=1e-12)


def test_grid_and_pixel_frames_give_the_same_iou():
    rng = random.Random(2)
    w, h = 1024, 768
    def grid_box():
        x1, x2 = sorted(rng.sample(range(100), 2))
        y1, y2 = sorted(rng.sample(range(100), 2))
        return (x1, y1, x2, y2)

    for _ in range(20):
        ga, gb = grid_box(), grid_box()
        pa, pb = grid_to_pixels(ga, w, h), grid_to_pixels(gb, w, h)
        assert float(box_iou([pa], [pb])[0, 0]) == pytest.approx(float(box_iou([ga], [gb])[0, 0]), abs=1e-12)
        assert pixels_to_grid(pa, w, h) == ga
    m_grid, m_pix = GroundingIoU(), GroundingIoU()
    s_pred = format_boxes("effusion", [[10, 20, 50, 60]])
    s_true = format_boxes("effusion", [[15, 25, 55, 70]])
    m_grid.update([s_pred], [s_true])
    m_pix.update([[("effusion", grid_to_pixels((10, 20, 50, 60), w, h))]],
                 [[("effusion", grid_to_pixels((15, 25, 55, 70), w, h))]])
    assert float(m_grid.compute()["miou"]) == pytest.approx(float(m_pix.compute()["miou"]), abs=1e-12)


EFF, CARD = "pleural effusion", "cardiomegaly"
MAP_PREDS = [
    format_boxes(EFF, [[10, 10, 50, 45]]) + format_boxes(CARD, [[0, 0, 5, 5]]),
    format_boxes(EFF, [[60, 60, 90, 78], [60, 62, 90, 78]]),
    format_boxes(EFF, [[10, 10, 20, 20]]),
]
MAP_TRUTH = [
    format_boxes(EFF, [[10, 10, 50, 50]]) + format_boxes(CARD, [[30, 40, 70, 80]]),
    format_boxes(EFF, [[60, 60, 90, 90]]),
    f"No {EFF} detected.",
]


def test_map_by_hand():
    # effusion IoUs: 0.875 (s1), 0.6 and 0.533 against one box (s2: the second is a duplicate), s3 has no truth.
    # cardiomegaly: one prediction with IoU 0.
    m = GroundingMAP(iou_thresholds=(0.5, 0.7))
    m.update(MAP_PREDS, MAP_TRUTH)
    out = m.compute()
    # @0.5: effusion TP, TP, FP, FP of 2 true -> P 0.5, R 1 -> AP 0.5; cardiomegaly AP 0 -> mAP 0.25
    # @0.7: effusion TP, FP, FP, FP -> P 0.25, R 0.5 -> AP 0.125 -> mAP 0.0625
    assert float(out["map@0.5"]) == pytest.approx(0.25)
    assert float(out["map@0.7"]) == pytest.approx(0.0625)
    assert float(out["map"]) == pytest.approx((0.25 + 0.0625) / 2)
    assert int(out["n_classes"]) == 2
    agnostic = GroundingMAP(iou_thresholds=(0.5,), class_agnostic=True)
    agnostic.update(MAP_PREDS, MAP_TRUTH)
    # one class: 5 predictions (TP, FP, TP, FP, FP) of 3 true boxes -> P 2/5, R 2/3
    assert float(agnostic.compute()["map"]) == pytest.approx(2 / 5 * 2 / 3)


def test_average_precision_with_scores_by_hand():
    # (R, P) points: (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2) -> envelope area 1/3*1 + 1/3*2/3
    assert average_precision([0.9, 0.8, 0.7, 0.6], [True, False, True, False], 3) == pytest.approx(5 / 9)
    # ties form one operating point, whatever their order
    assert average_precision([1, 1, 1], [False, True, True], 2) == pytest.approx(2 / 3)
    assert average_precision([1, 1, 1], [True, True, False], 2) == pytest.approx(2 / 3)
    assert math.isnan(average_precision([1.0], [False], 0))


def test_map_scores_argument_and_ddp_reduction():
    m = GroundingMAP()
    m.update([MAP_PREDS[1]], [MAP_TRUTH[1]], scores=[[0.2, 0.9]])  # the duplicate is now ranked first
    # the higher-scored box (IoU 0.533) takes the truth: TP then FP -> P 1 at R 1 -> AP 1
    assert float(m.compute()["map"]) == pytest.approx(1.0)
    r0, r1 = simulated_ranks(lambda **kw: GroundingMAP(iou_thresholds=(0.5, 0.7), **kw), 2)
    r0.update(MAP_PREDS[:1], MAP_TRUTH[:1])
    r1.update(MAP_PREDS[1:], MAP_TRUTH[1:])
    assert float(r0.compute()["map"]) == pytest.approx((0.25 + 0.0625) / 2)
    # a rank that saw no box at all (empty states) still reduces
    e0, e1 = simulated_ranks(lambda **kw: GroundingMAP(iou_thresholds=(0.5, 0.7), **kw), 2)
    e0.update(MAP_PREDS, MAP_TRUTH)
    e1.update(["no box"], ["no box either"])
    whole = GroundingMAP(iou_thresholds=(0.5, 0.7))
    whole.update(MAP_PREDS, MAP_TRUTH)
    assert float(e1.compute()["map"]) == pytest.approx(float(whole.compute()["map"]))


def test_iou_metric_modes_negatives_and_sync():
    preds = [format_boxes(EFF, [[0, 0, 10, 10], [50, 50, 60, 60]]), "no box here", format_boxes(EFF, [[0, 0, 5, 5]]),
             f"No {EFF} detected."]
    truth = [format_boxes(EFF, [[0, 0, 10, 10]]), format_boxes(EFF, [[0, 0, 10, 10]]), f"No {EFF} detected.",
             f"No {EFF} detected."]
    union = GroundingIoU()
    union.update(preds, truth)
    assert union.per_sample().tolist() == pytest.approx([0.5, 0.0])  # extra box halves the union IoU
    assert int(union.skipped) == 2
    out = union.compute()
    assert float(out["miou"]) == pytest.approx(0.25) and float(out["acc@0.5"]) == pytest.approx(0.5)
    first = GroundingIoU(mode="first", negatives="score")
    first.update(preds, truth)
    assert first.per_sample().tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0])
    r0, r1 = simulated_ranks(lambda **kw: GroundingIoU(mode="first", negatives="score", **kw), 2)
    r0.update(preds[:1], truth[:1])
    r1.update(preds[1:], truth[1:])
    assert float(r1.compute()["miou"]) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ self-consistency
def test_self_consistency_by_hand():
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert self_consistency(["A", "A", "A", "B"], 4) == pytest.approx(1 - h / math.log(4))
    assert self_consistency(["A"] * 8, 5) == 1.0
    assert self_consistency(list("AABBCCDD"), 4) == pytest.approx(0.0, abs=1e-12)
    assert self_consistency(list("ABC"), 2) == 0.0  # more outcomes than options: clipped
    assert self_consistency(["A", "B"], 1) == 1.0

    m = SelfConsistency()
    m.update([["(A) x", "A", "A.", "B"], ["C", "C", None, "nonsense"]], [4, ["yes", "no", "maybe"]])
    # question 2: C twice, two unparsed answers (one outcome) -> p = (1/2, 1/2) over K = 3
    expected = [1 - h / math.log(4), 1 - math.log(2) / math.log(3)]
    assert m.per_sample().tolist() == pytest.approx(expected)
    assert float(m.compute()) == pytest.approx(sum(expected) / 2)
    with pytest.raises(TypeError):
        m.update(["A"], [4])


def test_every_builtin_metric_is_registered_and_importable_lazily():
    from chexone.builtin_plugins import BUILTIN_METRICS
    from chexone.registry import METRICS
    from chexone.tasks.builtin import BUILTIN_TASKS

    for task in BUILTIN_TASKS.values():
        for name in task.metrics:
            assert name in BUILTIN_METRICS, f"task {task.name} uses unregistered metric {name}"
    for name in BUILTIN_METRICS:
        obj = METRICS.get(name)
        assert isinstance(obj, type) and issubclass(obj, Metric), name


def test_radcliq_golden_values():
    assert radcliq_v1(1, 1, 1, 1) == pytest.approx(-1.4406903, abs=1e-7)
    assert radcliq_v1(0, 0, 0, 0) == pytest.approx(2.4501431, abs=1e-7)
    x = np.array([[0.2, 0.5, 0.7, 0.1], [0.9, 0.8, 0.95, 0.6]])
    assert radcliq_v1(*x.T) == pytest.approx([radcliq_v1(*row) for row in x])
