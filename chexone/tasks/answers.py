"""Parsing of model answers: ``\\boxed{}`` extraction, option letters and CheXagent-style boxes.

These are the single source of truth for answer formats; tasks, rewards and metrics all call them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

BOXED = "\\boxed{"


def find_boxed(text: str) -> list[str]:
    """Contents of every top-level ``\\boxed{...}`` in ``text``, in order; nested braces are balanced.

    An unterminated box (missing closing brace) is not returned.
    """
    found: list[str] = []
    start = 0
    while True:
        i = text.find(BOXED, start)
        if i < 0:
            return found
        j = i + len(BOXED)
        depth = 1
        k = j
        while k < len(text) and depth:
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
            k += 1
        if depth:  # unterminated
            return found
        found.append(text[j : k - 1])
        start = k


def extract_boxed(text: str, which: str = "last") -> str | None:
    """The content of the first or last ``\\boxed{}`` in ``text`` (``which`` = "first" | "last"), or None."""
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    boxes = find_boxed(text)
    if not boxes:
        return None
    return boxes[0] if which == "first" else boxes[-1]


def option_letter(i: int) -> str:
    """0 -> 'A', 25 -> 'Z'."""
    if not 0 <= i < 26:
        raise ValueError(f"option index {i} outside A-Z")
    return chr(ord("A") + i)


def render_options(options: list[str]) -> str:
    """Options as '(A) text' lines, the CheXOne multiple-choice convention."""
    return "\n".join(f"({option_letter(i)}) {opt}" for i, opt in enumerate(options))


_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_LETTER_PUNCT = re.compile(r"(?<![A-Za-z])([A-Z])(?=[.:,\s])")
_LONE_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def parse_option_letters(text: str) -> set[str]:
    """Option letters in an answer: '(A)' forms first, then letters followed by '.', ':', ',' or space, then lone
    letters. Returns the letters of the first rule that matches (docs/method.md §3)."""
    text = text.strip()
    for pattern in (_PAREN_LETTER, _LETTER_PUNCT, _LONE_LETTER):
        letters = set(pattern.findall(text if pattern is not _LETTER_PUNCT else text + " "))
        if letters:
            return letters
    return set()


# ---------------------------------------------------------------- grounding boxes (0-99 percent grid)

#: A ref name never contains a tag ("<|"): a malformed box must not swallow the next, well-formed one.
_BOX_RE = re.compile(
    r"<\|ref\|>(?P<name>(?:(?!<\|).)*?)<\|/ref\|>\s*<\|box\|>\s*\(\s*(?P<x1>-?\d+)\s*,\s*(?P<y1>-?\d+)\s*\)\s*,\s*"
    r"\(\s*(?P<x2>-?\d+)\s*,\s*(?P<y2>-?\d+)\s*\)\s*<\|/box\|>",
    re.S,
)


@dataclass(frozen=True)
class RefBox:
    """A named box on the 0-99 grid (integer percent of image width/height), corners normalised x1<=x2, y1<=y2."""

    name: str
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def coords(self) -> tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)


def clamp_grid(v: float) -> int:
    """Round and clamp a coordinate onto the 0-99 grid."""
    return int(min(99, max(0, round(v))))


def format_boxes(name: str, boxes: list[list[float]]) -> str:
    """CheXagent answer string for ``name`` with ``boxes`` (each [x1,y1,x2,y2] on the 0-99 grid), sorted by (x1, y1).

    No boxes gives the negative sentence "No {name} detected."
    """
    if not boxes:
        return f"No {name} detected."
    norm = []
    for b in boxes:
        x1, y1, x2, y2 = (clamp_grid(v) for v in b)
        norm.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    norm.sort()
    return "".join(f"<|ref|>{name}<|/ref|><|box|>({x1},{y1}),({x2},{y2})<|/box|>" for x1, y1, x2, y2 in norm)


def parse_boxes(text: str, *, strict_range: bool = True) -> list[RefBox]:
    """All well-formed named boxes in ``text``. Corners are reordered; with ``strict_range`` a box with any coordinate
    outside 0-99 is dropped (it cannot be a valid answer)."""
    out = []
    for m in _BOX_RE.finditer(text):
        x1, y1, x2, y2 = (int(m.group(k)) for k in ("x1", "y1", "x2", "y2"))
        if strict_range and not all(0 <= v <= 99 for v in (x1, y1, x2, y2)):
            continue
        out.append(RefBox(m.group("name").strip(), min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return out


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes with continuous areas (torchvision ``box_iou`` semantics); 0 if degenerate.

    The one scalar IoU of the project (rewards, box merging in the shard builders); the batched tensor version for
    metrics is ``chexone.metrics.grounding.box_iou``.
    """
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
