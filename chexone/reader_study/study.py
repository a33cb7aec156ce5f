"""The study YAML: readers, images, items of three kinds, Likert scales; validated up front so a typo stops the app
before any reader sees it (one line naming the file and the key, with a suggestion for unknown keys).

The schema, every key with its default, is documented in docs/reader_study.md.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chexone.reader_study.drafts import Draft, DraftError, read_drafts

ITEM_TYPES = ("draft_edit", "pairwise", "reasoning_rating")
ORDERS = ("random", "by_type", "fixed")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

#: the question the model is asked for a report draft (draft_edit, and the model side of pairwise) unless set
DEFAULT_DRAFT_QUESTION = "Write the findings section of the radiology report for this chest X-ray."
DEFAULT_REFERENCE_SOURCE = "radiologist"
DEFAULT_MAX_PIXELS = 1024 * 1024

DEFAULT_INSTRUCTIONS = {
    "draft_edit": "Edit the draft report until you would sign it, then sign. Leave it unchanged if it needs no edits.",
    "pairwise": "Read both reports. Which one would you rather sign for this study? Give a short reason.",
    "reasoning_rating": "Read the question, the reasoning and the answer, then rate the reasoning on each scale.",
}

TOP_KEYS = ("study", "description", "seed", "order", "images_root", "drafts", "max_pixels", "draft_question",
            "instructions", "readers", "likert", "items")
READER_KEYS = ("id", "name", "password", "password_hash")
LIKERT_KEYS = ("key", "label", "min", "max", "low", "high")
COMMON_ITEM_KEYS = ("id", "type", "images")
ITEM_KEYS = {
    "draft_edit": COMMON_ITEM_KEYS + ("question", "draft"),
    "pairwise": COMMON_ITEM_KEYS + ("question", "model_report", "reference_report", "reference_source"),
    "reasoning_rating": COMMON_ITEM_KEYS + ("question", "reasoning", "answer"),
}


class StudyError(ValueError):
    """A problem with the study file (or a file it names); the message is one line naming the file and key."""


@dataclass(frozen=True)
class Reader:
    id: str
    name: str = ""
    password: str | None = field(default=None, repr=False)
    password_hash: str | None = field(default=None, repr=False)

    @property
    def needs_password(self) -> bool:
        return bool(self.password or self.password_hash)


@dataclass(frozen=True)
class LikertScale:
    key: str
    label: str
    min: int = 1
    max: int = 5
    low: str = ""
    high: str = ""

    @property
    def values(self) -> list[int]:
        return list(range(self.min, self.max + 1))


DEFAULT_LIKERT = (
    LikertScale("correctness", "Is the reasoning correct?", 1, 5, "entirely incorrect", "entirely correct"),
    LikertScale("completeness", "Does the reasoning cover everything the answer depends on?", 1, 5,
                "misses most", "complete"),
    LikertScale("clinical_usefulness", "How useful would this reasoning be in clinical practice?", 1, 5,
                "not useful", "very useful"),
)


@dataclass(frozen=True)
class Item:
    id: str
    type: str
    images: tuple[str, ...]
    question: str = ""
    draft: str | None = None             # draft_edit: inline draft (else the drafts file)
    model_report: str | None = None      # pairwise: inline model report (else the drafts file)
    reference_report: str = ""           # pairwise: the comparator (e.g. the radiologist's report)
    reference_source: str = DEFAULT_REFERENCE_SOURCE
    reasoning: str | None = None         # reasoning_rating: inline (else the drafts file)
    answer: str | None = None

    @property
    def inline_model_text(self) -> bool:
        """Whether the study file itself holds the model's text (no draft needed)."""
        if self.type == "draft_edit":
            return self.draft is not None
        if self.type == "pairwise":
            return self.model_report is not None
        return self.answer is not None


