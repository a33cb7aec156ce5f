"""``semantics: reference`` against the CheXOne reference reward code (YBZh/CheXOne,
examples/train/grpo/plugin/plugin.py), one worked example per deviation from chexone's default ``paper`` semantics.

Every expected value is worked out by hand from the reference's rules (comments show the arithmetic); the same
examples make the deviation table in docs/grpo.md.
"""

import math

import pytest

from chexone.data.sample import Sample
from chexone.registry import METRICS
from chexone.rewards.builtin import (
    format_reward,
    grounding_iou_reward,
    report_reward,
    vqa_reward,
    vqa_strict_reward,
)


def mc(answer):
    return Sample(id="mc1", task="close_vqa", question="Q?", answer=answer, options=["x", "y", "z"])


TRUTH = "<|ref|>nodule<|/ref|><|box|>(20,20),(60,60)<|/box|>"  # area 40 x 40 = 1600


def grd(answer=TRUTH):
    return Sample(id="g1", task="phrase_grounding", question="Locate the nodule.", answer=answer)


def rep(answer="lungs are clear"):
    return Sample(id="r1", task="findings_generation", question="Findings?", answer=answer)


def box(coords, name="nodule"):
    return f"<|ref|>{name}<|/ref|><|box|>{coords}<|/box|>"


def both(reward, response, sample, **kwargs):
    """(paper value, reference value) of one response."""
    return (reward([response], [sample], **kwargs)[0],
            reward([response], [sample], semantics="reference", **kwargs)[0])


# ------------------------------------------------------------------------------------------------ format

@pytest.mark.parametrize(
    "response,paper,reference",
    [
        # F1 text after the box: the reference never looks past the box
        ("Reasoning \\boxed{B} and more words", 0.0, 1.0),
        ("Reasoning \\boxed{B} \\boxed{open", 0.0, 1.0),  # an unterminated second box is just trailing text
        # F2 a box ends at the first "}": "\boxed{ for answers: \boxed{B}" is ONE complete box for the reference,
        # an unterminated outer box (no complete box) for chexone
        ("We write \\boxed{ for answers: \\boxed{B}", 0.0, 1.0),
        # the same under both
        ("Reasoning \\boxed{B}.", 1.0, 1.0),
        ("Reasoning \\boxed{\\frac{1}{2}}", 1.0, 1.0),  # reference: one box "\frac{1" (non-empty)
        ("\\boxed{B}", 0.0, 0.0),  # no reasoning
        ("Reasoning \\boxed{ }", 0.0, 0.0),  # empty box
        ("Reasoning \\boxed{A} then \\boxed{B}", 0.0, 0.0),  # two boxes
        ("Reasoning without a box", 0.0, 0.0),
    ],
)
def test_format_paper_vs_reference(response, paper, reference):
    assert both(format_reward, response, mc("B")) == (paper, reference)


# ------------------------------------------------------------------------------------------------ VQA

