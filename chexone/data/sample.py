"""The one sample schema shared by every stage: shards, tasks, collators, rewards and metrics.

A shard sample is stored as WebDataset members with one key:
``<key>.json`` (the fields below except ``images``, plus ``"images": ["img0.png", ...]`` naming the image members)
and ``<key>.img0.png``, ``<key>.img1.png`` ... (PNG or JPEG bytes). An image shared by several samples may instead be
stored once as a ``__shared__<digest>.png`` member before them and named so in their ``images`` list. Nothing else is
read; pickles never are. See docs/data.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

#: Version of the on-disk sample schema, written into every shard manifest.
SCHEMA_VERSION = 1

#: JSON fields every sample must carry.
REQUIRED_FIELDS = ("id", "task", "question", "answer")

#: Key prefix of a shard's shared image members (one copy of an image several samples use); no sample key may start
#: with it. Defined here, in a torch-free module, because the shard reader and the shard writer both need it.
SHARED_IMAGE_PREFIX = "__shared__"


class SampleError(ValueError):
    """A sample that cannot be used; the message names the sample and the problem."""


@dataclass
class Sample:
    """One instruction sample: images + question -> (optional reasoning) + answer.

    ``answer`` is the final answer in the task's canonical form: option letters for multiple choice ("A" or "A,C"),
    free text for open VQA and reports, and the CheXagent box string for grounding.
    """

    id: str
    task: str
    question: str
    answer: str
    images: list[Image.Image] = field(default_factory=list)
    #: Multiple-choice option texts, rendered as "(A) text" lines after the question.
    options: list[str] = field(default_factory=list)
    #: Step-by-step reasoning trace. If it already contains ``\\boxed{...}`` it is used verbatim as the target.
    reasoning: str | None = None
    #: Source dataset name (e.g. "MIMIC-CXR", "demo").
    dataset: str = ""
    #: Task-specific extras: "boxes" [[x1,y1,x2,y2], ...] on the 0-99 grid, "ref_name", "report", "indication",
    #: "view", "finding", ... Plain JSON values only.
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable record for a shard (images are written as separate members)."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "images"}
        record["images"] = [f"img{i}.png" for i in range(len(self.images))]
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any], images: list[Image.Image], *, source: str = "?") -> "Sample":
        """Build a sample from its JSON record and decoded images; raises SampleError naming ``source``."""
        if not isinstance(record, dict):
            raise SampleError(f"{source}: JSON record is {type(record).__name__}, expected an object")
        missing = [k for k in REQUIRED_FIELDS if k not in record]
        if missing:
            raise SampleError(f"{source}: missing field(s) {missing}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in record.items() if k in known and k != "images"}
        for key in ("id", "task", "question", "answer"):
            if not isinstance(kwargs[key], str):
                raise SampleError(f"{source}: field {key!r} must be a string, got {type(kwargs[key]).__name__}")
        if not isinstance(kwargs.get("options", []), list):
            raise SampleError(f"{source}: field 'options' must be a list")
        if not isinstance(kwargs.get("meta", {}), dict):
            raise SampleError(f"{source}: field 'meta' must be an object")
        return cls(images=list(images), **kwargs)