@dataclass
class Study:
    path: Path
    name: str
    items: list[Item]
    readers: list[Reader]
    seed: int = 0
    order: str = "random"
    description: str = ""
    images_root: Path = Path(".")
    drafts_path: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft_question: str = DEFAULT_DRAFT_QUESTION
    instructions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_INSTRUCTIONS))
    likert: list[LikertScale] = field(default_factory=lambda: list(DEFAULT_LIKERT))
    drafts: dict[str, Draft] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._items = {it.id: it for it in self.items}
        self._readers = {r.id.casefold(): r for r in self.readers}

    def item(self, item_id: str) -> Item | None:
        return self._items.get(item_id)

    def reader(self, reader_id: str) -> Reader | None:
        """The reader with this id, ignoring case and surrounding spaces (ids are unique regardless of case)."""
        return self._readers.get(reader_id.strip().casefold())

    def items_of(self, kind: str) -> list[Item]:
        return [it for it in self.items if it.type == kind]

    @property
    def types(self) -> list[str]:
        """The item types the study uses, in the order of first appearance."""
        return list(dict.fromkeys(it.type for it in self.items))

    # ------------------------------------------------------------------------------------- the texts readers see

    def model_text(self, item: Item) -> tuple[str, str] | None:
        """(reasoning, answer) of the model for ``item``: the study file's inline text, else the drafts file; None
        when neither has it. Line breaks are ``\\n`` (as a browser's edited text comes back)."""
        if item.type == "draft_edit" and item.draft is not None:
            pair = ("", item.draft)
        elif item.type == "pairwise" and item.model_report is not None:
            pair = ("", item.model_report)
        elif item.type == "reasoning_rating" and item.answer is not None:
            pair = (item.reasoning or "", item.answer)
        else:
            d = self.drafts.get(item.id)
            if d is None:
                return None
            pair = (d.reasoning, d.answer)
        return _lf(pair[0]), _lf(pair[1])

    def missing_drafts(self) -> list[Item]:
        """Items whose model text is in neither the study file nor the drafts file."""
        return [it for it in self.items if self.model_text(it) is None]

    def question_for(self, item: Item) -> str:
        """What the model is asked for this item's draft."""
        return item.question or self.draft_question


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------------------------------- validation


