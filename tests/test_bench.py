"""``python -m chexone.bench``: the FLOP/MFU arithmetic against hand-computed values, the report arithmetic, the
same-workload checks, and a tiny end-to-end chexone-vs-TRL comparison of each kind (real subprocesses, both
frameworks, one pair, one step)."""

from __future__ import annotations

import pytest
import torch

from chexone.bench import compare, flops, report
from chexone.bench.workload import Workload

# ------------------------------------------------------------------------------------------------ FLOPs / MFU


def _shape(**kw) -> flops.ModelShape:
    base = dict(text_params=10, text_layers=1, text_attn_dim=2, vision_params=5, merger_params=3, vision_layers=2,
                vision_attn_dim=1, vision_full_layers=1, window_patches=4, patches_per_token=4)
    return flops.ModelShape(**{**base, **kw})


def test_causal_attention_flops_by_hand():
    # 3 new tokens, nothing cached: they attend to 1, 2, 3 keys; 4 * d * layers FLOPs per key
    assert flops.causal_attention_flops(layers=2, attn_dim=8, new_tokens=3) == 4 * 8 * 2 * (1 + 2 + 3)
    # 2 new tokens after 5 cached: 6 and 7 keys
    assert flops.causal_attention_flops(layers=2, attn_dim=8, new_tokens=2, cached=5) == 4 * 8 * 2 * (6 + 7)


def test_vision_forward_flops_by_hand():
    s = _shape()
    # 8 patches: 2*5*8 = 80 (blocks); attention 4*1*8*(1 full layer * 8 keys + 1 window layer * 4 keys) = 384;
    # merger on 8/4 = 2 merged tokens: 2*3*2 = 12
    assert flops.vision_forward_flops(s, 8) == 80 + 384 + 12


def test_grpo_step_flops_by_hand():
    s = _shape()
    out = flops.grpo_step_flops(s, prompt_lengths=[3], completion_tokens=2, patches_per_prompt=[0], generations=2,
                                vision_trains=False)
    # per completion: prefill 3 tokens: 2*10*3 + 4*2*1*(1+2+3) = 108; then 1 token fed back after 3 cached:
    # 2*10*1 + 4*2*1*4 = 52  ->  160, x G=2
    assert out["generation"] == 320
    # policy: 3 x a forward over 3 + 2 tokens: 3 * (2*10*5 + 4*2*1*15) = 660, x G=2
    assert out["policy"] == 1320
    assert out["total"] == 1640
    with_image = flops.grpo_step_flops(s, [3], 2, [8], 2, vision_trains=False)
    assert with_image["generation"] == 320 + 2 * 476 and with_image["policy"] == 1320 + 2 * 476
    assert flops.grpo_step_flops(s, [3], 2, [8], 2, vision_trains=True)["policy"] == 1320 + 2 * 3 * 476


def test_sft_step_flops_by_hand():
    s = _shape()
    # 3 tokens: 3 * (2*10*3 + 4*2*1*6) = 324; the image 476 forward (x3 when the vision tower trains)
    assert flops.sft_step_flops(s, [3], [8], vision_trains=True) == 324 + 3 * 476
    assert flops.sft_step_flops(s, [3], [8], vision_trains=False) == 324 + 476
    assert flops.sft_step_flops(s, [3, 3], [0, 0], vision_trains=False) == 2 * 324


def test_model_shape_counts_parameters_by_hand():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1e6}),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
                           out_hidden_size=32),
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        shape = flops.model_shape(Qwen2_5_VLForConditionalGeneration(config))
    # decoder layer: q 32*32+32, k and v 32*16+16 each, o 32*32, MLP 3*32*64, two norms 2*32 = 9344; two layers, the
    # final norm (32) and the (tied) LM head 100*32
    assert shape.text_params == 2 * 9344 + 32 + 100 * 32
    # patch embedding 3*2*14*14*16 (no bias); block: norms 32, qkv 16*48+48, proj 16*16+16, gate/up 16*32+32 each,
    # down 32*16+16 = 2736
    assert shape.vision_params == 3 * 2 * 14 * 14 * 16 + 2 * 2736
    # merger: norm 16, Linear(64, 64), Linear(64, 32)
    assert shape.merger_params == 16 + (64 * 64 + 64) + (64 * 32 + 32)
    assert (shape.text_layers, shape.text_attn_dim, shape.vision_attn_dim) == (2, 32, 16)
    assert (shape.vision_full_layers, shape.window_patches, shape.patches_per_token) == (1, 64, 4)


