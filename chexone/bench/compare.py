"""``python -m chexone.bench compare {grpo,sft,all} [options]`` — chexone against TRL on an identical workload.

One random-weight Qwen2.5-VL is written to a temporary directory and both frameworks load it from there; both get the
same demo prompts and images, rendered by chexone's task definitions. Every run is a fresh subprocess
(``chexone.bench.worker``) with the same number of torch threads; the frameworks alternate, ``--pairs`` groups of
back-to-back runs, the order flipping from one group to the next, and the ratio is taken within each group, so a
machine that slows down or speeds up over time affects both sides of a ratio alike. The first ``--warmup`` steps of
every run are left out of the timing. Before a result is accepted, every run must have fed its model the same prompt
tokens (a fingerprint) and, for GRPO, produced only completions of exactly the forced length.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from chexone.bench.report import (
    Point,
    header,
    label,
    pairs_table,
    point_table,
    scaling_table,
    seconds_per_step,
    tokens_per_second,
)
from chexone.bench.workload import Workload

#: The scaling table's centre: the paper's image budget (256 tokens), G = 8, 128 completion tokens; one axis varies.
SCALING_CENTRE = {"image_tokens": 256, "generations": 8, "completion_tokens": 128}
SCALING_AXES = {"generations": (4, 8, 16), "completion_tokens": (32, 128, 512), "image_tokens": (64, 256)}


class CompareError(RuntimeError):
    """A run failed or the two frameworks did not run the same workload; the message says which and why."""


# ---------------------------------------------------------------------------------------------- running


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    return env


def run_worker(framework: str, variant: str, w: Workload, model_dir: Path, work: Path, tag: str,
               timeout: float) -> dict[str, Any]:
    """One run in a fresh interpreter; its output goes to ``work/<tag>.log`` and is shown only when it fails."""
    spec = {"framework": framework, "variant": variant, "workload": w.to_dict(), "model_dir": str(model_dir),
            "output_dir": str(work / f"{tag}-out")}
    spec_path, result_path, log_path = work / f"{tag}.json", work / f"{tag}.result.json", work / f"{tag}.log"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    with log_path.open("w", encoding="utf-8") as log:
        try:
            proc = subprocess.run([sys.executable, "-m", "chexone.bench.worker", str(spec_path), str(result_path)],
                                  stdout=log, stderr=subprocess.STDOUT, env=_worker_env(w.threads), timeout=timeout)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    if returncode != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        why = f"ran past --run-timeout {timeout:.0f} s" if returncode is None else f"exited with {returncode}"
        raise CompareError(f"the {label({'framework': framework, 'variant': variant})} run ({w.describe()}) {why}; "
                           f"the last lines of its output:\n{tail}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def check_same_workload(point: Point) -> None:
    """Every run saw the same prompt tokens; every GRPO completion has the forced length."""
    w = point.workload
    runs = [r for group in point.groups for r in group]
    prints = {label(r): r["prompt_fingerprint"] for r in runs}
    if len(set(prints.values())) != 1:
        raise CompareError(f"the frameworks fed their models different prompt tokens ({prints}): not the same "
                           f"workload ({w.describe()})")
    if w.bench == "grpo":
        for r in runs:
            wrong = sorted({n for n in r["completion_lengths"] if n != w.completion_tokens})
            expected = w.prompts * w.generations * w.steps
            if wrong or len(r["completion_lengths"]) != expected:
                raise CompareError(f"{label(r)} produced {len(r['completion_lengths'])} completions (expected "
                                   f"{expected}) with lengths {wrong or 'as forced'} besides the forced "
                                   f"{w.completion_tokens}: EOS was not suppressed")


def variants(w: Workload, no_packing: bool) -> list[tuple[str, str]]:
    """(framework, variant) of every run in a group: chexone SFT runs with and without padding-free packing where
    this chexone has it (``--no-packing``: without only)."""
    if w.bench == "sft":
        from chexone.bench.workload import sft_packing_available

        if sft_packing_available():
            chexone = [("chexone", "unpacked")] + ([] if no_packing else [("chexone", "packed")])
            return [*chexone, ("trl", "")]
    return [("chexone", ""), ("trl", "")]


def measure_point(w: Workload, model_dir: Path, work: Path, pairs: int, timeout: float, *, no_packing: bool = False,
                  name: str = "") -> Point:
    """``pairs`` groups of back-to-back runs, the order reversed every other group."""
    point = Point(w)
    order = variants(w, no_packing)
    for k in range(pairs):
        group = []
        for framework, variant in (order if k % 2 == 0 else order[::-1]):
            tag = f"{name or w.bench}-{k + 1}-{framework}{'-' + variant if variant else ''}"
            t0 = time.perf_counter()
            run = run_worker(framework, variant, w, model_dir, work, tag, timeout)
            print(f"[compare] {name or w.bench} group {k + 1}/{pairs}: {label(run)}: {seconds_per_step(run):.3f} "
                  f"s/step, {tokens_per_second(run):,.0f} tokens/s ({time.perf_counter() - t0:.0f} s with start-up)",
                  file=sys.stderr, flush=True)
            group.append(run)
        point.groups.append(group)
    check_same_workload(point)
    return point


# ---------------------------------------------------------------------------------------------- FLOPs


def add_flops(point: Point, model_dir: Path, peak_tflops: float | None) -> None:
    """Model FLOPs per step of every framework variant, and the device's peak (GPU name or ``--peak-tflops``)."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from chexone.bench.flops import grpo_step_flops, model_shape, peak_flops, sft_step_flops
    from chexone.bench.model_dir import model_config

    w = point.workload
    run = point.groups[0][0]
    device = run["device_name"] if w.device == "cuda" else ""
    point.peak_flops = peak_flops(device, peak_tflops) if (w.device == "cuda" or peak_tflops) else None
    if point.peak_flops is None:
        return
    config = model_config(w, AutoTokenizer.from_pretrained(model_dir))
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        shape = model_shape(Qwen2_5_VLForConditionalGeneration(config))
    patches = 4 * w.image_tokens
    for r in point.groups[0]:
        lengths, images = r["prompt_lengths"], [patches] * len(r["prompt_lengths"])
        if w.bench == "grpo":
            flops = grpo_step_flops(shape, lengths, w.completion_tokens, images, w.generations,
                                    vision_trains=not w.freeze_vision)["total"]
        else:
            flops = sft_step_flops(shape, lengths, images, vision_trains=not w.freeze_vision)
        point.flops_per_step[label(r)] = flops


