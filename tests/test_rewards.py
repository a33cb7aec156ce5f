"""Built-in GRPO rewards against hand-worked examples, including malformed output."""

import math
import threading

import pytest

from chexone.data.sample import Sample
from chexone.registry import METRICS, REWARDS
from chexone.tasks.answers import box_iou
from chexone.rewards.builtin import (
    format_reward,
    grounding_iou_reward,
    report_reward,
    vqa_reward,
    vqa_strict_reward,
)
from chexone.training.reward_set import RewardError


def mc(answer="B", options=("Yes", "No")):
    return Sample(id="mc1", task="close_vqa", question="Q?", answer=answer, options=list(options))


def grd(answer="<|ref|>nodule<|/ref|><|box|>(10,10),(30,30)<|/box|>"):
    return Sample(id="g1", task="phrase_grounding", question="Locate the nodule.", answer=answer)


def rep(answer="The lungs are clear."):
    return Sample(id="r1", task="findings_generation", question="Findings?", answer=answer)


def test_builtins_are_registered():
    for name in ("format", "vqa", "vqa_strict", "grounding_iou", "report"):
        assert name in REWARDS and callable(REWARDS.get(name))


@pytest.mark.parametrize(
    "response,expected",
    [
        ("The base is bright. \\boxed{B}", 1.0),
        ("Reasoning.\n\\boxed{(B) No}.", 1.0),  # trailing punctuation is fine
        ("\\boxed{B}", 0.0),  # empty reasoning
        ("   \\boxed{B}", 0.0),
        ("Reasoning \\boxed{}", 0.0),  # empty box
        ("Reasoning \\boxed{ }", 0.0),
        ("Reasoning \\boxed{A} then \\boxed{B}", 0.0),  # two boxes
        ("Reasoning \\boxed{B} and more words", 0.0),  # text after the box
        ("Reasoning without any box", 0.0),
        ("Reasoning \\boxed{unterminated", 0.0),
        ("Reasoning \\boxed{\\frac{1}{2}}", 1.0),  # nested braces are one box
        ("Reasoning \\boxed{A} \\boxed{open", 0.0),  # a second, unterminated box
    ],
)
def test_format_reward(response, expected):
    assert format_reward([response], [mc()]) == [expected]


def test_vqa_jaccard_hand_values():
    s = mc(answer="A,C", options=("x", "y", "z", "w"))
    responses = ["r \\boxed{A, C}", "r \\boxed{(A) x}", "r \\boxed{A, B, C}", "r \\boxed{D}", "no box A", "r \\boxed{}"]
    # {A,C} vs {A,C}: 1; {A}: 1/2; {A,B,C}: 2/3; {D}: 0; no box: 0; empty: 0
    assert vqa_reward(responses, [s] * 6) == pytest.approx([1.0, 0.5, 2 / 3, 0.0, 0.0, 0.0])
    assert vqa_strict_reward(responses, [s] * 6) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # single answer: Jaccard == exact match
    assert vqa_reward(["r \\boxed{B}", "r \\boxed{A}"], [mc(), mc()]) == [1.0, 0.0]
    # first vs last box
    assert vqa_reward(["r \\boxed{A} r \\boxed{B}"], [mc()], boxed="first") == [0.0]
    assert vqa_reward(["r \\boxed{A} r \\boxed{B}"], [mc()], boxed="last") == [1.0]
    # not applicable to other tasks
    assert vqa_reward(["r \\boxed{B}"], [rep()]) == [None]


def test_box_iou_hand_values():
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((5, 5, 5, 9), (5, 5, 5, 9)) == 0.0  # degenerate


def test_grounding_reward_hand_values_and_malformed():
    s = grd()
    box = "<|ref|>nodule<|/ref|><|box|>(20,20),(40,40)<|/box|>"
    iou = box_iou((20, 20, 40, 40), (10, 10, 30, 30))  # 100 / 700
    assert iou == pytest.approx(1 / 7)
    cases = {
        f"r \\boxed{{{box}}}": iou,
        f"r \\boxed{{{box.replace('nodule', 'mass')}}}": iou * 0.95,  # name mismatch penalty
        "r \\boxed{<|ref|>nodule<|/ref|><|box|>(40,40),(20,20)<|/box|>}": iou,  # swapped corners normalised
        "r \\boxed{<|ref|>nodule<|/ref|><|box|>(10,10),(130,30)<|/box|>}": 0.0,  # outside 0-99
        "r \\boxed{<|ref|>nodule<|/ref|><|box|>(a,b),(c,d)<|/box|>}": 0.0,  # text, not numbers
        "r \\boxed{the left upper lobe}": 0.0,  # no box
        box: iou,  # instruction mode: the whole response is parsed
    }
    responses = list(cases)
    assert grounding_iou_reward(responses, [s] * len(responses)) == pytest.approx(list(cases.values()))
    # ground truth without a box (negative sample): 0, as the reference code does
    assert grounding_iou_reward([f"r \\boxed{{{box}}}"], [grd("No nodule detected.")]) == [0.0]
    assert grounding_iou_reward(["r"], [mc()]) == [None]


class OverlapScorer:
    """A deterministic text-overlap scorer for tests (NOT a clinical metric): word-set Jaccard, or its negation as
    a lower-is-better score."""

    def __init__(self, lower_is_better=False):
        self.lower_is_better = lower_is_better
        self.calls = 0

    def score(self, preds, refs):
        self.calls += 1
        out = []
        for p, r in zip(preds, refs):
            a, b = set(p.lower().split()), set(r.lower().split())
            j = len(a & b) / len(a | b) if a | b else 0.0
            out.append(-j if self.lower_is_better else j)
        return out


