"""The judge's prompt, the parsing of its structured answer and the GREEN-style score computed from it.

The score follows GREEN (Ostmeier et al., "GREEN: Generative Radiology Report Evaluation and Error Notation",
Findings of EMNLP 2024): a judge lists the findings a candidate report shares with the reference ("matched
findings") and the candidate's clinically significant errors in six categories, and

    GREEN = matched / (matched + sum of clinically significant errors over the six categories)

with GREEN = 0 when nothing is matched. Clinically insignificant errors are reported but do not enter the score. The
prompt and the parser here are this package's own; the categories are GREEN's:

(a) a false report of a finding, (b) a missed finding, (c) a wrong anatomic location or position of a finding,
(d) a wrong severity of a finding, (e) a comparison with a prior study that the reference does not make,
(f) an omitted comparison that the reference makes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

#: Bump when the prompt changes: it is part of the cache key, so old answers are not reused for a new prompt.
PROMPT_VERSION = "llm-judge-green-v1"
CATEGORIES = ("a", "b", "c", "d", "e", "f")
CATEGORY_NAMES = {
    "a": "false report of a finding",
    "b": "missing a finding",
    "c": "wrong anatomic location or position of a finding",
    "d": "wrong severity of a finding",
    "e": "mentions a comparison with a prior study that the reference does not make",
    "f": "omits a comparison with a prior study that the reference makes",
}

SYSTEM_PROMPT = ("You are an expert thoracic radiologist. You compare a candidate chest X-ray report with the "
                 "reference report a radiologist wrote for the same study, and you answer only with a JSON object.")

USER_TEMPLATE = """Compare the candidate report with the reference report. Judge the clinical content only, not the \
style or the wording.

List:
1. "matched_findings": the findings the candidate states in agreement with the reference, one short phrase each (a \
normal statement such as "no pleural effusion" is a finding too).
2. "significant_errors": the candidate's clinically significant errors, each with one category:
{categories}
3. "insignificant_errors": errors of the same kinds that would not change the patient's management, one short \
phrase each.

Answer with exactly one JSON object and nothing else, in this form:
{{"matched_findings": ["..."], "significant_errors": [{{"category": "a", "finding": "..."}}], \
"insignificant_errors": ["..."]}}

<reference_report>
{reference}
</reference_report>

<candidate_report>
{candidate}
</candidate_report>"""


def build_messages(candidate: str, reference: str) -> list[dict[str, str]]:
    """The chat messages sent to the judge for one (candidate, reference) pair."""
    cats = "\n".join(f"   ({c}) {CATEGORY_NAMES[c]}" for c in CATEGORIES)
    user = USER_TEMPLATE.format(categories=cats, reference=reference.strip(), candidate=candidate.strip())
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


class JudgementParseError(ValueError):
    """The judge's answer is not the JSON object the prompt asks for."""


@dataclass(frozen=True)
class Judgement:
    """What the judge found for one pair: counts (and the phrases, when the judge listed them)."""

    matched: int
    significant: dict[str, int]
    insignificant: int = 0
    matched_findings: tuple[str, ...] = field(default=(), compare=False)
    significant_findings: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def significant_total(self) -> int:
        return sum(self.significant.values())

    @property
    def score(self) -> float:
        """GREEN: matched / (matched + significant errors); 0 when nothing is matched."""
        return green(self.matched, self.significant_total)


def green(matched: int, significant_errors: int) -> float:
    """The GREEN formula (module docstring)."""
    if matched <= 0:
        return 0.0
    return matched / (matched + significant_errors)


_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.S)


def _json_object(content: str) -> dict[str, Any]:
    text = content.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    try:
        obj = json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise JudgementParseError("no JSON object in the answer") from None
        try:
            obj = json.loads(text[start:end + 1])
        except ValueError as e:
            raise JudgementParseError(f"invalid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(obj, dict):
        raise JudgementParseError(f"the JSON is a {type(obj).__name__}, not an object")
    return obj


def _count(value: Any, key: str) -> tuple[int, tuple[str, ...]]:
    if isinstance(value, bool):
        raise JudgementParseError(f"{key!r} is a boolean")
    if isinstance(value, int):
        if value < 0:
            raise JudgementParseError(f"{key!r} is negative")
        return value, ()
    if isinstance(value, list):
        return len(value), tuple(str(v) for v in value)
    raise JudgementParseError(f"{key!r} must be a list (or a count), got {type(value).__name__}")


def _category(value: Any) -> str:
    c = str(value).strip().strip("()").strip().lower()
    if c[:1] in CATEGORIES and (len(c) == 1 or not c[1].isalpha()):
        return c[0]
    raise JudgementParseError(f"unknown error category {value!r} (expected one of a-f)")


def parse_judgement(content: str) -> Judgement:
    """The judgement in a judge's answer: the JSON object asked for, possibly inside a Markdown code fence or
    surrounded by text. ``significant_errors`` is a list of ``{"category": "a".."f", ...}`` objects or a mapping
    category -> list (or count); lists may be replaced by counts. Raises :class:`JudgementParseError`."""
    obj = _json_object(content)
    if "matched_findings" not in obj or "significant_errors" not in obj:
        missing = [k for k in ("matched_findings", "significant_errors") if k not in obj]
        raise JudgementParseError(f"missing key(s) {missing}")
    matched, matched_list = _count(obj["matched_findings"], "matched_findings")
    sig = dict.fromkeys(CATEGORIES, 0)
    listed: list[tuple[str, str]] = []
    errors = obj["significant_errors"]
    if isinstance(errors, list):
        for e in errors:
            if not isinstance(e, dict) or "category" not in e:
                raise JudgementParseError("each significant error must be an object with a 'category'")
            c = _category(e["category"])
            sig[c] += 1
            listed.append((c, str(e.get("finding", e.get("description", "")))))
    elif isinstance(errors, dict):
        for k, v in errors.items():
            c = _category(k)
            n, items = _count(v, f"significant_errors.{k}")
            sig[c] += n
            listed += [(c, s) for s in items]
    else:
        raise JudgementParseError(f"'significant_errors' must be a list or an object, got {type(errors).__name__}")
    minor = obj.get("insignificant_errors", [])
    if isinstance(minor, dict):  # by category, like significant_errors
        insignificant = sum(_count(v, f"insignificant_errors.{k}")[0] for k, v in minor.items())
    else:
        insignificant = _count(minor, "insignificant_errors")[0]
    return Judgement(matched, sig, insignificant, matched_list, tuple(listed))
