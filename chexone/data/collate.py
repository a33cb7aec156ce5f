"""Collators: samples -> padded model batches. SFT batches carry labels on the assistant answer only; prompt batches
(generation, GRPO) are left-padded prompts. Both share ``encode_conversation`` so their token layout is identical."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
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
    """Left-padded prompts for generation (evaluation, GRPO rollouts); the samples travel with the batch.

    Encoded prompts are kept in a bounded LRU cache (at most ``cache_size`` prompts and ``cache_bytes`` bytes of
    pixels and token ids; 0 turns it off), so a sample drawn again (a later GRPO epoch, a dynamic-sampling refill,
    the same validation samples at every validation) is not run through the image processor and tokenizer again.
    The key is everything the encoding depends on: the sample id, the reasoning mode, the prompt style and a hash of
    the content (the rendered chat messages and every image's pixels), so a sample whose text or images changed
    under the same id is encoded afresh.
    """

    def __init__(self, encoder: PromptEncoder, task_lookup: Callable[[str], Task], *,
                 style: PromptStyle = PromptStyle(), reasoning: str = "auto", max_prompt_length: int = 4096,
                 cache_size: int = 512, cache_bytes: int = 512 << 20):
        self.encoder = encoder
        self.task_lookup = task_lookup
        self.style = style
        self.reasoning = reasoning
        self.max_prompt_length = max_prompt_length
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self.cache: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()  # key -> (encoded prompt, its bytes)
        self.cached_bytes = 0
        self.cache_hits = 0

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        encoded, kept, modes, texts, invalid = [], [], [], [], []
        for s in samples:
            task = self.task_lookup(s.task)
            reasoning = use_reasoning(s, self.reasoning)
            try:
                e = self._encode(s, task.messages(s, reasoning=reasoning, style=self.style), reasoning)
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

    def _encode(self, sample: Sample, messages: list[dict[str, Any]], reasoning: bool) -> Any:
        """The encoded prompt, from the cache when this exact content was encoded before (never modified: batches
        copy what they take from it)."""
        if self.cache_size <= 0 or self.cache_bytes <= 0:
            return self.encoder.encode_prompt(messages, sample.images)
        key = (sample.id, reasoning, self.style, _content_hash(messages, sample.images))
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            self.cache_hits += 1
            return hit[0]
        encoded = self.encoder.encode_prompt(messages, sample.images)
        size = 8 * len(encoded.input_ids) + sum(t.numel() * t.element_size() for t in
                                                (encoded.pixel_values, encoded.image_grid_thw) if t is not None)
        if size <= self.cache_bytes:
            self.cache[key] = (encoded, size)
            self.cached_bytes += size
            while len(self.cache) > self.cache_size or self.cached_bytes > self.cache_bytes:
                _, (_, evicted) = self.cache.popitem(last=False)
                self.cached_bytes -= evicted
        return encoded


def _content_hash(messages: list[dict[str, Any]], images: list[Any]) -> str:
    """A digest of the rendered messages and of each image's mode, size and pixels."""
    digest = hashlib.blake2b(json.dumps(messages, sort_keys=True, default=repr).encode(), digest_size=16)
    for image in images:
        digest.update(f"|{image.mode}|{image.size}|".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


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