def test_report_reward_mappings():
    name_hi, name_lo = "test_overlap_hi", "test_overlap_lo"
    if name_hi not in METRICS:
        METRICS.register(name_hi, OverlapScorer)
        METRICS.register(name_lo, lambda **kw: OverlapScorer(lower_is_better=True))
    samples = [rep("lungs are clear"), rep("lungs are clear"), mc()]
    responses = ["r \\boxed{lungs are clear}", "\\boxed{lungs clear}", "r \\boxed{B}"]
    hi = report_reward(responses, samples, metric=name_hi)
    assert hi == pytest.approx([1.0, 2 / 3, None])
    sig = report_reward(responses, samples, metric=name_lo, mapping="sigmoid")
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert sig[:2] == pytest.approx([s(1.0), s(2 / 3)]) and sig[2] is None
    assert sig[0] > sig[1]  # monotone: a better report never gets less reward
    ref = report_reward(responses, samples, metric=name_lo, mapping="reference")
    # 2*sigmoid(-q); the second response has no reasoning before its box -> x 0.95
    assert ref[:2] == pytest.approx([2 * s(1.0), 2 * s(2 / 3) * 0.95])
    with pytest.raises(ValueError, match="mapping"):
        report_reward(responses, samples, metric=name_hi, mapping="inverse")


# ------------------------------------------------------------------ asynchronous scoring


def _register(name, fn):
    if name not in REWARDS:
        REWARDS.register(name, fn)


def flaky_reward(responses, samples, **kwargs):
    """1.0 per completion; raises on the sample with id 'boom' (a reward error)."""
    if any(s.id == "boom" for s in samples):
        raise ValueError("cannot score this one")
    return [1.0] * len(responses)


_register("test_async_flaky", flaky_reward)


def async_setup(on_error):
    from types import SimpleNamespace

    from chexone.tasks import get_task
    from chexone.training.reward_set import RewardSet

    specs = [SimpleNamespace(name=n, weight=1.0, kwargs={}, tasks=[])
             for n in ("format", "vqa", "grounding_iou", "test_async_flaky")]
    rs = RewardSet(specs, "last", on_error, task_names=["close_vqa", "phrase_grounding"], task_lookup=get_task)
    box = "<|ref|>nodule<|/ref|><|box|>(20,20),(40,40)<|/box|>"
    texts = ["r \\boxed{B}", "\\boxed{A}", f"r \\boxed{{{box}}}", "r \\boxed{B}"]
    samples = [mc(), mc(), grd(), Sample(id="boom", task="close_vqa", question="Q?", answer="B",
                                         options=["Yes", "No"])]
    return rs, texts, samples


def test_score_async_gives_what_score_gives_and_the_same_error_counts():
    sync, texts, samples = async_setup("zero")
    expected = sync.score(texts, samples, step=3)
    # hand values: format needs reasoning before the box; vqa on the MC samples; IoU 1/7 for the grounding one
    assert expected["format"] == [1.0, 0.0, 1.0, 1.0]
    assert expected["vqa"] == [1.0, 0.0, None, 1.0]
    assert expected["grounding_iou"] == [None, None, pytest.approx(1 / 7), None]
    assert expected["test_async_flaky"] == [1.0, 1.0, 1.0, 0.0]  # the failing sample scored 0 under "zero"
    rs, texts, samples = async_setup("zero")
    future = rs.score_async(texts, samples, step=3)
    texts.clear()  # the inputs were copied: the caller may reuse its lists
    assert future.result(timeout=30) == expected
    assert dict(rs.errors) == dict(sync.errors) == {"test_async_flaky": 1}
    rs.close()


def test_score_async_raises_reward_errors_at_result():
    rs, texts, samples = async_setup("fail")
    future = rs.score_async(texts, samples)
    with pytest.raises(RewardError, match="reward 'test_async_flaky' failed on sample 'boom'"):
        future.result(timeout=30)
    # the worker survives a failed call
    assert rs.score_async(texts[:3], samples[:3]).result(timeout=30)["test_async_flaky"] == [1.0, 1.0, 1.0]
    rs.close()


SLOW = {}  # the events the slow reward waits on and what it saw


def slow_reward(responses, samples, **kwargs):
    SLOW["thread"] = threading.get_ident()
    SLOW["started"].set()
    SLOW["released"] = SLOW["release"].wait(timeout=30)  # blocks until the caller, still running, lets it go
    return [0.5] * len(responses)


_register("test_async_slow", slow_reward)


def test_a_slow_reward_runs_while_the_caller_works():
    from types import SimpleNamespace

    from chexone.tasks import get_task
    from chexone.training.reward_set import RewardSet

    SLOW.update(started=threading.Event(), release=threading.Event())
    rs = RewardSet([SimpleNamespace(name="test_async_slow", weight=1.0, kwargs={}, tasks=[])], "last", "fail",
                   task_names=["close_vqa"], task_lookup=get_task)
    future = rs.score_async(["r \\boxed{B}"], [mc()])
    assert SLOW["started"].wait(timeout=30)  # the reward is running ...
    assert not future.done()  # ... and has not finished, yet score_async returned: the caller works meanwhile
    main_work = sum(range(1000))
    SLOW["release"].set()
    assert future.result(timeout=30)["test_async_slow"] == [0.5]
    assert SLOW["released"] and SLOW["thread"] != threading.get_ident() and main_work == 499500
    rs.close()
