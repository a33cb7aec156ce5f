"""The fixed label set of the ``lines_tubes`` task and the answer parsing shared by its task, reward and metric.

The options never change order, so a letter always means the same finding in every sample, every model output and
every metric row (``A`` is always a well-positioned endotracheal tube). Positions are judged as on a bedside film:

* endotracheal tube (ETT): well positioned = tip in the mid trachea, a few centimetres above the carina;
  malpositioned = tip above the thoracic inlet or in a main bronchus;
* nasogastric tube (NGT): well positioned = tip below the diaphragm, in the stomach; malpositioned = tip in the
  oesophagus or in a bronchus;
* central venous catheter (CVC): well positioned = tip at the lower superior vena cava / cavo-atrial junction;
  malpositioned = tip turned up into a neck vein or deep in the right heart;
* chest tube and cardiac pacemaker: presence only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from chexone.plugin_api import parse_option_letters

#: (letter, key, option text). Keys name the per-device values of the metric. Option texts contain no comma, so the
#: task's ", "-joined answers split back unambiguously.
LABELS: tuple[tuple[str, str, str], ...] = (
    ("A", "ett_ok", "Endotracheal tube: well positioned"),
    ("B", "ett_malpositioned", "Endotracheal tube: malpositioned"),
    ("C", "ngt_ok", "Nasogastric tube: well positioned"),
    ("D", "ngt_malpositioned", "Nasogastric tube: malpositioned"),
    ("E", "cvc_ok", "Central venous catheter: well positioned"),
    ("F", "cvc_malpositioned", "Central venous catheter: malpositioned"),
    ("G", "chest_tube", "Chest tube"),
    ("H", "pacemaker", "Cardiac pacemaker"),
    ("I", "none", "No support device"),
)
DEVICE_OPTIONS: tuple[str, ...] = tuple(text for _, _, text in LABELS)
LETTERS: tuple[str, ...] = tuple(letter for letter, _, _ in LABELS)
KEYS: tuple[str, ...] = tuple(key for _, key, _ in LABELS)
LETTER_OF_KEY: dict[str, str] = {key: letter for letter, key, _ in LABELS}
KEY_OF_LETTER: dict[str, str] = {letter: key for letter, key, _ in LABELS}
TEXT_OF_LETTER: dict[str, str] = {letter: text for letter, _, text in LABELS}
#: Letters of the malposition findings (the clinically urgent ones).
MALPOSITIONED: frozenset[str] = frozenset(LETTER_OF_KEY[k] for k in KEYS if k.endswith("_malpositioned"))
NONE_LETTER = LETTER_OF_KEY["none"]

_VALID = frozenset(LETTERS)
# Option texts (and "no support devices") matched as whole phrases, longest first, when an answer has no letters.
_TEXTS = sorted(((text.lower(), letter) for letter, _, text in LABELS), key=lambda t: -len(t[0]))
_TEXTS.append(("no support devices", NONE_LETTER))
_SPACES = re.compile(r"\s+")


def parse_devices(answer: str | None) -> frozenset[str]:
    """The option letters an answer names: ``(A)``-style or bare letters (chexone's multiple-choice rules), else the
    option texts themselves (case-insensitive, e.g. ``"Chest tube; cardiac pacemaker"``). Letters outside A-I are
    dropped; an unparseable answer gives the empty set."""
    if not answer:
        return frozenset()
    letters = frozenset(parse_option_letters(answer)) & _VALID
    if letters:
        return letters
    text = _SPACES.sub(" ", answer.lower())
    found = set()
    for phrase, letter in _TEXTS:
        if phrase in text:
            found.add(letter)
            text = text.replace(phrase, " ")
    return frozenset(found)


def answer_text(letters: Iterable[str]) -> str:
    """``(A) Endotracheal tube: well positioned, (G) Chest tube`` for letters (sorted)."""
    return ", ".join(f"({x}) {TEXT_OF_LETTER[x]}" for x in sorted(set(letters)))


def letters_of(devices: Mapping[str, bool] | Iterable[str]) -> frozenset[str]:
    """Letters of label keys (``{"ett_ok": True, ...}`` or ``["ett_ok", ...]``); no key at all means ``none``."""
    keys = [k for k, v in devices.items() if v] if isinstance(devices, Mapping) else list(devices)
    unknown = [k for k in keys if k not in LETTER_OF_KEY]
    if unknown:
        raise ValueError(f"unknown support-device label(s) {unknown}; known: {', '.join(KEYS)}")
    return frozenset(LETTER_OF_KEY[k] for k in keys) or frozenset(NONE_LETTER)


def weighted_f1(pred: Iterable[str], truth: Iterable[str], weights: Mapping[str, float] | None = None) -> float:
    """F1 of two label sets, each label counted with its weight (default 1): 2·TP / (2·TP + FP + FN). Two empty sets
    score 1; an empty prediction against a non-empty truth scores 0."""
    p, t = set(pred), set(truth)
    w = (lambda x: float(weights.get(x, 1.0))) if weights else (lambda x: 1.0)
    tp = sum(w(x) for x in p & t)
    fp = sum(w(x) for x in p - t)
    fn = sum(w(x) for x in t - p)
    if tp + fp + fn == 0:
        return 1.0
    return 2.0 * tp / (2.0 * tp + fp + fn)