# ---------------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chexone.bench compare", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("grpo", "sft", "all"))
    p.add_argument("--pairs", type=int, default=3, help="back-to-back groups of runs (one run per framework each)")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=1, help="steps per run left out of the timing")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = all cores)")
    p.add_argument("--model", default="tiny", choices=("tiny", "qwen2_5_vl_3b"),
                   help="random-weight model: the tiny test model or the Qwen2.5-VL-3B architecture")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="bf16 = mixed precision, fp32 weights")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    p.add_argument("--image-tokens", type=int, default=64, help="image tokens per image (a square number)")
    p.add_argument("--prompts", type=int, default=2, help="GRPO: prompts per step (P)")
    p.add_argument("--generations", type=int, default=8, help="GRPO: completions per prompt (G)")
    p.add_argument("--completion-tokens", type=int, default=512, help="GRPO: forced completion length")
    p.add_argument("--micro-batch-prompts", type=int, default=0,
                   help="GRPO: prompts per forward/backward pass, in both frameworks (0 = all P at once)")
    p.add_argument("--sft-batch", type=int, default=4, help="SFT: samples per step")
    p.add_argument("--no-packing", action="store_true", help="SFT: bench chexone without packing only")
    p.add_argument("--freeze-vision", action=argparse.BooleanOptionalAction, default=None,
                   help="freeze the vision tower in both frameworks (default: as the recipes do: frozen for GRPO, "
                        "trained for SFT)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="in both frameworks")
    p.add_argument("--scaling", action="store_true",
                   help="GRPO: also a table over G (4/8/16), completion tokens (32/128/512) and image tokens (64/256), "
                        "one axis varied at a time from 256 image tokens, G=8, 128 completion tokens")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s of the device for MFU (default: from the GPU's name)")
    p.add_argument("--run-timeout", type=float, default=3600, help="seconds before a run is stopped as failed")
    p.add_argument("--markdown-out", default=None, help="also append the tables to this file")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def workload(args: argparse.Namespace, bench: str) -> Workload:
    import torch

    from chexone.runtime import available_cores

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    freeze = args.freeze_vision if args.freeze_vision is not None else bench == "grpo"
    return Workload(bench=bench, model=args.model, device=device, dtype=args.dtype, attn=args.attn,
                    threads=args.threads or available_cores(), steps=args.steps, warmup=args.warmup, seed=args.seed,
                    image_tokens=args.image_tokens, gradient_checkpointing=args.gradient_checkpointing,
                    freeze_vision=freeze, prompts=args.prompts, generations=args.generations,
                    completion_tokens=args.completion_tokens, micro_batch_prompts=args.micro_batch_prompts,
                    sft_batch=args.sft_batch)


def run_compare(args: argparse.Namespace, command: str) -> tuple[str, dict[str, Point]]:
    """Measure what ``args`` asks for; returns the Markdown (``main`` prints it; ``--markdown-out`` gets it appended)
    and every measured point by name (``grpo``, ``sft``, ``scaling-<axis>-<value>``)."""
    from chexone.bench.model_dir import build_model_dir
    from chexone.bench.run_trl import require_bench_extra

    require_bench_extra()  # before minutes of chexone runs
    if args.pairs < 1:
        raise ValueError(f"--pairs {args.pairs}: at least one pair of runs is needed")
    benches = ("grpo", "sft") if args.what == "all" else (args.what,)
    sections = []
    measured: dict[str, Point] = {}
    with tempfile.TemporaryDirectory(prefix="chexone-compare-") as tmp:
        root = Path(tmp)
        models: dict[tuple[int, str], Path] = {}

        def model_for(w: Workload) -> Path:
            key = (w.image_tokens, w.model)
            if key not in models:
                models[key] = build_model_dir(w, root / "models")
            return models[key]

        for bench in benches:
            w = workload(args, bench)
            model_dir = model_for(w)
            point = measured[bench] = measure_point(w, model_dir, root, args.pairs, args.run_timeout,
                                                    no_packing=args.no_packing)
            add_flops(point, model_dir, args.peak_tflops)
            sections.append(f"{header(command, point.groups[0][0])}\n\n**{w.describe()}**, {args.pairs} pair(s), "
                            f"{w.steps} timed step(s) per run after {w.warmup} warm-up step(s)\n\n"
                            f"{point_table(point)}\n\n{pairs_table(point)}")
        if args.scaling:
            base = replace(workload(args, "grpo"), **SCALING_CENTRE)
            points = []
            seen = set()
            for axis, values in SCALING_AXES.items():
                for value in values:
                    w = replace(base, **{axis: value})
                    key = (w.generations, w.completion_tokens, w.image_tokens)
                    if key in seen:
                        continue
                    seen.add(key)
                    name = f"scaling-{axis}-{value}"
                    point = measured[name] = measure_point(w, model_for(w), root, args.pairs, args.run_timeout,
                                                           name=name)
                    centre = all(getattr(w, k) == v for k, v in SCALING_CENTRE.items())
                    points.append(("centre" if centre else f"{axis.replace('_', ' ')} = {value}", point))
            sections.append(f"{header(command, points[0][1].groups[0][0])}\n\n**GRPO scaling** ({base.model}, "
                            f"{base.dtype}, {base.prompts} prompts, dapo, on-policy), {args.pairs} pair(s) per "
                            f"point\n\n{scaling_table(points)}")
    markdown = "\n\n".join(sections) + "\n"
    if args.markdown_out:
        with open(args.markdown_out, "a", encoding="utf-8") as f:
            f.write("\n" + markdown)
    return markdown, measured


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = "python -m chexone.bench compare " + " ".join(shlex.quote(a) for a in argv)
    try:
        markdown, _ = run_compare(args, command)
    except (CompareError, ValueError, ImportError) as err:
        print(f"compare: {err}", file=sys.stderr)
        return 1
    print(markdown)
    return 0
