"""Benchmarks of an evaluation recipe: where their samples come from and the ``data.<benchmark>=PATH`` shorthand.

A benchmark's ``path`` is one of

* shards: a brace pattern or a directory of ``.tar`` shards (``python -m webdata.build`` output);
* a JSON/JSONL file: records in our sample schema (``id``, ``task``, ``question``, ``answer``, ``options``,
  ``meta``, ``images`` = image file paths relative to the file) or the CheXOne release format (``messages``,
  ``images``, ``solution``, ``task_name``), converted as ``python -m webdata.build chexone`` would;
* ``demo:<split>``: the generated demo shards (train | val | test), built on first use.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chexone.data.sample import Sample, SampleError

log = logging.getLogger(__name__)

DEMO_PREFIX = "demo:"
JSON_SUFFIX = re.compile(r"\.jsonl?(\.gz)?$")


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: str
    title: str
    tasks: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    metric_kwargs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    group_by: str = ""
    limit: int = 0


class BenchmarkError(ValueError):
    """A benchmark that cannot be run (no data, unreadable path); the message names the key to set."""


def benchmarks_from_config(cfg: Any) -> tuple[list[Benchmark], list[str]]:
    """The benchmarks with data (in recipe order) and the names of those without a path."""
    from omegaconf import OmegaConf

    shared = OmegaConf.to_container(cfg.eval.metric_kwargs, resolve=True) or {}
    ready, missing = [], []
    for name, b in cfg.eval.benchmarks.items():
        if not str(b.path).strip():
            missing.append(name)
            continue
        own = OmegaConf.to_container(b.metric_kwargs, resolve=True) or {}
        kwargs = {m: {**(shared.get(m) or {}), **(own.get(m) or {})} for m in set(shared) | set(own)}
        ready.append(Benchmark(name=name, path=str(b.path), title=str(b.title or name), tasks=tuple(b.tasks),
                               metrics=tuple(b.metrics), metric_kwargs=kwargs, group_by=str(b.group_by),
                               limit=int(b.limit)))
    if not ready:
        names = list(cfg.eval.benchmarks)
        if not names:
            raise BenchmarkError("No benchmarks: the recipe's eval.benchmarks is empty (add one with "
                                 "eval.benchmarks.NAME.path=PATH)")
        raise BenchmarkError("No benchmark has data: set at least one of "
                             + ", ".join(f"data.{n}=PATH" for n in names)
                             + " (shards, a JSONL file, or demo:test)")
    return ready, missing


# ------------------------------------------------------------------------------------------------ command line
def data_keys() -> set[str]:
    from chexone.config.schema import DataConfig

    return {f.name for f in dataclasses.fields(DataConfig)}


def expand_benchmark_shorthand(overrides: Sequence[str], recipe_benchmarks: Sequence[str]) -> list[str]:
    """Rewrite ``data.<benchmark>=PATH`` to ``eval.benchmarks.<benchmark>.path=PATH`` for the recipe's benchmarks.

    ``data.<key>`` for a real data key is left alone; an unknown name that is not a benchmark of the recipe is an
    error with a suggestion (add a new benchmark with ``eval.benchmarks.NAME.path=...``).
    """
    from chexone.config.load import ConfigError

    keys = data_keys()
    out, errors = [], []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        parts = key.strip().lstrip("+").split(".")
        if sep and len(parts) == 2 and parts[0] == "data" and parts[1] not in keys:
            name = parts[1]
            if name in recipe_benchmarks:
                out.append(f"eval.benchmarks.{name}.path={value}")
                continue
            close = difflib.get_close_matches(name, list(recipe_benchmarks) + sorted(keys), n=3, cutoff=0.6)
            hint = f" — did you mean {', '.join('data.' + c for c in close)}?" if close else "."
            errors.append(
                f"Unknown key 'data.{name}': not a data key and not a benchmark of this recipe{hint} "
                f"Benchmarks: {', '.join(recipe_benchmarks) or '(none)'}; a new one: eval.benchmarks.{name}.path=PATH")
            continue
        out.append(arg)
    if errors:
        raise ConfigError(errors)
    return out


# ------------------------------------------------------------------------------------------------ samples
def resolve_path(path: str, demo_dir: str) -> str:
    """``demo:<split>`` -> the demo shard pattern (generated on first use); anything else unchanged."""
    if not path.startswith(DEMO_PREFIX):
        return path
    split = path[len(DEMO_PREFIX):] or "test"
    from chexone.data.demo import ensure_demo_shards

    shards = ensure_demo_shards(os.path.expanduser(demo_dir))
    if split not in shards:
        raise BenchmarkError(f"{path!r}: the demo data has splits {', '.join(shards)}")
    return shards[split]


def iter_samples(bench: Benchmark, *, demo_dir: str, max_skip_fraction: float = 0.05,
                 max_pixels: int = 262144) -> Iterator[Sample]:
    """The benchmark's samples in a fixed order (task filter and limit applied)."""
    path = resolve_path(bench.path, demo_dir)
    tasks = set(bench.tasks)
    if JSON_SUFFIX.search(path):
        stream = read_json_samples(path, max_skip_fraction=max_skip_fraction, max_pixels=max_pixels)
    else:
        from chexone.data.shards import build_eval_dataset
        from chexone.registry import TASKS

        from chexone.data.remote import RemoteError, redact

        try:
            stream = iter(build_eval_dataset(path, max_skip_fraction=max_skip_fraction, known_tasks=TASKS.names()))
        except (FileNotFoundError, ValueError, RemoteError, PermissionError) as e:
            raise BenchmarkError(f"benchmark {bench.name!r} (data.{bench.name}={redact(bench.path)}): "
                                 f"{redact(e)}") from e
    n = 0
    for sample in stream:
        if tasks and sample.task not in tasks:
            continue
        yield sample
        n += 1
        if bench.limit and n >= bench.limit:
            break


