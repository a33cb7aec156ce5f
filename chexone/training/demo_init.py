"""The stage-1 demo model that the stage-2 demo starts from: built once, reproducibly, then cached.

``grpo.init_from=demo_sft`` runs (or reuses) exactly ``python -m chexone.fit recipe=stage1_sft model=tiny data=demo``
into ``$CHEXONE_CACHE/demo-sft-<hash of that config>`` and starts GRPO from its exported Hugging Face directory. The
log says which of the two happened. A user's own run of that command offers its export to the same cache (the hash
leaves out what does not change the weights: output directory, logger, progress bar), so the README's stage-1 demo
followed by the stage-2 demo trains stage 1 once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

DEMO_SFT_COMMAND = "python -m chexone.fit recipe=stage1_sft model=tiny data=demo"


def demo_sft_config(output_dir: str | None = None) -> Any:
    from chexone.config.load import load_config

    overrides = ["model=tiny", "data=demo", "logger=none"]
    if output_dir:
        overrides.append(f"output_dir={output_dir}")
    return load_config("stage1_sft", overrides)


#: Keys that do not change the trained weights: two configs that differ only here train the same demo model.
VOLATILE = ("output_dir", "logger", "wandb", "export_hf", "write_report", "trainer.progress_bar", "trainer.ckpt_path",
            "trainer.log_every_n_steps", "model.tiny_cache_dir", "data.demo_dir", "data.num_workers",
            "eval.out", "filter.out")  # the last two default to paths under output_dir


def demo_sft_key(cfg: Any) -> str:
    """A hash of everything in ``cfg`` that shapes the trained weights, and of the demo data's generator version (the
    config names the data, ``data=demo``, but not what the generator writes: new samples must retrain the model)."""
    from chexone.data.demo import GENERATOR_VERSION

    recipe = OmegaConf.to_container(cfg, resolve=True)
    recipe["demo_data_generator_version"] = GENERATOR_VERSION
    for dotted in VOLATILE:
        parent, _, leaf = dotted.rpartition(".")
        node = recipe
        for part in parent.split(".") if parent else []:
            node = node.get(part, {})
        node.pop(leaf, None)
    return hashlib.sha1(repr(sorted(_flatten(recipe))).encode()).hexdigest()[:10]


def _cache_root() -> Path:
    from chexone.cache import cache_root

    return cache_root() / f"demo-sft-{demo_sft_key(demo_sft_config())}"


def ensure_demo_sft_model(grpo_cfg: Any) -> Path:
    """Path of the exported stage-1 demo model, training it first if this exact demo config was never built."""
    from chexone.training.run import run_fit

    root = _cache_root()
    hf = root / "hf"
    if (hf / "config.json").exists():
        print(f"grpo.init_from=demo_sft: using the cached stage-1 demo model {hf} (trained by the equivalent of "
              f"`{DEMO_SFT_COMMAND}`)", flush=True)
        return hf
    print(f"grpo.init_from=demo_sft: no cached stage-1 demo model; building it once now with the equivalent of "
          f"`{DEMO_SFT_COMMAND} output_dir={root}` (about 2 minutes on a 2-core CPU; running `{DEMO_SFT_COMMAND}` "
          "yourself first also provides it)", flush=True)
    summary = run_fit(demo_sft_config(str(root)), announce=False)
    if not (hf / "config.json").exists():
        raise RuntimeError(f"the stage-1 demo run finished but wrote no model to {hf}: {summary}")
    print(f"grpo.init_from=demo_sft: stage-1 demo model ready in {hf}", flush=True)
    return hf


def offer_as_demo_sft_model(cfg: Any, hf_dir: str | Path) -> Path | None:
    """After a stage-1 run: when its config (as loaded, before the run filled in data paths and dtype) trains exactly
    the stage-1 demo model, copy its export into the cache the stage-2 demo starts from (so it is not trained a
    second time). Returns the cached path, or None."""
    if cfg.stage != "sft" or cfg.data.name != "demo" or demo_sft_key(cfg) != demo_sft_key(demo_sft_config()):
        return None
    root = _cache_root()
    target = root / "hf"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".hf-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(hf_dir, tmp)
    try:
        os.rename(tmp, target)  # atomic: the stage-2 demo sees the whole directory or none
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [(prefix, repr(d))]
