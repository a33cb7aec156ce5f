"""The task, reward and metric on hand-made samples, resolved by name through chexone's registries (so these tests
also check that the package is installed and its entry points are found)."""

from __future__ import annotations

import math

import pytest
import torch

from chexone.plugin_api import METRICS, REWARDS, TASKS, PromptStyle, Sample, SampleError

from chexone_support_devices.labels import DEVICE_OPTIONS, parse_devices, weighted_f1


def sample(answer: str, task: str = "lines_tubes", **kw) -> Sample:
    return Sample(id=f"s-{answer}-{task}", task=task, question="Which support devices are present?", answer=answer,
                  **kw)


@pytest.fixture(scope="module")
def task():
    cls = TASKS.get("lines_tubes")
    return cls() if isinstance(cls, type) else cls


def test_names_resolve_to_this_package():
    for registry, name in ((TASKS, "lines_tubes"), (REWARDS, "lines_tubes_reward"),
                           (METRICS, "lines_tubes_f1")):
        assert registry.origin(name).startswith("chexone-support-devices==0.1.0 (entry point "), registry.origin(name)
    import chexone_support_devices

    assert chexone_support_devices.CHEXONE_API_VERSION == 1


def test_task_prompt_answer_and_parsing(task):
    s = sample("E,A")
    text = task.question_text(s)
    assert text.startswith("Which support devices are present?\n(A) Endotracheal tube: well positioned\n")
    assert text.endswith("(I) No support device")
    assert task.answer_text(s) == "(A) Endotracheal tube: well positioned, (E) Central venous catheter: well positioned"
    assert task.target(s, reasoning=True).endswith("\\boxed{(A) Endotracheal tube: well positioned, (E) Central "
                                                   "venous catheter: well positioned}")
    # letters, option texts, or both forms of "none"
    assert task.parse_answer("(A), (E)") == task.parse_answer("A, E") == frozenset("AE")
    assert task.parse_answer("chest tube; Cardiac pacemaker") == frozenset("GH")
    assert task.parse_answer("Nasogastric tube: malpositioned") == frozenset("D")
    assert task.parse_answer("No support devices.") == frozenset("I")
    assert task.parse_answer("nothing useful here") == frozenset()
    style = PromptStyle()
    assert task.is_correct("... \\boxed{(E) x, (A) y}", s, reasoning=True, style=style)
    assert not task.is_correct("... \\boxed{A}", s, reasoning=True, style=style)
    assert task.is_well_formed("so \\boxed{G}", s, reasoning=True, style=style)
    assert not task.is_well_formed("so \\boxed{maybe}", s, reasoning=True, style=style)


def test_task_rejects_bad_samples(task):
    with pytest.raises(SampleError, match="names none"):
        task.answer_text(sample("Z"))
    with pytest.raises(SampleError, match="No support device"):
        task.answer_text(sample("A,I"))
    with pytest.raises(SampleError, match="fixed options"):
        task.question_text(sample("A", options=["Yes", "No"]))
    assert task.question_text(sample("A", options=list(DEVICE_OPTIONS)))  # the fixed list itself is fine


def test_weighted_f1_hand_values():
    assert weighted_f1("AE", "AE") == 1.0
    assert weighted_f1("A", "AE") == pytest.approx(2 / 3)              # TP 1, FN 1
    assert weighted_f1("AG", "AE") == pytest.approx(0.5)               # TP 1, FP 1, FN 1
    assert weighted_f1("", "A") == 0.0 and weighted_f1("", "") == 1.0
    # a missed malposition (B) weighs 2: TP E (1), FN B (2)
    assert weighted_f1("E", "BE", {"B": 2.0}) == pytest.approx(2 * 1 / (2 * 1 + 2))


def test_reward_contract_and_values():
    reward = REWARDS.get("lines_tubes_reward")
    samples = [sample("B,E"), sample("B,E"), sample("I"), sample("A", task="close_vqa", options=["x", "y"]),
               sample("B,E"), sample("B,E")]
    responses = ["because \\boxed{(B) ..., (E) ...}", "\\boxed{E}", "\\boxed{No support device}", "\\boxed{A}",
                 "no box at all: B, E", "\\boxed{E, G}"]
    got = reward(responses, samples, boxed="last", prompts=["q"] * 6, reasoning=[True] * 6, step=3,
                 future_context="ignored")
    # malposition weight 2: "E" vs {B, E}: 2*1/(2*1 + 2) = 0.5; "E,G" vs {B,E}: 2/(2+1+2) = 0.4
    assert got == [1.0, pytest.approx(0.5), 1.0, None, 0.0, pytest.approx(0.4)]
    plain = reward(responses, samples, boxed="last", reasoning=True, malposition_weight=1.0)
    assert plain[1] == pytest.approx(2 / 3) and plain[5] == pytest.approx(0.5)
    # instruction mode: the whole response is the answer
    assert reward(["B, E"], [sample("B,E")], reasoning=[False]) == [1.0]
    assert all(v is None or (isinstance(v, float) and math.isfinite(v)) for v in got)
    with pytest.raises(ValueError, match="malposition_weight"):
        reward(["x"], [sample("A")], malposition_weight=0)


def test_metric_per_sample_per_device_and_merge():
    cls = METRICS.get("lines_tubes_f1")
    preds = ["(A) ..., (E) ...", "A", "G, H", "garbage", "I"]
    refs = ["(A) x, (E) y", "(A) x, (E) y", "(G) x", "(B) x", "(I) x"]
    m = cls()
    assert m.eval_inputs == ("final", "answer") and m.primary == "sample_f1"
    per = m.score(preds, refs)
    assert per == [1.0, pytest.approx(2 / 3), pytest.approx(2 / 3), 0.0, 1.0]
    m.update(preds[:2], refs[:2])
    other = cls()
    other.update(preds[2:], refs[2:])
    m.merge_state(other)  # what DDP does with the summed / concatenated states
    out = m.compute()
    assert float(out["sample_f1"]) == pytest.approx(sum(per) / 5)
    assert int(out["n"]) == 5 and int(out["unparseable"]) == 1
    assert float(out["f1_ett_ok"]) == pytest.approx(1.0)                  # A: TP 2
    assert float(out["f1_cvc_ok"]) == pytest.approx(2 / 3)                # E: TP 1, FN 1
    assert float(out["f1_chest_tube"]) == pytest.approx(1.0)
    assert float(out["f1_pacemaker"]) == 0.0                              # H: FP 1
    assert math.isnan(float(out["f1_ngt_ok"]))                            # C: never predicted nor true
    assert float(out["f1_ett_malpositioned"]) == 0.0                      # B: FN 1
    # macro over findings present in the references: A, B, E, G, I
    assert float(out["macro_f1"]) == pytest.approx((1.0 + 0.0 + 2 / 3 + 1.0 + 1.0) / 5)
    # per-sample values after a.merge_state(b): b's, then a's
    assert torch.equal(m.per_sample(), torch.tensor([2 / 3, 0.0, 1.0, 1.0, 2 / 3], dtype=torch.float64))


def test_parse_devices_ignores_letters_outside_the_options():
    assert parse_devices("(Z)") == frozenset()
    assert parse_devices(None) == frozenset()
