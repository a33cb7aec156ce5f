"""``python -m chexone.filter recipe=filter_low_variance model.path=... data.train=...`` — keep the samples whose
rewards vary most across K stochastic generations of the stage-1 model (top fraction per task), as new shards.

Resumable: finished shards' scores are kept in ``<filter.out>/scores/`` and not recomputed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def run_filter(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from chexone.data.shards import resolve_shard_sets
    from chexone.model import load_pretrained
    from chexone.tasks import get_task
    from chexone.training.low_variance import (
        VarianceScorer,
        render_report,
        score_shards,
        select_top_variance,
        write_selected,
    )
    from chexone.training.run import device_type_for, resolve_data

    from chexone.runtime import configure_threads
    from chexone.training.preflight import preflight

    preflight(cfg, "filter")  # task and reward names, shard patterns: checked before the model loads
    configure_threads()
    f = cfg.filter
    out = Path(f.out)
    out.mkdir(parents=True, exist_ok=True)
    device_type = device_type_for(cfg)
    if cfg.grpo.init_from == "demo_sft":
        from chexone.training.demo_init import ensure_demo_sft_model

        cfg.model.path = str(ensure_demo_sft_model(cfg))
    loaded = load_pretrained(cfg.model, device_type=device_type, freeze=False)
    resolve_data(cfg)
    shards = [shard for s in resolve_shard_sets(cfg.data.train) for shard in s.shards]
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    print(f"{loaded.summary()}\nfilter: {len(shards)} shard(s), {f.num_generations} generations per sample at "
          f"temperature {f.temperature}, keeping the top {f.keep_fraction:.0%} by reward variance per task -> {out}",
          flush=True)
    model = loaded.model.to("cuda" if device_type == "cuda" else "cpu")
    scorer = VarianceScorer(model, loaded.processor, get_task, cfg)
    print(scorer.rewards.describe(), flush=True)
    scored = score_shards(shards, scorer, out, task_filter=list(cfg.data.tasks) or None)
    kept, summary = select_top_variance(scored, f.keep_fraction)
    manifest = write_selected(shards, kept, out, OmegaConf.to_container(cfg, resolve=True))
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(render_report(summary, f.keep_fraction, f.num_generations))
    for task, s in summary.items():
        print(f"  {task:<26} kept {s['kept']:>5} / {s['total']:<6} variance >= {s['threshold']:.4f}", flush=True)
    print(f"filter: wrote {manifest['total']} samples to {out / 'shards'} (report: {out / 'report.md'})", flush=True)
    return {"kept": len(kept), "total": len(scored), "summary": summary, "shards": str(out / "shards")}


def main(argv: list[str] | None = None) -> int:
    from chexone.config.cli import run_command

    return run_command(argv, "filter", run_filter)


if __name__ == "__main__":
    sys.exit(main())
