"""The stage-2 demo starts from the stage-1 demo model; a user's own stage-1 demo run provides it (trained once)."""

import pytest

from chexone.config.load import load_config
from chexone.training import demo_init


def test_key_ignores_what_does_not_change_the_weights():
    base = demo_init.demo_sft_key(demo_init.demo_sft_config())
    readme_run = load_config("stage1_sft", ["model=tiny", "data=demo"])  # logger=wandb, progress bar, runs/...
    assert demo_init.demo_sft_key(readme_run) == base
    elsewhere = load_config("stage1_sft", ["model=tiny", "data=demo", "output_dir=/tmp/elsewhere", "logger=csv"])
    assert demo_init.demo_sft_key(elsewhere) == base  # eval.out / filter.out follow output_dir: not weights
    other = load_config("stage1_sft", ["model=tiny", "data=demo", "optim.lr=1e-3"])
    assert demo_init.demo_sft_key(other) != base
    assert demo_init.demo_sft_key(load_config("stage1_sft", ["model=tiny", "data=demo", "trainer.max_steps=5"])) != base


def test_key_follows_the_demo_data_generator_version(monkeypatch):
    """New demo samples (a bumped generator version) must not reuse a stage-1 model trained on the old ones."""
    import chexone.data.demo as demo_data

    cfg = demo_init.demo_sft_config()
    before = demo_init.demo_sft_key(cfg)
    monkeypatch.setattr(demo_data, "GENERATOR_VERSION", demo_data.GENERATOR_VERSION + 1)
    assert demo_init.demo_sft_key(cfg) != before
    assert demo_init._cache_root().name == f"demo-sft-{demo_init.demo_sft_key(cfg)}"


def test_a_matching_run_offers_its_export_and_others_do_not(tmp_path, monkeypatch):
    monkeypatch.setenv("CHEXONE_CACHE", str(tmp_path / "cache"))
    hf = tmp_path / "run" / "hf"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"weights")
    short = load_config("stage1_sft", ["model=tiny", "data=demo", "trainer.max_steps=5"])
    assert demo_init.offer_as_demo_sft_model(short, hf) is None
    cached = demo_init.offer_as_demo_sft_model(load_config("stage1_sft", ["model=tiny", "data=demo"]), hf)
    assert cached is not None and (cached / "model.safetensors").read_bytes() == b"weights"
    assert cached == demo_init._cache_root() / "hf" and not list(cached.parent.glob(".hf-*"))
    printed = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    assert demo_init.ensure_demo_sft_model(None) == cached  # no second stage-1 training
    assert "using the cached stage-1 demo model" in printed[0]


@pytest.mark.slow
def test_a_real_stage1_demo_run_offers_its_export(tmp_path, cache_dir, demo_shards, tiny_dir, monkeypatch):
    """The config a run mutates (demo data paths, dtype) still matches: checked on a real, shortened run whose key is
    made the demo key."""
    from chexone.training.run import run_fit

    monkeypatch.setenv("CHEXONE_CACHE", str(tmp_path / "cache"))
    overrides = ["model=tiny", "data=demo", "trainer.max_steps=2", "data.val=[]", "logger=none",
                 f"model.tiny_cache_dir={cache_dir / 'tiny-model'}", f"data.demo_dir={cache_dir / 'demo-shards'}",
                 "trainer.progress_bar=false", f"output_dir={tmp_path / 'run'}"]
    monkeypatch.setattr(demo_init, "demo_sft_config",
                        lambda output_dir=None: load_config("stage1_sft", overrides))
    summary = run_fit(load_config("stage1_sft", overrides))
    assert summary["demo_sft_model"] == str(demo_init._cache_root() / "hf")
    assert (demo_init._cache_root() / "hf" / "config.json").exists()
