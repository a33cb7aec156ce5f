"""The few lines a run ends with: what was trained, where the model, checkpoints, config and metrics are, the headline
validation numbers, and the command to run next."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chexone.progress import format_duration

#: Validation values shown in the summary when present (all of them are in the logs).
HEADLINE = ("val/loss", "val/accuracy", "val/exact_match", "val/iou", "val/bleu2", "val/well_formed")


def metrics_location(cfg: Any, out: Path, logger: Any) -> str:
    kind = str(cfg.logger)
    if kind == "csv":
        return str(out / "csv" / "metrics.csv")
    if kind == "wandb" and logger:
        experiment = getattr(logger, "experiment", None)
        run_dir = Path(getattr(experiment, "dir", "") or "").parent if experiment is not None else None
        where = str(run_dir) if run_dir and str(run_dir) != "." else str(out / "wandb")
        offline = getattr(getattr(experiment, "settings", None), "mode", "") == "offline" or \
            "offline-run" in where
        return f"{where} (W&B offline: `wandb sync {where}` uploads it)" if offline else f"{where} (W&B)"
    return "not logged (logger=none)"


def next_commands(cfg: Any, hf_dir: str | None) -> list[str]:
    """What a user typically runs after this stage, with this run's model filled in."""
    demo = cfg.data.name == "demo"
    model = hf_dir or "<set export_hf=true to get a model directory>"
    if cfg.stage == "sft":
        if demo:
            return [f"python -m chexone.evaluate recipe=eval_demo model.path={model} data=demo   # score it",
                    "python -m chexone.fit recipe=stage2_grpo model=tiny data=demo   # stage 2 (GRPO) demo"]
        return [f"python -m chexone.filter recipe=filter_low_variance model.path={model} data.train=<RL shards>",
                f"python -m chexone.fit recipe=stage2_grpo model.path={model} data.train=<filtered shards>"]
    if demo:
        return [f"python -m chexone.evaluate recipe=eval_demo model.path={model} data=demo   # score it"]
    return [f"python -m chexone.evaluate recipe=eval_vqa model.path={model} data.rexvqa=<benchmark shards>"]


def format_summary(cfg: Any, summary: dict[str, Any], *, seconds: float, logger: Any, skipped_steps: int) -> str:
    out = Path(summary["output_dir"])
    steps = f"{summary['global_step']} optimizer steps" + (f" ({skipped_steps} skipped: non-finite loss or "
                                                           "gradients)" if skipped_steps else "")
    lines = [f"done: {cfg.stage} run, {steps} in {format_duration(seconds)}"]
    rows = []
    if summary.get("hf_dir"):
        rows.append(("model", f"{summary['hf_dir']} (Hugging Face directory: from_pretrained / model.path=)"))
    rows.append(("checkpoint", f"{summary['last_checkpoint']} (resume: trainer.ckpt_path=last)"))
    rows.append(("config", str(out / "config.yaml")))
    if summary.get("demo_sft_model"):
        rows.append(("stage 2", f"the stage-2 demo starts from this model (cached as {summary['demo_sft_model']})"))
    rows.append(("metrics", metrics_location(cfg, out, logger)))
    validation = summary.get("validation") or {}
    shown = [f"{k.removeprefix('val/')} {validation[k]:.3f}" for k in HEADLINE if k in validation]
    if shown:
        rows.append(("validation", " | ".join(shown)))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines.append("next:")
    lines += [f"  {c}" for c in next_commands(cfg, summary.get("hf_dir"))]
    return "\n".join(lines)


__all__ = ["format_summary", "next_commands"]
