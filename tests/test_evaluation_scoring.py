"""Scoring of predictions by the evaluation harness, against hand-computed values and scipy (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chexone.evaluation.predict import Prediction
from chexone.evaluation.scoring import row_indices, score_predictions
from chexone.tasks import get_task


def pred(i, task, final, reference, *, output=None, meta=None, samples=None, well_formed=True):
    return Prediction(id=f"s{i}", task=task, family=get_task(task).family, dataset="t", prompt="q", reasoning=True,
                      output=output if output is not None else f"\\boxed{{{final}}}", final=final, parsed=None,
                      reference=reference, well_formed=well_formed, truncated=False, meta=dict(meta or {}),
                      samples=samples)


def mc_predictions():
    # close_vqa: 3 of 4 right; view_classification: 1 of 2 right
    return [
        pred(0, "close_vqa", "(A) yes", "(A) yes", meta={"question_type": "presence"}),
        pred(1, "close_vqa", "B", "(B) no", meta={"question_type": "presence"}),
        pred(2, "close_vqa", "(A)", "(B) no", meta={"question_type": "negation"}),
        pred(3, "close_vqa", "(C) left", "(C) left", meta={"question_type": "negation"}),
        pred(4, "view_classification", "(A) PA", "(A) PA"),
        pred(5, "view_classification", None, "(B) AP"),
    ]


def test_accuracy_rows_by_task_and_group_are_hand_values():
    preds = mc_predictions()
    s = score_predictions(preds, get_task, group_by="question_type", n_resamples=0)
    assert s.rows["all"]["accuracy"].value == pytest.approx(4 / 6)
    assert s.rows["all"]["accuracy"].n == 6
    assert s.rows["task=close_vqa"]["accuracy"].value == pytest.approx(3 / 4)
    assert s.rows["task=view_classification"]["accuracy"].value == pytest.approx(1 / 2)
    assert s.rows["question_type=presence"]["accuracy"].value == pytest.approx(1.0)
    assert s.rows["question_type=negation"]["accuracy"].value == pytest.approx(0.5)
    assert s.rows["question_type=(none)"]["accuracy"].value == pytest.approx(0.5)
    assert [p.scores["accuracy"] for p in preds] == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert s.rows["all"]["accuracy"].low is None  # n_resamples=0: no CI
    # compute() details are kept per task (confusion etc.)
    close = {m.name: m for m in s.by_task["close_vqa"]}["accuracy"]
    assert close.details["accuracy"] == pytest.approx(0.75) and close.details["total"] == 4


def test_majority_baseline_per_task_and_question_type():
    from chexone.evaluation.scoring import majority_baseline_of

    # groups: close_vqa/presence {A, B} -> 1 hit; close_vqa/negation {B, C} -> 1; view_classification/ {A, B} -> 1
    assert majority_baseline_of(mc_predictions(), get_task) == pytest.approx(3 / 6)
    same = [pred(i, "close_vqa", "A", ref) for i, ref in enumerate(["(A) yes", "A", "(B) no"])]
    assert majority_baseline_of(same, get_task) == pytest.approx(2 / 3)  # "(A) yes" and "A" are one answer


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 40)
    right = rng.random(40) < 0.7
    preds = [pred(i, "close_vqa", "A" if (t == 0) == r else "B", "A" if t == 0 else "B")
             for i, (t, r) in enumerate(zip(truth, right))]
    s = score_predictions(preds, get_task, n_resamples=1000, seed=7)
    est = s.rows["all"]["accuracy"]
    values = np.array([p.scores["accuracy"] for p in preds])
    ref = scipy_stats.bootstrap((values,), np.mean, n_resamples=1000, method="percentile",
                                rng=np.random.default_rng(7), vectorized=True)
    assert est.value == pytest.approx(values.mean())
    assert est.low == pytest.approx(ref.confidence_interval.low)
    assert est.high == pytest.approx(ref.confidence_interval.high)


def test_grounding_iou_and_corpus_map_pooled_across_tasks():
    box = "<|ref|>nodule<|/ref|><|box|>({},{}),({},{})<|/box|>".format
    preds = [
        # IoU = 1
        pred(0, "phrase_grounding", box(10, 10, 30, 30), box(10, 10, 30, 30)),
        # pred (10,10)-(30,30) vs truth (20,10)-(40,30): inter 10x20=200, union 600 -> 1/3 (below 0.5: a false positive)
        pred(1, "abnormality_grounding", box(10, 10, 30, 30), box(20, 10, 40, 30)),
        # no prediction for a true box: IoU 0, one missed true box
        pred(2, "abnormality_grounding", "No nodule detected.", box(50, 50, 60, 60)),
    ]
    s = score_predictions(preds, get_task, metrics=["iou", "map"], n_resamples=0)
    assert [p.scores["iou"] for p in preds] == pytest.approx([1.0, 1 / 3, 0.0])
    assert s.rows["all"]["iou"].value == pytest.approx((1 + 1 / 3) / 3)
    # mAP@0.5 over all three samples, one class: 2 predictions (1 TP then 1 FP at equal score), 3 true boxes:
    # one operating point, precision 1/2, recall 1/3 -> AP = 1/2 * 1/3
    assert s.rows["all"]["map"].value == pytest.approx(1 / 6)
    # per task: phrase grounding AP = 1; abnormality grounding: 1 FP, 2 true boxes -> 0
    assert s.rows["task=phrase_grounding"]["map"].value == pytest.approx(1.0)
    assert s.rows["task=abnormality_grounding"]["map"].value == pytest.approx(0.0)
    assert "map" not in preds[0].scores  # corpus-only: no per-sample score


def test_corpus_only_metric_gets_a_resampling_ci():
    box = "<|ref|>a<|/ref|><|box|>({},{}),({},{})<|/box|>".format
    preds = [pred(i, "phrase_grounding", box(0, 0, 10, 10), box(0, 0, 10, 10) if i % 2 else box(50, 50, 60, 60))
             for i in range(10)]
    s = score_predictions(preds, get_task, metrics=["map"], n_resamples=200)
    est = s.rows["all"]["map"]
    assert est.value == pytest.approx(0.5 * 0.5)  # precision 1/2 at recall 1/2
    assert est.low is not None and est.low <= est.value <= est.high


def test_radcliq_corpus_value_is_inverse_mean_of_per_sample_scores():
    from chexone.metrics.radcliq import RadCliQ

    assert RadCliQ.corpus_statistic(np.array([0.5, 1.5])) == pytest.approx(1.0)
    dist = RadCliQ.corpus_statistic(np.array([[1.0, 3.0], [2.0, 2.0]]), axis=-1)
    assert dist.tolist() == pytest.approx([0.5, 0.5])


class _Registry:
    """A registry stand-in holding test metrics (the harness takes any object with ``get(name)``)."""

    def __init__(self, **metrics):
        self.metrics = metrics

    def get(self, name):
        return self.metrics[name]


def test_eval_inputs_route_response_and_report_to_a_metric():
    from torchmetrics import Metric

    seen = {}

    class Overlap(Metric):
        eval_inputs = ("response", "report")

        def __init__(self, **kw):
            super().__init__(**kw)
            self.add_state("n", default=__import__("torch").tensor(0), dist_reduce_fx="sum")

        def update(self, preds, targets):
            seen["preds"], seen["refs"] = list(preds), list(targets)
            self.n += len(preds)

        def compute(self):
            return self.n

        def score(self, preds, refs):
            return [len(set(p.split()) & set(r.split())) / len(set(p.split())) for p, r in zip(preds, refs)]

    preds = [pred(0, "close_vqa", "A", "(A) x", output="effusion left \\boxed{A}", meta={"report": "left effusion"})]
    s = score_predictions(preds, get_task, metrics=["overlap"], registry=_Registry(overlap=Overlap), n_resamples=0)
    assert seen == {"preds": ["effusion left \\boxed{A}"], "refs": ["left effusion"]}
    assert s.rows["all"]["overlap"].value == pytest.approx(2 / 3)

    missing = [pred(0, "close_vqa", "A", "(A) x")]
    with pytest.raises(ValueError, match="meta\\['report'\\]"):
        score_predictions(missing, get_task, metrics=["overlap"], registry=_Registry(overlap=Overlap))


def test_self_consistency_from_sampled_answers():
    # 8 samples: A x6, B x2 over 4 options -> 1 - H/log 4
    p = pred(0, "close_vqa", "A", "(A) a", meta={"options": ["a", "b", "c", "d"]},
             samples=["A"] * 6 + ["(B) b"] * 2)
    q = pred(1, "close_vqa", "A", "(A) a", meta={"options": ["a", "b", "c", "d"]}, samples=["C"] * 8)
    s = score_predictions([p, q], get_task, metrics=["self_consistency"], n_resamples=0)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert p.scores["self_consistency"] == pytest.approx(1 - h / math.log(4))
    assert q.scores["self_consistency"] == pytest.approx(1.0)
    assert s.rows["all"]["self_consistency"].value == pytest.approx((2 - h / math.log(4)) / 2)


def test_row_indices_group_by_sample_field():
    preds = mc_predictions()
    rows = row_indices(preds, "task")
    assert rows["task=close_vqa"] == [0, 1, 2, 3]
    assert rows["all"] == list(range(6))


def test_validation_results_share_the_harness_scoring():
    from chexone.training.sft import validation_results

    preds = mc_predictions()
    preds[5].well_formed = False
    r = validation_results(preds, get_task, ["accuracy"])
    assert r["val/accuracy"] == pytest.approx(4 / 6)
    assert r["val/accuracy/view_classification"] == pytest.approx(0.5)
    assert r["val/well_formed"] == pytest.approx(5 / 6)
    assert "val/majority_baseline_multiple_choice" in r


def test_harness_metrics_never_sync_across_ranks():
    """Each process scores its own predictions (DDP validation ranks hold different tasks)."""
    from chexone.evaluation.scoring import build_metric

    m = build_metric("map", "phrase_grounding", {})
    assert m._to_sync is False and m.sync_on_compute is False
