"""Collators: samples -> padded model batches. SFT batches carry labels on the assistant answer only; prompt batches
(generation, GRPO) are left-padded prompts. Both share ``encode_conversation`` so their token layout is identical."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from chexone.data.sample import Sample, SampleError
from chexone.model.processor import PromptEncoder
from chexone.tasks.base import PromptStyle, Task

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
REASONING_MODES = ("auto", "always", "never")


_INVALID_SEEN = [0]


def warn_invalid(sample: Sample, err: Exception) -> None:
    """Warn about a sample its task refused (the first 5, then every 100th): it is skipped and counted, never fatal."""
    _INVALID_SEEN[0] += 1
    n = _INVALID_SEEN[0]
    if n <= 5 or n % 100 == 0:
        log.warning("skipping sample %r (task %s): %s (%d skipped so far%s)", sample.id, sample.task, err, n,
                    "; further ones are logged every 100th" if n == 5 else "")


def use_reasoning(sample: Sample, mode: str) -> bool:
    """Reasoning mode for this sample: ``auto`` = when it carries a reasoning trace."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if mode == "auto":
        return bool(sample.reasoning)
    raise ValueError(f"data.reasoning={mode!r}; choose one of {REASONING_MODES}")


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    prompt_length: int


def pad(seqs: list[list[int]], value: int, side: str) -> torch.Tensor:
    """Pad integer sequences to one length on the ``side`` ("left" | "right")."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            if side == "right":
                out[i, : len(s)] = torch.tensor(s)
            else:
                out[i, width - len(s) :] = torch.tensor(s)
    return out


def stack_images(encoded: list[Any]) -> dict[str, torch.Tensor]:
    """Concatenate pixel patches and grids in sample order (the model consumes them in token order)."""
    pv = [e.pixel_values for e in encoded if e.pixel_values is not None]
    if not pv:
        return {}
    return {
        "pixel_values": torch.cat(pv, dim=0),
        "image_grid_thw": torch.cat([e.image_grid_thw for e in encoded if e.image_grid_thw is not None], dim=0),
    }


class SFTCollator:
    """Encodes samples for teacher-forced training; samples longer than ``max_length`` are dropped and counted."""

    def __init__(
        self,
        encoder: PromptEncoder,
        task_lookup: Callable[[str], Task],
        *,
        style: PromptStyle = PromptStyle(),
        max_length: int = 4096,
        reasoning: str = "auto",
        keep_samples: bool = False,
    ):
        if reasoning not in REASONING_MODES:
            raise ValueError(f"data.reasoning={reasoning!r}; choose one of {REASONING_MODES}")
        self.encoder = encoder
        self.task_lookup = task_lookup
        self.style = style
        self.max_length = max_length
        self.reasoning = reasoning
        self.keep_samples = keep_samples

    def encode(self, sample: Sample) -> EncodedSample:
        task = self.task_lookup(sample.task)
        reasoning = use_reasoning(sample, self.reasoning)
        prompt = self.encoder.encode_prompt(task.messages(sample, reasoning=reasoning, style=self.style), sample.images)
        target = self.encoder.encode_target(task.target(sample, reasoning=reasoning))
        ids = prompt.input_ids + target
        labels = [IGNORE_INDEX] * len(prompt.input_ids) + target
        return EncodedSample(ids, labels, prompt.pixel_values, prompt.image_grid_thw, len(prompt.input_ids))

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        encoded, kept, too_long, invalid = [], [], 0, 0
        for s in samples:
            try:
                e = self.encode(s)
            except SampleError as err:  # the task cannot use this sample (e.g. multiple choice without options)
                invalid += 1
                warn_invalid(s, err)
                continue
            if len(e.input_ids) > self.max_length:
                too_long += 1
                log.warning("sample %s has %d tokens > data.max_length=%d: skipped", s.id, len(e.input_ids),
                            self.max_length)
                continue
            encoded.append(e)
            kept.append(s)
        batch: dict[str, Any] = {"num_samples": len(encoded), "skipped_too_long": too_long, "skipped_invalid": invalid}
        if not encoded:
            return batch
        pad_id = self.encoder.pad_token_id
        input_ids = pad([e.input_ids for e in encoded], pad_id, "right")
        batch.update(
            input_ids=input_ids,
            attention_mask=pad([[1] * len(e.input_ids) for e in encoded], 0, "right"),
            labels=pad([e.labels for e in encoded], IGNORE_INDEX, "right"),
            mm_token_type_ids=(input_ids == self.encoder.image_token_id).long(),
            **stack_images(encoded),
        )
        if self.keep_samples:
            batch["samples"] = kept
        return batch


class PromptCollator:
    """Left-padded prompts for generation (evaluation, GRPO rollouts); the samples travel with the batch."""

    def __init__(self, encoder: PromptEncoder, task_lookup: Callable[[str], Task], *,
                 style: PromptStyle = PromptStyle(), reasoning: str = "auto", max_prompt_length: int = 4096):
        self.encoder = encoder
        self.task_lookup = task_lookup
        self.style = style
        self.reasoning = reasoning
        self.max_prompt_length = max_prompt_length

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        encoded, kept, modes, texts, invalid = [], [], [], [], []
        for s in samples:
            task = self.task_lookup(s.task)
            reasoning = use_reasoning(s, self.reasoning)
            try:
                e = self.encoder.encode_prompt(task.messages(s, reasoning=reasoning, style=self.style), s.images)
                task.answer_text(s)  # the reference answer must be usable too (rewards and metrics compare with it)
            except SampleError as err:
                invalid.append(s)
                warn_invalid(s, err)
                continue
            if len(e.input_ids) > self.max_prompt_length:
                log.warning("prompt of sample %s has %d tokens > %d: skipped", s.id, len(e.input_ids),
                            self.max_prompt_length)
                continue
            encoded.append(e)
            kept.append(s)
            modes.append(reasoning)
            texts.append(task.user_text(s, reasoning=reasoning, style=self.style))
        batch: dict[str, Any] = {"samples": kept, "reasoning": modes, "prompts": texts, "num_samples": len(kept),
                                 "invalid": invalid,
                                 "num_images": [len(s.images) for s in kept]}
        if not encoded:
            return batch
        batch.update(prompt_tensors(self.encoder, encoded))
        return batch


def prompt_tensors(encoder: PromptEncoder, encoded: list[Any]) -> dict[str, torch.Tensor]:
    """Left-padded ids, attention mask, image-token types and stacked images of encoded prompts — the tensors every
    generation engine takes (shared by ``PromptCollator`` and ``chexone.inference``)."""
    input_ids = pad([e.input_ids for e in encoded], encoder.pad_token_id, "left")
    return dict(
        input_ids=input_ids,
        attention_mask=pad([[1] * len(e.input_ids) for e in encoded], 0, "left"),
        mm_token_type_ids=(input_ids == encoder.image_token_id).long(),
        **stack_images(encoded),
    )
