"""chexone.testing, the plugin authors' conformance kit: its samples against hand-written expectations, every
built-in passing, and each kind of broken task, reward and metric failing exactly the check that names its fault."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torchmetrics import Metric

from chexone.data.sample import Sample
from chexone.metrics._common import MissingWeightsError, PerSampleMetric
from chexone.tasks.builtin import OpenVQATask
from chexone.testing import (
    PROBE_KWARG,
    assert_metric_conforms,
    assert_reward_conforms,
    assert_task_conforms,
    check_metric,
    check_reward,
    check_task,
    foreign_samples,
    make_sample,
    metric_problems,
    reward_problems,
    samples_for,
    task_problems,
    tiny_image,
)


def statuses(results):
    return {r.check: r.status for r in results}


def failed(results):
    return [r for r in results if r.status == "fail"]


# ---------------------------------------------------------------------------------------------------------- samples
def test_tiny_image_is_deterministic_grayscale():
    a, b, c = tiny_image(seed=3), tiny_image(seed=3), tiny_image(seed=4)
    assert a.mode == "L" and a.size == (56, 56) and tiny_image(size=20).size == (20, 20)
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    pixels = np.asarray(a, dtype=float)
    # dark lung fields at the sides of the middle row, brighter body in between and at the edges
    assert pixels[28, 16] < pixels[28, 28] - 40 and pixels[28, 16] < pixels[28, 1] - 40
    with pytest.raises(ValueError, match="at least 8"):
        tiny_image(size=4)


def test_make_sample_follows_the_task_family():
    mc0, mc1 = make_sample("close_vqa"), make_sample("close_vqa", index=1)
    assert (mc0.question, mc0.options, mc0.answer) == ("Is there a pleural effusion?", ["Yes", "No"], "A")
    assert (mc1.options, mc1.answer) == (["PA", "AP", "Lateral"], "B")
    assert mc0.reasoning and mc1.reasoning is None and mc0.id == "kit-close_vqa-0" and mc0.task == "close_vqa"
    assert len(mc0.images) == 1 and mc0.images[0].size == (56, 56)

    grounding = make_sample("phrase_grounding")
    assert grounding.answer == "<|ref|>pleural effusion<|/ref|><|box|>(60,55),(95,90)<|/box|>"
    assert grounding.meta["boxes"] == [[60, 55, 95, 90]] and grounding.meta["ref_name"] == "pleural effusion"
    assert make_sample("abnormality_grounding", index=3).answer == "No pneumothorax detected."

    report = make_sample("findings_generation", index=1)
    assert report.answer == report.meta["report"] == ("Small left pleural effusion with adjacent atelectasis. "
                                                      "No pneumothorax.")
    assert report.meta["indication"] == "Shortness of breath."
    assert make_sample("open_vqa").answer == "left"

    custom = make_sample("close_vqa", images=2, answer="C", options=["x", "y", "z"], id="mine")
    assert (custom.answer, custom.options, custom.id, len(custom.images)) == ("C", ["x", "y", "z"], "mine", 2)
    with pytest.raises(TypeError, match="not Sample fields"):
        make_sample("close_vqa", anwser="A")


class _VocabularyTask(OpenVQATask):
    name = "kit_vocabulary"

    @classmethod
    def example_samples(cls, n):
        return [Sample(id=f"v{i}", task=cls.name, question="Which?", answer=["alpha", "beta"][i % 2])
                for i in range(n + 2)]


def test_samples_for_prefers_the_tasks_own_examples():
    assert [s.answer for s in samples_for(_VocabularyTask, 3)] == ["alpha", "beta", "alpha"]
    assert [s.answer for s in samples_for("open_vqa", 2)] == ["left", "endotracheal tube"]

    class Broken(OpenVQATask):
        @classmethod
        def example_samples(cls, n):
            return [{"answer": "a"}]

    with pytest.raises(TypeError, match=r"example_samples\(2\) must return a non-empty list of Sample"):
        samples_for(Broken, 2)


def test_foreign_samples_cover_the_other_families():
    assert [s.task for s in foreign_samples(["close_vqa"])] == ["open_vqa", "findings_generation", "phrase_grounding"]
    assert [s.task for s in foreign_samples(["open_vqa", "impression_generation"], n=2)] == \
        ["close_vqa", "close_vqa", "phrase_grounding", "phrase_grounding"]


# ---------------------------------------------------------------------------------------------------------- built-ins
@pytest.mark.parametrize("name", ["close_vqa", "view_classification", "temporal_classification",
                                  "disease_classification", "open_vqa", "findings_generation",
                                  "impression_generation", "progression_generation", "phrase_grounding",
                                  "abnormality_grounding"])
def test_every_builtin_task_conforms(name):
    assert_task_conforms(name)
    assert set(statuses(check_task(name)).values()) == {"pass"}


def test_builtin_rewards_conform_and_format_is_task_agnostic():
    for name in ("vqa", "vqa_strict", "grounding_iou"):
        assert_reward_conforms(name)
    assert statuses(check_reward("vqa"))["None for samples of other tasks"] == "pass"
    fmt = check_reward("format")
    assert statuses(fmt)["None for samples of other tasks"] == "n/a" and not failed(fmt)


@pytest.mark.parametrize("name", ["accuracy", "exact_match", "iou", "map", "bleu2", "self_consistency"])
def test_builtin_cheap_metrics_conform(name):
    results = check_metric(name)
    assert not failed(results), [r.line() for r in failed(results)]
    expected_score = "n/a" if name == "map" else "pass"  # mAP has no per-sample score()
    assert statuses(results)["score(): one finite number or None per sample, agreeing with compute()"] == \
        expected_score


# ---------------------------------------------------------------------------------------------------------- tasks
class _ShoutedTarget(OpenVQATask):
    """Its training target is upper-cased, but its parse_answer keeps case: the target does not parse back."""

    name = "kit_shouted"

    def parse_answer(self, answer):
        return answer.strip()

    def answer_is_parseable(self, answer, sample):
        return True

    def target(self, sample, *, reasoning):
        return f"\\boxed{{{sample.answer.upper()}}}" if reasoning else sample.answer.upper()


class _NoImages(OpenVQATask):
    name = "kit_no_images"

    def messages(self, sample, *, reasoning, style=None):
        return [{"role": "user", "content": [{"type": "text", "text": sample.question}]}]


class _AlwaysCorrect(OpenVQATask):
    name = "kit_always_correct"

    def is_correct(self, response, sample, *, reasoning, style=None):
        return True


class _DeclaresMissing(OpenVQATask):
    name = "kit_declares_missing"
    rewards = ("vqa_strcit",)


def test_a_target_that_does_not_parse_back_fails_one_check():
    results = check_task(_ShoutedTarget)
    assert [r.check for r in failed(results)] == ["parses its own targets back to its answer"]
    assert failed(results)[0].detail == (
        "the reasoning-mode target of sample 'kit-kit_shouted-0' does not parse back to its answer: final answer "
        "'LEFT' parses to 'LEFT', answer_text 'left' to 'left'")
    assert statuses(results)["is_well_formed/is_correct accept its targets, reject empty and wrong answers"] == "skip"
    with pytest.raises(AssertionError, match=r"task 'kit_shouted' does not conform \(1 problem\(s\)\):\n  - parses"):
        assert_task_conforms(_ShoutedTarget)


def test_broken_prompts_judges_and_declarations_are_named():
    assert task_problems(_NoImages()) == [
        "task 'kit_no_images': builds messages in both modes (one image placeholder per image): sample "
        "'kit-kit_no_images-0', reasoning mode: 0 image placeholder(s) for 1 image(s): the processor would pair "
        "images with the wrong tokens"]
    assert task_problems(_AlwaysCorrect) == [
        "task 'kit_always_correct': is_well_formed/is_correct accept its targets, reject empty and wrong answers: "
        "is_correct() accepts an empty reasoning-mode response for sample 'kit-kit_always_correct-0'"]
    (problem,) = task_problems(_DeclaresMissing)
    assert problem.startswith("task 'kit_declares_missing': declared rewards and metrics are registered: it declares "
                              "reward 'vqa_strcit' in rewards, which is not registered: Unknown reward \"vqa_strcit\"")
    assert 'Did you mean "vqa_strict"' in problem


def test_a_task_refusing_generated_samples_is_told_about_example_samples():
    class Picky(OpenVQATask):
        name = "kit_picky"

        def answer_text(self, sample):
            from chexone.data.sample import SampleError

            raise SampleError(f"sample {sample.id!r}: not yes/no")

    (problem,) = task_problems(Picky)
    assert problem == ("task 'kit_picky': accepts its samples: it refuses the kit's generated open_vqa sample "
                       "'kit-kit_picky-0' (sample 'kit-kit_picky-0': not yes/no); give the task an example_samples(n) "
                       "classmethod returning valid samples (docs/plugins.md)")


def test_explicit_samples_and_the_tasks_examples_are_used():
    assert task_problems(_VocabularyTask) == []
    samples = [make_sample("close_vqa", index=i) for i in range(2)]
    assert task_problems("close_vqa", samples) == []
    (problem,) = task_problems("open_vqa", samples)
    assert "sample 'kit-close_vqa-0' has task 'close_vqa', not 'open_vqa'" in problem


# ---------------------------------------------------------------------------------------------------------- rewards
def _own():
    return samples_for("open_vqa", 2)


def test_a_conforming_reward_object_receives_the_full_context():
    calls = []

    def exact(responses, samples, *, boxed, prompts, reasoning, step, bonus=0.0, **kwargs):
        calls.append(dict(kwargs, boxed=boxed, step=step, n=len(responses), prompts=len(prompts),
                          reasoning=list(reasoning), bonus=bonus, tasks=sorted({s.task for s in samples})))
        return [None if s.task != "open_vqa" else float(r == "left") + bonus for r, s in zip(responses, samples)]

    assert reward_problems(exact, _own(), kwargs={"bonus": 0.5}) == []
    own, foreign = calls
    # 2 samples x 5 completions (target, wrong box, no box, empty, instruction-mode target)
    assert own["n"] == own["prompts"] == 10 and own["reasoning"] == [True] * 4 + [False] + [True] * 4 + [False]
    assert own["boxed"] == "last" and own["step"] == 0 and own[PROBE_KWARG] is True and own["bonus"] == 0.5
    # then one sample of each other built-in family
    assert foreign["n"] == 15 and foreign["tasks"] == ["close_vqa", "findings_generation", "phrase_grounding"]


def test_a_nan_reward_fails_with_the_training_codes_words():
    def nan_reward(responses, samples, **kwargs):
        return [math.nan if s.task == "open_vqa" else None for s in samples]

    (problem,) = reward_problems(nan_reward, _own())
    assert problem.startswith("reward 'nan_reward': one finite number or None per completion (full context + an "
                              "unknown keyword): returned nan (rewards must be finite numbers) for completion 0 (")
    assert problem.endswith("sample 'kit-open_vqa-0' of task open_vqa); 9 more bad value(s)")


def test_a_reward_without_kwargs_fails_once():
    def strict(responses, samples):
        return [1.0] * len(responses)

    results = check_reward(strict, _own())
    assert [r.check for r in failed(results)] == ["accepts **kwargs"]
    assert failed(results)[0].detail.startswith("its signature (responses, samples) has no **kwargs; chexone calls "
                                                "reward(responses, samples, boxed=..., prompts=..., reasoning=...")
    assert statuses(results)["scores its own tasks"] == "skip"


def test_reward_ownership_length_exceptions_and_types():
    def greedy(responses, samples, **kwargs):
        return [1.0] * len(responses)

    (problem,) = reward_problems(greedy, _own())
    assert problem == ("reward 'greedy': None for samples of other tasks: it returned 1.0 for completion 0 of sample "
                       "'kit-close_vqa-0' (task close_vqa), a task it does not own; return None for samples of other "
                       "tasks")
    assert reward_problems(greedy, _own(), task_agnostic=True) == []
    assert reward_problems(greedy, _own(), foreign_samples=[]) == []

    def short(responses, samples, **kwargs):
        return [0.0]

    assert reward_problems(short, _own())[0].endswith("returned 1 values for 10 completions")

    def idle(responses, samples, **kwargs):
        return [None] * len(responses)

    assert reward_problems(idle, _own()) == [
        "reward 'idle': scores its own tasks: it returned None for every completion of its own task(s) open_vqa: it "
        "scores nothing (does it compare sample.task with the right name?)"]

    def crash(responses, samples, **kwargs):
        raise KeyError("options")

    assert reward_problems(crash, _own())[0].endswith("(full context + an unknown keyword): raised KeyError: 'options'")

    def textual(responses, samples, **kwargs):
        return ["1.0" if s.task == "open_vqa" else None for s in samples]

    assert "returned '1.0' (str), not a number or None for completion 0" in reward_problems(textual, _own())[0]
    with pytest.raises(ValueError, match="pass own_samples"):
        check_reward(greedy)
    with pytest.raises(AssertionError, match="reward 'greedy' does not conform"):
        assert_reward_conforms(greedy, _own())


# ---------------------------------------------------------------------------------------------------------- metrics
PREDS, REFS = ["left", "right", "left", "none"], ["left", "left", "left", "none"]


def word_match(preds, refs):
    return [float(p == r) for p, r in zip(preds, refs)]


class _NoUpdate:
    def compute(self):
        return 0.0


class _Overwrites(Metric):
    """Keeps only the last batch: two updates differ from one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds, refs):
        self.hits = torch.tensor(float(sum(p == r for p, r in zip(preds, refs))))
        self.count = torch.tensor(float(len(preds)))

    def compute(self):
        return self.hits / self.count


