"""What every source converter shares: the unit of work, the task-name vocabulary, option re-lettering, box
normalisation, ids for the leak check, the official-split index, and small readers for CSV/JSON inputs.

A converter (``webdata.sources.<name>``) does two things:

* ``plan()`` — read the annotation files (cheap, no pixels) and produce :class:`Unit` s: one unit = the samples that
  share images (one study, one radiograph with its boxes, one JSON record). Units carry everything needed to convert
  them (they are pickled to worker processes) plus the ids the leak check looks up.
* ``convert(unit, load)`` — load the images (``load(path)`` -> :class:`webdata.images.LoadedImage`) and yield
  :class:`chexone.data.sample.Sample` objects, or :class:`Skip` for what cannot be converted (the build reports every
  skip with its file/row and a reason, and goes on).
"""

from __future__ import annotations

import argparse
import codecs
import csv
import difflib
import gzip
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from chexone.data.sample import Sample
from chexone.registry import (
    AUTOLOAD_ENV,
    TASKS,
    DuplicateNameError,
    PluginLoadError,
    PluginTypeError,
    autoload_disabled,
)
from chexone.tasks.answers import clamp_grid, format_boxes, option_letter, parse_boxes

# ----------------------------------------------------------------------------------------------------------------------
# Units of work
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Unit:
    """Samples that belong together (they share images). Plain data only: units travel to worker processes."""

    #: Stable id, unique within a build (also the basis of the sample ids).
    uid: str
    #: Where it came from, for messages: "annotations_train.csv:17", "chexone.jsonl:3", "files/p10/.../s5.txt".
    where: str
    #: Source-specific payload.
    data: dict[str, Any] = field(default_factory=dict)
    #: Ids checked against the official split files: {"image": [...], "study": [...], "subject": [...]}.
    ids: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Skip:
    """Something that was not converted: where (file:row or path), why (a short fixed reason), and details."""

    where: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"where": self.where, "reason": self.reason, "detail": self.detail}


class RecordError(ValueError):
    """A record that cannot be converted; the builder reports it with ``reason`` and skips it."""

    def __init__(self, message: str, reason: str = "bad_record"):
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------------------------------------------------
# Task vocabulary
# ----------------------------------------------------------------------------------------------------------------------

MULTIPLE_CHOICE_TASKS = ("close_vqa", "view_classification", "temporal_classification", "disease_classification")
GROUNDING_TASKS = ("phrase_grounding", "abnormality_grounding")
REPORT_TASKS = ("findings_generation", "impression_generation", "progression_generation")
BUILTIN_TASK_NAMES = MULTIPLE_CHOICE_TASKS + ("open_vqa",) + REPORT_TASKS + GROUNDING_TASKS

#: Source task names (CheXinstruct / CheXOne release / ReXVQA) -> our task names. Keys are compared after
#: :func:`task_key` (lower case, any run of non-alphanumerics = one space). docs/data.md prints this table.
TASK_ALIASES: dict[str, str] = {
    # multiple choice
    "close ended vqa": "close_vqa",
    "closed ended vqa": "close_vqa",
    "closed vqa": "close_vqa",
    "presence assessment": "close_vqa",  # ReXVQA subtasks
    "location assessment": "close_vqa",
    "anatomical localization": "close_vqa",
    "negation assessment": "close_vqa",
    "differential diagnosis": "close_vqa",
    "geometric information": "close_vqa",
    "image classification": "disease_classification",
    "disease classification": "disease_classification",
    "long tail disease classification": "disease_classification",
    "view classification": "view_classification",
    "temporal image classification": "temporal_classification",
    "temporal classification": "temporal_classification",
    # open-ended
    "open ended vqa": "open_vqa",
    "difference vqa": "open_vqa",
    "grounded diagnosis": "open_vqa",
    # reports
    "findings generation": "findings_generation",
    "findings generation with indication": "findings_generation",
    "local findings generation": "findings_generation",
    "impression generation": "impression_generation",
    "impression generation with indication": "impression_generation",
    "local impression generation": "impression_generation",
    "findings summarization": "impression_generation",
    "progression findings generation": "progression_generation",
    "progression impression generation": "progression_generation",
    "local progression findings generation": "progression_generation",
    "local progression impression generation": "progression_generation",
    "progression generation": "progression_generation",
    # grounding (boxes on the 0-99 grid)
    "phrase grounding": "phrase_grounding",
    "abnormality grounding": "abnormality_grounding",
    "abnormality detection": "abnormality_grounding",
    "pneumothorax segmentation": "abnormality_grounding",
    "chest tube segmentation": "abnormality_grounding",
    "rib fracture segmentation": "abnormality_grounding",
    "foreign object detection": "abnormality_grounding",
}
for _name in BUILTIN_TASK_NAMES:  # our own names are aliases of themselves ("close_vqa", "close vqa", ...)
    TASK_ALIASES[_name.replace("_", " ")] = _name


