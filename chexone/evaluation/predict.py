"""Samples -> model answers: batched (greedy by default) decoding and answer parsing, as JSON-ready records.

Used by ``python -m chexone.evaluate`` and by the validation loop of ``python -m chexone.fit``, so a number reported in
training means the same as the one the evaluation harness reports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from chexone.data.collate import PromptCollator, use_reasoning
from chexone.data.sample import Sample
from chexone.model.processor import PromptEncoder
from chexone.tasks.base import PromptStyle, Task
from chexone.training.generation import GenerationSettings, generate


@dataclass
class Prediction:
    """One answered sample, as written (one JSON line) to ``samples.jsonl``."""

    id: str
    task: str
    family: str
    dataset: str
    prompt: str
    reasoning: bool
    output: str
    #: The final answer: the boxed content in reasoning mode, the whole output otherwise (None = no box found).
    final: str | None
    #: ``Task.parse_answer`` of the final answer, made JSON-friendly (sets -> sorted lists).
    parsed: Any
    reference: str
    well_formed: bool
    truncated: bool
    #: Values used for per-group results and by some metrics: the sample's ``meta`` plus ``options`` (a list).
    meta: dict[str, Any] = field(default_factory=dict)
    #: Final answers of the stochastic samples (self-consistency), when requested.
    samples: list[str | None] | None = None
    #: Why the sample was not answered (e.g. prompt too long); such samples count as wrong.
    skipped: str | None = None
    #: Per-metric per-sample scores, filled in by scoring.
    scores: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "Prediction":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in record.items() if k in known})


def jsonable(value: Any) -> Any:
    """A parsed answer in JSON form: sets become sorted lists, tuples lists (recursively)."""
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def sample_meta(sample: Sample) -> dict[str, Any]:
    meta = dict(sample.meta)
    meta.setdefault("options", list(sample.options))
    return meta


class Predictor:
    """Answer samples with a model: prompts built by the sample's task, decoded in batches, answers parsed.

    ``consistency`` (optional) adds K stochastic answers per sample for the self-consistency metric.
    """

    def __init__(self, model: nn.Module, encoder: PromptEncoder, task_lookup: Callable[[str], Task], *,
                 style: PromptStyle = PromptStyle(), reasoning: str = "always",
                 settings: GenerationSettings = GenerationSettings(), max_prompt_length: int = 8192,
                 consistency: GenerationSettings | None = None):
        self.model = model
        self.encoder = encoder
        self.task_lookup = task_lookup
        self.style = style
        self.reasoning = reasoning
        self.settings = settings
        self.consistency = consistency
        self.collate = PromptCollator(encoder, task_lookup, style=style, reasoning=reasoning,
                                      max_prompt_length=max_prompt_length)

    def _device_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = next(self.model.parameters()).device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def record(self, sample: Sample, output: str, *, reasoning: bool, truncated: bool,
               samples: list[str] | None = None, skipped: str | None = None) -> Prediction:
        task = self.task_lookup(sample.task)
        final = task.final_answer(output, reasoning=reasoning, style=self.style) if not skipped else None
        return Prediction(
            id=sample.id, task=sample.task, family=task.family, dataset=sample.dataset,
            prompt=task.user_text(sample, reasoning=reasoning, style=self.style), reasoning=reasoning,
            output=output, final=final, parsed=jsonable(task.parse_answer(final)) if final is not None else None,
            reference=task.answer_text(sample),
            well_formed=bool(not skipped and task.is_well_formed(output, sample, reasoning=reasoning,
                                                                  style=self.style)),
            truncated=truncated, meta=sample_meta(sample),
            samples=[task.final_answer(s, reasoning=reasoning, style=self.style) for s in samples]
            if samples is not None else None,
            skipped=skipped,
        )

    @torch.no_grad()
    def predict(self, samples: list[Sample], *, with_consistency: bool = False) -> list[Prediction]:
        """One :class:`Prediction` per sample, in order (samples whose prompt is too long are recorded as skipped;
        samples their task refuses with a ``SampleError`` are left out and logged)."""
        batch = self.collate(samples)
        answered = {id(s): i for i, s in enumerate(batch["samples"])}
        texts: list[str] = []
        truncated: list[bool] = []
        extra: list[list[str]] = []
        if batch["num_samples"]:
            batch = self._device_batch(batch)
            out = generate(self.model, self.encoder, batch, self.settings)
            texts, truncated = out.texts, [bool(t) for t in out.truncated.tolist()]
            if with_consistency and self.consistency is not None:
                k = self.consistency.num_return_sequences
                many = generate(self.model, self.encoder, batch, self.consistency).texts
                extra = [many[i * k : (i + 1) * k] for i in range(len(texts))]
        records = []
        refused = {id(s) for s in batch.get("invalid", [])}  # samples the task cannot use: skipped (logged), no record
        for s in samples:
            if id(s) in refused:
                continue
            i = answered.get(id(s))
            if i is None:
                records.append(self.record(s, "", reasoning=use_reasoning(s, self.reasoning), truncated=False,
                                           samples=[] if with_consistency else None, skipped="prompt_too_long"))
                continue
            records.append(self.record(s, texts[i], reasoning=batch["reasoning"][i], truncated=truncated[i],
                                       samples=extra[i] if extra else None))
        return records