@pytest.mark.parametrize(
    "response,truth,paper,reference",
    [
        # V1 first box, not the last (data.boxed is ignored)
        ("r \\boxed{A} r \\boxed{B}", "B", 1.0, 0.0),
        # V2 no option found: the reference compares the whole texts (case-sensitive), chexone finds no letter -> 0
        ("r \\boxed{Yes}", "Yes", 0.0, 1.0),
        ("r \\boxed{yes}", "Yes", 0.0, 0.0),  # reference: {"yes"} vs {"Yes"}
        # V3 lower-case letters and digits are options: {B, a} vs {B} = 1/2; chexone reads only capitals: {B}
        ("r \\boxed{B, a small effusion}", "B", 1.0, 0.5),
        ("r \\boxed{(1)}", "(1)", 0.0, 1.0),  # reference {1} vs {1}; chexone: no capital letter on either side
        # V4 a letter with nothing after it is no option once an earlier "X," / "X " matched:
        # reference truth "A, B" -> {A}, so "A" scores 1 (chexone: {A} vs {A, B} = 1/2) ...
        ("r \\boxed{A}", "A, B", 0.5, 1.0),
        # ... and "A and B" -> {A} vs {A, B} = 1/2 (chexone: {A, B} = {A, B})
        ("r \\boxed{A and B}", "(A), (B)", 1.0, 0.5),
        ("r \\boxed{A, B, C}", "(A), (C)", 2 / 3, 1 / 3),  # reference {A, B} vs {A, C}
        # V5 the full-width colon ends an option: reference {A} (the trailing B has nothing after it) vs {A} = 1;
        # chexone: "B" is followed by the end -> {B} vs {A} = 0
        ("r \\boxed{A\uff1ayes, B}", "A", 0.0, 1.0),
        # V6 options must stand alone as words: "2A, 2B" has none for the reference (whole text vs {A, B}: 0)
        ("r \\boxed{2A, 2B}", "A, B", 1.0, 0.0),
        # the same under both
        ("r \\boxed{(B) No}", "B", 1.0, 1.0),
        ("r \\boxed{A, B, C.}", "(A), (C)", 2 / 3, 2 / 3),  # {A, B, C} vs {A, C}; the "." keeps C for the reference
        ("no box B", "B", 0.0, 0.0),
        ("r \\boxed{ }", "B", 0.0, 0.0),
    ],
)
def test_vqa_paper_vs_reference(response, truth, paper, reference):
    assert both(vqa_reward, response, mc(truth)) == pytest.approx((paper, reference))
    strict = both(vqa_strict_reward, response, mc(truth))
    assert strict == (float(paper == 1.0), float(reference == 1.0))


def test_reference_ignores_boxed_setting():
    for boxed in ("first", "last"):
        assert vqa_reward(["r \\boxed{A} r \\boxed{B}"], [mc("B")], boxed=boxed, semantics="reference") == [0.0]


# ------------------------------------------------------------------------------------------------ grounding

FLOAT32_ONE_SEVENTH = 0.1428571492433548  # float32(1/7) = 0x3E124925, what the reference's tensors give


@pytest.mark.parametrize(
    "response,paper,reference",
    [
        # G1 no \boxed{}: chexone parses the whole response, the reference gives 0
        (TRUTH, 1.0, 0.0),
        # G2 first box (0,0),(10,10): no overlap with the truth; chexone's default takes the last box
        (f"r \\boxed{{{box('(0,0),(10,10)')}}} r \\boxed{{{TRUTH}}}", 1.0, 0.0),
        # G3 swapped corners: chexone reorders them (IoU 1); the reference intersects x in [60, 20] -> 0
        (f"r \\boxed{{{box('(60,60),(20,20)')}}}", 1.0, 0.0),
        # x only swapped: area (20-60)*(60-20) = -1600, union 1600-1600 = 0, 0 / (0 + 1e-16) = 0
        (f"r \\boxed{{{box('(60,20),(20,60)')}}}", 1.0, 0.0),
        # G4 outside 0-99: chexone drops the box (0); the reference scores it as written:
        # inter 40*40 = 1600, pred area 40*80 = 3200, union 1600+3200-1600 = 3200 -> 1/2
        (f"r \\boxed{{{box('(20,20),(60,100)')}}}", 0.0, 0.5),
        (f"r \\boxed{{{box('(-20,20),(60,60)')}}}", 0.0, 0.5),  # pred area 80*40 = 3200 -> 1600/3200
        # G5 spaces around the ref name: " nodule " != "nodule" for the reference -> 1 x 0.95
        (f"r \\boxed{{{box('(20,20),(60,60)', ' nodule ')}}}", 1.0, 0.95),
        # G6 first box unusable, second right: chexone skips to the first in-range box; the reference scores the
        # first tag only: (0,0),(10,120) meets x in [20, 10] -> 0
        (f"r \\boxed{{{box('(0,0),(10,120)')}{TRUTH}}}", 1.0, 0.0),
        # G7 other spellings of four integers: the reference drops "(" and ")" and splits on ","
        (f"r \\boxed{{{box('(20,20,60,60)')}}}", 0.0, 1.0),
        (f"r \\boxed{{{box('20, 20, 60, 60')}}}", 0.0, 1.0),
        # G8 text between the ref and box tags: the reference pairs tags by order
        ("r \\boxed{<|ref|>nodule<|/ref|> at <|box|>(20,20),(60,60)<|/box|>}", 0.0, 1.0),
        # G9 a line break inside the box tag: the reference's tag pattern does not cross lines -> no box -> 0
        (f"r \\boxed{{{box('(20,20),' + chr(10) + '(60,60)')}}}", 1.0, 0.0),
        # G10 float32 arithmetic: (30,30),(50,50) vs (20,20),(60,60): inter 400, union 1600 -> 1/4 exactly in both;
        # (20,20),(40,40) vs (10,10),(30,30) below: 100/700 = 1/7 -> float32(1/7) for the reference
        # the same under both
        (f"r \\boxed{{{box('(30,30),(50,50)')}}}", 0.25, 0.25),
        (f"r \\boxed{{{box('(20,20),(60,60)', 'Nodule')}}}", 1.0, 1.0),  # both lower-case the names
        (f"r \\boxed{{{box('(20,20),(60,60)', 'mass')}}}", 0.95, 0.95),
        (f"r \\boxed{{{box('(a,b),(c,d)')}}}", 0.0, 0.0),
        (f"r \\boxed{{{box('(20.5,20),(60,60)')}}}", 0.0, 0.0),
        ("r \\boxed{<|box|>(20,20),(60,60)<|/box|>}", 0.0, 0.0),  # no ref tag
        ("r \\boxed{the left upper lobe}", 0.0, 0.0),
    ],
)
def test_grounding_paper_vs_reference(response, paper, reference):
    assert both(grounding_iou_reward, response, grd()) == pytest.approx((paper, reference))


