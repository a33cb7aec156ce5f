"""How much a reader changed a draft: Levenshtein distances on characters and on words, raw and normalised by the
longer text (0 = untouched, 1 = nothing kept)."""

from __future__ import annotations

from typing import Any, Sequence


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Insertions + deletions + substitutions turning ``a`` into ``b`` (unit costs). A common prefix and suffix are
    stripped first: a reader's edits are usually local, which keeps the quadratic part small."""
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def normalised(distance: int, a: Sequence[Any], b: Sequence[Any]) -> float:
    longest = max(len(a), len(b))
    return distance / longest if longest else 0.0


def edit_stats(draft: str, final: str) -> dict[str, Any]:
    """Edit statistics of one signed draft (stored with the answer and exported per row)."""
    dw, fw = draft.split(), final.split()
    chars, words = levenshtein(draft, final), levenshtein(dw, fw)
    return {
        "edited": draft != final,
        "char_edit_distance": chars,
        "normalised_char_edit_distance": normalised(chars, draft, final),
        "word_edit_distance": words,
        "normalised_word_edit_distance": normalised(words, dw, fw),
        "draft_chars": len(draft), "final_chars": len(final), "draft_words": len(dw), "final_words": len(fw),
    }
