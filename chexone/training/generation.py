"""Batched decoding for validation and evaluation: greedy by default, through the same rollout engine code as GRPO
(left-padded prompts, vision special tokens suppressed, stop on ``<|im_end|>``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from chexone.model.processor import PromptEncoder
from chexone.training.rollout import HFGenerateEngine, Rollouts, SamplingSettings

#: Completions with their masks, texts and truncation flags (the rollout type, one completion per prompt).
Generated = Rollouts


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1


def generate(model: nn.Module, encoder: PromptEncoder, batch: dict[str, Any], settings: GenerationSettings) -> Rollouts:
    """Generate completions for a left-padded prompt batch (see ``PromptCollator``)."""
    sampling = SamplingSettings(
        num_generations=settings.num_return_sequences, max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
        repetition_penalty=settings.repetition_penalty, do_sample=settings.do_sample, return_logps=False,
    )
    return HFGenerateEngine().generate(model, encoder, batch, sampling)