def test_grounding_reference_float32_value():
    s = grd("<|ref|>nodule<|/ref|><|box|>(10,10),(30,30)<|/box|>")
    response = f"r \\boxed{{{box('(20,20),(40,40)')}}}"
    paper, reference = both(grounding_iou_reward, response, s)
    assert paper == 1 / 7  # 0.14285714285714285, float64
    assert reference == FLOAT32_ONE_SEVENTH
    # name mismatch: the float32 IoU times 0.95 in float64
    mass = f"r \\boxed{{{box('(20,20),(40,40)', 'mass')}}}"
    assert grounding_iou_reward([mass], [s], semantics="reference") == [FLOAT32_ONE_SEVENTH * 0.95]


def test_grounding_reference_negative_truth_and_other_tasks():
    assert both(grounding_iou_reward, f"r \\boxed{{{TRUTH}}}", grd("No nodule detected.")) == (0.0, 0.0)
    assert grounding_iou_reward(["r"], [mc("B")], semantics="reference") == [None]
    # a boxed ground truth is unwrapped by the reference
    assert grounding_iou_reward([f"r \\boxed{{{TRUTH}}}"], [grd(f"\\boxed{{{TRUTH}}}")], semantics="reference") == [1.0]


# ------------------------------------------------------------------------------------------------ report


class NegOverlap:
    """Lower-is-better test scorer (NOT a clinical metric): minus the word-set Jaccard."""

    lower_is_better = True

    def __init__(self, **_):
        self.preds = []

    def score(self, preds, refs):
        self.preds += preds
        out = []
        for p, r in zip(preds, refs):
            a, b = set(p.lower().split()), set(r.lower().split())
            out.append(-(len(a & b) / len(a | b)) if a | b else 0.0)
        return out


class Overlap(NegOverlap):
    lower_is_better = False

    def score(self, preds, refs):
        return [-q for q in super().score(preds, refs)]


LO, HI = "test_ref_overlap_lo", "test_ref_overlap_hi"
if LO not in METRICS:
    METRICS.register(LO, NegOverlap)
    METRICS.register(HI, Overlap)


