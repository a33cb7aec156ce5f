"""Answer parsing: boxed extraction (first/last, nesting), option letters, CheXagent boxes."""

import pytest

from chexone.tasks.answers import (
    extract_boxed,
    find_boxed,
    format_boxes,
    parse_boxes,
    parse_option_letters,
    render_options,
)


def test_boxed_first_and_last():
    text = "reasoning \\boxed{A} more \\boxed{B}"
    assert find_boxed(text) == ["A", "B"]
    assert extract_boxed(text, "first") == "A"
    assert extract_boxed(text, "last") == "B"


def test_boxed_nested_braces_are_balanced():
    assert extract_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert find_boxed("\\boxed{a{b}c}\\boxed{d}") == ["a{b}c", "d"]


def test_boxed_missing_or_unterminated():
    assert extract_boxed("no box here") is None
    assert extract_boxed("\\boxed{open") is None
    assert find_boxed("\\boxed{ok} \\boxed{open") == ["ok"]
    assert extract_boxed("\\boxed{}") == ""
    with pytest.raises(ValueError):
        extract_boxed("x", "middle")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("(B) No", {"B"}),
        ("(A) yes, (C) maybe", {"A", "C"}),
        ("B. No", {"B"}),
        ("A, C", {"A", "C"}),
        ("B", {"B"}),
        ("The answer is B", {"B"}),  # lone letter rule; "The" has no standalone capital
        ("no letter here", set()),
    ],
)
def test_option_letters(text, expected):
    assert parse_option_letters(text) == expected


def test_render_options():
    assert render_options(["Yes", "No"]) == "(A) Yes\n(B) No"


def test_boxes_roundtrip_sorted_and_clamped():
    s = format_boxes("nodule", [[50, 60, 10, 20], [5, 5, 120, 9]])
    # corners normalised, clamped to 99, sorted by (x1, y1)
    assert s == ("<|ref|>nodule<|/ref|><|box|>(5,5),(99,9)<|/box|>"
                 "<|ref|>nodule<|/ref|><|box|>(10,20),(50,60)<|/box|>")
    boxes = parse_boxes(s)
    assert [b.coords for b in boxes] == [(5, 5, 99, 9), (10, 20, 50, 60)]
    assert boxes[0].name == "nodule"


def test_boxes_negative_and_malformed():
    assert format_boxes("nodule", []) == "No nodule detected."
    assert parse_boxes("No nodule detected.") == []
    assert parse_boxes("<|ref|>x<|/ref|><|box|>(a,b),(c,d)<|/box|>") == []
    # out of range coordinates dropped in strict mode, kept otherwise
    bad = "<|ref|>x<|/ref|><|box|>(10,10),(150,20)<|/box|>"
    assert parse_boxes(bad) == []
    assert parse_boxes(bad, strict_range=False)[0].coords == (10, 10, 150, 20)
    # swapped corners are normalised
    assert parse_boxes("<|ref|>x<|/ref|><|box|>(40,50),(10,20)<|/box|>")[0].coords == (10, 20, 40, 50)


def test_a_malformed_box_does_not_swallow_the_next_one():
    from chexone.tasks.answers import parse_boxes

    text = ("<|ref|>nodule<|/ref|><|box|>(20,20)<|/box|>"
            "<|ref|>nodule<|/ref|><|box|>(20,20),(60,60)<|/box|>")
    boxes = parse_boxes(text)
    assert [(b.name, b.coords) for b in boxes] == [("nodule", (20, 20, 60, 60))]
