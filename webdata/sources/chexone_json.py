"""The CheXOne release format (ms-swift JSON/JSONL): CheXinstruct-v2 and CheXReason records.

One record::

    {"unique_id": "[Close-Ended VQA] [ReXVQA] [123]",
     "images": ["mimic-cxr-jpg/files/p10/p10000032/s50414267/abc.jpg", ...],
     "messages": [{"role": "user", "content": "<image>Which ...? Options:\\n(A) ...\\n(B) ... Please reason ..."},
                  {"role": "assistant", "content": "**Thinking Process:** 1. ... **Final Answer:** \\boxed{(B) ...}"}],
     "solution": "(B) ...", "task_name": "Close-Ended VQA"}

Accepted variants: ``messages`` entries with ``value`` instead of ``content`` and ``from: human/gpt``; content as a
list of ``{"type": "text", "text": ...}`` parts; ``images`` entries as ``{"path": ...}``; no ``task_name`` (then the
first bracket of ``unique_id``); no ``solution`` (then the last ``\\boxed{}`` of the assistant turn, or the turn).
The dataset name is the second bracket of ``unique_id``. An assistant turn with ``\\boxed{}`` is kept as the
sample's reasoning trace. Image paths are relative to ``--image-root``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from typing import Any

from chexone.data.sample import Sample
from chexone.tasks.answers import extract_boxed
from webdata.sources.common import (
    InputError,
    RecordError,
    Skip,
    Source,
    SplitIndex,
    TaskMapper,
    Unit,
    group_by_images,
    qa_sample,
    json_objects,
)

_BRACKETS = re.compile(r"\[([^\]]*)\]")


def text_of(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return ""


def conversation(record: dict[str, Any], where: str) -> tuple[str, str]:
    """(user text, assistant text) of the first user turn and the assistant turn after it."""
    messages = record.get("messages", record.get("conversations"))
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{where}: no 'messages' list", "missing_field")
    user = assistant = None
    for m in messages:
        if not isinstance(m, dict):
            raise RecordError(f"{where}: a message is {type(m).__name__}, expected an object", "bad_record")
        role = str(m.get("role", m.get("from", ""))).lower()
        text = text_of(m.get("content", m.get("value")))
        if role in ("user", "human") and user is None:
            user = text
        elif role in ("assistant", "gpt", "model") and user is not None and assistant is None:
            assistant = text
    if user is None:
        raise RecordError(f"{where}: no user message", "missing_field")
    return user, assistant or ""


def image_paths(record: dict[str, Any], key: str, where: str) -> list[str]:
    raw = record.get(key) or []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise RecordError(f"{where}: {key!r} must be a list of paths", "bad_record")
    out = []
    for item in raw:
        path = item.get("path", item.get("image")) if isinstance(item, dict) else item
        if not isinstance(path, str) or not path:
            raise RecordError(f"{where}: bad image entry {item!r}", "bad_record")
        out.append(path)
    return out


def source_task_of(record: dict[str, Any]) -> str:
    """The record's task name: ``task_name``, else the first bracket of ``unique_id`` ('' when neither)."""
    brackets = _BRACKETS.findall(str(record.get("unique_id", "")))
    return str(record.get("task_name") or (brackets[0] if brackets else ""))


class CheXOneJSONSource(Source):
    name = "chexone"
    dataset = "CheXOne"
    #: 3: options of plugin tasks (and of --unmapped-tasks keep) re-lettered too; "A. text" option lines
    version = "3"
    description = "CheXOne/ms-swift JSON(L) release (messages/images/solution/task_name)"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--image-root", default="", help="directory the records' image paths are relative to")
        p.add_argument("--no-group-images", action="store_true",
                       help="one unit per record instead of grouping records with the same images (streams huge "
                            "JSONL inputs in constant memory; shared images are then stored once per record)")

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.mapper = TaskMapper(args.task_map, args.unmapped_tasks)

    def _records(self) -> Iterator[tuple[str, str, Any, list[str]] | Skip]:
        for item in json_objects(self.args.input):
            if isinstance(item, Skip):
                yield item
                continue
            where, rec = item
            try:
                paths = image_paths(rec, "images", where)
            except RecordError as e:
                yield Skip(where, e.reason, str(e))
                continue
            if self.mapper.unmapped == "error":  # stop while planning, before anything is written
                name = source_task_of(rec)
                if name:
                    try:
                        self.mapper(name, where)
                    except ValueError as e:
                        raise InputError(str(e)) from None
            yield where, str(rec.get("unique_id") or rec.get("id") or where), rec, paths

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        yield from group_by_images(self._records(), not self.args.no_group_images)

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        images = [load(self.under(self.args.image_root, p)) for p in unit.data["paths"]]
        for where, uid, rec in unit.data["records"]:
            try:
                yield self.convert_record(uid, rec, where, images)
            except RecordError as e:
                yield Skip(where, e.reason, str(e))

    def convert_record(self, uid: str, rec: dict[str, Any], where: str, images: list[Any]) -> Sample:
        brackets = _BRACKETS.findall(str(rec.get("unique_id", "")))
        source_task = source_task_of(rec)
        if not source_task:
            raise RecordError(f"{where}: no task_name and no [Task] in unique_id", "missing_field")
        task = self.mapper(source_task, where)
        if task is None:
            raise RecordError(f"{where}: task {source_task!r} is not in the task table (use --task-map)",
                              "unmapped_task")
        dataset = rec.get("dataset") or (brackets[1] if len(brackets) > 1 else self.dataset)
        user, assistant = conversation(rec, where)
        solution = rec.get("solution")
        boxed = extract_boxed(assistant, "last") if assistant else None
        if isinstance(solution, str) and solution.strip():
            answer = extract_boxed(solution, "last") if "\\boxed{" in solution else solution
        elif boxed is not None:
            answer = boxed
        else:
            answer = assistant
        reasoning = assistant.strip() if boxed is not None else None
        meta = {"source_task": source_task}
        if rec.get("unique_id"):
            meta["unique_id"] = rec["unique_id"]
        return qa_sample(sample_id=uid, task=task, question=user, answer=answer or "", images=images,
                         dataset=str(dataset), where=where, reasoning=reasoning, meta=meta)