def task_key(name: str) -> str:
    """Comparable form of a task name: 'Close-Ended_VQA' -> 'close ended vqa'."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", str(name).lower()).split())


def unknown_task_message(name: str) -> str:
    """One line saying that ``name`` is no registered task (built-ins + installed plugins), with did-you-mean
    suggestions (the alias table first: ``Close-Ended VQA`` -> ``close_vqa``) and the registered names."""
    known = TASKS.names()
    suggestions: list[str] = []
    alias = TASK_ALIASES.get(task_key(name))
    if alias:
        suggestions.append(alias)
    for s in difflib.get_close_matches(str(name), known, n=3, cutoff=0.6):
        if s not in suggestions:
            suggestions.append(s)
    msg = f'unknown task "{name}"'
    if suggestions:
        msg += " (did you mean " + " or ".join(f'"{s}"' for s in suggestions) + "?)"
    msg += f"; registered tasks: {', '.join(known)}"
    if autoload_disabled():
        msg += f" (plugin tasks are ignored because {AUTOLOAD_ENV} is set)"
    else:
        msg += " (a plugin adds tasks through entry-point group chexone.tasks, see docs/plugins.md)"
    return msg


def check_task(name: str) -> None:
    """Raise ValueError (one line) unless ``name`` is a registered task whose class can be imported."""
    if name not in TASKS:
        raise ValueError(unknown_task_message(name))
    if name in BUILTIN_TASK_NAMES:
        return
    try:
        TASKS.get(name)  # a plugin task: import it now, so a broken plugin stops the build before anything is written
    except (PluginLoadError, PluginTypeError, DuplicateNameError) as e:
        raise ValueError(str(e)) from None


def parse_task_map(items: Iterable[str]) -> dict[str, str]:
    """``--task-map SRC=TASK`` items -> {task_key(SRC): TASK}. Each TASK must be a registered task (built-in or an
    installed plugin's): otherwise ValueError with one line naming the item, with did-you-mean suggestions."""
    table: dict[str, str] = {}
    for item in items:
        src, sep, dst = str(item).partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise ValueError(f"--task-map {item!r}: expected SOURCE_NAME=task_name")
        try:
            check_task(dst.strip())
        except ValueError as e:
            raise ValueError(f"--task-map {item!r}: {e}") from None
        table[task_key(src)] = dst.strip()
    return table


class TaskMapper:
    """Maps source task names onto our vocabulary: built-in aliases, then ``--task-map SRC=ours`` overrides (whose
    targets must be registered tasks, see :func:`parse_task_map`).

    ``unmapped``: "skip" (count and drop), "error" (stop the build), or "keep" (keep the name in snake_case, for
    tasks a plugin registers).
    """

    def __init__(self, overrides: Iterable[str] = (), unmapped: str = "skip"):
        if unmapped not in ("skip", "error", "keep"):
            raise ValueError(f"unmapped must be skip|error|keep, got {unmapped!r}")
        self.unmapped = unmapped
        self.table = dict(TASK_ALIASES)
        self.table.update(parse_task_map(overrides))

    def __call__(self, name: str, where: str = "?") -> str | None:
        """Our task name, or None when the sample should be skipped (``unmapped == "skip"``)."""
        found = self.table.get(task_key(name))
        if found:
            return found
        if self.unmapped == "keep":
            return task_key(name).replace(" ", "_")
        if self.unmapped == "error":
            raise ValueError(f"{where}: unknown task name {name!r}; add --task-map '{name}=<task>' or "
                             "--unmapped-tasks skip|keep")
        return None


def registered_family(task: str) -> str | None:
    """The ``family`` of a registered task that is not built-in (a plugin's), None when no installed package
    registers ``task``. A plugin that cannot be imported is a RecordError (reason ``task_import_error``)."""
    if task not in TASKS:
        return None
    try:
        cls = TASKS.get(task)
    except (PluginLoadError, PluginTypeError, DuplicateNameError) as e:
        raise RecordError(str(e), "task_import_error") from None
    return str(getattr(cls, "family", "") or "")


def task_family(task: str) -> str:
    """How a converter treats ``task``: "multiple_choice" | "grounding" | "report" | "open" for built-ins;
    "multiple_choice" for a plugin task whose ``Task.family`` is "multiple_choice", "plugin" for other plugin tasks;
    "unknown" for a name no installed package registers (kept with ``--unmapped-tasks keep``)."""
    if task in MULTIPLE_CHOICE_TASKS:
        return "multiple_choice"
    if task in GROUNDING_TASKS:
        return "grounding"
    if task in REPORT_TASKS:
        return "report"
    if task in BUILTIN_TASK_NAMES:
        return "open"
    family = registered_family(task)
    if family is None:
        return "unknown"
    return "multiple_choice" if family == "multiple_choice" else "plugin"


# ----------------------------------------------------------------------------------------------------------------------
# Multiple choice: option re-lettering
# ----------------------------------------------------------------------------------------------------------------------

_LABEL = r"(?:[A-Za-z]|[1-9][0-9]?)"
_OPTION_LINE = re.compile(rf"^\s*\(({_LABEL})\)\s*(\S.*?)\s*$")
#: ``A. text`` / ``A) text`` / ``a) text`` option lines (letters only: ``1.`` lines are usually numbered steps).
_LETTER_OPTION_LINE = re.compile(r"^\s*([A-Za-z])([.)])\s+(\S.*?)\s*$")
_PAREN_LABEL = re.compile(rf"\(({_LABEL})\)")
#: An answer naming one option by a ``B.`` / ``b)`` label, optionally followed by the option text.
_LETTER_ANSWER = re.compile(rf"^\s*({_LABEL})[.)](?:\s+.*)?$", re.S)
_OPTIONS_HEADER = re.compile(r"\s*\bOptions\s*:\s*$", re.I)


@dataclass
class Choices:
    """A multiple-choice question split into its stem and options, with the original option labels."""

    stem: str
    labels: list[str]
    options: list[str]

    @property
    def mapping(self) -> dict[str, str]:
        """Original label -> new letter (A, B, ... in order of appearance)."""
        return {lab: option_letter(i) for i, lab in enumerate(self.labels)}

    @property
    def is_identity(self) -> bool:
        return all(k == v for k, v in self.mapping.items())

    def label(self, text: str) -> str | None:
        """The original label ``text`` names: exactly, or ignoring case when no two labels differ only in case."""
        if text in self.mapping:
            return text
        folded = {lab.lower(): lab for lab in self.labels}
        if len(folded) == len(self.labels):
            return folded.get(text.lower())
        return None


def _stem(stem_lines: list[str]) -> str:
    """The question without its option lines; a dangling ``Options:`` goes back as the stem's last line."""
    cleaned = []
    had_header = False
    for line in stem_lines:
        if _OPTIONS_HEADER.search(line):
            had_header = True
            line = _OPTIONS_HEADER.sub("", line)
        if line.strip():
            cleaned.append(line.rstrip())
    if had_header:
        cleaned.append("Options:")
    return "\n".join(cleaned).strip()


def _paren_options(lines: list[str]) -> Choices | None:
    labels, texts, stem_lines = [], [], []
    for line in lines:
        m = _OPTION_LINE.match(line)
        if m:
            labels.append(m.group(1))
            texts.append(m.group(2))
        else:
            stem_lines.append(line)
    if len(labels) < 2 or len(set(labels)) != len(labels) or len(labels) > 26:
        return None
    return Choices(_stem(stem_lines), labels, texts)


def _letter_options(lines: list[str]) -> Choices | None:
    """One block of consecutive ``A. text`` / ``a) text`` lines lettered a, b, c, ... in order (one case, one
    punctuation). Two such blocks are ambiguous (None)."""
    blocks: list[tuple[int, int]] = []
    i = 0
    while i < len(lines):
        m = _LETTER_OPTION_LINE.match(lines[i])
        if not m or m.group(1) not in "aA":
            i += 1
            continue
        first, punct = m.group(1), m.group(2)
        j = i + 1
        while j < len(lines) and j - i < 26:
            n = _LETTER_OPTION_LINE.match(lines[j])
            if not n or n.group(2) != punct or n.group(1) != chr(ord(first) + (j - i)):
                break
            j += 1
        if j - i >= 2:
            blocks.append((i, j))
        i = j
    if len(blocks) != 1:
        return None
    i, j = blocks[0]
    found = [_LETTER_OPTION_LINE.match(line) for line in lines[i:j]]
    return Choices(_stem(lines[:i] + lines[j:]), [m.group(1) for m in found], [m.group(3) for m in found])


def split_options(question: str) -> Choices | None:
    """Find the options of a multiple-choice question: ``(X) text`` lines (X = A-Z, a-z or 1-26, in any order, as
    CheXinstruct randomised them), else one block of consecutive ``A. text`` / ``A) text`` / ``a) text`` lines
    lettered in order.

    Returns None when there are fewer than two option lines or labels repeat. The stem is the question without the
    option lines (and without a dangling ``Options:``, which is put back as the stem's last line so that the rendered
    question reads "... Options:\\n(A) ...").
    """
    lines = question.splitlines()
    return _paren_options(lines) or _letter_options(lines)


def reletter_answer(answer: str, choices: Choices) -> list[str]:
    """The new letters (sorted) of the options an answer names.

    Accepted answer forms: ``(q) text, (c) text`` / ``(q), (c)`` (labels in parentheses), ``B. text`` / ``b)``
    (one label and its punctuation), bare labels ``q, c``, or the option texts themselves. Letter labels match
    regardless of case when the options' labels do not differ only in case. Raises RecordError when the answer names
    no option or an unknown label.
    """
    mapping = choices.mapping
    found = [lab for lab in _PAREN_LABEL.findall(answer) if lab in mapping]
    if not found:
        m = _LETTER_ANSWER.match(answer)
        label = choices.label(m.group(1)) if m else None
        if label is not None:
            found = [label]
    if not found:
        parts = [choices.label(p.strip().strip(".")) for p in re.split(r"\s*,\s*", answer.strip())]
        if parts and all(p is not None for p in parts):
            found = parts
    if not found:
        lowered = [t.strip().lower() for t in choices.options]
        whole = answer.strip().strip(".").lower()
        if whole in lowered:
            found = [choices.labels[lowered.index(whole)]]
        else:
            parts = [p.strip().strip(".").lower() for p in re.split(r"\s*,\s*", answer.strip())]
            if parts and all(p in lowered for p in parts):
                found = [choices.labels[lowered.index(p)] for p in parts]
    if not found:
        raise RecordError(f"answer {answer!r} names none of the options {choices.labels}", "answer_not_an_option")
    return sorted({mapping[lab] for lab in found})


def reletter_text(text: str, choices: Choices) -> str:
    """Rewrite every ``(label)`` of the choices in ``text`` (e.g. a reasoning trace) to its new letter, in one pass."""
    mapping = choices.mapping
    return _PAREN_LABEL.sub(lambda m: f"({mapping[m.group(1)]})" if m.group(1) in mapping else m.group(0), text)


# ----------------------------------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------------------------------


def grid_box(box: Iterable[float], width: float, height: float) -> list[int]:
    """A pixel box [x1, y1, x2, y2] on an image of ``width`` x ``height`` -> integer percent of width/height on the
    0-99 grid (rounded, clamped, corners ordered). The builders first skip boxes that :func:`box_outside_image`
    rejects, so clamping only folds the right/bottom edge (100) onto 99."""
    if width <= 0 or height <= 0:
        raise RecordError(f"image size {width}x{height} is not positive", "bad_box")
    x1, y1, x2, y2 = (float(v) for v in box)
    if any(v != v for v in (x1, y1, x2, y2)):  # NaN
        raise RecordError(f"box {[x1, y1, x2, y2]} has missing coordinates", "bad_box")
    gx1, gx2 = clamp_grid(x1 / width * 100), clamp_grid(x2 / width * 100)
    gy1, gy2 = clamp_grid(y1 / height * 100), clamp_grid(y2 / height * 100)
    return [min(gx1, gx2), min(gy1, gy2), max(gx1, gx2), max(gy1, gy2)]


def grid_boxes(boxes: Iterable[Iterable[float]], width: float, height: float) -> list[list[int]]:
    """:func:`grid_box` for each box, sorted by (x1, y1, x2, y2), exact duplicates removed."""
    return [list(b) for b in sorted({tuple(grid_box(b, width, height)) for b in boxes})]


def box_outside_image(box: Iterable[float], width: float, height: float) -> str:
    """Why a pixel box [x1, y1, x2, y2] is not inside a ``width`` x ``height`` image, or '' when it is.

    Such a box was drawn on another image size or is corrupt: clamping it onto the grid would silently move it, so
    the builders skip the sample it belongs to (reason :data:`BOX_OUTSIDE_IMAGE`) instead.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height:
        return ""
    return f"box ({x1:g},{y1:g})-({x2:g},{y2:g}) is outside the {width:g}x{height:g} image"


#: Skip reason of a sample with a box outside its image.
BOX_OUTSIDE_IMAGE = "box_outside_image"


def skip_box_outside(rows: Iterable[tuple[str, Iterable[float]]], width: float, height: float,
                     what: str) -> Skip | None:
    """A Skip for the first of ``rows`` ((where, pixel box) of one sample's boxes) that is outside the image, or
    None when all are inside. The whole sample is skipped: dropping one box would leave an incomplete answer."""
    for where, box in rows:
        why = box_outside_image(box, width, height)
        if why:
            return Skip(where, BOX_OUTSIDE_IMAGE, f"{what}: {why}")
    return None


def normalise_box_answer(answer: str, where: str = "?") -> tuple[str, list[list[int]], str]:
    """Re-format a CheXagent box answer: boxes clamped to 0-99 and sorted; returns (answer, boxes, ref name).

    A negative answer ("No X detected.") is kept (boxes = []). Coordinates of 100 (CheXinstruct rounds 99.5 up) are
    clamped to 99; a negative coordinate or one above 100 is off the grid, i.e. outside the image (RecordError
    ``box_outside_image``). Raises RecordError (``bad_box``) when the answer is neither boxes nor a negative.
    """
    text = answer.strip()
    boxes = parse_boxes(text, strict_range=False)
    off = [b for b in boxes if min(b.x1, b.y1) < 0 or max(b.x2, b.y2) > 100]
    if off:
        b = off[0]
        raise RecordError(f"{where}: box ({b.x1},{b.y1}),({b.x2},{b.y2}) of {b.name!r} is outside the image (grid "
                          "coordinates are 0-99)", BOX_OUTSIDE_IMAGE)
    if boxes:
        # every box clamped to the grid (corners were ordered by parse_boxes); exact duplicates removed
        named = sorted({(clamp_grid(b.x1), clamp_grid(b.y1), clamp_grid(b.x2), clamp_grid(b.y2), b.name)
                        for b in boxes})
        names = list(dict.fromkeys(b.name for b in boxes))
        coords = [[x1, y1, x2, y2] for x1, y1, x2, y2, _ in named]
        if len(names) == 1:
            return format_boxes(names[0], coords), coords, names[0]
        # several names (detection-style answers): each box keeps its name, all sorted by (x1, y1)
        return "".join(format_boxes(n, [[x1, y1, x2, y2]]) for x1, y1, x2, y2, n in named), coords, ""
    m = re.match(r"^no (.+?) (?:is |are )?detected\.?$", text, re.I)
    if m:
        return text if text.endswith(".") else text + ".", [], m.group(1)
    raise RecordError(f"{where}: grounding answer {answer[:120]!r} holds no <|ref|>..<|box|>(x1,y1),(x2,y2)<|/box|> "
                      "box and is not 'No ... detected.'", "bad_box")


# ----------------------------------------------------------------------------------------------------------------------
# Ids for the leak check
# ----------------------------------------------------------------------------------------------------------------------

_MIMIC_PATH = re.compile(r"(?:^|/)p(\d{8})/s(\d{8})(?:/|\.txt$)")
_CHEXPERT_PATH = re.compile(r"(patient\d+)/(study\d+)")
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|dcm|dicom|dic|tiff?|bmp)$", re.I)


def image_stem(path: str) -> str:
    """'files/p10/p1/s5/abc.dcm' -> 'abc'; '00000001_000.png' -> '00000001_000'."""
    name = PurePosixPath(str(path).replace("\\", "/")).name
    return _IMAGE_SUFFIX.sub("", name)


def normalise_id(kind: str, value: Any) -> str:
    """Comparable id: MIMIC study 's50414267' -> '50414267', subject 'p10000032' -> '10000032', numbers without
    '.0'; image ids are file stems."""
    text = str(value).strip()
    if kind == "image":
        return image_stem(text)
    if re.fullmatch(r"\d+\.0", text):
        text = text[:-2]
    if kind in ("study", "subject") and re.fullmatch(r"[spSP]\d+", text):
        text = text[1:]
    return text


def ids_from_path(path: str) -> dict[str, list[str]]:
    """Ids an image path reveals: image stem always; MIMIC subject/study (p.../s...), CheXpert patient/study."""
    p = str(path).replace("\\", "/")
    ids: dict[str, list[str]] = {"image": [image_stem(p)]}
    m = _MIMIC_PATH.search(p)
    if m:
        ids["subject"], ids["study"] = [m.group(1)], [m.group(2)]
    else:
        m = _CHEXPERT_PATH.search(p)
        if m:
            ids["subject"], ids["study"] = [m.group(1)], [f"{m.group(1)}/{m.group(2)}"]
    return ids


def merge_ids(*parts: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in parts:
        for kind, values in part.items():
            bucket = out.setdefault(kind, [])
            for v in values:
                if v not in bucket:
                    bucket.append(v)
    return out


SPLIT_NAMES = {"train": "train", "training": "train", "validate": "validate", "val": "validate", "valid": "validate",
               "validation": "validate", "dev": "validate", "test": "test", "testing": "test"}

_ID_COLUMNS = {
    "image": ("dicom_id", "image_id", "image index", "image", "image_path", "path", "path_to_image", "filename"),
    "study": ("study_id", "study"),
    "subject": ("subject_id", "patient_id", "patient id", "subject", "deid_patient_id"),
}


def normalise_split(name: str, where: str = "?") -> str:
    found = SPLIT_NAMES.get(str(name).strip().lower())
    if found is None:
        raise ValueError(f"{where}: unknown split name {name!r} (expected one of train/validate/test)")
    return found


class SplitIndex:
    """Official split membership of images, studies and subjects, from split files.

    A split file is either a CSV with a ``split`` column and id columns (``mimic-cxr-2.0.0-split.csv.gz``: dicom_id,
    study_id, subject_id, split), given as ``PATH``; or a list of ids for one split, given as ``SPLIT=PATH``: a
    ``.txt`` with one image name per line (NIH ``test_list.txt``) or a CSV whose id columns are read
    (VinDr ``annotations_test.csv``: image_id).
    """

    def __init__(self) -> None:
        self.maps: dict[str, dict[str, str]] = {"image": {}, "study": {}, "subject": {}}
        self.files: list[str] = []
        self.conflicts = 0

    def __bool__(self) -> bool:
        return bool(self.files)

    def _put(self, kind: str, value: Any, split: str) -> None:
        if value is None or str(value).strip() == "":
            return
        key = normalise_id(kind, value)
        old = self.maps[kind].setdefault(key, split)
        if old != split:
            self.conflicts += 1

    def add(self, spec: str) -> None:
        split, sep, path = str(spec).partition("=")
        if sep and not os.path.exists(spec) and split.strip().lower() in SPLIT_NAMES:
            self._add_list(path, normalise_split(split, spec))
        else:
            self._add_table(spec)
        self.files.append(str(spec))

    def _add_list(self, path: str, split: str) -> None:
        if re.search(r"\.txt(\.gz)?$", path):
            for line in text_lines(path):
                if line.strip():
                    self._put("image", line.strip(), split)
            return
        columns = None
        for _, row in read_csv(path):
            if columns is None:
                columns = _id_columns(row.keys())
                if not columns:
                    raise ValueError(f"{path}: no id column (one of {sorted(sum(_ID_COLUMNS.values(), ()))})")
            for kind, col in columns:
                self._put(kind, row.get(col), split)

    def _add_table(self, path: str) -> None:
        columns = None
        split_col = None
        for line, row in read_csv(path):
            if columns is None:
                lowered = {k.strip().lower(): k for k in row.keys() if k}
                split_col = lowered.get("split")
                columns = _id_columns(row.keys())
                if split_col is None or not columns:
                    raise ValueError(f"{path}: a split table needs a 'split' column and an id column "
                                     f"(got columns {list(row.keys())}); for a plain id list use SPLIT={path}")
            split = normalise_split(row.get(split_col, ""), f"{path}:{line}")
            for kind, col in columns:
                self._put(kind, row.get(col), split)

    def lookup(self, ids: dict[str, list[str]]) -> list[tuple[str, str, str]]:
        """[(kind, id, official split)] for every id the index knows."""
        out = []
        for kind, values in ids.items():
            table = self.maps.get(kind)
            if not table:
                continue
            for v in values:
                split = table.get(normalise_id(kind, v))
                if split is not None:
                    out.append((kind, str(v), split))
        return out

    def split_of(self, ids: dict[str, list[str]]) -> str | None:
        """The official split of a unit (by its most specific known id: image, then study, then subject)."""
        found = {kind: split for kind, _, split in self.lookup(ids)}
        for kind in ("image", "study", "subject"):
            if kind in found:
                return found[kind]
        return None


def _id_columns(columns: Iterable[str]) -> list[tuple[str, str]]:
    lowered = {str(k).strip().lower(): k for k in columns if k}
    out = []
    for kind, names in _ID_COLUMNS.items():
        for name in names:
            if name in lowered:
                out.append((kind, lowered[name]))
                break
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Input readers
# ----------------------------------------------------------------------------------------------------------------------


class InputError(ValueError):
    """An input file that cannot be read as a whole (bad CSV quoting, a row with the wrong number of fields, bytes
    that are not UTF-8, a truncated ``.gz``). Unlike a broken record it stops the build: rows after a broken quote
    or a shifted column cannot be trusted, and skipping them would hide that. The message names file and line."""


def text_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of a UTF-8 text file (``.gz`` gunzipped; a BOM dropped), line endings kept.

    Decoded line by line so that bytes that are not UTF-8, or a truncated/corrupt ``.gz``, raise an
    :class:`InputError` naming the line (a decoding error of a whole buffered file would name no line).
    """
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    n = 0
    with opener(path, "rb") as f:
        while True:
            try:
                raw = f.readline()
            except (OSError, EOFError, zlib.error) as e:  # BadGzipFile, "Compressed file ended ...", bad CRC
                what = "the compressed file is corrupt or truncated" if path.endswith(".gz") else "unreadable"
                raise InputError(f"{path} line {n + 1}: {what} ({e})") from None
            if not raw:
                return
            n += 1
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path} line {n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte "
                                 f"{e.start + 1} of the line); convert the file to UTF-8") from None


def _csv_problem(err: csv.Error, end: int) -> str:
    """What a csv.Error means, in words (the csv module's own message follows in parentheses)."""
    text = str(err)
    if "unexpected end of data" in text:
        what = (f"unterminated quoted field: a quote opened in this row is never closed (the field runs to the end "
                f"of the file, line {end})")
    elif "field larger than field limit" in text:
        what = (f"a field longer than {csv.field_size_limit()} characters (read to line {end}): most likely a quote "
                "opened in this row is never closed")
    elif "expected after" in text:
        what = 'text after the closing quote of a quoted field (a quote inside a field is written "")'
    elif "new-line character seen in unquoted field" in text:
        what = "a carriage return inside an unquoted field"
    elif "NUL" in text:
        what = "a NUL byte (is this a binary file?)"
    else:
        what = "malformed CSV"
    return f"{what} (csv: {text})"


def csv_records(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number where the record starts, fields) of every non-blank record of a CSV (``.csv``/``.csv.gz``),
    header included, parsed strictly: bad quoting, bytes that are not UTF-8 or a corrupt ``.gz`` raise
    :class:`InputError` naming the line. (Python's lenient mode reads an unterminated quote as one field holding
    the rest of the file, which would silently turn into garbage rows or a wrong row count.)"""
    reader = csv.reader(text_lines(path), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputError(f"{path} line {start}: {_csv_problem(e, reader.line_num)}") from None
        if fields:
            yield start, fields


def read_csv(path: str | os.PathLike, require: Iterable[str] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV (``.csv`` or ``.csv.gz``) as (line number, {column: value}); the header is line 1.

    ``require``: columns the header must have. Read by :func:`csv_records`; a row whose field count differs from
    the header's is an :class:`InputError` (a value holding an unquoted comma shifts every later column), except a
    row that only lacks the header's unnamed trailing columns (a header ending in a comma).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    records = csv_records(path)
    first = next(records, None)
    if first is None:
        raise InputError(f"{path}: empty CSV (no header)")
    header_line, header = first
    missing = [c for c in require if c not in header]
    if missing:
        raise InputError(f"{path} line {header_line}: missing column(s) {missing}; the header has {header}")
    width = len(header)
    for line, values in records:
        if len(values) < width and not any(header[len(values):]):
            values = values + [""] * (width - len(values))
        if len(values) != width:
            raise InputError(f"{path} line {line}: {len(values)} fields, but the header (line {header_line}) has "
                             f"{width}; a value holding a comma must be quoted")
        yield line, dict(zip(header, values))


def read_json_records(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Records of a ``.json`` (a list, or an object holding one list) or ``.jsonl`` file as (where, record).

    A JSONL line that is not valid JSON is yielded as (where, JSONDecodeError) so the caller reports and skips it;
    bytes that are not UTF-8 are an :class:`InputError` (the file is not the text it claims to be).
    """
    path = str(path)
    if re.search(r"\.jsonl(\.gz)?$", path):
        for i, line in enumerate(text_lines(path), 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{i}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{i}", e
        return
    try:
        data = json.loads("".join(text_lines(path)))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} line {e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError(f"{path}: expected a JSON list of records (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        yield f"{path}[{i}]", rec


JSON_PATTERNS = ("*.json", "*.jsonl", "*.json.gz", "*.jsonl.gz")


def json_objects(inputs: Iterable[str]) -> Iterator[tuple[str, dict] | Skip]:
    """Every JSON object record of the JSON/JSONL inputs as (where, record); bad JSON and non-object records come
    out as ``Skip`` so the caller reports and counts them."""
    for path in input_files(inputs, JSON_PATTERNS):
        for where, rec in read_json_records(path):
            if isinstance(rec, Exception):
                yield Skip(where, "bad_json", str(rec))
            elif not isinstance(rec, dict):
                yield Skip(where, "bad_record", f"record is {type(rec).__name__}, expected an object")
            else:
                yield where, rec


def input_files(inputs: Iterable[str], patterns: tuple[str, ...]) -> list[str]:
    """Files named by ``inputs`` (files, or directories searched recursively for ``patterns``), sorted, deduplicated."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for pattern in patterns:
                out += sorted(str(x) for x in p.rglob(pattern) if x.is_file())
        elif p.is_file():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"--input {item}: no such file or directory")
    return list(dict.fromkeys(out))


def group_by_images(items: Iterable[tuple[str, str, Any, list[str]] | Skip], group: bool) -> Iterator[Unit | Skip]:
    """Units from (where, uid, record, image paths): records with the same image list form one unit (so their
    images are loaded and stored once), in order of first appearance; without ``group`` one unit per record.
    Records repeating an earlier uid are skipped as ``duplicate_id``; Skip items pass through."""
    seen: set[str] = set()
    units: dict[tuple[str, ...], Unit] = {}
    for item in items:
        if isinstance(item, Skip):
            yield item
            continue
        where, uid, rec, paths = item
        if uid in seen:
            yield Skip(where, "duplicate_id", f"id {uid!r} appeared before")
            continue
        seen.add(uid)
        ids = merge_ids(*(ids_from_path(p) for p in paths))
        if not group or not paths:
            yield Unit(uid, where, {"records": [[where, uid, rec]], "paths": paths}, ids)
            continue
        key = tuple(paths)
        unit = units.get(key)
        if unit is None:
            units[key] = Unit(uid, where, {"records": [[where, uid, rec]], "paths": paths}, ids)
        else:
            unit.data["records"].append([where, uid, rec])
    yield from units.values()


def clean_text(text: Any) -> str:
    """Collapse whitespace; None/NaN -> ''."""
    if text is None:
        return ""
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------------------------------------
# Source base class
# ----------------------------------------------------------------------------------------------------------------------


class Source:
    """Base class of the converters. Subclasses set the class attributes and implement the three methods."""

    #: Name on the command line (``python -m webdata.build <name>``).
    name: ClassVar[str] = "?"
    #: Default ``Sample.dataset``.
    dataset: ClassVar[str] = "?"
    #: Bumped when the converter's output changes; recorded in the manifest.
    version: ClassVar[str] = "1"
    #: One line for ``--help``.
    description: ClassVar[str] = ""
    #: The source picks its samples by ``--split`` itself (so it needs split membership, not just the leak check).
    selects_split: ClassVar[bool] = False

    def __init__(self, args: argparse.Namespace):
        self.args = args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Source-specific options (``--input`` and the common options are added by the builder)."""

    @staticmethod
    def under(root: str | None, path: str) -> str:
        """``path`` relative to ``root`` (unless absolute or no root)."""
        return path if not root or os.path.isabs(path) else os.path.join(root, path)

    def default_split_files(self) -> list[str]:
        """Official split files found next to the input, used when ``--split-file`` is not given."""
        return []

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        raise NotImplementedError

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------------------------
# Question/answer records (CheXOne release, CheXinstruct) -> Sample
# ----------------------------------------------------------------------------------------------------------------------

#: Reasoning suffixes seen in the wild (paper text; the release's ", and" with literal double braces), removed from
#: questions: the reasoning mode is chosen per recipe, not stored in the question.
_REASON_SUFFIX = re.compile(
    r"\s*Please reason step by step,?\s*and put your final answer within\s*\\boxed\{\{?\}?\}\.?\s*$", re.I)
_IMAGE_TAG = re.compile(r"<image>\s*", re.I)


def strip_prompt(question: str) -> tuple[str, bool]:
    """Remove ``<image>`` placeholders and a trailing reasoning suffix; returns (question, had reasoning suffix)."""
    q = _IMAGE_TAG.sub("", question)
    q2 = _REASON_SUFFIX.sub("", q)
    return q2.strip(), q2 != q


def qa_sample(*, sample_id: str, task: str, question: str, answer: str, images: list[Any], dataset: str,
              where: str, reasoning: str | None = None, meta: dict[str, Any] | None = None,
              options: list[str] | None = None, no_options: str = "open_vqa") -> Sample:
    """One question/answer record as a Sample of ``task``: multiple choice re-lettered to (A)..., grounding answers
    normalised (0-99 grid, sorted), text answers stripped.

    Multiple choice (a built-in multiple-choice task, or a plugin task whose ``Task.family`` is "multiple_choice"):
    the options are ``options`` when given (their labels are A, B, ...), else the ``(X) text`` / ``A. text`` lines of
    the question (:func:`split_options`), which move out of the question into ``options``; the answer becomes letters
    (``B`` / ``A,C``) and a reasoning trace's ``(x)`` labels follow. A built-in multiple-choice task without options
    becomes ``open_vqa`` (``no_options="open_vqa"``, e.g. CheXinstruct's "Perform disease classification") or is
    refused (``no_options="skip"``: RecordError ``missing_options``); a plugin task without options is kept as it is
    (it may have fixed options, like the example plugin's Yes/No task). A task no installed package registers (kept
    with ``--unmapped-tasks keep``) is treated the same way when its answer names one of the options, else left as it
    is. Other tasks keep their question, and ``options`` pass through. Raises RecordError naming ``where``.
    """
    question, _ = strip_prompt(question)
    answer = (answer or "").strip()
    if not question:
        raise RecordError(f"{where}: empty question", "empty_field")
    if not answer:
        raise RecordError(f"{where}: empty answer", "empty_field")
    if no_options not in ("open_vqa", "skip"):
        raise ValueError(f"no_options must be open_vqa|skip, got {no_options!r}")
    meta = dict(meta or {})
    given = [str(o).strip() for o in options or []]
    out_options: list[str] = list(given)
    try:
        family = task_family(task)
    except RecordError as e:
        raise RecordError(f"{where}: {e}", e.reason) from None
    if family in ("multiple_choice", "unknown"):
        embedded = split_options(question)
        if given and embedded is not None:
            raise RecordError(f"{where}: the options are given twice, in 'options' and as lines of the question "
                              f"({', '.join(f'({lab})' for lab in embedded.labels)}); give them once",
                              "options_twice")
        choices = Choices(question, [option_letter(i) for i in range(len(given))], given) if given else embedded
        letters = None
        if choices is not None:
            try:
                letters = reletter_answer(answer, choices)
            except RecordError as e:
                if family == "multiple_choice":
                    raise RecordError(f"{where}: {e}", e.reason) from None
        if letters is not None:
            question, out_options, answer = choices.stem, choices.options, ",".join(letters)
            if reasoning and not choices.is_identity:
                reasoning = reletter_text(reasoning, choices)
        elif choices is None and task in MULTIPLE_CHOICE_TASKS:
            if no_options == "skip":
                raise RecordError(f"{where}: task {task!r} is multiple choice but the record has no options (neither "
                                  "an 'options' list nor '(A) ...' lines in the question)", "missing_options")
            task = "open_vqa"
            meta["source_task_family"] = "multiple_choice"
    elif family == "grounding":
        answer, boxes, name = normalise_box_answer(answer, where)
        meta["boxes"] = boxes
        if name:
            meta["ref_name"] = name
    return Sample(id=sample_id, task=task, question=question, answer=answer,
                  images=[im.image if hasattr(im, "image") else im for im in images], options=out_options,
                  reasoning=(reasoning or None), dataset=dataset, meta=meta)
