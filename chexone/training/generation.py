"""Batched generation with Hugging Face ``generate``: left-padded prompts, vision special tokens suppressed, stop on
``<|im_end|>``. Shared by validation, evaluation and (later) GRPO rollouts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chexone.model.processor import PromptEncoder
from chexone.training.core import model_inputs


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1


@dataclass
class Generated:
    #: [B * n, L] completion ids, padded with pad id after the first stop token.
    completion_ids: torch.Tensor
    #: [B * n, L] 1 for real completion tokens (up to and including the stop token).
    completion_mask: torch.Tensor
    texts: list[str]
    #: True where the completion hit max_new_tokens without a stop token.
    truncated: torch.Tensor


@torch.no_grad()
def generate(model: nn.Module, encoder: PromptEncoder, batch: dict[str, Any], settings: GenerationSettings) -> Generated:
    """Generate completions for a left-padded prompt batch (see ``PromptCollator``)."""
    inputs = model_inputs(batch)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(next(model.model.visual.parameters()).dtype)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        num_return_sequences=settings.num_return_sequences,
        eos_token_id=encoder.eos_token_id,
        pad_token_id=encoder.pad_token_id,
        suppress_tokens=encoder.suppressed_token_ids(),
        repetition_penalty=settings.repetition_penalty,
    )
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(**inputs, **kwargs)
    finally:
        model.train(was_training)
    completion = out[:, inputs["input_ids"].shape[1] :]
    is_eos = completion == encoder.eos_token_id
    # Mask: tokens up to and including the first stop token.
    after_stop = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    mask = (~after_stop).long()
    completion = completion.masked_fill(after_stop, encoder.pad_token_id)
    truncated = ~is_eos.any(dim=1)
    texts = encoder.tokenizer.batch_decode(
        [c[m.bool() & (c != encoder.eos_token_id)] for c, m in zip(completion, mask)], skip_special_tokens=False
    )
    return Generated(completion, mask, texts, truncated)
