"""Synthetic demo data: phantom chest radiographs and samples for every built-in task, written as WebDataset shards.

``ensure_demo_shards(root)`` is what recipes call: it builds the shards once (atomically, safe under concurrent
callers) and returns the brace patterns of the train/val/test shard sets and of the "rl" split, the stage-2 demo's
small prompt pool. ``python -m webdata.demo`` writes the same shards from the command line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chexone.cache import cache_lock
from chexone.data.demo.generate import TASK_WEIGHTS, demo_samples

__all__ = ["DEFAULT_SIZES", "GENERATOR_VERSION", "demo_samples", "ensure_demo_shards", "write_demo_splits"]

#: Bump when the pictures, the samples or the shard layout change: cached shards are then rebuilt, and the cached
#: stage-1 demo model (whose cache key includes this version, chexone.training.demo_init) is trained again.
#: 2: short task-specific reasoning traces (task step, evidence, answer in the task's own shape).
#: 3: the "rl" split, the stage-2 demo's prompt pool (``chexone.data.demo.generate.rl_pool_samples``); the other
#: splits are unchanged.
GENERATOR_VERSION = 3
GENERATOR_NAME = "chexone.data.demo"
DEFAULT_SIZES: dict[str, int] = {"train": 2000, "val": 200, "test": 300, "rl": 24}
DEFAULT_IMAGE_SIZE = 112
#: Shards per split: at least 2 (two data-parallel ranks each get one), at most ~250 samples each, equal sizes.
MAX_SAMPLES_PER_SHARD = 250


def _normalise_sizes(sizes: dict[str, int] | None) -> dict[str, int]:
    out = dict(DEFAULT_SIZES)
    for split, n in (sizes or {}).items():
        if split not in DEFAULT_SIZES:
            raise ValueError(f"unknown demo split {split!r}; expected one of {sorted(DEFAULT_SIZES)}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"demo split {split!r} needs a positive integer size, got {n!r}")
        out[split] = n
    return out


def shard_size(n: int) -> int:
    """Samples per shard for a split of ``n``: >= 2 shards when n >= 2, <= 250 per shard, balanced."""
    shards = max(2 if n >= 2 else 1, math.ceil(n / MAX_SAMPLES_PER_SHARD))
    return math.ceil(n / shards)


def write_demo_splits(
    out_dir: str | Path,
    *,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    overwrite: bool = False,
    progress: Callable[[str, int], Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/{train,val,test,rl}/demo-<split>-NNNNNN.tar`` plus ``out_dir/manifest.json``; returns it.

    ``progress(split, n)`` may return an object with ``update(1)`` and ``close()`` (e.g. a tqdm bar).
    """
    from webdata.writer import ShardWriter

    sizes = _normalise_sizes(sizes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, Any] = {}
    for split, n in sizes.items():
        args = {"split": split, "size": n, "seed": seed, "image_size": image_size}
        bar = progress(split, n) if progress else None
        with ShardWriter(out_dir / split, prefix=f"demo-{split}", max_samples_per_shard=shard_size(n),
                         builder=GENERATOR_NAME, builder_version=str(GENERATOR_VERSION), arguments=args,
                         overwrite=overwrite) as writer:
            for sample in demo_samples(split, n, seed=seed, image_size=image_size):
                writer.write(sample)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        m = writer.manifest
        assert m is not None
        splits[split] = {"pattern": f"{split}/{m['pattern']}", "shards": [f"{split}/{s}" for s in m["shards"]],
                         "count": m["total"], "task_counts": m["task_counts"]}
    manifest = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "sizes": sizes,
        "image_size": image_size,
        "task_weights": TASK_WEIGHTS,
        "splits": splits,
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "manifest.json")
    return manifest


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _complete(root: Path, sizes: dict[str, int], seed: int, image_size: int) -> dict[str, Any] | None:
    """The manifest when ``root`` holds complete shards for these settings, else None."""
    m = _read_manifest(root)
    if not m or m.get("generator") != GENERATOR_NAME or m.get("generator_version") != GENERATOR_VERSION:
        return None
    if m.get("seed") != seed or m.get("sizes") != sizes or m.get("image_size") != image_size:
        return None
    try:
        for split, n in sizes.items():
            info = m["splits"][split]
            if info["count"] != n:
                return None
            counts = json.loads((root / split / "sizes.json").read_text(encoding="utf-8"))
            if sum(counts.values()) != n:
                return None
            for shard in info["shards"]:
                if (root / shard).stat().st_size == 0:
                    return None
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return m


def _patterns(root: Path, manifest: dict[str, Any]) -> dict[str, str]:
    return {split: str(root / info["pattern"]) for split, info in manifest["splits"].items()}


def ensure_demo_shards(
    root: str | Path,
    *,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    verbose: bool = False,
) -> dict[str, str]:
    """Make sure ``root`` holds the demo shards for these settings and return their brace patterns
    ``{"train": ".../train/demo-train-{000000..000007}.tar", "val": ..., "test": ..., "rl": ...}``.

    ``sizes`` overrides some of :data:`DEFAULT_SIZES`. When ``root`` is missing, incomplete or was built with other
    settings, the shards are written into a temporary sibling directory and renamed into place, under a lock file
    (``.<root name>.lock`` next to it), so a crash never leaves a half-written cache and concurrent callers build once.
    An existing ``root`` that is not a demo cache (no demo manifest, not empty) is never deleted: that is an error.
    ``verbose`` says on stderr what is being built, with progress (a first run takes tens of seconds here).
    """
    root = Path(root).absolute()
    sizes = _normalise_sizes(sizes)
    m = _complete(root, sizes, seed, image_size)
    if m:
        return _patterns(root, m)
    root.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(root.parent / f".{root.name}.lock"):
        m = _complete(root, sizes, seed, image_size)  # another process may have finished meanwhile
        if m:
            return _patterns(root, m)
        _check_replaceable(root)
        for stale in root.parent.glob(f".{root.name}.tmp-*"):  # left by a crashed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        bars = None
        if verbose:
            from chexone.progress import progress

            print(f"data=demo: generating the demo data once ({', '.join(f'{n} {k}' for k, n in sizes.items())} "
                  f"phantom radiographs with questions for every built-in task) into {root}", file=sys.stderr,
                  flush=True)

            def bars(split: str, n: int):
                return progress(total=n, desc=f"demo {split}", unit="samples")

        try:
            write_demo_splits(tmp, sizes=sizes, seed=seed, image_size=image_size, progress=bars)
            _install(tmp, root, sizes, seed, image_size)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    m = _complete(root, sizes, seed, image_size)
    if not m:
        raise RuntimeError(f"demo shards in {root} are incomplete right after building them")
    return _patterns(root, m)


def _check_replaceable(root: Path) -> None:
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    m = _read_manifest(root)
    if (m is None or m.get("generator") != GENERATOR_NAME) and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a demo shard cache (no demo manifest.json); "
                              "refusing to replace it: choose another directory or remove it")


def _install(tmp: Path, root: Path, sizes: dict[str, int], seed: int, image_size: int) -> None:
    """Rename ``tmp`` to ``root``; an outdated ``root`` is moved aside first and removed afterwards."""
    old = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        # lost a race with a process that does not honour the lock: keep theirs when it is complete
        if not _complete(root, sizes, seed, image_size):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
