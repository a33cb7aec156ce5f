"""``python -m chexone.bench {rollout,sft} [options]`` — chexone against itself; results go to docs/benchmarks.md.

``rollout`` compares the GRPO rollout + log-prob passes with shared per-prompt work (image encoded and prompt prefilled
once per prompt) against the naive path (HF ``generate(num_return_sequences=G)`` and teacher forcing over G copies of
each image). ``sft`` times SFT optimizer steps. Both print a Markdown table row and the command that produced it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _model(args: argparse.Namespace):
    from chexone.config.load import load_config
    from chexone.model import load_pretrained

    cfg = load_config("stage2_grpo", [f"model.path={args.model}", "data=demo", f"model.max_pixels={args.max_pixels}",
                                      f"model.attn_implementation={args.attn}", "grpo.init_from=''"])
    loaded = load_pretrained(cfg.model, device_type=args.device)
    loaded.model.to(args.device)
    return loaded


def _demo_samples(n: int, image_size: int):
    from chexone.data.demo.generate import demo_samples

    return [s for s in demo_samples("test", 4 * n, image_size=image_size) if s.task == "close_vqa"][:n]


def bench_rollout(args: argparse.Namespace) -> str:
    from chexone.data.collate import PromptCollator
    from chexone.model.processor import PromptEncoder
    from chexone.tasks import get_task
    from chexone.training.core import token_logps
    from chexone.training.rollout import (
        HFGenerateEngine,
        SamplingSettings,
        SharedPrefillEngine,
        build_policy_batch,
        shared_image_features,
    )

    loaded = _model(args)
    model, enc = loaded.model.eval(), PromptEncoder(loaded.processor)
    batch = PromptCollator(enc, get_task, reasoning="always")(_demo_samples(args.prompts, args.image_size))
    batch = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    settings = SamplingSettings(num_generations=args.generations, max_new_tokens=args.new_tokens)
    engines = {"shared_prefill": SharedPrefillEngine(torch.Generator(device=args.device).manual_seed(0)),
               "hf_generate": HFGenerateEngine()}
    times: dict[str, list[float]] = {k: [] for k in ("shared_prefill", "hf_generate", "logps_shared", "logps_naive")}
    tokens = {}
    for engine in engines.values():  # warm-up (allocator, kernels) outside the timed repeats
        engine.generate(model, enc, batch, settings)
    for _ in range(args.repeats):
        for name, engine in engines.items():
            _sync(args.device)
            t = time.perf_counter()
            roll = engine.generate(model, enc, batch, settings)
            _sync(args.device)
            times[name].append(time.perf_counter() - t)
            tokens[name] = int(roll.completion_mask.sum())
        for name, share in (("logps_shared", True), ("logps_naive", False)):
            _sync(args.device)
            t = time.perf_counter()
            with torch.no_grad():
                feats = shared_image_features(model, batch) if share else None
                pb, pm = build_policy_batch(batch, roll.completion_ids, roll.completion_mask, args.generations, feats)
                token_logps(model, pb, pm)
            _sync(args.device)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    image_tokens = int((batch["input_ids"] == enc.image_token_id).sum()) // max(1, args.prompts)
    return (f"| rollout | {args.model} | {args.device} | P={args.prompts} G={args.generations} new={args.new_tokens} "
            f"image tokens/prompt={image_tokens} | generate: shared_prefill {med['shared_prefill']:.3f} s vs "
            f"hf_generate {med['hf_generate']:.3f} s ({med['hf_generate'] / med['shared_prefill']:.2f}x) | "
            f"teacher-forced log-probs: shared images {med['logps_shared']:.3f} s vs per-completion images "
            f"{med['logps_naive']:.3f} s ({med['logps_naive'] / med['logps_shared']:.2f}x) |")


def bench_sft(args: argparse.Namespace) -> str:
    from chexone.data.collate import SFTCollator
    from chexone.model.processor import PromptEncoder
    from chexone.tasks import get_task
    from chexone.training.core import sft_loss

    loaded = _model(args)
    model = loaded.model.train()
    collate = SFTCollator(PromptEncoder(loaded.processor), get_task, max_length=4096)
    batch = collate(_demo_samples(args.prompts, args.image_size))
    batch = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda")
    times = []
    for i in range(args.repeats + 1):
        _sync(args.device)
        t = time.perf_counter()
        with autocast:
            loss, _ = sft_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        _sync(args.device)
        if i:  # first step warms up
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    n_tok = int(batch["attention_mask"].sum())
    return (f"| sft step | {args.model} | {args.device} | batch {args.prompts}, {n_tok} tokens | {step:.3f} s/step, "
            f"{n_tok / step:,.0f} tokens/s |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chexone.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("rollout", "sft"))
    parser.add_argument("--model", default="tiny", help="model.path: tiny, a hub id or a local directory")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--attn", default="auto", help="model.attn_implementation")
    parser.add_argument("--prompts", type=int, default=4, help="prompts (rollout) or samples (sft) per batch")
    parser.add_argument("--generations", type=int, default=8, help="G completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=64, help="completion length")
    parser.add_argument("--image-size", type=int, default=112, help="demo image side in pixels")
    parser.add_argument("--max-pixels", type=int, default=12544, help="model.max_pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    args = parser.parse_args(argv)
    args.device = _device(args.device)
    torch.manual_seed(0)
    row = bench_rollout(args) if args.what == "rollout" else bench_sft(args)
    print(f"<!-- python -m chexone.bench {' '.join(argv if argv is not None else sys.argv[1:])} "
          f"| torch {torch.__version__} | {platform.processor() or platform.machine()} "
          f"| {torch.cuda.get_device_name() if args.device == 'cuda' else f'{torch.get_num_threads()} CPU threads'} -->")
    print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
