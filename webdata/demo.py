"""Write the synthetic demo shard sets (phantom chest X-rays, every built-in task).

    python -m webdata.demo --out data/demo [--train 2000 --val 200 --test 300 --seed 0 --image-size 112] [--overwrite]

writes ``DIR/{train,val,test}/demo-<split>-NNNNNN.tar`` (+ ``sizes.json``/``manifest.json`` per split) and
``DIR/manifest.json``, then prints the number of samples per task and split. Recipes normally call
``chexone.data.demo.ensure_demo_shards`` instead, which runs the same code once and caches the result.

    python -m webdata.demo --images DIR [--n 12 --seed 0 --image-size 112]

writes demo test-split radiographs as image files instead — PNGs, the first one also as a 12-bit MONOCHROME1
DICOM — and ``DIR/questions.json`` (their questions and reference answers, in the batch shape of
``python -m chexone.infer --batch``), to try inference and the reader study on files.
"""

from __future__ import annotations

import argparse
import sys
import time

from chexone.data.demo import DEFAULT_IMAGE_SIZE, DEFAULT_SIZES, write_demo_splits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m webdata.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="output directory for shards")
    p.add_argument("--images", metavar="DIR", help="write demo images + questions.json to DIR instead of shards")
    p.add_argument("--n", type=int, default=12, help="with --images: how many test samples (default 12)")
    for split, n in DEFAULT_SIZES.items():
        p.add_argument(f"--{split}", type=int, default=n, metavar="N", help=f"{split} samples (default {n})")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, metavar="PX",
                   help=f"image side in pixels (default {DEFAULT_IMAGE_SIZE})")
    p.add_argument("--overwrite", action="store_true", help="replace existing demo shards in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def format_summary(manifest: dict) -> str:
    splits = list(manifest["splits"])
    tasks = sorted({t for s in splits for t in manifest["splits"][s]["task_counts"]})
    width = max(len("task"), *(len(t) for t in tasks))
    lines = [f"{'task':<{width}}  " + "  ".join(f"{s:>6}" for s in splits)]
    for t in tasks:
        lines.append(f"{t:<{width}}  " + "  ".join(f"{manifest['splits'][s]['task_counts'].get(t, 0):>6}"
                                                   for s in splits))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{manifest['splits'][s]['count']:>6}" for s in splits))
    return "\n".join(lines)


def write_demo_images(out: str, *, n: int = 12, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE) -> list[dict]:
    """Demo test samples as files: ``<id>.imgK.png`` per image, ``demo.dcm`` (the first image as a MONOCHROME1 DICOM:
    inverted 12-bit values with a window, as some scanners store radiographs) and ``questions.json``."""
    import json
    from pathlib import Path

    import numpy as np

    from chexone.data.demo import demo_samples
    from chexone.tasks import get_task
    from webdata.synthetic import write_dicom

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i, sample in enumerate(demo_samples("test", n, seed=seed, image_size=image_size)):
        safe = sample.id.replace("/", "_")
        paths = []
        for k, image in enumerate(sample.images):
            name = f"{safe}.img{k}.png"
            image.save(root / name)
            paths.append(name)
        if i == 0:
            gray = np.asarray(sample.images[0].convert("L"), dtype=np.float64)
            stored = np.round((255.0 - gray) / 255.0 * 4095).astype(np.uint16)  # MONOCHROME1: bright = low
            write_dicom(root / "demo.dcm", stored, photometric="MONOCHROME1", window=(2048.0, 4096.0))
        task = get_task(sample.task)
        record = {"id": sample.id, "task": sample.task, "question": sample.question, "image_path": paths,
                  "reference": task.answer_text(sample)}
        if sample.options:
            record["options"] = list(sample.options)
        if sample.meta.get("indication"):
            record["indication"] = sample.meta["indication"]
        if sample.meta.get("ref_name"):
            record["phrase"] = sample.meta["ref_name"]
        records.append(record)
    (root / "questions.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images:
        if args.n < 1:
            print("error: --n must be at least 1", file=sys.stderr)
            return 2
        records = write_demo_images(args.images, n=args.n, seed=args.seed, image_size=args.image_size)
        tasks = sorted({r["task"] for r in records})
        print(f"wrote {len(records)} demo samples ({', '.join(tasks)}) to {args.images}: images, demo.dcm and "
              f"questions.json")
        print(f"try: python -m chexone.infer --model runs/stage1_sft/hf --image {args.images.rstrip('/')}/demo.dcm "
              "--task findings_generation")
        return 0
    if not args.out:
        print("error: give --out DIR (shards) or --images DIR (image files)", file=sys.stderr)
        return 2
    sizes = {split: getattr(args, split) for split in DEFAULT_SIZES}
    progress = None
    if not args.no_progress:
        from chexone.progress import progress as bar

        def progress(split: str, n: int):
            return bar(total=n, desc=split, unit="samples", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        manifest = write_demo_splits(args.out, sizes=sizes, seed=args.seed, image_size=args.image_size,
                                     overwrite=args.overwrite, progress=progress)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(manifest))
    print(f"wrote {sum(s['count'] for s in manifest['splits'].values())} samples to {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")
    for split, info in manifest["splits"].items():
        print(f"{split}: {args.out.rstrip('/')}/{info['pattern']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
