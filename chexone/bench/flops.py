"""Model FLOPs of a GRPO or SFT step and model FLOPs utilisation (MFU), counted the same way for every framework.

Model FLOPs are the arithmetic the workload needs, not what an implementation happens to do: a matrix multiply with a
parameter matrix costs 2 FLOPs per parameter per token forward and twice that backward (the usual 2N / 6N per token),
plus attention, which no parameter count covers: per layer, a query attending to k keys costs 4 * d * k (QK^T and the
weighted sum of V, d = heads x head dim). Text attention is causal, so the i-th token of a sequence (after c cached
ones) attends to c + i + 1 keys. Vision attention is bidirectional over an image's patches in the full-attention
blocks and over a window's patches in the others. Each of the P x G GRPO sequences is counted in full (prompt, image
and completion), as a framework that shares nothing computes it; so chexone's shared prefill and shared image
features, which skip repeated work, show as a higher MFU for the same FLOP count. No pass is counted twice:
on-policy GRPO with beta 0 needs one generation and one policy forward/backward, nothing else.

MFU = model FLOPs per step / (seconds per step x the device's peak dense bf16 FLOP/s), from ``PEAK_BF16_FLOPS``
keyed by device name, or ``--peak-tflops``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

#: Peak dense (not sparse) bf16 tensor-core FLOP/s per GPU, from the vendors' data sheets. Matched as a substring of
#: the lower-cased device name, first match wins (so the more specific names come first).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989e12),   # SXM ("NVIDIA H100 80GB HBM3")
    ("h200", 989e12),   # H200 and GH200
    ("b200", 2250e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
)


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """Peak bf16 FLOP/s of a device (``override_tflops`` in TFLOP/s wins); None when the name is not in the table."""
    if override_tflops:
        return override_tflops * 1e12
    name = device_name.lower()
    return next((value for key, value in PEAK_BF16_FLOPS if key in name), None)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs to know about a Qwen2.5-VL model."""

    text_params: int          # parameters a text token is multiplied with: decoder layers, final norm, LM head
    text_layers: int
    text_attn_dim: int        # query heads x head dim
    vision_params: int        # vision blocks and patch embedding (applied per patch)
    merger_params: int        # the vision-language merger (applied per merged image token)
    vision_layers: int
    vision_attn_dim: int
    vision_full_layers: int   # blocks with full attention over the image; the others attend within a window
    window_patches: int       # patches per attention window
    patches_per_token: int    # patches merged into one image token (spatial_merge_size ** 2)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_shape(model: nn.Module) -> ModelShape:
    """The shape of a Qwen2.5-VL model (a meta-device instance is enough: nothing is computed)."""
    cfg = model.config
    text, vision = cfg.text_config, cfg.vision_config
    lm = model.model.language_model
    # the LM head is one vocab x hidden matrix per token whether or not it shares storage with the embeddings;
    # the embedding lookup itself does no arithmetic
    text_params = _numel(lm) - lm.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    visual = model.model.visual
    merger = _numel(visual.merger)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    window = vision.window_size // vision.patch_size
    return ModelShape(
        text_params=text_params, text_layers=text.num_hidden_layers, text_attn_dim=text.num_attention_heads * head_dim,
        vision_params=_numel(visual) - merger, merger_params=merger, vision_layers=vision.depth,
        vision_attn_dim=vision.hidden_size, vision_full_layers=len(vision.fullatt_block_indexes),
        window_patches=window * window, patches_per_token=vision.spatial_merge_size**2,
    )


def causal_attention_flops(layers: int, attn_dim: int, new_tokens: int, cached: int = 0) -> int:
    """Forward attention FLOPs of ``new_tokens`` tokens after ``cached`` ones: token i attends to cached + i + 1."""
    keys = new_tokens * cached + new_tokens * (new_tokens + 1) // 2
    return 4 * attn_dim * layers * keys


def text_forward_flops(s: ModelShape, new_tokens: int, cached: int = 0) -> int:
    return 2 * s.text_params * new_tokens + causal_attention_flops(s.text_layers, s.text_attn_dim, new_tokens, cached)


def vision_forward_flops(s: ModelShape, patches: int) -> int:
    """One image of ``patches`` patches through the vision tower and the merger."""
    window = min(s.window_patches, patches)
    attention = 4 * s.vision_attn_dim * patches * (s.vision_full_layers * patches +
                                                  (s.vision_layers - s.vision_full_layers) * window)
    return 2 * s.vision_params * patches + attention + 2 * s.merger_params * (patches // s.patches_per_token)


def grpo_step_flops(s: ModelShape, prompt_lengths: list[int], completion_tokens: int, patches_per_prompt: list[int],
                    generations: int, vision_trains: bool) -> dict[str, int]:
    """Model FLOPs of one on-policy GRPO step: sampling ``generations`` completions of ``completion_tokens`` tokens
    per prompt (prefill, then one token at a time), then one forward/backward over every prompt + completion."""
    gen = train = 0
    for length, patches in zip(prompt_lengths, patches_per_prompt):
        vision = vision_forward_flops(s, patches) if patches else 0
        # sampling: the prompt is prefilled, then the first N - 1 sampled tokens are fed back one at a time
        gen += generations * (vision + text_forward_flops(s, length) +
                              text_forward_flops(s, completion_tokens - 1, cached=length))
        train += generations * (3 * text_forward_flops(s, length + completion_tokens) +
                                (3 if vision_trains else 1) * vision)
    return {"generation": gen, "policy": train, "total": gen + train}


def sft_step_flops(s: ModelShape, lengths: list[int], patches_per_sample: list[int], vision_trains: bool) -> int:
    """Model FLOPs of one SFT step over samples of ``lengths`` non-pad tokens (padding is not useful work)."""
    total = 0
    for length, patches in zip(lengths, patches_per_sample):
        vision = vision_forward_flops(s, patches) if patches else 0
        total += 3 * text_forward_flops(s, length) + (3 if vision_trains else 1) * vision
    return total


def mfu(flops_per_step: float, seconds_per_step: float, peak: float | None) -> float | None:
    if not peak or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak
