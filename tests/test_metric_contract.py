"""The metric contract (docs/plugins.md): a class with update/compute, or a plain per-sample function; checked
before any answer is generated."""

import pytest
import torch

from chexone.evaluation.predict import Prediction
from chexone.evaluation.scoring import build_metric, score_predictions
from chexone.metrics.testing import simulated_ranks
from chexone.registry import METRICS, TASKS
from chexone.tasks import get_task
from chexone.tasks.builtin import OpenVQATask


def word_overlap(preds, refs):
    """A plain function metric: fraction of reference words found in the prediction."""
    out = []
    for p, r in zip(preds, refs):
        ref = set(r.lower().split())
        out.append(len(ref & set(p.lower().split())) / len(ref) if ref else None)
    return out


class NoUpdate:
    def compute(self):
        return 0.0


class BrokenMetricTask(OpenVQATask):
    name = "test_task_with_broken_metric"
    metrics = ("test_no_update",)


for name, obj, reg in (("test_word_overlap", word_overlap, METRICS), ("test_no_update", NoUpdate, METRICS),
                       ("test_task_with_broken_metric", BrokenMetricTask, TASKS)):
    if name not in reg:
        reg.register(name, obj)


def test_a_plain_function_is_a_per_sample_metric():
    m = build_metric("test_word_overlap", "open_vqa", {})
    m.update(["a small effusion", "no"], ["small effusion", "large mass"])
    assert float(m.compute()) == pytest.approx((1.0 + 0.0) / 2)
    assert m.score(["a small effusion"], ["small effusion left"]) == [pytest.approx(2 / 3)]
    # merges across processes like a built-in metric
    ranks = simulated_ranks(lambda **kw: build_metric("test_word_overlap", "open_vqa", {}).__class__(**kw), 2)
    ranks[0].update(["x y"], ["x y"])
    ranks[1].update(["x"], ["x y"])
    assert float(ranks[0].compute()) == pytest.approx(0.75)


def test_the_harness_scores_a_function_metric_by_name():
    pairs = [("small effusion", "small effusion"), ("mass", "small effusion")]
    preds = [Prediction(id=f"p{i}", task="open_vqa", family="open_vqa", dataset="d", prompt="q", reasoning=False,
                        output=o, final=o, parsed=o, reference=r, well_formed=True, truncated=False)
             for i, (o, r) in enumerate(pairs)]
    scores = score_predictions(preds, get_task, metrics=["test_word_overlap"], n_resamples=0)
    assert scores.rows["all"]["test_word_overlap"].value == pytest.approx(0.5)
    assert [p.scores["test_word_overlap"] for p in preds] == [1.0, 0.0]


def test_a_metric_without_update_is_refused_before_generation():
    with pytest.raises(TypeError, match="metric 'test_no_update' has no update\\(\\) method"):
        build_metric("test_no_update", "open_vqa", {})
    from chexone.training.preflight import metric_problems

    assert metric_problems("trainer.val_metrics", ["test_no_update"]) == [
        "'trainer.val_metrics': metric 'test_no_update' has no update() method; a metric is a class with "
        "update(preds, refs) and compute() (e.g. a torchmetrics.Metric, or chexone.metrics.PerSampleMetric), or a "
        "plain function fn(preds, refs) -> list[float | None]"]
    from chexone.evaluation.runner import declared_metric_problems

    problems = declared_metric_problems(get_task)
    assert any("task 'test_task_with_broken_metric' declares metric 'test_no_update', which has no update()" in p
               for p in problems)


def test_metric_scores_are_floats():
    m = build_metric("test_word_overlap", "open_vqa", {})
    m.update(["a"], ["a"])
    assert isinstance(m.compute(), torch.Tensor)