def test_the_3b_architecture_has_the_published_parameter_count(tiny_processor):
    """Qwen2.5-VL-3B-Instruct has 3,754,622,976 parameters (its safetensors index); the repo's config must give them."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from chexone.bench.model_dir import model_config

    config = model_config(Workload(model="qwen2_5_vl_3b"), tiny_processor.tokenizer)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == 3_754_622_976
    shape = flops.model_shape(model)
    # 36 layers of 77,076,992 + final norm 2048 + the tied 151936 x 2048 LM head
    assert shape.text_params == 36 * 77_076_992 + 2048 + 151936 * 2048
    assert (shape.text_layers, shape.text_attn_dim, shape.vision_layers, shape.vision_full_layers) == (36, 2048, 32, 4)


def test_peak_flops_table_and_mfu():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("NVIDIA L40S") == 362e12
    assert flops.peak_flops("NVIDIA L4") == 121e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops("Some Future GPU") is None
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", override_tflops=500) == 500e12
    # 1e15 FLOPs per step in 2 s on a 1e15 FLOP/s device: 50%
    assert flops.mfu(1e15, 2.0, 1e15) == pytest.approx(0.5)
    assert flops.mfu(1e15, 2.0, None) is None


# ------------------------------------------------------------------------------------------------ workload + report


def test_workload_image_sizes_and_validation():
    w = Workload(image_tokens=64)
    assert (w.image_side, w.max_pixels) == (224, 224 * 224)  # 8 x 8 tokens of 28 x 28 pixels
    assert Workload(image_tokens=256).image_side == 448
    with pytest.raises(ValueError, match="square number"):
        Workload(image_tokens=50)
    with pytest.raises(ValueError, match="must divide"):
        Workload(prompts=3, micro_batch_prompts=2)


def _run(framework, tokens, seconds, *, lengths=(), fingerprint="abc", variant="", memory=100):
    return {"framework": framework, "variant": variant, "tokens_per_step": list(tokens),
            "step_seconds": list(seconds), "completion_lengths": list(lengths), "prompt_fingerprint": fingerprint,
            "split": {}, "peak_memory_bytes": memory, "memory_kind": "peak RSS", "prompt_lengths": [],
            "image_tokens": []}


def test_ratios_are_per_back_to_back_group():
    point = report.Point(Workload())
    point.groups = [[_run("chexone", [100, 100], [1, 1]), _run("trl", [100, 100], [2, 2])],   # 100 vs 50 tok/s
                    [_run("trl", [90], [1]), _run("chexone", [90], [0.5])]]                      # 180 vs 90 tok/s
    assert report.ratios(point, "chexone") == [2.0, 2.0]
    assert report.tokens_per_second(point.groups[0][0]) == 100
    assert report.spread([1.0, 3.0, 2.0]) == "2.00 (1.00–3.00)"
    table = report.point_table(point)
    assert "| chexone |" in table and "| TRL |" in table and "**2.00 (2.00–2.00)x** per pair" in table
    assert "+0%" in table  # same peak memory
    assert report.pairs_table(point).count("2.00x") == 2


def test_check_same_workload_refuses_unforced_lengths_and_different_prompts():
    w = Workload(prompts=1, generations=2, completion_tokens=4, steps=1)
    good = report.Point(w, [[_run("chexone", [8], [1], lengths=[4, 4]), _run("trl", [8], [1], lengths=[4, 4])]])
    compare.check_same_workload(good)
    early_eos = report.Point(w, [[_run("chexone", [8], [1], lengths=[4, 4]), _run("trl", [7], [1], lengths=[4, 3])]])
    with pytest.raises(compare.CompareError, match="EOS was not suppressed"):
        compare.check_same_workload(early_eos)
    other_prompts = report.Point(w, [[_run("chexone", [8], [1], lengths=[4, 4]),
                                      _run("trl", [8], [1], lengths=[4, 4], fingerprint="xyz")]])
    with pytest.raises(compare.CompareError, match="different prompt tokens"):
        compare.check_same_workload(other_prompts)


def test_legacy_commands_still_parse(capsys):
    from chexone.bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "{rollout,sft}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "{grpo,sft,all}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ end to end

TINY = ["--pairs", "1", "--steps", "1", "--warmup", "0", "--threads", "1", "--image-tokens", "4"]


def _compare(tmp_path, argv):
    pytest.importorskip("trl", reason="TRL is not installed: pip install -c constraints.txt -e '.[bench]'")
    out = tmp_path / "bench.md"
    args = compare.parse_args([*argv, "--markdown-out", str(out)])
    markdown, points = compare.run_compare(args, "python -m chexone.bench compare " + " ".join(argv))
    assert out.read_text(encoding="utf-8").strip() == markdown.strip()  # --markdown-out appends the same tables
    return markdown, points


@pytest.mark.slow
def test_compare_grpo_end_to_end(tmp_path):
    argv = ["grpo", *TINY, "--prompts", "1", "--generations", "2", "--completion-tokens", "5"]
    markdown, points = _compare(tmp_path, argv)
    point = points["grpo"]
    runs = {report.label(r): r for r in point.groups[0]}
    assert set(runs) == {"chexone", "TRL"}
    for r in runs.values():
        # both frameworks: 1 prompt x G=2 completions of exactly the forced 5 tokens
        assert r["completion_lengths"] == [5, 5], r["framework"]
        assert r["tokens_per_step"] == [10]
        assert r["image_tokens"] == [4] and len(r["step_seconds"]) == 1 and r["step_seconds"][0] > 0
        assert r["peak_memory_bytes"] > 0
        assert {"generation", "policy", "rewards"} <= set(r["split"])
    assert runs["chexone"]["prompt_fingerprint"] == runs["TRL"]["prompt_fingerprint"]
    assert sorted(runs["chexone"]["prompt_lengths"]) == sorted(runs["TRL"]["prompt_lengths"])
    first = markdown.splitlines()[0]
    assert first.startswith("<!-- python -m chexone.bench compare grpo") and "| trl 1." in first
    assert "torch 2." in first and "CPU, 1 torch threads" in first
    for row in ("| chexone |", "| TRL |", "**chexone / TRL**", "| 1 | chexone → TRL |"):
        assert row in markdown


@pytest.mark.slow
def test_compare_sft_end_to_end(tmp_path):
    markdown, points = _compare(tmp_path, ["sft", *TINY, "--sft-batch", "2", "--no-packing"])
    runs = {r["framework"]: r for r in points["sft"].groups[0]}
    assert len(points["sft"].groups[0]) == 2 and set(runs) == {"chexone", "trl"}
    ours, trl = runs["chexone"], runs["trl"]
    assert ours["variant"] in ("", "unpacked")  # "unpacked" where chexone has packing: --no-packing runs it off
    assert ours["prompt_fingerprint"] == trl["prompt_fingerprint"]
    # TRL renders the assistant turn with the chat template, which ends "<|im_end|>\n"; chexone's target ends at
    # <|im_end|>: one more non-pad token per sample, otherwise the same tokens
    assert trl["tokens_per_step"] == [ours["tokens_per_step"][0] + 2]
    assert sorted(n + 1 for n in ours["prompt_lengths"]) == sorted(trl["prompt_lengths"])
    assert "non-pad tokens/s" in markdown and f"| {report.label(ours)} |" in markdown and "| TRL |" in markdown


def test_sft_variants_bench_packing_where_chexone_has_it():
    from chexone.bench.workload import sft_packing_available

    names = compare.variants(Workload(bench="sft"), no_packing=False)
    without = compare.variants(Workload(bench="sft"), no_packing=True)
    if sft_packing_available():
        assert names == [("chexone", "unpacked"), ("chexone", "packed"), ("trl", "")]
        assert without == [("chexone", "unpacked"), ("trl", "")]  # explicitly off: the recipe default is packed
    else:
        assert names == without == [("chexone", ""), ("trl", "")]
    assert compare.variants(Workload(bench="grpo"), no_packing=False) == [("chexone", ""), ("trl", "")]
