"""The one rule for chexone's cache directory (chexone/cache.py)."""

from pathlib import Path

from chexone.cache import cache_root


def test_cache_root_from_the_environment_or_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("CHEXONE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHEXONE_CACHE", "~/elsewhere")
    assert cache_root() == tmp_path / "home" / "elsewhere"
    for unset in (lambda: monkeypatch.delenv("CHEXONE_CACHE"), lambda: monkeypatch.setenv("CHEXONE_CACHE", "")):
        unset()
        assert cache_root() == Path(tmp_path / "home" / ".cache" / "chexone")


def test_the_inference_engine_and_the_recipes_resolve_the_tiny_model_to_the_same_place(monkeypatch, tmp_path):
    from chexone.config.load import load_config
    from chexone.inference.engine import _expand_cache

    monkeypatch.setenv("CHEXONE_CACHE", str(tmp_path))
    cfg = load_config("stage1_sft", ["model=tiny", "data=demo"])
    assert Path(_expand_cache("${oc.env:CHEXONE_CACHE,'~/.cache/chexone'}/tiny-model")) == tmp_path / "tiny-model"
    assert Path(str(cfg.model.tiny_cache_dir)) == tmp_path / "tiny-model"
