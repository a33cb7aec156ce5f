"""The random-weight model directory both frameworks load in ``compare``: written once per run, nothing downloaded.

``tiny`` is chexone's offline test model (``chexone.model.tiny``). ``qwen2_5_vl_3b`` has the architecture of
Qwen/Qwen2.5-VL-3B-Instruct, from the config values written below (the published ``config.json`` of that checkpoint,
so no hub access is needed), with random weights and the tiny model's locally trained tokenizer and image processor:
speed depends on the shapes, not on the weights or the words. The embedding and LM head keep the real 151,936-row
vocabulary; sampled ids the small tokenizer does not know decode to nothing, which changes no tensor shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from chexone.bench.workload import MIN_PIXELS, Workload

MODELS = ("tiny", "qwen2_5_vl_3b")

#: Qwen/Qwen2.5-VL-3B-Instruct's config.json (architecture values only; token ids come from the tokenizer used).
QWEN2_5_VL_3B_TEXT = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    tie_word_embeddings=True,
    use_sliding_window=False,
    attention_dropout=0.0,
)
QWEN2_5_VL_3B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    hidden_act="silu",
    in_chans=3,
    out_hidden_size=2048,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)


def qwen2_5_vl_3b_config(tokenizer: Any):
    """The Qwen2.5-VL-3B architecture with this tokenizer's special-token ids."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    special = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(
        text_config={**QWEN2_5_VL_3B_TEXT, **special},
        vision_config=dict(QWEN2_5_VL_3B_VISION),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        **special,
    )


def model_config(w: Workload, tokenizer: Any):
    """The config ``build_model_dir`` writes (also used, on the meta device, to count parameters for FLOPs)."""
    if w.model == "tiny":
        from chexone.model.tiny import tiny_config

        return tiny_config(tokenizer)
    if w.model == "qwen2_5_vl_3b":
        return qwen2_5_vl_3b_config(tokenizer)
    raise ValueError(f"--model {w.model!r}; choose one of {', '.join(MODELS)}")


def build_model_dir(w: Workload, root: str | Path) -> Path:
    """Write the workload's model (weights, tokenizer, image processor sized for its images) under ``root``."""
    from transformers import AutoTokenizer

    from chexone.model.processor import ChexoneVLProcessor
    from chexone.model.tiny import build_tiny_model_dir

    root = Path(root)
    tiny = build_tiny_model_dir(root / "tiny", seed=w.seed, min_pixels=MIN_PIXELS, max_pixels=w.max_pixels)
    if w.model == "tiny":
        return tiny
    from transformers import Qwen2_5_VLForConditionalGeneration

    from chexone.model.transformers_compat import save_local_model

    target = root / w.model
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = model_config(w, tokenizer)
    state = torch.random.get_rng_state()
    torch.manual_seed(w.seed)
    # initialised on the benchmark's device (seconds on a GPU instead of minutes on a CPU), stored in bf16: both
    # frameworks load it in fp32 (master weights) from the same files
    with torch.device("cuda" if w.device == "cuda" else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    torch.random.set_rng_state(state)
    save_local_model(model, target)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the workers, not this process, need the GPU's memory from here on
    ChexoneVLProcessor.from_pretrained(tiny).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