def s(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize(
    "response,paper,reference",
    [
        # R1 no box: chexone scores the whole response (Jaccard 1 -> q = -1 -> sigmoid(1)); the reference gives 0
        ("lungs are clear", s(1.0), 0.0),
        # R2 empty box: chexone scores "" (Jaccard 0 -> sigmoid(0) = 1/2); the reference gives 0
        ("r \\boxed{ }", 0.5, 0.0),
        # R3 first box "lungs clear" (Jaccard 2/3) vs chexone's last "lungs are clear" (1)
        ("r \\boxed{lungs clear} then \\boxed{lungs are clear}", s(1.0), 2 * s(2 / 3)),
        # R4 the box ends at the first "}": "lungs {are" -> {lungs} of {lungs, {are, are, clear} = 1/4;
        # chexone: "lungs {are} clear" -> {lungs, clear} of {lungs, {are}, are, clear} = 2/4
        ("r \\boxed{lungs {are} clear}", s(0.5), 2 * s(0.25)),
        # R5 the mapping: 2*sigmoid(-q) in (0, 2), x 0.95 without reasoning before the box
        ("r \\boxed{lungs are clear}", s(1.0), 2 * s(1.0)),
        ("\\boxed{lungs clear}", s(2 / 3), 2 * s(2 / 3) * 0.95),
        ("r \\boxed{lungs are clear} and trailing text", s(1.0), 2 * s(1.0)),  # text after the box: ignored by both
    ],
)
def test_report_paper_vs_reference(response, paper, reference):
    assert both(report_reward, response, rep(), metric=LO) == pytest.approx((paper, reference))


def test_report_reference_skips_unboxed_and_keeps_other_tasks():
    from chexone.rewards.builtin import _scorer

    scorer = _scorer(LO, ())
    before = len(scorer.preds)
    out = report_reward(["no box", "r \\boxed{lungs}", "r \\boxed{B}"], [rep(), rep(), mc("B")], metric=LO,
                        semantics="reference")
    assert out == pytest.approx([0.0, 2 * s(1 / 3), None]) and out[2] is None
    assert scorer.preds[before:] == ["lungs"]  # only the boxed answer was scored


def test_report_reference_mapping_and_higher_is_better():
    # the mapping is part of the reference semantics: "reference" is accepted, "sigmoid" contradicts it
    assert report_reward(["r \\boxed{lungs are clear}"], [rep()], metric=LO, mapping="reference",
                         semantics="reference") == pytest.approx([2 * s(1.0)])
    with pytest.raises(ValueError, match="semantics='reference'.*mapping='sigmoid'"):
        report_reward(["r \\boxed{x}"], [rep()], metric=LO, mapping="sigmoid", semantics="reference")
    # a higher-is-better score is used as it is, with the no-reasoning penalty
    assert report_reward(["\\boxed{lungs clear}", "lungs clear"], [rep(), rep()], metric=HI,
                         semantics="reference") == pytest.approx([2 / 3 * 0.95, 0.0])


# ------------------------------------------------------------------------------------------------ the switch

REWARDS = {
    "format": format_reward,
    "vqa": vqa_reward,
    "vqa_strict": vqa_strict_reward,
    "grounding_iou": grounding_iou_reward,
    "report": report_reward,
}


@pytest.mark.parametrize("name", sorted(REWARDS))
@pytest.mark.parametrize("bad", ["Reference", "ref", "", None, 1])
def test_unknown_semantics_is_a_clear_error(name, bad):
    # raised even when no sample belongs to the reward's task, so a recipe typo fails on the first batch
    with pytest.raises(ValueError, match=rf"reward '{name}': semantics=.*choose one of paper, reference"):
        REWARDS[name](["r \\boxed{B}"], [Sample(id="x", task="close_vqa", question="Q?", answer="B",
                                                  options=["a", "b"])], semantics=bad)


def test_paper_is_the_default():
    responses = ["Reasoning \\boxed{B} and more", "r \\boxed{A} r \\boxed{B}", TRUTH, "lungs are clear"]
    samples = [mc("B"), mc("B"), grd(), rep()]
    for name, reward in REWARDS.items():
        kwargs = {"metric": LO} if name == "report" else {}
        assert reward(responses, samples, **kwargs) == reward(responses, samples, semantics="paper", **kwargs)
