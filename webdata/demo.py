"""Write the synthetic demo shard sets (phantom chest X-rays, every built-in task).

    python -m webdata.demo --out data/demo [--train 2000 --val 200 --test 300 --seed 0 --image-size 112] [--overwrite]

writes ``DIR/{train,val,test}/demo-<split>-NNNNNN.tar`` (+ ``sizes.json``/``manifest.json`` per split) and
``DIR/manifest.json``, then prints the number of samples per task and split. Recipes normally call
``chexone.data.demo.ensure_demo_shards`` instead, which runs the same code once and caches the result.
"""

from __future__ import annotations

import argparse
import sys
import time

from chexone.data.demo import DEFAULT_IMAGE_SIZE, DEFAULT_SIZES, write_demo_splits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m webdata.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
