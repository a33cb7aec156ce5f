"""``python -m chexone.infer`` — ask a trained model about chest X-rays (DICOM, PNG, JPEG).

One question::

    python -m chexone.infer --model runs/stage1_sft/hf --image study.dcm --task findings_generation
    python -m chexone.infer --model DIR --image prior.png --image current.png --task progression_generation
    python -m chexone.infer --model DIR --image cxr.png --question "Is there a pneumothorax?" --option Yes --option No
    python -m chexone.infer --model DIR --image cxr.png --task phrase_grounding --phrase "left pleural effusion" --out out/

prints the reasoning and the answer (``--json``: one JSON object); grounding answers are also drawn on the image
(PNG, boxes in image coordinates). Batch (the ReXrank submission shape, resumable, with a progress bar)::

    python -m chexone.infer --model DIR --batch test.json --image-root /data/images --output predictions.json \\
        --task findings_generation

See docs/inference.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m chexone.infer", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Reasoning mode is on by default (the model thinks step by step, then answers in \\boxed{}).")
    p.add_argument("--model", required=True,
                   help="model directory (e.g. runs/stage1_sft/hf, a downloaded CheXOne / Qwen2.5-VL checkpoint), "
                        "a hub id (with network), or 'tiny' (random weights, for trying the command)")
    q = p.add_argument_group("one question")
    q.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="DICOM, PNG or JPEG; repeat for several images (prior first, current last; or frontal + "
                        "lateral)")
    q.add_argument("--question", help="free-text question (asked verbatim)")
    q.add_argument("--task", help="a registered task, e.g. findings_generation, impression_generation, "
                                  "progression_generation, phrase_grounding (with --phrase), or a plugin's task; "
                                  "its training prompt is used unless --question is given. In batch mode: the task "
                                  "of records that name none")
    q.add_argument("--option", action="append", default=[], metavar="TEXT",
                   help="a multiple-choice option (repeat; shown to the model as (A) ..., (B) ...)")
    q.add_argument("--phrase", help="the finding to locate, for grounding tasks")
    q.add_argument("--indication", help="clinical indication for report tasks")
    q.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    q.add_argument("--out", help="directory for answer.json and, for grounding, boxes.png (default: boxes.png in "
                                 "the current directory)")
    b = p.add_argument_group("batch")
    b.add_argument("--batch", metavar="FILE", help="JSON {id: record} (ReXrank), JSON list or JSONL of questions")
    b.add_argument("--image-root", help="directory the batch's image paths are relative to")
    b.add_argument("--output", help="output JSON of the batch (required with --batch)")
    b.add_argument("--batch-size", type=int, default=4, help="questions answered together (default 4)")
    b.add_argument("--no-resume", action="store_true", help="start the batch over instead of resuming")
    g = p.add_argument_group("generation")
    g.add_argument("--no-reasoning", action="store_true",
                   help="instruction mode: the bare question, a direct answer (no step-by-step reasoning)")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="longest answer in tokens (default 1024)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), > 0 samples")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (default 1.0)")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling")
    m = p.add_argument_group("model and images")
    m.add_argument("--device", default="auto", help="auto (GPU when present) | cpu | cuda | cuda:N")
    m.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto = bf16 on GPU, fp32 on CPU")
    m.add_argument("--attn", default="auto", choices=("auto", "flash_attention_2", "sdpa", "eager"),
                   help="attention implementation (auto = FlashAttention-2 on GPU when installed, else SDPA)")
    m.add_argument("--max-pixels", type=int, default=262144, help="pixel budget per image (default 512x512)")
    m.add_argument("--min-pixels", type=int, default=3136, help="smallest image area (default 56x56)")
    m.add_argument("--window", default="auto", choices=("auto", "minmax", "percentile"),
                   help="DICOM windowing: the file's VOI LUT / window, else min-max (auto)")
    m.add_argument("--trust-remote-code", action="store_true", help="allow custom modelling code from the model dir")
    return p


def _generation(args: argparse.Namespace):
    from chexone.training.generation import GenerationSettings

    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    if args.temperature < 0:
        raise ValueError("--temperature must be >= 0")
    if not 0 < args.top_p <= 1:
        raise ValueError("--top-p must be in (0, 1]")
    sample = args.temperature > 0
    return GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=sample,
                              temperature=args.temperature if sample else 1.0, top_p=args.top_p if sample else 1.0)


def _check_task(name: str | None) -> None:
    """An unknown task name fails before the model loads (with the registry's did-you-mean)."""
    if name:
        from chexone.tasks import get_task

        get_task(name)


def _print_answer(answer: Any, boxes_png: str | None) -> None:
    print(f"question: {answer.prompt}")
    if answer.reasoning:
        print("\nreasoning:")
        print("  " + answer.reasoning.replace("\n", "\n  "))
    final = answer.final if answer.final is not None else answer.output.strip()
    label = "answer" if answer.final is not None or not answer.reasoning_mode else "answer (no \\boxed{} found; " \
                                                                                   "the whole output)"
    print(f"\n{label}: {final}")
    for b in answer.boxes:
        x1, y1, x2, y2 = b.pixels
        print(f"  box {b.name!r}: ({x1:g}, {y1:g}) - ({x2:g}, {y2:g}) px  [grid {tuple(b.grid)}]")
    if boxes_png:
        print(f"boxes drawn on the image: {boxes_png}")
    if answer.finish_reason == "length":
        print("note: the answer hit --max-new-tokens and may be cut off", file=sys.stderr)


def run_single(args: argparse.Namespace, model: Any, settings: Any, style: Any) -> int:
    from chexone.inference.draw import draw_boxes
    from chexone.inference.questions import Question, answer_questions
    from webdata.images import load_image

    images = [load_image(p, max_pixels=args.max_pixels, window=args.window) for p in args.image]
    question = Question(images=images, question=args.question, task=args.task, options=list(args.option),
                        phrase=args.phrase, indication=args.indication, id="question")
    answer = answer_questions(model, [question], reasoning=not args.no_reasoning, settings=settings, style=style,
                              seed=args.seed)[0]
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    boxes_png = None
    if answer.family == "grounding" and answer.boxes:
        display = load_image(args.image[-1], max_pixels=max(args.max_pixels, 2048 * 2048), window=args.window)
        boxes_png = str((out_dir or Path(".")) / "boxes.png")
        draw_boxes(display.image, answer.boxes, display.original_size).save(boxes_png)
    record = {"model": model.path, "images": list(args.image), **answer.to_json(), "boxes_png": boxes_png}
    if out_dir:
        (out_dir / "answer.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    if args.json:
        print(json.dumps(record))
    else:
        _print_answer(answer, boxes_png)
        if out_dir:
            print(f"wrote {out_dir / 'answer.json'}")
    return 0


def run_batch_cli(args: argparse.Namespace, model: Any, settings: Any, style: Any) -> int:
    from chexone.inference.batch import run_batch

    report = run_batch(model, args.batch, args.output, image_root=args.image_root, default_task=args.task,
                       reasoning=not args.no_reasoning, settings=settings, style=style, batch_size=args.batch_size,
                       max_pixels=args.max_pixels, window=args.window, resume=not args.no_resume, seed=args.seed)
    msg = f"infer: {report.answered} answered"
    if report.resumed:
        msg += f" ({report.resumed} from an earlier run)"
    if report.failed:
        first = next(iter(report.failed.items()))
        msg += f", {len(report.failed)} failed (model_error in the output; first: {first[0]}: {first[1]})"
    print(f"{msg} -> {report.output}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chexone.inference.batch import BatchError
    from chexone.inference.engine import InferenceError, InferenceModel
    from chexone.model import ModelLoadError
    from chexone.registry import RegistryError
    from chexone.tasks.base import PromptStyle
    from webdata.images import ImageError

    batch = args.batch is not None
    try:
        if batch:
            if not args.output:
                raise ValueError("--batch needs --output (the JSON file to write)")
            if args.image or args.question:
                raise ValueError("--batch takes its images and questions from the file; drop --image/--question")
            if args.batch_size < 1:
                raise ValueError("--batch-size must be at least 1")
            from chexone.inference.batch import read_batch

            read_batch(args.batch)  # a malformed file fails before the model loads
        else:
            if not args.image:
                raise ValueError("give at least one --image (or --batch FILE)")
            if not args.question and not args.task:
                raise ValueError("give --question TEXT or --task NAME (e.g. --task findings_generation)")
            for path in args.image:
                if not Path(path).is_file():
                    raise ImageError(f"{path}: image file not found", "missing_image")
        settings = _generation(args)
        _check_task(args.task)
    except (ValueError, ImageError, RegistryError, BatchError) as err:
        print(f"error: {str(err).strip(chr(34) + chr(39))}", file=sys.stderr)
        return EXIT_USAGE
    try:
        model = InferenceModel.load(args.model, device=args.device, dtype=args.dtype, attn_implementation=args.attn,
                                    min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                    trust_remote_code=args.trust_remote_code)
    except (ModelLoadError, InferenceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not args.json:
        print(model.summary, file=sys.stderr, flush=True)
    style = PromptStyle()
    try:
        if batch:
            return run_batch_cli(args, model, settings, style)
        return run_single(args, model, settings, style)
    except (ImageError, InferenceError, BatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
