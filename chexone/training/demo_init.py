"""The stage-1 demo model that the stage-2 demo starts from: built once, reproducibly, then cached.

``grpo.init_from=demo_sft`` runs (or reuses) exactly ``python -m chexone.fit recipe=stage1_sft model=tiny data=demo``
into ``$CHEXONE_CACHE/demo-sft-<hash of that config>`` and starts GRPO from its exported Hugging Face directory. The
log says which of the two happened.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

DEMO_SFT_COMMAND = "python -m chexone.fit recipe=stage1_sft model=tiny data=demo"


def demo_sft_config(output_dir: str | None = None) -> Any:
    from chexone.config.load import load_config

    overrides = ["model=tiny", "data=demo", "logger=none", "trainer.progress_bar=false"]
    if output_dir:
        overrides.append(f"output_dir={output_dir}")
    return load_config("stage1_sft", overrides)


def ensure_demo_sft_model(grpo_cfg: Any) -> Path:
    """Path of the exported stage-1 demo model, training it first if this exact demo config was never built."""
    from chexone.training.run import run_fit

    cache = Path(os.path.expanduser(os.environ.get("CHEXONE_CACHE", "~/.cache/chexone")))
    probe = demo_sft_config()
    recipe = OmegaConf.to_container(probe, resolve=True)
    for volatile in ("output_dir",):
        recipe.pop(volatile, None)
    recipe["model"].pop("tiny_cache_dir", None)
    recipe["data"].pop("demo_dir", None)
    key = hashlib.sha1(repr(sorted(_flatten(recipe))).encode()).hexdigest()[:10]
    root = cache / f"demo-sft-{key}"
    hf = root / "hf"
    if (hf / "config.json").exists():
        print(f"grpo.init_from=demo_sft: using the cached stage-1 demo model {hf} (built earlier by the equivalent "
              f"of `{DEMO_SFT_COMMAND} output_dir={root}`)", flush=True)
        return hf
    print(f"grpo.init_from=demo_sft: no cached stage-1 demo model; building it once now with the equivalent of "
          f"`{DEMO_SFT_COMMAND} output_dir={root}` (about 2-3 minutes on CPU)", flush=True)
    summary = run_fit(demo_sft_config(str(root)))
    if not (hf / "config.json").exists():
        raise RuntimeError(f"the stage-1 demo run finished but wrote no model to {hf}: {summary}")
    return hf


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [(prefix, repr(d))]