def _release_converter(root: str) -> Any:
    from webdata.sources.chexone_json import CheXOneJSONSource

    args = argparse.Namespace(task_map=[], unmapped_tasks="keep", image_root=root, input=[],
                              no_group_images=True)
    return CheXOneJSONSource(args)


def read_json_samples(path: str, *, max_skip_fraction: float = 0.05, max_pixels: int = 262144) -> Iterator[Sample]:
    """Samples of a JSON/JSONL benchmark file (see module docstring). Bad records are skipped, counted and named in a
    warning; more than ``max_skip_fraction`` of them stops the run."""
    from webdata.images import ImageError, load_image
    from webdata.sources.common import RecordError, read_json_records

    if not os.path.isfile(path):
        raise BenchmarkError(f"{path}: no such file")
    root = str(Path(path).resolve().parent)
    converter = None
    skipped: Counter = Counter()
    total = 0
    for where, rec in read_json_records(path):
        total += 1
        try:
            if isinstance(rec, Exception) or not isinstance(rec, dict):
                raise SampleError(f"{where}: not a JSON object ({rec})")
            paths = rec.get("images") or []
            if isinstance(paths, str):
                paths = [paths]
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise SampleError(f"{where}: 'images' must be a list of file paths")
            images = [load_image(p if os.path.isabs(p) else os.path.join(root, p), max_pixels=max_pixels).image
                      for p in paths]
            if "messages" in rec:
                converter = converter or _release_converter(root)
                uid = str(rec.get("unique_id") or rec.get("id") or where)
                sample = converter.convert_record(uid, rec, where, images)
            else:
                sample = Sample.from_json({**rec, "images": []}, images, source=where)
        except (SampleError, RecordError, ImageError, OSError, ValueError) as e:
            skipped[type(e).__name__] += 1
            if sum(skipped.values()) <= 10:
                log.warning("skipping %s", e)
            if total >= 20 and sum(skipped.values()) > max_skip_fraction * total:
                raise BenchmarkError(f"{path}: {sum(skipped.values())} of {total} records unusable "
                                     f"(> data.max_skip_fraction={max_skip_fraction}); first errors are logged above")
            continue
        yield sample
    if skipped:
        log.warning("%s: skipped %d of %d records (%s)", path, sum(skipped.values()), total, dict(skipped))
