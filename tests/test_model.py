"""Model loading: the tiny model through the real from_pretrained path, attention choice, freezing, export."""


import pytest
import torch
from omegaconf import OmegaConf

from chexone.config.schema import ModelConfig
from chexone.model import ModelLoadError, load_pretrained
from chexone.model.loading import apply_freezing, count_parameters, resolve_attn_implementation, resolve_dtype


def model_cfg(cache_dir, **kw):
    cfg = OmegaConf.structured(ModelConfig)
    cfg.tiny_cache_dir = str(cache_dir / "tiny-model")
    cfg.max_pixels = 12544
    for k, v in kw.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def test_tiny_loads_through_from_pretrained(cache_dir, tiny_dir):
    loaded = load_pretrained(model_cfg(cache_dir), device_type="cpu")
    assert type(loaded.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert loaded.attn_implementation == "sdpa"
    assert loaded.model.config._attn_implementation == "sdpa"
    assert loaded.dtype == torch.float32
    assert (tiny_dir / "model.safetensors").exists()
    assert len(loaded.processor.tokenizer) < 2000  # the small local BPE, not the 151k vocab
    assert "attention: sdpa" in loaded.summary()


def test_tiny_is_deterministic(cache_dir, tmp_path):
    from chexone.model.tiny import build_tiny_model_dir
    from safetensors.torch import load_file

    a = load_file(build_tiny_model_dir(tmp_path / "a") / "model.safetensors")
    b = load_file(build_tiny_model_dir(tmp_path / "b") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_attention_resolution():
    assert resolve_attn_implementation("auto", "cpu")[0] == "sdpa"
    assert resolve_attn_implementation("eager", "cpu")[0] == "eager"
    with pytest.raises(ModelLoadError, match="flash-attn is not installed|needs a CUDA device"):
        resolve_attn_implementation("flash_attention_2", "cpu")
    with pytest.raises(ValueError, match="attn_implementation"):
        resolve_attn_implementation("flex", "cpu")
    assert resolve_dtype("auto", "cuda") == torch.bfloat16 and resolve_dtype("auto", "cpu") == torch.float32


def test_missing_model_fails_fast_with_guidance(cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import time

    t = time.time()
    with pytest.raises(ModelLoadError) as err:
        load_pretrained(model_cfg(cache_dir, path="Qwen/Qwen2.5-VL-3B-Instruct"), device_type="cpu")
    assert time.time() - t < 10
    msg = str(err.value)
    assert "model=tiny" in msg and "offline" in msg and "model.path" in msg


def test_local_dir_that_is_not_a_model(cache_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="exists but is not a loadable"):
        load_pretrained(model_cfg(cache_dir, path=str(tmp_path)), device_type="cpu")


def test_freezing_policy(tiny_model):
    apply_freezing(tiny_model, vision=True, merger=False, llm=False)
    counts = count_parameters(tiny_model)
    v_total, v_train = counts.by_part["vision"]
    assert v_total > 0 and v_train == 0
    assert counts.by_part["merger"][1] == counts.by_part["merger"][0] > 0
    assert counts.trainable == counts.total - v_total
    assert all(not p.requires_grad for p in tiny_model.model.visual.blocks.parameters())
    assert all(p.requires_grad for p in tiny_model.model.visual.merger.parameters())
    with pytest.raises(ValueError, match="nothing would be trained"):
        apply_freezing(tiny_model, vision=True, merger=True, llm=True)


def test_hf_export_reloads_with_same_logits(cache_dir, tmp_path):
    from transformers import AutoModelForImageTextToText
    from chexone.model.processor import ChexoneVLProcessor
    from chexone.training.core import ChexoneModule

    loaded = load_pretrained(model_cfg(cache_dir), device_type="cpu")
    with torch.no_grad():  # move the weights away from the cached initial ones
        for p in loaded.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cfg = OmegaConf.create({"optim": {}, "trainer": {"max_consecutive_skipped_steps": 10}})
    module = ChexoneModule(cfg, loaded)
    out = module.export_hf(tmp_path / "hf")
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    model2 = AutoModelForImageTextToText.from_pretrained(out, attn_implementation="sdpa")
    proc2 = ChexoneVLProcessor.from_pretrained(out)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        a = loaded.model.eval()(input_ids=ids).logits
        b = model2.eval()(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-6)
    assert proc2.tokenizer.get_vocab() == loaded.processor.tokenizer.get_vocab()
    assert proc2.image_processor.size["longest_edge"] == 12544
