"""chexone's conformance kit (chexone.testing) on the plugin's task, reward and metric, by their registered names."""

from __future__ import annotations

from chexone.testing import (assert_metric_conforms, assert_reward_conforms, assert_task_conforms, check_task,
                             foreign_samples, samples_for)


def test_task_conforms():
    assert_task_conforms("lines_tubes")
    assert all(r.status == "pass" for r in check_task("lines_tubes")), check_task("lines_tubes")


def test_task_conforms_on_generated_demo_samples_with_reasoning_traces():
    from chexone_support_devices.demo import demo_sample

    samples = [demo_sample(i) for i in range(12)]
    assert any(s.reasoning for s in samples) and any(not s.reasoning for s in samples)
    assert_task_conforms("lines_tubes", samples)


def test_reward_conforms():
    assert_reward_conforms("lines_tubes_reward")  # own samples: the task's example_samples
    own = samples_for("lines_tubes", 6)
    assert_reward_conforms("lines_tubes_reward", own, foreign_samples(["lines_tubes"], n=2),
                           kwargs={"malposition_weight": 3.0})


def test_metric_conforms():
    assert_metric_conforms("lines_tubes_f1")  # task: lines_tubes (it declares the metric)
    assert_metric_conforms("lines_tubes_f1", ["(A) x, (E) y", "G", "nothing", "I"], ["A,E", "G,H", "B", "I"])
