"""The judge's answer format and the GREEN formula, without a server."""

from __future__ import annotations

import json

import pytest

from chexone_llm_judge.judgement import (CATEGORIES, JudgementParseError, build_messages, green, parse_judgement)


def test_green_formula():
    assert green(3, 1) == pytest.approx(0.75)
    assert green(2, 0) == 1.0
    assert green(0, 0) == 0.0 and green(0, 4) == 0.0  # nothing matched: 0, as in GREEN


def test_prompt_holds_both_reports_and_the_six_categories():
    system, user = build_messages("  Small left effusion. ", "No effusion.")
    assert system["role"] == "system" and user["role"] == "user"
    assert "<candidate_report>\nSmall left effusion.\n</candidate_report>" in user["content"]
    assert "<reference_report>\nNo effusion.\n</reference_report>" in user["content"]
    for c in CATEGORIES:
        assert f"({c}) " in user["content"]


def test_parse_the_asked_format_and_tolerated_variants():
    asked = {"matched_findings": ["no effusion", "normal heart"],
             "significant_errors": [{"category": "a", "finding": "nodule"}, {"category": "(c)", "finding": "side"},
                                    {"category": "B) missed", "finding": "edema"}],
             "insignificant_errors": ["wording"]}
    j = parse_judgement(json.dumps(asked))
    assert (j.matched, j.significant, j.insignificant) == (2, {"a": 1, "b": 1, "c": 1, "d": 0, "e": 0, "f": 0}, 1)
    assert j.score == pytest.approx(2 / 5)
    assert j.matched_findings == ("no effusion", "normal heart")
    # in a code fence with prose around it, or inside text
    assert parse_judgement(f"Sure.\n```json\n{json.dumps(asked)}\n```") == j
    assert parse_judgement(f"My answer: {json.dumps(asked)} Hope this helps.") == j
    # counts instead of lists, errors grouped by category
    k = parse_judgement('{"matched_findings": 2, "significant_errors": {"a": 1, "b": ["edema"], "c": 1}}')
    assert k == j.__class__(2, {"a": 1, "b": 1, "c": 1, "d": 0, "e": 0, "f": 0}, 0)


@pytest.mark.parametrize("content, why", [
    ("The report is fine.", "no JSON object"),
    ('{"matched_findings": [1, 2', "no JSON object"),
    ('{"matched_findings": [], "significant_errors": [} ', "invalid JSON"),
    ('["a", "b"]', "not an object"),
    ('{"matched_findings": []}', "missing key"),
    ('{"matched_findings": [], "significant_errors": [{"category": "z"}]}', "unknown error category"),
    ('{"matched_findings": [], "significant_errors": ["nodule"]}', "must be an object"),
    ('{"matched_findings": "two", "significant_errors": []}', "must be a list"),
    ('{"matched_findings": -1, "significant_errors": []}', "negative"),
])
def test_bad_answers_are_named(content, why):
    with pytest.raises(JudgementParseError, match=why):
        parse_judgement(content)
