"""Load Qwen2.5-VL (hub id, local directory, or the offline ``tiny`` model) with an explicit attention choice,
dtype and per-stage freezing policy."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from chexone.model.processor import ChexoneVLProcessor
from chexone.model.tiny import build_tiny_model_dir

log = logging.getLogger(__name__)

ATTN_CHOICES = ("auto", "flash_attention_2", "sdpa", "eager")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do."""


def resolve_attn_implementation(requested: str, device_type: str) -> tuple[str, str]:
    """(implementation, reason). ``auto`` picks FlashAttention-2 on CUDA when installed, else SDPA."""
    if requested not in ATTN_CHOICES:
        raise ValueError(f"model.attn_implementation={requested!r}; choose one of {ATTN_CHOICES}")
    has_fa2 = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        if device_type == "cuda" and has_fa2:
            return "flash_attention_2", "auto: CUDA device and flash-attn installed"
        why = "no CUDA device" if device_type != "cuda" else "flash-attn not installed (pip install chexone[gpu])"
        return "sdpa", f"auto: {why}, using SDPA"
    if requested == "flash_attention_2":
        if not has_fa2:
            raise ModelLoadError(
                "model.attn_implementation=flash_attention_2 but flash-attn is not installed; "
                "install it with `pip install chexone[gpu]` on a CUDA machine, or set model.attn_implementation=sdpa"
            )
        if device_type != "cuda":
            raise ModelLoadError("model.attn_implementation=flash_attention_2 needs a CUDA device; use sdpa on CPU")
    return requested, "requested"


def resolve_dtype(name: str, device_type: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"model.dtype={name!r}; choose auto | float32 | bfloat16 | float16") from None


def is_offline(local_files_only: bool = False) -> bool:
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def resolve_model_path(path: str, *, tiny_cache_dir: str, seed: int = 0, min_pixels: int, max_pixels: int) -> str:
    """'tiny' -> the cached tiny model directory (built on first use); anything else is returned as given."""
    if path == "tiny":
        return str(build_tiny_model_dir(tiny_cache_dir, seed=seed, min_pixels=min_pixels, max_pixels=max_pixels))
    return path


def _explain_load_failure(path: str, offline: bool, err: Exception) -> ModelLoadError:
    local = Path(os.path.expanduser(path))
    if local.exists():
        hint = f"the directory {local} exists but is not a loadable Qwen2.5-VL checkpoint (config.json + weights)"
    elif offline:
        hint = (
            f"{path!r} is not a local directory and the hub is offline (HF_HUB_OFFLINE / model.local_files_only), "
            "and it is not in the local Hugging Face cache"
        )
    else:
        hint = f"{path!r} is neither a local directory nor a reachable hub model"
    return ModelLoadError(
        f"Could not load model.path={path!r}: {hint}. "
        "Download the weights first (e.g. `huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR`) and "
        "pass model.path=DIR, or use model=tiny for an offline random-weight model.\n"
        f"Cause: {type(err).__name__}: {err}"
    )


def load_processor(path: str, *, min_pixels: int, max_pixels: int, local_files_only: bool = False,
                   trust_remote_code: bool = False) -> ChexoneVLProcessor:
    offline = is_offline(local_files_only)
    try:
        return ChexoneVLProcessor.from_pretrained(
            path, min_pixels=min_pixels, max_pixels=max_pixels, local_files_only=offline,
            trust_remote_code=trust_remote_code,
        )
    except Exception as err:  # noqa: BLE001 - re-raised with guidance
        raise _explain_load_failure(path, offline, err) from err


def load_model(path: str, *, attn_implementation: str, dtype: torch.dtype, local_files_only: bool = False,
               trust_remote_code: bool = False) -> nn.Module:
    """``AutoModelForImageTextToText.from_pretrained`` with safetensors only and a helpful error."""
    from transformers import AutoModelForImageTextToText

    offline = is_offline(local_files_only)
    try:
        return AutoModelForImageTextToText.from_pretrained(
            path,
            attn_implementation=attn_implementation,
            dtype=dtype,
            local_files_only=offline,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except Exception as err:  # noqa: BLE001 - re-raised with guidance
        raise _explain_load_failure(path, offline, err) from err


# ---------------------------------------------------------------------------------------------- freezing


def model_parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The three parts the freezing policy talks about: vision encoder, merger (projector), LLM."""
    inner = getattr(model, "model", model)
    visual = inner.visual
    vision = [m for name, m in visual.named_children() if name != "merger"]
    return {"vision": vision, "merger": [visual.merger], "llm": [inner.language_model, model.lm_head]}


def apply_freezing(model: nn.Module, *, vision: bool, merger: bool, llm: bool) -> None:
    """Set ``requires_grad`` per part. A tied LM head follows the embeddings (frozen only when ``llm`` is)."""
    flags = {"vision": vision, "merger": merger, "llm": llm}
    for part, modules in model_parts(model).items():
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(not flags[part])
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model.freeze freezes every part: nothing would be trained")


@dataclass
class ParamCounts:
    total: int
    trainable: int
    by_part: dict[str, tuple[int, int]]

    def describe(self) -> str:
        parts = ", ".join(f"{k} {t / 1e6:.2f}M ({'trainable' if tr else 'frozen'})"
                          for k, (t, tr) in self.by_part.items())
        return f"parameters: {self.total / 1e6:.2f}M total, {self.trainable / 1e6:.2f}M trainable [{parts}]"


def count_parameters(model: nn.Module) -> ParamCounts:
    seen: set[int] = set()
    by_part = {}
    for part, modules in model_parts(model).items():
        total = trainable = 0
        for module in modules:
            for p in module.parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                total += p.numel()
                trainable += p.numel() if p.requires_grad else 0
        by_part[part] = (total, trainable)
    unique = {id(p): p for p in model.parameters()}.values()
    return ParamCounts(
        total=sum(p.numel() for p in unique),
        trainable=sum(p.numel() for p in unique if p.requires_grad),
        by_part=by_part,
    )
