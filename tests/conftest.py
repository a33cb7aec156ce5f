"""Shared fixtures: everything offline, caches in a per-session temp dir, the tiny model built once."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A session-wide cache (tiny model, demo shards) so tests never touch the user's ~/.cache."""
    path = tmp_path_factory.mktemp("chexone-cache")
    old = os.environ.get("CHEXONE_CACHE")
    os.environ["CHEXONE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CHEXONE_CACHE", None)
    else:
        os.environ["CHEXONE_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_dir(cache_dir):
    from chexone.model.tiny import build_tiny_model_dir

    return build_tiny_model_dir(cache_dir / "tiny-model", seed=0, min_pixels=3136, max_pixels=12544)


@pytest.fixture(scope="session")
def tiny_processor(tiny_dir):
    from chexone.model.processor import ChexoneVLProcessor

    return ChexoneVLProcessor.from_pretrained(tiny_dir)


@pytest.fixture()
def tiny_model(tiny_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_dir, attn_implementation="sdpa")


@pytest.fixture(scope="session")
def demo_shards(cache_dir):
    """The demo shard sets (generated once per test session)."""
    from chexone.data.demo import ensure_demo_shards

    return ensure_demo_shards(cache_dir / "demo-shards")


def tiny_demo_overrides(out, **extra):
    """Overrides for a seconds-long tiny-model run on the demo data, for tests."""
    base = {
        "model": "tiny", "data": "demo", "logger": "none", "output_dir": str(out), "trainer.progress_bar": "false",
        "data.num_workers": "0", "data.micro_batch_size": "2", "trainer.global_batch_size": "2",
        "trainer.val_every_n_steps": "0", "trainer.val_samples": "4", "trainer.val_max_new_tokens": "8",
    }
    base.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def sft_export(tmp_path_factory, cache_dir, demo_shards, tiny_dir):
    """A real (2-step) stage-1 demo run's Hugging Face export: what users pass to infer / serve as --model."""
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path_factory.mktemp("sft-export")
    overrides = tiny_demo_overrides(out, **{"trainer.max_steps": 2, "data.val": "[]",
                                            "model.tiny_cache_dir": cache_dir / "tiny-model",
                                            "data.demo_dir": cache_dir / "demo-shards"})
    run_fit(load_config("stage1_sft", overrides))
    assert (out / "hf" / "config.json").exists()
    return out / "hf"
