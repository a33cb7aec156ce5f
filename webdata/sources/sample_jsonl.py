"""Records in chexone's own sample schema (docs/data.md, ``chexone.data.sample.Sample``), one JSON object per line:
shards for any task, built-in or added by an installed plugin.

One record::

    {"id": "effusion-0001", "task": "close_vqa", "question": "Is there a pleural effusion?",
     "options": ["Yes", "No"], "answer": "B", "images": ["study1/frontal.png"],
     "reasoning": null, "dataset": "MyHospital", "meta": {"question_type": "presence"}}

``id``, ``task``, ``question``, ``answer`` and ``images`` (a list of image paths, relative to ``--images``, by default
the JSONL file's directory, or absolute; ``[]`` for a text-only sample) are required; ``options``, ``reasoning``,
``dataset`` and ``meta`` are optional. Any other key is refused (``unknown_field``, with a did-you-mean): put extra
values under ``meta``. ``task`` must be a registered task (the built-ins and those of installed plugins), after
``--task-map SRC=TASK``; other names are skipped as ``unknown_task`` with a did-you-mean (``--unmapped-tasks
error`` stops the build instead, ``keep`` keeps the name as written). Multiple choice (built-in multiple-choice tasks
and plugin tasks of family ``multiple_choice``): ``options`` when given, else ``(A) text`` / ``A. text`` / ``a) text``
lines in the question, moved out of it into ``options`` and re-lettered A, B, ...; the answer becomes letters. A bad
record is skipped with its file:line and a reason (``OUT/skipped.jsonl``).
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Iterator
from typing import Any

from chexone.data.sample import REQUIRED_FIELDS, Sample
from chexone.registry import TASKS
from webdata.sources.common import (
    InputError,
    JSON_PATTERNS,
    RecordError,
    Skip,
    Source,
    SplitIndex,
    Unit,
    check_task,
    group_by_images,
    input_files,
    json_objects,
    parse_task_map,
    qa_sample,
    task_key,
)

#: The keys of a record, in the schema's order.
FIELDS = ("id", "task", "question", "answer", "images", "options", "reasoning", "dataset", "meta")
REQUIRED = tuple(REQUIRED_FIELDS) + ("images",)


def check_record(rec: dict[str, Any], where: str) -> None:
    """Raise RecordError (reason ``unknown_field`` / ``missing_field`` / ``bad_field``) naming the key when ``rec``
    does not follow the sample schema."""
    for key in rec:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecordError(f"{where}: unknown field '{key}'{hint}; a sample has {', '.join(FIELDS)}; put other "
                              "values under 'meta'", "unknown_field")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(repr(k) for k in missing)}", "missing_field")
    for key in REQUIRED_FIELDS:
        if not isinstance(rec[key], str):
            raise RecordError(f"{where}: field '{key}' must be a string, got {type(rec[key]).__name__}", "bad_field")
    if not rec["id"].strip():
        raise RecordError(f"{where}: field 'id' is empty", "bad_field")
    images = rec["images"]
    if not isinstance(images, list) or not all(isinstance(p, str) and p.strip() for p in images):
        raise RecordError(f"{where}: field 'images' must be a list of image paths, got {images!r:.80}", "bad_field")
    options = rec.get("options")
    if options is not None and (not isinstance(options, list) or len(options) > 26
                                or not all(isinstance(o, str) and o.strip() for o in options)):
        raise RecordError(f"{where}: field 'options' must be a list of at most 26 non-empty strings, got "
                          f"{options!r:.80}", "bad_field")
    for key in ("reasoning", "dataset"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise RecordError(f"{where}: field '{key}' must be a string or null, got {type(rec[key]).__name__}",
                              "bad_field")
    if rec.get("meta") is not None and not isinstance(rec["meta"], dict):
        raise RecordError(f"{where}: field 'meta' must be an object, got {type(rec['meta']).__name__}", "bad_field")


class SampleJSONLSource(Source):
    """Records in the sample schema, one JSON object per line (``.jsonl``/``.jsonl.gz``; a ``.json`` list works too).

    Required: id, task, question, answer, images (paths relative to --images, default the JSONL file's directory,
    or absolute). Optional: options, reasoning, dataset, meta. The task must be registered (built-in or an installed
    plugin's) after --task-map; multiple-choice options embedded in the question ((A) text / A. text / a) text) are
    moved into 'options' and re-lettered A, B, ... See docs/data.md.
    """

    name = "jsonl"
    dataset = "sample-schema JSONL"
    version = "1"
    description = "records in chexone's sample schema (id, task, question, answer, images, options, ...), any task"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", default="", metavar="DIR",
                       help="directory the records' image paths are relative to (default: the JSONL file's directory)")
        p.add_argument("--dataset", default="", metavar="NAME",
                       help="Sample.dataset of records without a 'dataset' (default: empty)")
        p.add_argument("--no-group-images", action="store_true",
                       help="one unit per record instead of grouping records with the same images")

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.task_map = parse_task_map(args.task_map)  # validated against the registry
        self.unmapped = args.unmapped_tasks
        self._checked: dict[str, str | None] = {}

    def resolve_task(self, name: str, where: str) -> str:
        """The registered task a record's ``task`` names (after --task-map); RecordError ``unknown_task`` otherwise
        (``--unmapped-tasks error``: InputError, which stops the build; ``keep``: the name as written)."""
        mapped = self.task_map.get(task_key(name), name)
        if mapped not in self._checked:
            try:
                check_task(mapped)
                self._checked[mapped] = None
            except ValueError as e:
                self._checked[mapped] = str(e)
        problem = self._checked[mapped]
        if problem is None or self.unmapped == "keep" and mapped not in TASKS:
            return mapped
        if mapped in TASKS or self.unmapped == "error":  # a broken plugin, or --unmapped-tasks error
            raise InputError(f"{where}: field 'task': {problem}")
        raise RecordError(f"{where}: field 'task': {problem}", "unknown_task")

    def _records(self) -> Iterator[tuple[str, str, Any, list[str]] | Skip]:
        for path in input_files(self.args.input, JSON_PATTERNS):
            root = self.args.images or os.path.dirname(os.path.abspath(path))
            for item in json_objects([path]):
                if isinstance(item, Skip):
                    yield item
                    continue
                where, rec = item
                try:
                    check_record(rec, where)
                    task = self.resolve_task(rec["task"], where)
                except RecordError as e:
                    yield Skip(where, e.reason, str(e))
                    continue
                if task != rec["task"]:
                    rec = {**rec, "task": task, "meta": {**(rec.get("meta") or {}), "source_task": rec["task"]}}
                yield where, rec["id"], rec, [self.under(root, p) for p in rec["images"]]

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        yield from group_by_images(self._records(), not self.args.no_group_images)

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        images = [load(p) for p in unit.data["paths"]]
        for where, uid, rec in unit.data["records"]:
            try:
                yield qa_sample(sample_id=uid, task=rec["task"], question=rec["question"], answer=rec["answer"],
                                images=images, dataset=rec.get("dataset") or self.args.dataset, where=where,
                                reasoning=rec.get("reasoning"), meta=rec.get("meta"), options=rec.get("options"),
                                no_options="skip")
            except RecordError as e:
                yield Skip(where, e.reason, str(e))


__all__ = ["FIELDS", "SampleJSONLSource", "check_record"]