def did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_keys(where: str, data: dict, allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise StudyError(f"{where}: unknown key '{key}'{did_you_mean(key, allowed)} "
                             f"(allowed: {', '.join(allowed)})")


def _str(where: str, data: dict, key: str, default: str | None = None, *, required: bool = False,
         nonempty: bool = False) -> str | None:
    if key not in data or data[key] is None:
        if required:
            raise StudyError(f"{where}: missing required key '{key}'")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise StudyError(f"{where}.{key}: expected text, got {type(value).__name__}")
    value = str(value)
    if nonempty and not value.strip():
        raise StudyError(f"{where}.{key}: must not be empty")
    return value


def _int(where: str, data: dict, key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
    value = data.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudyError(f"{where}.{key}: expected an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise StudyError(f"{where}.{key}: must be {bounds}, got {value}")
    return value


def _ident(where: str, value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not ID_PATTERN.match(str(value)):
        raise StudyError(f"{where}: {what} {value!r} must be 1-64 letters, digits, '.', '_' or '-' (starting with a "
                         f"letter or digit)")
    return str(value)


def _readers(file: str, raw: Any) -> list[Reader]:
    if not isinstance(raw, list) or not raw:
        raise StudyError(f"{file}: 'readers' must be a non-empty list (of ids, or of mappings with an 'id')")
    readers: list[Reader] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        where = f"{file}: readers[{i}]"
        if isinstance(entry, (str, int)) and not isinstance(entry, bool):
            entry = {"id": entry}
        if not isinstance(entry, dict):
            raise StudyError(f"{where}: expected a reader id or a mapping, got {type(entry).__name__}")
        _check_keys(where, entry, READER_KEYS)
        if "id" not in entry:
            raise StudyError(f"{where}: missing required key 'id'")
        rid = _ident(where, entry["id"], "reader id")
        if rid.casefold() in seen:
            raise StudyError(f"{where}: duplicate reader id '{rid}' (same as readers[{seen[rid.casefold()]}]; ids "
                             f"are compared ignoring case)")
        seen[rid.casefold()] = i
        password = _str(where, entry, "password", nonempty=True)
        password_hash = _str(where, entry, "password_hash", nonempty=True)
        if password and password_hash:
            raise StudyError(f"{where}: give 'password' or 'password_hash', not both")
        if password_hash:
            from chexone.reader_study.auth import check_hash_format

            problem = check_hash_format(password_hash)
            if problem:
                raise StudyError(f"{where}.password_hash: {problem}")
        readers.append(Reader(rid, _str(where, entry, "name", "") or "", password, password_hash))
    return readers


def _likert(file: str, raw: Any) -> list[LikertScale]:
    if raw is None:
        return list(DEFAULT_LIKERT)
    if not isinstance(raw, list) or not raw:
        raise StudyError(f"{file}: 'likert' must be a non-empty list of scales (omit it for the defaults)")
    scales, seen = [], set()
    for i, entry in enumerate(raw):
        where = f"{file}: likert[{i}]"
        if not isinstance(entry, dict):
            raise StudyError(f"{where}: expected a mapping with 'key' and 'label'")
        _check_keys(where, entry, LIKERT_KEYS)
        key = _str(where, entry, "key", required=True)
        if not KEY_PATTERN.match(key or ""):
            raise StudyError(f"{where}.key: {key!r} must be lower-case letters, digits and '_' (a CSV column name)")
        if key in seen:
            raise StudyError(f"{where}.key: duplicate scale '{key}'")
        seen.add(key)
        lo = _int(where, entry, "min", 1, 0, 10)
        hi = _int(where, entry, "max", 5, 1, 11)
        if hi <= lo or hi - lo > 10:
            raise StudyError(f"{where}: needs min < max with at most 11 points, got min {lo}, max {hi}")
        scales.append(LikertScale(key, _str(where, entry, "label", required=True, nonempty=True), lo, hi,
                                  _str(where, entry, "low", "") or "", _str(where, entry, "high", "") or ""))
    return scales


def _images(where: str, raw: Any, root: Path, check: bool) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise StudyError(f"{where}.images: expected an image path or a non-empty list of them")
    out = []
    root_resolved = root.resolve()
    for j, rel in enumerate(raw):
        if not isinstance(rel, str) or not rel.strip():
            raise StudyError(f"{where}.images[{j}]: expected a path relative to images_root, got {rel!r}")
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts:
            raise StudyError(f"{where}.images[{j}]: '{rel}' must be a path inside images_root (relative, no '..')")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise StudyError(f"{where}.images[{j}]: '{rel}' is not a PNG, JPEG or DICOM file "
                             f"({', '.join(IMAGE_SUFFIXES)})")
        if check:
            full = (root / p).resolve()
            if not full.is_relative_to(root_resolved):
                raise StudyError(f"{where}.images[{j}]: '{rel}' leads outside images_root {root}")
            if not full.is_file():
                raise StudyError(f"{where}.images[{j}]: image file not found: {root / p}")
        out.append(p.as_posix())
    return tuple(out)


def _items(file: str, raw: Any, root: Path, check_images: bool) -> list[Item]:
    if not isinstance(raw, list) or not raw:
        raise StudyError(f"{file}: 'items' must be a non-empty list")
    items: list[Item] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        where = f"{file}: items[{i}]"
        if not isinstance(entry, dict):
            raise StudyError(f"{where}: expected a mapping with 'id', 'type' and 'images'")
        if "id" not in entry:
            raise StudyError(f"{where}: missing required key 'id'")
        iid = _ident(where, entry["id"], "item id")
        where = f"{file}: items[{i}] (id '{iid}')"
        if iid in seen:
            raise StudyError(f"{where}: duplicate item id (same as items[{seen[iid]}])")
        seen[iid] = i
        kind = entry.get("type")
        if kind not in ITEM_TYPES:
            raise StudyError(f"{where}.type: {kind!r} is not one of {', '.join(ITEM_TYPES)}"
                             f"{did_you_mean(kind, ITEM_TYPES) if isinstance(kind, str) else ''}")
        _check_keys(where, entry, ITEM_KEYS[kind])
        if "images" not in entry:
            raise StudyError(f"{where}: missing required key 'images'")
        images = _images(where, entry["images"], root, check_images)
        kw: dict[str, Any] = {"question": _str(where, entry, "question", "") or ""}
        if kind == "draft_edit":
            kw["draft"] = _str(where, entry, "draft")
        elif kind == "pairwise":
            kw["model_report"] = _str(where, entry, "model_report", nonempty=True)
            kw["reference_report"] = _str(where, entry, "reference_report", required=True, nonempty=True)
            source = _str(where, entry, "reference_source", DEFAULT_REFERENCE_SOURCE)
            if not KEY_PATTERN.match(source or "") or source == "model":
                raise StudyError(f"{where}.reference_source: {source!r} must be a lower-case label other than "
                                 f"'model' (e.g. 'radiologist')")
            kw["reference_source"] = source
        else:
            kw["question"] = _str(where, entry, "question", required=True, nonempty=True)
            kw["reasoning"] = _str(where, entry, "reasoning")
            kw["answer"] = _str(where, entry, "answer", nonempty=True)
            if (kw["reasoning"] is None) != (kw["answer"] is None):
                raise StudyError(f"{where}: give both 'reasoning' and 'answer' inline, or neither (then they come "
                                 f"from the drafts file)")
        items.append(Item(iid, kind, images, **kw))
    return items


def load_study(path: str | Path, *, check_images: bool = True, load_drafts: bool = True) -> Study:
    """Read and validate a study YAML. ``check_images``: every image must exist under ``images_root``;
    ``load_drafts``: read the drafts JSONL the study names (when it exists)."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise StudyError(f"{file}: study file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise StudyError(f"{file}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError as e:
        raise StudyError(f"{file}: not UTF-8 text ({e.reason})") from None
    if not isinstance(data, dict):
        raise StudyError(f"{file}: expected a mapping with 'study', 'readers' and 'items' at the top")
    _check_keys(file, data, TOP_KEYS)
    for key in ("study", "readers", "items"):
        if key not in data:
            raise StudyError(f"{file}: missing required key '{key}'")
    base = path.parent
    name = _str(file, data, "study", required=True, nonempty=True)
    images_root = base / (_str(file, data, "images_root", ".") or ".")
    if check_images and not images_root.is_dir():
        raise StudyError(f"{file}: images_root: directory not found: {images_root}")
    order = _str(file, data, "order", "random")
    if order not in ORDERS:
        raise StudyError(f"{file}: order: {order!r} is not one of {', '.join(ORDERS)}{did_you_mean(order, ORDERS)}")
    instructions = dict(DEFAULT_INSTRUCTIONS)
    raw_instr = data.get("instructions") or {}
    if not isinstance(raw_instr, dict):
        raise StudyError(f"{file}: instructions: expected a mapping of item type -> text")
    _check_keys(f"{file}: instructions", raw_instr, ITEM_TYPES)
    for kind in raw_instr:
        instructions[kind] = _str(f"{file}: instructions", raw_instr, kind, instructions[kind]) or ""
    drafts_rel = _str(file, data, "drafts")
    study = Study(
        path=path, name=name, description=_str(file, data, "description", "") or "",
        seed=_int(file, data, "seed", 0), order=order, images_root=images_root,
        drafts_path=(base / drafts_rel) if drafts_rel else None,
        max_pixels=_int(file, data, "max_pixels", DEFAULT_MAX_PIXELS, 4096, 50_000_000),
        draft_question=_str(file, data, "draft_question", DEFAULT_DRAFT_QUESTION, nonempty=True) or "",
        instructions=instructions, likert=_likert(file, data.get("likert")),
        readers=_readers(file, data["readers"]), items=_items(file, data["items"], images_root, check_images),
    )
    if load_drafts and study.drafts_path is not None and study.drafts_path.is_file():
        try:
            study.drafts = read_drafts(study.drafts_path)
        except DraftError as e:
            raise StudyError(str(e)) from None
    return study
