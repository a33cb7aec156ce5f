"""Model loading: Qwen2.5-VL from a hub id, a local directory, or the offline ``tiny`` model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chexone.model.loading import (
    ModelLoadError,
    apply_freezing,
    count_parameters,
    load_model,
    load_processor,
    resolve_attn_implementation,
    resolve_dtype,
    resolve_model_path,
)
from chexone.model.patch_projection import use_linear_patch_projection
from chexone.model.processor import ChexoneVLProcessor, PromptEncoder

__all__ = ["LoadedModel", "load_pretrained", "ModelLoadError", "ChexoneVLProcessor", "PromptEncoder"]


@dataclass
class LoadedModel:
    model: nn.Module
    processor: ChexoneVLProcessor
    path: str
    attn_implementation: str
    attn_reason: str
    dtype: torch.dtype

    def summary(self) -> str:
        return (
            f"model: {self.path} | attention: {self.attn_implementation} ({self.attn_reason}) | dtype: {self.dtype} | "
            + count_parameters(self.model).describe()
        )


def load_pretrained(cfg: Any, *, device_type: str, freeze: bool = True) -> LoadedModel:
    """Load model + processor as the ``model`` recipe section says; applies ``model.freeze`` when ``freeze``."""
    path = resolve_model_path(
        cfg.path, tiny_cache_dir=cfg.tiny_cache_dir, seed=cfg.seed, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
    )
    attn, reason = resolve_attn_implementation(cfg.attn_implementation, device_type)
    dtype = resolve_dtype(cfg.dtype, device_type)
    processor = load_processor(
        path, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, local_files_only=cfg.local_files_only,
        trust_remote_code=cfg.trust_remote_code,
    )
    model = load_model(
        path, attn_implementation=attn, dtype=dtype, local_files_only=cfg.local_files_only,
        trust_remote_code=cfg.trust_remote_code,
    )
    use_linear_patch_projection(model)  # the same weights, a matmul instead of a slow Conv3d
    if freeze:
        apply_freezing(model, vision=cfg.freeze.vision, merger=cfg.freeze.merger, llm=cfg.freeze.llm)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return LoadedModel(model, processor, str(cfg.path), attn, reason, dtype)