class _MaxReduced(Metric):
    """Accumulates correctly in one process but merges with max instead of sum."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0), dist_reduce_fx="max")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="max")

    def update(self, preds, refs):
        self.hits += float(sum(p == r for p, r in zip(preds, refs)))
        self.count += float(len(preds))

    def compute(self):
        return self.hits / self.count


class _Inverted(PerSampleMetric):
    """score() disagrees with what update() accumulates."""

    def _score(self, preds, targets):
        return word_match(preds, targets)

    def score(self, preds, refs):
        return [1.0 - v for v in word_match(preds, refs)]


class _NoWeights(PerSampleMetric):
    def __init__(self, **kwargs):
        raise MissingWeightsError("kit metric: weights.bin not found. Set `path` to a local copy.")


def test_a_plain_function_metric_conforms_on_given_inputs():
    results = check_metric(word_match, PREDS, REFS)
    assert set(statuses(results).values()) == {"pass"} and len(results) == 5
    assert_metric_conforms(word_match, PREDS, REFS)


def test_a_metric_without_update_fails_to_build():
    results = check_metric(_NoUpdate, PREDS, REFS)
    assert [r.status for r in results] == ["fail", "skip", "skip", "skip", "skip"]
    assert results[0].detail.startswith("metric '_NoUpdate' has no update() method; a metric is a class with "
                                        "update(preds, refs) and compute()")


def test_broken_metric_states_and_scores_are_named():
    # the second half (left/left, none/none) is all right: only the last batch counts
    assert metric_problems(_Overwrites, PREDS, REFS) == [
        "metric '_Overwrites': accumulates: two updates == one on the concatenation; reset() clears: "
        "two update() calls gave {\"value\": 1.0}, one update() on the same samples {\"value\": 0.75}: "
        "accumulate in the states, do not overwrite them"]
    assert metric_problems(_MaxReduced, PREDS, REFS) == [
        "metric '_MaxReduced': merges across 2 processes to the single-process value: two processes merged to "
        "{\"value\": 1.0}, one process that saw every sample gave {\"value\": 0.75}: keep every state in "
        "add_state(..., dist_reduce_fx=...)"]
    assert metric_problems(_Inverted, PREDS, REFS) == [
        "metric '_Inverted': score(): one finite number or None per sample, agreeing with compute(): the corpus value "
        "of score() (0.25, by mean) differs from compute() (0.75): reports and paired tests would disagree with the "
        "metric; set corpus_statistic or make score() match update()"]

    def never(preds, refs):
        return [None] * len(preds)

    assert metric_problems(never, PREDS, REFS) == [
        "metric 'never': update() then compute() gives a finite value: compute() gave {\"value\": null} after update() "
        "on 4 open_vqa samples: the headline value must be a finite number"]


def test_a_metric_that_cannot_run_here_is_skipped_with_a_warning():
    results = check_metric(_NoWeights, PREDS, REFS)
    assert [r.status for r in results] == ["skip"] * 5
    assert results[0].detail == ("cannot run here: MissingWeightsError: kit metric: weights.bin not found. Set `path` "
                                 "to a local copy.")
    assert results[1].detail == "not run: 'builds as the evaluation harness builds it' could not run here"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_metric_conforms(_NoWeights, PREDS, REFS)  # not a failure of the plugin
    assert any("cannot run here: MissingWeightsError" in str(w.message) for w in caught)
