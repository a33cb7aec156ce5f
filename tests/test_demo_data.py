"""Demo data: labels checked against measurements on the pixels, answer formats against the task/answer parsers.

Pixel checks use their own thresholds and regions (from the intensity/geometry design documented in
``chexone/data/demo/phantom.py``), never the generator's masks. Sides are the patient's: patient left = image right.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from chexone.builtin_plugins import BUILTIN_TASKS as BUILTIN_TASK_NAMES
from chexone.data.demo import demo_samples
from chexone.data.demo.generate import allocate, make_sample
from chexone.data.demo.phantom import random_phantom, render
from chexone.tasks.answers import find_boxed, parse_boxes, parse_option_letters
from chexone.tasks.builtin import BUILTIN_TASKS

S = 112
MC_TASKS = {"close_vqa", "view_classification", "temporal_classification", "disease_classification"}


@pytest.fixture(scope="module")
def test_split():
    return list(demo_samples("test", 300))


def px(image) -> np.ndarray:
    a = np.asarray(image, dtype=np.float32)
    assert a.shape == (S, S)
    return a


def rows(a: float, b: float) -> slice:
    return slice(int(a * S), int(b * S))


cols = rows


def single_frontal(samples):
    return [s for s in samples if len(s.images) == 1 and s.meta["view"] != "Lateral"]


# --------------------------------------------------------------------------- coverage and formats

def test_every_builtin_task_has_samples(test_split):
    counts = Counter(s.task for s in test_split)
    assert set(counts) == set(BUILTIN_TASK_NAMES)
    assert all(n >= 10 for n in counts.values()), counts
    mc_share = sum(counts[t] for t in MC_TASKS) / len(test_split)
    assert 0.5 <= mc_share <= 0.65
    assert 0.35 <= counts["close_vqa"] / len(test_split) <= 0.5


def test_allocate_sums_exactly():
    for n in (1, 7, 99, 300, 2001):
        assert sum(allocate(n).values()) == n


def test_ids_fields_and_json(test_split):
    assert [s.id for s in test_split] == [f"demo-test-{i:06d}" for i in range(300)]
    for s in test_split:
        assert s.dataset == "demo"
        assert s.images and all(im.mode == "L" and im.size == (S, S) for im in s.images)
        assert len(s.images) == (2 if s.task in ("temporal_classification", "progression_generation") else 1)
        assert isinstance(s.meta["report"], str) and "IMPRESSION:" in s.meta["report"]
        json.dumps(s.to_json())  # plain JSON only
        BUILTIN_TASKS[s.task]().question_text(s)  # renders (MC tasks need options)
    assert any(s.meta.get("indication") for s in test_split if s.task == "findings_generation")
    assert any(not s.meta.get("indication") for s in test_split if s.task == "findings_generation")


def test_same_index_same_sample_and_splits_differ():
    a = make_sample("val", 3, "close_vqa", 5, seed=1)
    b = make_sample("val", 3, "close_vqa", 5, seed=1)
    c = make_sample("train", 3, "close_vqa", 5, seed=1)
    assert a.to_json() == b.to_json() and a.images[0].tobytes() == b.images[0].tobytes()
    assert a.images[0].tobytes() != c.images[0].tobytes()


def test_image_size_configurable():
    s = next(iter(demo_samples("val", 1, image_size=224)))
    assert s.images[0].size == (224, 224) and s.meta["image_size"] == 224


def test_multiple_choice_answers_within_options(test_split):
    for s in test_split:
        if s.task not in MC_TASKS:
            continue
        letters = parse_option_letters(s.answer)
        assert letters, s.answer
        assert all(ord(x) - 65 < len(s.options) for x in letters), (s.id, s.answer, s.options)
        # the answer text names the options
        text = BUILTIN_TASKS[s.task]().answer_text(s)
        for x in letters:
            assert f"({x}) {s.options[ord(x) - 65]}" in text


def test_option_order_fixed_per_question(test_split):
    options = defaultdict(set)
    for s in test_split:
        if s.task in MC_TASKS:
            options[s.question].add(tuple(s.options))
    assert all(len(v) == 1 for v in options.values()), options
    assert len({s.meta["question_type"] for s in test_split if s.task in MC_TASKS}) <= 8


def test_majority_baseline_per_question_type(test_split):
    by_type = defaultdict(Counter)
    for s in test_split:
        if s.task in MC_TASKS or s.task == "open_vqa":
            by_type[s.meta["question_type"]][s.answer] += 1
    assert len(by_type) >= 7
    for qtype, c in by_type.items():
        baseline = max(c.values()) / sum(c.values())
        assert baseline <= 0.6, (qtype, c)
    assert by_type["close_vqa/effusion_presence"]["A"] == by_type["close_vqa/effusion_presence"]["B"]


def test_grounding_answers_parse_back(test_split):
    seen_negative = False
    for s in test_split:
        if s.task not in ("phrase_grounding", "abnormality_grounding"):
            continue
        name, boxes = s.meta["ref_name"], s.meta["boxes"]
        parsed = parse_boxes(s.answer)
        assert [list(b.coords) for b in parsed] == boxes
        assert all(b.name == name for b in parsed)
        if not boxes:
            seen_negative = True
            assert s.answer == f"No {name} detected."
        task = BUILTIN_TASKS[s.task]()
        assert task.is_correct(s.answer, s, reasoning=False)
    assert seen_negative


def test_reasoning_traces_box_the_task_answer(test_split):
    traced = [s for s in test_split if s.reasoning]
    assert 0.25 <= len(traced) / len(test_split) <= 0.45
    assert {s.task for s in traced} == set(BUILTIN_TASK_NAMES)
    for s in traced:
        task = BUILTIN_TASKS[s.task]()
        boxes = find_boxed(s.reasoning)
        assert boxes == [task.answer_text(s)], s.id
        assert s.reasoning.count("\\boxed{") == 1
        assert s.reasoning.startswith("**Thinking Process:**") and "**Final Answer:**" in s.reasoning
        assert "1. " in s.reasoning and "2. " in s.reasoning
        assert task.target(s, reasoning=True) == s.reasoning
        assert task.is_correct(s.reasoning, s, reasoning=True)


# --------------------------------------------------------------------------- labels true to the pixels

def test_nodule_box_is_brighter_than_surroundings(test_split):
    checked = 0
    for s in test_split:
        if s.task not in ("phrase_grounding", "abnormality_grounding") or "nodule" not in s.meta["ref_name"]:
            continue
        a = px(s.images[0])
        for b in parse_boxes(s.answer):
            x1, y1, x2, y2 = (round(v * S / 100) for v in b.coords)
            inside = a[y1:y2, x1:x2]
            m = 4
            frame = a[max(0, y1 - m):y2 + m, max(0, x1 - m):x2 + m].copy()
            frame[y1 - max(0, y1 - m):y1 - max(0, y1 - m) + (y2 - y1), x1 - max(0, x1 - m):x1 - max(0, x1 - m) + (x2 - x1)] = np.nan
            assert inside.mean() > np.nanmean(frame) + 50, s.id
            cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
            assert a[cy, cx] > 200, s.id  # the box is centred on the nodule
            checked += 1
    assert checked >= 10


def test_effusion_side_lower_zone_is_brighter(test_split):
    checked = 0
    for s in test_split:
        if s.meta["question_type"] != "close_vqa/effusion_side":
            continue
        a = px(s.images[0])
        image_left = a[rows(0.68, 0.78), cols(0.19, 0.29)].mean()  # patient's right lung base (lateral part)
        image_right = a[rows(0.68, 0.78), cols(0.71, 0.81)].mean()  # patient's left
        side = s.options[ord(s.answer) - 65].lower()
        diff = image_right - image_left if side == "left" else image_left - image_right
        assert diff > 20, (s.id, side, image_left, image_right)
        checked += 1
    assert checked >= 20


def heart_thorax_ratio(a: np.ndarray) -> float:
    """Widest run of heart-bright pixels (> 184) through the heart column, over the rib-cage width (> 90)."""
    best = (0, 1)
    c = int(0.54 * S)
    for y in range(int(0.52 * S), int(0.66 * S)):
        row = a[y]
        if row[c] <= 184:
            continue
        left = c
        while left > 0 and row[left - 1] > 184:
            left -= 1
        right = c
        while right < S - 1 and row[right + 1] > 184:
            right += 1
        if right - left + 1 > best[0]:
            body = np.nonzero(row > 90)[0]
            best = (right - left + 1, body[-1] - body[0] + 1)
    return best[0] / best[1]


def test_cardiomegaly_matches_measured_cardiothoracic_ratio(test_split):
    n_yes = n_no = 0
    for s in single_frontal(test_split):
        ratio = heart_thorax_ratio(px(s.images[0]))
        enlarged = s.meta["findings"]["cardiomegaly"]
        if s.meta["question_type"] == "close_vqa/cardiomegaly":
            assert enlarged == (s.answer == "A")
        assert (ratio > 0.5) == enlarged, (s.id, ratio, enlarged)
        n_yes += enlarged
        n_no += not enlarged
    assert n_yes >= 30 and n_no >= 30


def test_pneumothorax_has_air_without_markings(test_split):
    for s in single_frontal(test_split):
        a = px(s.images[0])
        air = (a[rows(0.25, 0.7), cols(0.12, 0.88)] < 25).sum()  # inside the body: only pneumothorax air is black
        present = bool(s.meta["findings"]["pneumothorax"])
        if s.meta["question_type"] == "close_vqa/pneumothorax":
            assert present == (s.answer == "A")
        assert (air > 100) if present else (air < 5), (s.id, air, present)


def test_lateral_differs_from_frontal(test_split):
    def spine_band(a):  # rows where the posterior (image-right) spine column is bright
        return (a[rows(0.15, 0.85), cols(0.75, 0.82)].mean(axis=1) > 140).mean()

    seen = Counter()
    for s in test_split:
        if s.task != "view_classification":
            continue
        a = px(s.images[0])
        view = s.options[ord(s.answer) - 65]
        assert view == s.meta["view"]
        assert (spine_band(a) > 0.65) == (view == "Lateral"), (s.id, view, spine_band(a))
        ap_marker = (a[rows(0.02, 0.09), cols(0.66, 0.96)] > 200).mean()
        assert (ap_marker > 0.3) == (view == "AP"), (s.id, view, ap_marker)
        seen[view] += 1
    assert set(seen) == {"PA", "AP", "Lateral"}


def _finding_size(a: np.ndarray, finding: str, side: str) -> float:
    if finding == "nodule":
        return float((a[rows(0.2, 0.8)] > 216).sum())
    half = cols(0.0, 0.43) if side == "right" else cols(0.57, 1.0)  # patient right = image left
    zone = a[rows(0.4, 0.95), half]
    return float(((zone > 140) & (zone < 185)).sum())


def test_temporal_answers_agree_with_measured_size_change(test_split):
    checked = Counter()
    for s in test_split:
        if s.task != "temporal_classification":
            continue
        prior, current = (_finding_size(px(im), s.meta["finding"], s.meta["side"]) for im in s.images)
        label = s.options[ord(s.answer) - 65]
        assert prior > 0
        if label == "Improved":
            assert current < 0.75 * prior, (s.id, prior, current)
        elif label == "Worsened":
            assert current > 1.33 * prior, (s.id, prior, current)
        else:
            assert 0.8 * prior < current < 1.25 * prior, (s.id, prior, current)
        checked[label] += 1
    assert set(checked) == {"Improved", "Stable", "Worsened"}


def test_disease_classification_and_open_vqa_agree_with_findings(test_split):
    for s in test_split:
        f = s.meta.get("findings") or {}
        present = {"pleural effusion": bool(f.get("effusion")), "cardiomegaly": f.get("cardiomegaly"),
                   "pneumothorax": bool(f.get("pneumothorax")), "lung nodule": bool(f.get("nodules"))}
        if s.task == "disease_classification":
            chosen = {s.options[ord(x) - 65].lower() for x in parse_option_letters(s.answer)}
            expected = {k for k, v in present.items() if v} or {"no finding"}
            assert chosen == expected
        if s.meta["question_type"] == "open_vqa/main_finding":
            expected = [k for k, v in present.items() if v]
            assert expected == ([] if s.answer == "no abnormality" else
                                ["lung nodule" if s.answer == "nodule" else s.answer])


def test_phantom_is_deterministic_and_views_render():
    for view in ("PA", "AP", "Lateral"):
        a = render(random_phantom(np.random.default_rng(7), view), 112).image.tobytes()
        b = render(random_phantom(np.random.default_rng(7), view), 112).image.tobytes()
        assert a == b
