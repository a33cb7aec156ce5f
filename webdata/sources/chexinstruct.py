"""CheXinstruct records (the CheXagent instruction data), one sample per question/answer pair.

One record::

    {"unique_id": "[Image Classification] [MIMIC-CXR] [17]", "study_id": "[mimic-cxr] [50414267]",
     "data_source": "MIMIC-CXR", "task_name": "Image Classification",
     "image_path": "mimic-cxr/files/p10/p10000032/s50414267/abc.jpg"  (or a list),
     "region": ..., "text": ..., "target_text": ...,
     "qa_pair": [{"q": "Which findings ...? Options:\\n(q) Atelectasis\\n(c) Edema", "a": "(q) Atelectasis"}, ...]}

``qa_pair`` may also be a single ``{"q", "a"}`` object. Option labels were randomised (A-Z, a-z, 1-26, shuffled);
they are re-lettered to ``(A) ...`` in order of appearance and the answer follows. Records without images (the
text-only tasks) and task names outside the table are skipped and counted. Image paths are relative to
``--image-root``. Sample ids: the record's ``unique_id``, plus `` #k`` for the k-th pair when there are several.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from typing import Any

from chexone.data.sample import Sample
from webdata.sources.common import (
    InputError,
    RecordError,
    Skip,
    Source,
    SplitIndex,
    TaskMapper,
    Unit,
    group_by_images,
    merge_ids,
    normalise_id,
    qa_sample,
    json_objects,
)

_STUDY = re.compile(r"^\s*\[([^\]]*)\]\s*\[([^\]]*)\]\s*$")


def study_ids(value: Any) -> dict[str, list[str]]:
    """``"[mimic-cxr] [50414267]"`` -> {"study": ["50414267"]} (the dataset-scoped study id of CheXinstruct)."""
    if not isinstance(value, str):
        return {}
    m = _STUDY.match(value)
    sid = m.group(2) if m else value
    sid = normalise_id("study", sid)
    return {"study": [sid]} if sid else {}


class CheXinstructSource(Source):
    name = "chexinstruct"
    dataset = "CheXinstruct"
    #: 3: options of plugin tasks (and of --unmapped-tasks keep) re-lettered too; "A. text" option lines
    version = "3"
    description = "CheXinstruct JSON(L) records (task_name, image_path, qa_pair)"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--image-root", default="", help="directory the records' image paths are relative to")
        p.add_argument("--max-pairs", type=int, default=0, metavar="K",
                       help="keep at most the first K question/answer pairs per record (0 = all)")
        p.add_argument("--no-group-images", action="store_true",
                       help="one unit per record instead of grouping records with the same images")

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.mapper = TaskMapper(args.task_map, args.unmapped_tasks)

    def _records(self) -> Iterator[tuple[str, str, Any, list[str]] | Skip]:
        for item in json_objects(self.args.input):
            if isinstance(item, Skip):
                yield item
                continue
            where, rec = item
            paths = rec.get("image_path") or []
            paths = [paths] if isinstance(paths, str) else paths
            if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
                yield Skip(where, "bad_record", f"'image_path' must be a path or a list of paths, got {paths!r}")
                continue
            if not paths:
                yield Skip(where, "no_image", "text-only record (no image_path)")
                continue
            name = rec.get("task_name")
            if self.mapper.unmapped == "error" and isinstance(name, str) and name:
                try:  # stop while planning, before anything is written
                    self.mapper(name, where)
                except ValueError as e:
                    raise InputError(str(e)) from None
            yield where, str(rec.get("unique_id") or where), rec, paths

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        for item in group_by_images(self._records(), not self.args.no_group_images):
            if isinstance(item, Unit):  # CheXinstruct's study_id ("[mimic-cxr] [50414267]") joins the leak check
                item.ids = merge_ids(item.ids, *(study_ids(r.get("study_id")) for _, _, r in item.data["records"]))
            yield item

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        images = [load(self.under(self.args.image_root, p)) for p in unit.data["paths"]]
        for where, uid, rec in unit.data["records"]:
            yield from self.convert_record(uid, rec, where, images)

    def convert_record(self, uid: str, rec: dict[str, Any], where: str, images: list[Any]) -> Iterator[Sample | Skip]:
        source_task = rec.get("task_name")
        if not isinstance(source_task, str) or not source_task:
            yield Skip(where, "missing_field", "no task_name")
            return
        task = self.mapper(source_task, where)
        if task is None:
            yield Skip(where, "unmapped_task", f"task {source_task!r} is not in the task table (use --task-map)")
            return
        pairs = rec.get("qa_pair")
        pairs = [pairs] if isinstance(pairs, dict) else pairs
        if not isinstance(pairs, list) or not pairs:
            yield Skip(where, "missing_field", "no qa_pair")
            return
        if self.args.max_pairs > 0:
            pairs = pairs[: self.args.max_pairs]
        dataset = str(rec.get("data_source") or self.dataset)
        for k, pair in enumerate(pairs):
            here = f"{where} qa_pair[{k}]"
            if not isinstance(pair, dict) or not isinstance(pair.get("q"), str) or not isinstance(pair.get("a"), str):
                yield Skip(here, "bad_record", "a qa_pair entry must be {'q': str, 'a': str}")
                continue
            sample_id = uid if len(pairs) == 1 else f"{uid} #{k}"
            meta = {"source_task": source_task, "unique_id": uid}
            if isinstance(rec.get("study_id"), str):
                meta["study_id"] = rec["study_id"]
            try:
                yield qa_sample(sample_id=sample_id, task=task, question=pair["q"], answer=pair["a"], images=images,
                                dataset=dataset, where=here, meta=meta)
            except RecordError as e:
                yield Skip(here, e.reason, str(e))
