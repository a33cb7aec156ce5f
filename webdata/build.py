"""Build WebDataset shards from a real dataset: ``python -m webdata.build <source> --input ... --out shards/<name>``.

Sources (``python -m webdata.build <source> --help`` lists each one's options; docs/data.md walks through them):
chexone, chexinstruct, jsonl (chexone's own sample schema, any registered task), mimic-cxr, chexpert-plus, vindr-cxr,
nih-boxes, ms-cxr, and those of installed plugins (entry-point group ``chexone.sources``, listed by ``--help`` with
their distribution; see :mod:`webdata.sources`). ``--task-map SRC=TASK`` targets must be registered tasks (built-ins
and installed plugins'): anything else stops the build before anything is written.

A build runs in three resumable phases, all state kept under ``OUT/.parts/``:

1. **plan** — the source reads its annotation files (no pixels) into units (samples that share images); every unit's
   ids are checked against the official split files (``--split`` + ``--split-file``): a unit of another split is a
   leak and the build stops before converting anything, listing the overlaps in ``OUT/overlaps.jsonl``
   (``--on-overlap drop`` drops them instead). Units are written to ``.parts.new/pNNNNN/units.jsonl`` in partitions
   of ``--partition-size``, with ``plan.json`` last; only then does ``.parts.new`` become ``.parts`` (and, with
   ``--overwrite``, the earlier shard set is removed), so a plan that fails leaves OUT as it was. An input file that
   cannot be read (bad CSV quoting, a row with the wrong number of fields, bytes that are not UTF-8, a corrupt
   ``.gz``) stops the build with one message naming file and line (``InputError``).
2. **convert** — partitions run in ``--workers`` processes: images are loaded (PNG/JPEG/DICOM, windowed, 8-bit,
   resized to ``--max-pixels``) once per unit, samples written with ``ShardWriter.write_group`` (an image shared by
   several samples is stored once). A broken image or record is reported with its path and skipped. A finished
   partition writes ``DONE.json``; a rerun skips finished partitions and redoes unfinished ones.
3. **finalize** — shards are renamed to ``OUT/<prefix>-NNNNNN.tar`` in partition order; ``sizes.json``,
   ``manifest.json`` (source, builder version, arguments, split check, per-task and skip counts, throughput) and
   ``skipped.jsonl`` (every skipped record with its file/row and reason) are written, ``.parts`` is removed.

``--out`` may be remote (``s3://bucket/prefix``, an ``https://`` server that accepts PUT, another fsspec URL): the
set is then built in a local staging directory (``--staging``; a rerun resumes there) and uploaded — shards first,
``sizes.json`` and ``manifest.json`` last, so readers never see a half-uploaded set as complete (:func:`build_remote`).

Rerunning a finished build with the same arguments does nothing; with other arguments it is refused unless
``--overwrite``, which deletes only what the builder wrote. ``--out`` must be a new or empty directory or one the
builder made; a file or a directory holding other files is refused (:func:`check_out`). Exit status: 0 ok, 2 bad
arguments or input, 3 split overlap (leak) refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chexone.data import remote
from chexone.data.sample import SCHEMA_VERSION, Sample
from chexone.registry import DuplicateNameError, PluginLoadError, PluginTypeError, UnknownNameError
from webdata.images import DEFAULT_MAX_PIXELS, WINDOW_MODES, ImageError, ImageLoader
from webdata.sources import REGISTRY, get_source, source_label, source_names
from webdata.sources.common import InputError, RecordError, Skip, SplitIndex, Unit, parse_task_map
from webdata.writer import ShardWriter, _write_json, brace_pattern

#: Version of the build machinery (plan/partition/finalize and the manifest); each source has its own version too.
BUILDER_VERSION = "1.0"

#: Arguments that do not change the output (left out of the fingerprint that decides whether a rerun may resume).
_NEUTRAL_ARGS = ("workers", "no_progress", "overwrite", "source", "out", "staging")

EXIT_OK, EXIT_USAGE, EXIT_LEAK = 0, 2, 3


class BuildError(Exception):
    """A build that cannot go on; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("input and output")
    g.add_argument("--input", nargs="+", required=True, metavar="PATH", help="annotation file(s) or dataset root")
    g.add_argument("--out", required=True, metavar="DIR",
                   help="output directory of the shard set, or a URL (s3://bucket/prefix, https:// accepting PUT)")
    g.add_argument("--staging", default=None, metavar="DIR",
                   help="with a remote --out: the local directory the set is built in before the upload (default: "
                        "one under the system temp directory named after --out; needs room for the whole set)")
    g.add_argument("--prefix", default="", help="shard file prefix (default: the output directory's name)")
    g.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    g.add_argument("--limit", type=int, default=0, metavar="N", help="convert only the first N units (0 = all)")
    g = p.add_argument_group("splits and leak check")
    g.add_argument("--split", choices=["train", "validate", "test"], default=None,
                   help="the split being built; units listed in another split are refused")
    g.add_argument("--split-file", action="append", default=[], metavar="[SPLIT=]PATH",
                   help="official split file: a CSV with a 'split' column (MIMIC-CXR), or SPLIT=list for one split "
                        "(NIH test_list.txt, VinDr annotations_test.csv); repeatable")
    g.add_argument("--on-overlap", choices=["error", "drop"], default="error",
                   help="units of another split: stop the build (default) or drop them")
    g = p.add_argument_group("images")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"resize so width*height <= N (default {DEFAULT_MAX_PIXELS} = 512x512; 0 = keep size)")
    g.add_argument("--window", choices=WINDOW_MODES, default="auto",
                   help="DICOM/16-bit windowing: auto (VOI LUT / WindowCenter+Width / min-max), minmax, percentile")
    g.add_argument("--png-level", type=int, default=3, choices=range(10), metavar="0-9",
                   help="zlib level of the stored PNGs (default 3: ~4x faster than 6 for ~10%% more bytes)")
    g = p.add_argument_group("tasks")
    g.add_argument("--task-map", action="append", default=[], metavar="SRC=TASK",
                   help="map a source task name onto a registered task name (built-in or an installed plugin's; "
                        "adds to the built-in table); repeatable")
    g.add_argument("--unmapped-tasks", choices=["skip", "error", "keep"], default="skip",
                   help="source task names outside the table (jsonl: not registered): skip and count (default), "
                        "stop before anything is written, or keep (snake_case; jsonl: as written)")
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)), metavar="N",
                   help="worker processes (default: min(4, CPUs))")
    g.add_argument("--partition-size", type=int, default=100, metavar="N",
                   help="units per partition, the unit of resumption and parallelism (default 100)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a shard set / unfinished build of this builder in --out (other files are never "
                        "deleted; a directory holding them is refused)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


_SOURCE_ERRORS = (PluginLoadError, PluginTypeError, DuplicateNameError)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The command line. Plugin sources are imported only when ``selected`` (the source on the command line) or,
    when no source is selected (``--help``), to list them; one that cannot be imported is then listed with its error.
    Selecting a broken plugin source raises its ``PluginLoadError``."""
    parser = argparse.ArgumentParser(
        prog="python -m webdata.build", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'python -m webdata.build SOURCE --help' for a source's options. Plugin sources are marked "
               "[plugin: distribution==version]. See docs/data.md.")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    common = _common_parser()
    for name in source_names():
        label = source_label(name)
        tag = "" if label == "built-in" else f" [plugin: {label}]"
        if name == selected or label == "built-in":
            cls = get_source(name)
        elif selected is not None:  # another source is selected: leave this plugin unimported
            sub.add_parser(name, help=f"plugin source{tag}")
            continue
        else:
            try:
                cls = get_source(name)
            except _SOURCE_ERRORS as e:
                sub.add_parser(name, help=f"cannot be used: {e}")
                continue
        sp = sub.add_parser(name, parents=[common], help=f"{cls.description}{tag}",
                            description=(cls.__doc__ or "").strip() + (f"\n\nFrom {label}." if tag else ""),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        cls.add_arguments(sp.add_argument_group(f"{name} options"))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected is not None and selected not in REGISTRY:
        try:
            REGISTRY.origin(selected)  # raises with did-you-mean and the available sources
        except UnknownNameError as e:
            raise BuildError(str(e)) from None
    try:
        parser = build_parser(selected)
    except _SOURCE_ERRORS as e:  # the selected plugin source cannot be imported
        raise BuildError(str(e)) from None
    args = parser.parse_args(argv)
    for name in ("shard_size", "partition_size", "workers"):
        if getattr(args, name) < 1:
            raise BuildError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:  # before anything is written: every --task-map target is a registered task
        parse_task_map(args.task_map)
    except ValueError as e:
        raise BuildError(str(e)) from None
    if not args.prefix:
        if remote.is_remote(args.out):
            args.prefix = remote.split_name(args.out.rstrip("/"))[1] or args.source
        else:
            args.prefix = Path(args.out).resolve().name or args.source
    return args


def fingerprint_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments that determine the output (recorded in the manifest; a resume needs them unchanged)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in _NEUTRAL_ARGS}


def fingerprint(args: argparse.Namespace) -> str:
    blob = json.dumps({"source": args.source, "builder": BUILDER_VERSION,
                       "source_version": get_source(args.source).version, "args": fingerprint_args(args)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------------
# Phase 1: plan
# ----------------------------------------------------------------------------------------------------------------------


def _split_index(args: argparse.Namespace, source: Any) -> SplitIndex:
    index = SplitIndex()
    for spec in args.split_file or source.default_split_files():
        try:
            index.add(spec)
        except InputError as e:
            raise BuildError(str(e)) from None
        except (OSError, ValueError) as e:
            raise BuildError(f"--split-file {spec}: {e}") from e
    return index


def make_plan(args: argparse.Namespace, parts: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the source's planner, check splits, write partitions into ``parts``; returns plan.json's content.

    Everything goes into ``parts`` (the overlaps too, as ``parts/overlaps.jsonl``), except on a leak refusal, which
    leaves the overlaps in ``OUT/overlaps.jsonl`` (OUT = ``parts.parent``) for the user to read."""
    cls = get_source(args.source)
    t0 = time.perf_counter()
    try:
        source = cls(args)
    except ValueError as e:
        raise BuildError(f"{args.source}: {e}") from e
    index = _split_index(args, source)
    if args.split is None:
        log("note: no --split given: samples are not checked against official splits")
    elif not index and not cls.selects_split:
        log(f"warning: --split {args.split} without --split-file: nothing to check leaks against")
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    overlaps_path = parts / "overlaps.jsonl"

    partitions: list[dict[str, Any]] = []
    skip_counts: Counter[str] = Counter()
    seen: set[str] = set()
    n_units = n_overlap = n_unlisted = n_checked = 0
    current: list[str] = []

    def flush() -> None:
        if not current:
            return
        name = f"p{len(partitions):05d}"
        (parts / name).mkdir()
        (parts / name / "units.jsonl").write_text("".join(current), encoding="utf-8")
        partitions.append({"name": name, "units": len(current)})
        current.clear()

    with open(parts / "plan_skips.jsonl", "w", encoding="utf-8") as skips, \
            open(overlaps_path, "w", encoding="utf-8") as overlaps:
        try:
            for item in source.plan(args.split, index):
                if isinstance(item, Skip):
                    skip_counts[item.reason] += 1
                    skips.write(json.dumps(item.as_dict(), ensure_ascii=False) + "\n")
                    continue
                unit: Unit = item
                if unit.uid in seen:
                    skip_counts["duplicate_id"] += 1
                    skips.write(json.dumps(Skip(unit.where, "duplicate_id", unit.uid).as_dict()) + "\n")
                    continue
                seen.add(unit.uid)
                if args.split is not None and index:
                    known = index.lookup(unit.ids)
                    n_checked += 1
                    other = [(kind, value, split) for kind, value, split in known if split != args.split]
                    if other:
                        n_overlap += 1
                        overlaps.write(json.dumps({"uid": unit.uid, "where": unit.where, "ids": [
                            {"kind": k, "id": v, "official_split": s} for k, v, s in other]}) + "\n")
                        if args.on_overlap == "drop":
                            skip_counts["split_overlap"] += 1
                            skips.write(json.dumps(Skip(unit.where, "split_overlap", f"{other[0][0]} {other[0][1]} "
                                                        f"is in the official {other[0][2]} split").as_dict()) + "\n")
                        continue
                    if not known:
                        n_unlisted += 1
                if n_overlap and args.on_overlap == "error":
                    continue  # keep scanning to list every overlap, but stop planning partitions
                current.append(json.dumps(asdict(unit), ensure_ascii=False) + "\n")
                n_units += 1
                if len(current) >= args.partition_size:
                    flush()
                if args.limit and n_units >= args.limit:
                    break
        except InputError as e:  # names its file and line
            raise BuildError(str(e)) from None
        except (OSError, ValueError, KeyError) as e:
            raise BuildError(f"{args.source}: {e}") from e
        flush()
    if n_overlap and args.on_overlap == "error":
        overlaps_path = Path(shutil.move(overlaps_path, parts.parent / "overlaps.jsonl"))
        examples = [json.loads(line) for line in overlaps_path.read_text().splitlines()[:5]]
        shown = "\n".join(f"  {e['uid']} ({e['where']}): " + ", ".join(
            f"{i['kind']} {i['id']} is in the official {i['official_split']} split" for i in e["ids"])
            for e in examples)
        raise BuildError(
            f"refusing to build split {args.split!r}: {n_overlap} unit(s) belong to another official split "
            f"(split files: {', '.join(index.files)}). First ones:\n{shown}\nAll overlaps: {overlaps_path}. "
            "Fix the input, or pass --on-overlap drop to drop them.", EXIT_LEAK)
    if n_overlap == 0:
        overlaps_path.unlink(missing_ok=True)
    plan = {
        "fingerprint": fingerprint(args),
        "partitions": partitions,
        "units": n_units,
        "plan_skipped": dict(sorted(skip_counts.items())),
        "split_check": {"split": args.split, "split_files": index.files, "checked_units": n_checked,
                        "unlisted_units": n_unlisted, "overlaps": n_overlap, "on_overlap": args.on_overlap,
                        "conflicting_ids_in_split_files": index.conflicts},
        "plan_seconds": round(time.perf_counter() - t0, 3),
    }
    _write_json(parts / "plan.json", plan)
    return plan


# ----------------------------------------------------------------------------------------------------------------------
# Phase 2: convert (one partition per task)
# ----------------------------------------------------------------------------------------------------------------------

_progress_queue: Any = None


def _init_worker(q: Any) -> None:
    global _progress_queue
    _progress_queue = q


def _skip_reason(exc: BaseException) -> str:
    if isinstance(exc, (ImageError, RecordError)):
        return exc.reason
    if isinstance(exc, FileNotFoundError):
        return "missing_file"
    return f"error:{type(exc).__name__}"


def _describe(exc: BaseException) -> str:
    """The message of an expected error; for anything else also where it was raised (file:line), to debug it."""
    if isinstance(exc, (ImageError, RecordError, OSError)):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


def run_partition(args: argparse.Namespace, part_dir: str, report: Callable[[int], None] | None = None
                  ) -> dict[str, Any]:
    """Convert the units of one partition into ``part_dir/part-NNNNNN.tar``; writes and returns DONE.json."""
    t0 = time.perf_counter()
    part = Path(part_dir)
    for p in list(part.glob("part-*.tar*")) + [part / n for n in ("sizes.json", "manifest.json", "DONE.json")]:
        p.unlink(missing_ok=True)
    report = report or (lambda n: _progress_queue.put(n) if _progress_queue is not None else None)
    source = get_source(args.source)(args)
    loader = ImageLoader(max_pixels=args.max_pixels, window=args.window)
    skips: Counter[str] = Counter()
    units = converted = 0
    with open(part / "units.jsonl", encoding="utf-8") as f, \
            open(part / "skips.jsonl", "w", encoding="utf-8") as skip_log, \
            ShardWriter(part, prefix="part", max_samples_per_shard=args.shard_size, builder="webdata.build",
                        builder_version=BUILDER_VERSION, overwrite=True,
                        png_compress_level=args.png_level) as writer:

        def skip(where: str, reason: str, detail: str) -> None:
            skips[reason] += 1
            skip_log.write(json.dumps({"where": where, "reason": reason, "detail": detail}, ensure_ascii=False) + "\n")

        pending = 0
        for line in f:
            unit = Unit(**json.loads(line))
            units += 1
            loader.clear()
            samples: list[Sample] = []
            try:
                for item in source.convert(unit, loader):
                    if isinstance(item, Skip):
                        skip(item.where, item.reason, item.detail)
                    else:
                        samples.append(item)
            except Exception as e:  # one broken record or image must not stop a million-image build
                skip(unit.where, _skip_reason(e), _describe(e))
                samples = []
            if samples:
                try:  # samples are checked and encoded before anything reaches the tar: a failure leaves no trace
                    writer.write_group(samples)
                    converted += 1
                except Exception as e:
                    skip(unit.where, "unwritable", _describe(e))
            pending += 1
            if pending >= 5:
                report(pending)
                pending = 0
        if pending:
            report(pending)
    done = {
        "units": units,
        "units_converted": converted,
        "sizes": writer.sizes,
        "task_counts": dict(writer.task_counts),
        "samples": writer.total,
        "image_members": writer.image_members,
        "shared_images": writer.shared_images,
        "images_loaded": loader.loaded,
        "skipped": dict(skips),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _write_json(part / "DONE.json", done)
    return done


def _run_partitions(args: argparse.Namespace, parts: Path, todo: list[dict[str, Any]], total_units: int,
                    done_units: int) -> None:
    bar = None
    if not args.no_progress:
        from chexone.progress import progress

        bar = progress(total=total_units, initial=done_units, unit="units", desc=f"{args.source} -> {args.prefix}",
                       file=sys.stderr)
    update = (lambda n: bar.update(n)) if bar is not None else (lambda n: None)
    try:
        if args.workers == 1 or len(todo) == 1:
            for p in todo:
                run_partition(args, str(parts / p["name"]), update)
            return
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        q = ctx.Queue()
        with ctx.Pool(min(args.workers, len(todo)), initializer=_init_worker, initargs=(q,)) as pool:
            results = [pool.apply_async(run_partition, (args, str(parts / p["name"]))) for p in todo]
            while True:
                try:
                    update(q.get(timeout=0.2))
                except queue_mod.Empty:
                    pass
                if all(r.ready() for r in results):
                    break
            while True:  # drain what the last partitions reported
                try:
                    update(q.get_nowait())
                except queue_mod.Empty:
                    break
            for r in results:
                r.get()  # re-raises a worker's unexpected exception
    finally:
        if bar is not None:
            bar.close()


# ----------------------------------------------------------------------------------------------------------------------
# Phase 3: finalize
# ----------------------------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("PIL", "numpy", "pydicom"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional
            pass
    return out


def finalize(args: argparse.Namespace, out: Path, parts: Path, plan: dict[str, Any], convert_seconds: float,
             images_this_run: int) -> dict[str, Any]:
    sizes: dict[str, int] = {}
    task_counts: Counter[str] = Counter()
    skipped: Counter[str] = Counter(plan["plan_skipped"])
    totals: Counter[str] = Counter()
    seconds = 0.0
    with open(out / "skipped.jsonl.tmp", "w", encoding="utf-8") as skipped_log:
        skipped_log.write((parts / "plan_skips.jsonl").read_text(encoding="utf-8"))
        for p in plan["partitions"]:
            d = parts / p["name"]
            done = json.loads((d / "DONE.json").read_text())
            for name, count in done["sizes"].items():
                final = f"{args.prefix}-{len(sizes):06d}.tar"
                if (d / name).exists():
                    os.replace(d / name, out / final)
                elif not (out / final).exists():
                    raise BuildError(f"{d / name} is missing: rerun with --overwrite")
                sizes[final] = count
            task_counts.update(done["task_counts"])
            skipped.update(done["skipped"])
            for k in ("units", "units_converted", "samples", "image_members", "shared_images", "images_loaded"):
                totals[k] += done[k]
            seconds += done["seconds"]
            skipped_log.write((d / "skips.jsonl").read_text(encoding="utf-8"))
    os.replace(out / "skipped.jsonl.tmp", out / "skipped.jsonl")
    if (parts / "overlaps.jsonl").exists():  # --on-overlap drop: what was dropped
        os.replace(parts / "overlaps.jsonl", out / "overlaps.jsonl")
    names = list(sizes)
    cls = get_source(args.source)
    manifest = {
        "builder": "webdata.build",
        "builder_version": BUILDER_VERSION,
        "source": args.source,
        "source_version": cls.version,
        "source_origin": source_label(args.source),
        "dataset": cls.dataset,
        "arguments": fingerprint_args(args),
        "fingerprint": plan["fingerprint"],
        "schema_version": SCHEMA_VERSION,
        "split": args.split,
        "split_check": plan["split_check"],
        "shards": names,
        "pattern": brace_pattern(".", names).removeprefix("./"),
        "task_counts": dict(sorted(task_counts.items())),
        "total": sum(sizes.values()),
        "units": {"planned": plan["units"], "converted": totals["units_converted"]},
        "images": {"loaded": totals["images_loaded"], "stored_per_sample": totals["image_members"],
                   "stored_shared": totals["shared_images"]},
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        "timing": {"plan_s": plan["plan_seconds"], "convert_wall_s": round(convert_seconds, 3),
                   "convert_worker_s": round(seconds, 3), "workers": args.workers,
                   "images_per_s": (round(images_this_run / convert_seconds, 2)
                                    if convert_seconds > 0 and images_this_run else None)},
        "environment": _versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(out / "sizes.json", sizes)
    _write_json(out / "manifest.json", manifest)
    shutil.rmtree(parts, ignore_errors=True)
    return manifest


def format_summary(manifest: dict[str, Any], out: Path) -> str:
    lines = [f"{manifest['source']} -> {out} (split {manifest['split'] or '-'}): {len(manifest['shards'])} shard(s), "
             f"{manifest['total']} samples from {manifest['units']['converted']} of {manifest['units']['planned']} "
             f"units; images: {manifest['images']['loaded']} loaded, {manifest['images']['stored_shared']} stored "
             f"once for several samples"]
    if manifest["timing"]["images_per_s"]:
        lines[0] += f", {manifest['timing']['images_per_s']} images/s"
    for task, n in manifest["task_counts"].items():
        lines.append(f"  {task:<24} {n:>9}")
    if manifest["skipped_total"]:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(manifest["skipped"].items(), key=lambda kv: -kv[1]))
        lines.append(f"skipped {manifest['skipped_total']}: {reasons} (each with its file/row: {out}/skipped.jsonl)")
    else:
        lines.append("skipped 0")
    sc = manifest["split_check"]
    if sc["split"] and sc["split_files"]:
        lines.append(f"split check ({sc['split']}): {sc['checked_units']} units checked, {sc['unlisted_units']} in no "
                     f"split file, {sc['overlaps']} overlap(s) ({sc['on_overlap']})")
    if manifest["pattern"]:
        lines.append(f"shards: {out}/{manifest['pattern']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------

_OUTPUTS = ("sizes.json", "manifest.json", "skipped.jsonl", "overlaps.jsonl")
#: Where a plan is written before it replaces ``.parts`` (so a failed plan leaves OUT as it was).
_STAGING = ".parts.new"


def _shard_name(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-\d{{6,}}\.tar(\.tmp)?$")


def _is_our_name(name: str, prefix: str) -> bool:
    """A name the builder writes into OUT (shards, the json outputs, their temporaries, the state directories)."""
    return (name in (".parts", _STAGING) or name.removesuffix(".tmp") in _OUTPUTS
            or bool(_shard_name(prefix).match(name)))


def _our_manifest(out: Path) -> dict[str, Any] | None:
    """OUT/manifest.json when webdata.build wrote it, else None."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("builder") == "webdata.build" else None


def check_out(out: Path, prefix: str) -> None:
    """Refuse an ``--out`` the builder must not write into, before anything is created: a file (or a path below
    one), or a non-empty directory the builder did not make. A directory is the builder's when it holds a
    manifest.json written by webdata.build, an unfinished build (``.parts/plan.json``), or nothing but names the
    builder writes (e.g. ``overlaps.jsonl`` left by a refused build). Other files could be anyone's, and
    ``--overwrite`` must never delete them."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file, not a directory; choose a new or empty directory")
    if not out.exists():
        above = next((p for p in out.absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise BuildError(f"--out {out}: {above} is a file, not a directory")
        return
    try:
        names = sorted(os.listdir(out))
    except OSError as e:
        raise BuildError(f"--out {out}: cannot list the directory ({e.strerror})") from None
    if not names or _our_manifest(out) is not None or (out / ".parts" / "plan.json").is_file():
        return
    if (out / "manifest.json").exists():
        raise BuildError(f"--out {out} holds a manifest.json not written by webdata.build (another shard set?); "
                         "choose a new or empty directory")
    foreign = [n for n in names if not _is_our_name(n, prefix)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise BuildError(f"--out {out} is not empty and was not made by webdata.build (it holds {shown}); choose a "
                         "new or empty directory (--overwrite only replaces a shard set this builder wrote)")


def _clear_outputs(out: Path, prefix: str) -> None:
    """Remove what an earlier build wrote to OUT, and only that: its shards (the manifest's list and
    ``PREFIX-NNNNNN.tar``), sizes/manifest/skipped/overlaps and ``.parts``; other files stay."""
    manifest = _our_manifest(out) or {}
    listed = {n for n in manifest.get("shards", []) if isinstance(n, str) and n == Path(n).name and n.endswith(".tar")}
    for p in out.iterdir():
        if p.is_file() and (p.name in listed or _is_our_name(p.name, prefix)):
            p.unlink()
    shutil.rmtree(out / ".parts", ignore_errors=True)


def _first_missing(path: Path) -> Path | None:
    """The outermost directory that creating ``path`` would create (None when it exists): what to remove again."""
    missing = None
    for p in [path.absolute(), *path.absolute().parents]:
        if p.exists():
            return missing
        missing = p
    return missing


def _plan_into(args: argparse.Namespace, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Plan into OUT/.parts.new and only then replace ``.parts`` (and, with --overwrite, the earlier shard set).

    A plan that fails (an unreadable input file, a leak, Ctrl-C) leaves OUT as it found it — a directory this run
    created is removed again — except for ``overlaps.jsonl`` after a leak refusal, which is the report."""
    created = _first_missing(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"--out {out}: cannot create the directory ({e.strerror})") from None
    staging = out / _STAGING
    try:
        plan = make_plan(args, staging, log)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None and not (isinstance(e, BuildError) and e.code == EXIT_LEAK):
            shutil.rmtree(created, ignore_errors=True)
        raise
    if args.overwrite:
        _clear_outputs(out, args.prefix)
    else:  # only an incomplete plan or a refused build's report can be here (anything else was refused)
        shutil.rmtree(out / ".parts", ignore_errors=True)
        (out / "overlaps.jsonl").unlink(missing_ok=True)
    os.replace(staging, out / ".parts")
    return plan


def build(args: argparse.Namespace, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
          ) -> dict[str, Any]:
    """Run (or resume) a build; returns the manifest. Nothing is written to OUT until the plan has succeeded."""
    if remote.is_remote(str(args.out)):
        return build_remote(args, log)
    out = Path(args.out)
    parts = out / ".parts"
    fp = fingerprint(args)
    check_out(out, args.prefix)
    plan = None
    if not args.overwrite:
        manifest_path = out / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("fingerprint") == fp:
                shutil.rmtree(parts, ignore_errors=True)
                log(f"{out}: already built with these arguments ({manifest.get('total')} samples); nothing to do")
                return manifest
            raise BuildError(f"{out} holds a finished shard set built with other arguments "
                             f"(builder {manifest.get('builder')}, source {manifest.get('source')}); "
                             "pass --overwrite to replace it, or choose another --out")
        stray = sorted(p for p in out.glob(f"{args.prefix}-*.tar") if _shard_name(args.prefix).match(p.name)) \
            if out.is_dir() else []
        if stray:
            raise BuildError(f"{out} already holds {stray[0].name} ... without a manifest.json; pass --overwrite")
        plan_path = parts / "plan.json"
        if plan_path.exists():
            plan = json.loads(plan_path.read_text())
            if plan.get("fingerprint") != fp:
                raise BuildError(f"{out} holds an unfinished build with other arguments; rerun with the same "
                                 "arguments to resume it, or pass --overwrite to start over")
            log(f"resuming the build in {out}")
    if plan is None:
        log(f"planning: reading the {args.source} annotations (no images yet) ...")
        plan = _plan_into(args, out, log)
        log(f"planned {plan['units']} units in {len(plan['partitions'])} partition(s) in {plan['plan_seconds']:.1f} s"
            + (f"; {sum(plan['plan_skipped'].values())} record(s) skipped while planning" if plan["plan_skipped"]
               else ""))
    if not plan["units"]:
        log("warning: the plan holds no units (nothing to convert); see skipped.jsonl")
    todo = [p for p in plan["partitions"] if not (parts / p["name"] / "DONE.json").exists()]
    finished = sum(p["units"] for p in plan["partitions"]) - sum(p["units"] for p in todo)
    t0 = time.perf_counter()
    if todo:
        _run_partitions(args, parts, todo, plan["units"], finished)
    seconds = time.perf_counter() - t0
    images = sum(json.loads((parts / p["name"] / "DONE.json").read_text())["images_loaded"] for p in todo)
    manifest = finalize(args, out, parts, plan, seconds, images)
    log(format_summary(manifest, out))
    return manifest


def _remote_manifest(out: str) -> dict[str, Any] | None:
    """OUT/manifest.json of a remote OUT, or None when there is none."""
    try:
        manifest = json.loads(remote.read_bytes(remote.join(out, "manifest.json")).decode("utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("builder") != "webdata.build":
        raise BuildError(f"--out {remote.redact(out)} holds a manifest.json not written by webdata.build (another "
                         "shard set?); choose another --out")
    return manifest


def build_remote(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Build into a local staging directory (resumable like any local build), then upload: shards, skipped.jsonl /
    overlaps.jsonl, then ``sizes.json`` and ``manifest.json`` last. A set already at OUT is kept when built with the
    same arguments, refused otherwise unless ``--overwrite``; with it, the old sizes.json/manifest.json are removed
    first and old shards the new set does not overwrite are removed before the new manifest appears."""
    out = str(args.out).rstrip("/")
    shown = remote.redact(out)
    if remote.scheme_of(out) == "pipe":
        raise BuildError("--out cannot be a pipe: command (pipe: is for reading shards)")
    try:
        old = _remote_manifest(out)
        if old is not None and not args.overwrite:
            if old.get("fingerprint") == fingerprint(args):
                log(f"{shown}: already built with these arguments ({old.get('total')} samples); nothing to do")
                return old
            raise BuildError(f"{shown} holds a finished shard set built with other arguments (builder "
                             f"{old.get('builder')}, source {old.get('source')}); pass --overwrite to replace it, or "
                             "choose another --out")
        listable = remote.scheme_of(out) not in ("http", "https")
        stray = [u for u in (remote.glob(remote.join(out, f"{args.prefix}-*.tar")) if listable else [])
                 if _shard_name(args.prefix).match(remote.split_name(u)[1])]
        if old is None and stray and not args.overwrite:
            raise BuildError(f"{shown} already holds {remote.split_name(stray[0])[1]} ... without a manifest.json; "
                             "pass --overwrite")
    except (OSError, ImportError, ValueError) as e:  # remote errors name the object, redacted
        raise BuildError(str(e)) from None
    staging = Path(args.staging) if args.staging else (
        Path(tempfile.gettempdir()) / f"webdata-build-{hashlib.sha256(out.encode()).hexdigest()[:16]}")
    log(f"building in {staging}, then uploading to {shown}")
    manifest = build(argparse.Namespace(**{**vars(args), "out": str(staging), "staging": None}), log)
    names = list(manifest["shards"])
    try:
        if old is not None:  # readers stop seeing the old set as complete before any of its shards changes
            for name in ("manifest.json", "sizes.json"):
                remote.delete(remote.join(out, name))
        for i, name in enumerate(names, 1):
            remote.upload_file(staging / name, remote.join(out, name))
            if i % 50 == 0 or i == len(names):
                log(f"uploaded {i}/{len(names)} shard(s) to {shown}")
        for name in ("skipped.jsonl", "overlaps.jsonl"):
            if (staging / name).exists():
                remote.upload_file(staging / name, remote.join(out, name))
        stale = set(stray) | {remote.join(out, n) for n in (old or {}).get("shards", [])
                              if isinstance(n, str) and n == Path(n).name}
        for url in sorted(stale - {remote.join(out, n) for n in names}):
            remote.delete(url)
        for name in ("sizes.json", "manifest.json"):
            remote.upload_file(staging / name, remote.join(out, name))
    except (OSError, ImportError, ValueError) as e:
        raise BuildError(f"upload to {shown} failed: {e}; the built set stays in {staging}: rerun the same command "
                         "to upload it again") from None
    shutil.rmtree(staging, ignore_errors=True)
    log(f"uploaded {len(names)} shard(s), sizes.json and manifest.json to {shown}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        build(args)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
