"""Streaming WebDataset shards into :class:`~chexone.data.sample.Sample` objects, for one process or DDP.

Two entry points:

* :func:`build_train_dataset` — endless, *resampled* shards (drawn with replacement, shard sets mixed sample by sample
  in proportion to their weights) cut to a fixed epoch length. Every DDP rank yields exactly
  ``samples_per_epoch // world_size`` samples per epoch, split over its DataLoader workers, so no rank ever waits for
  another at a collective (``split_by_node`` over uneven shards stalls DDP, see docs/method.md §8).
* :func:`build_eval_dataset` — every sample once, in shard order, no resampling; rank ``r`` takes samples
  ``i % world_size == r``.

The tar reader is our own (plain :mod:`tarfile` in stream mode) rather than webdataset's pipeline, because we need
to (a) never touch members other than ``<key>.json`` and ``<key>.<name>.png|jpg|jpeg`` — pickles (``.pyd``,
``.pickle``, ``.pth`` ...) are not even read, only counted — and (b) count every corrupt sample by reason, including
truncated tars, which webdataset's handlers report only as an exception without the sample key. Brace patterns are
expanded with ``braceexpand`` (the expander webdataset uses too).

Shards and ``sizes.json`` may be remote (``https://``, ``s3://``, other fsspec URLs, ``pipe:CMD``): they are opened as
forward-only streams by :mod:`chexone.data.remote`, which resumes a dropped connection at the byte reached and
retries transient errors; a shard whose retries are spent is skipped and counted like a corrupt one
("unreadable_shard" when it cannot be opened, "truncated_tar" when it breaks off), and bad credentials stop the run.
Shard names in samples, logs and errors go through ``remote.redact`` (no token from a URL is ever printed).

Skip statistics: each process (main or DataLoader worker) counts what it read/skipped/ignored in a
:class:`SkipStats`, warns (rate-limited) about each skipped sample, and raises :class:`ShardDataError` when the
skipped fraction exceeds ``max_skip_fraction``. Every count is also mirrored into a small shared-memory table owned by
the dataset object (one row per worker), so the main process can call ``dataset.skip_stats()`` at any time and get
the totals over all of its workers — no piggy-backing on the sample stream.

Shared images: an image used by several samples (e.g. one radiograph with five grounding questions) may be stored once
as a *shared image member* ``__shared__<digest>.png`` (its own key, no JSON) placed before the samples that use it in
the same tar; a sample names it in its ``"images"`` list by that full member name instead of ``img{i}.png``. Shared
members that follow each other form a block; a block is visible to the samples after it until the next block begins,
so the reader holds at most one block in memory. Shared members are not samples: they are never counted in
``sizes.json``, never split over ranks, and always read.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import random
import tarfile
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from chexone.data import remote
from chexone.data.sample import REQUIRED_FIELDS, SHARED_IMAGE_PREFIX, Sample, SampleError
from chexone.data.stream_position import StreamCursor, set_current_cursor

logger = logging.getLogger(__name__)

# Import lazily-loaded modules now, in the parent process: a first import inside a forked DataLoader worker can hit
# CPython's "impossible KeyError" in importlib's module lock (python/cpython#87712), seen here with numpy.random, which
# torch's worker loop seeds, and PIL's image plugins, which Image.open loads on first use.
import numpy.random  # noqa: E402,F401

Image.preinit()

#: Why a sample was skipped. Fixed, so that per-worker counts fit a shared table.
REASONS = (
    "bad_json",  # <key>.json is not valid UTF-8 JSON or not an object
    "missing_field",  # a REQUIRED_FIELDS key is absent
    "unknown_task",  # the task name is not a registered task (a typo, or a plugin that is not installed)
    "invalid_field",  # a field has the wrong type (Sample.from_json refused it)
    "missing_json",  # members with this key but no <key>.json
    "bad_image_name",  # "images" is not a list of "<name>.png|jpg|jpeg" strings
    "missing_image",  # "images" names a member that is not in the tar
    "undecodable_image",  # PIL cannot decode the bytes as PNG/JPEG
    "truncated_tar",  # the tar ends inside a sample, or holds fewer samples than sizes.json says
    "unreadable_shard",  # the file cannot be opened or is not a tar
)

#: Image member extensions that are decoded; everything except these and "json" is ignored unread.
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")

#: Ignored members are counted by extension; these are called out because they would unpickle in webdataset.
IGNORED_KINDS = ("pyd", "pickle", "pkl", "pth", "pt", "other")

#: Skip-fraction check starts after this many samples, so a bad first sample does not kill a run.
DEFAULT_MIN_READ = 50

_COUNTERS = ("read", "yielded", "filtered")
_COLUMNS = _COUNTERS + tuple(f"skip:{r}" for r in REASONS) + tuple(f"ignored:{k}" for k in IGNORED_KINDS)
_COL = {name: i for i, name in enumerate(_COLUMNS)}
#: Rows of the shared table: row 0 = the process that owns the dataset (num_workers=0), row w+1 = worker w.
_MAX_SLOTS = 257
#: First N skips are logged, then every Nth.
_WARN_FIRST, _WARN_EVERY = 5, 100


class ShardDataError(RuntimeError):
    """The shard data is unusable: too many corrupt samples, or a shard set that yields nothing."""


class ShardAccessError(ShardDataError):
    """A remote shard refused access while being read (bad, revoked or expired credentials): never skipped, since
    every other shard would fail the same way; the message names the object (redacted)."""


# ----------------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class SkipStats:
    """Counts of samples read, yielded, filtered out by task and skipped (by reason), plus ignored tar members.

    ``read`` counts every sample key met (including the ones still sitting in a shuffle buffer), so
    ``read >= yielded + skipped + filtered``. ``examples`` holds the first "shard:key: detail" per reason (local
    to the process that saw it; :meth:`ShardDatasetBase.skip_stats` does not carry it across processes).
    """

    read: int = 0
    yielded: int = 0
    filtered: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    ignored_members: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return sum(self.by_reason.values())

    @property
    def skip_fraction(self) -> float:
        """Skipped / (read - filtered): samples dropped by the task filter are not judged."""
        return self.skipped / max(1, self.read - self.filtered)

    def worst(self, n: int = 3) -> list[tuple[str, int]]:
        """The ``n`` most frequent skip reasons, most frequent first."""
        return sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def merge(self, other: "SkipStats") -> "SkipStats":
        """Sum of two stats (e.g. across DDP ranks after gathering)."""
        out = SkipStats(self.read + other.read, self.yielded + other.yielded, self.filtered + other.filtered)
        for src, dst in ((self.by_reason, out.by_reason), (other.by_reason, out.by_reason)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        for src in (self.ignored_members, other.ignored_members):
            for k, v in src.items():
                out.ignored_members[k] = out.ignored_members.get(k, 0) + v
        out.examples = {**other.examples, **self.examples}
        return out

    def as_dict(self, prefix: str = "data/") -> dict[str, float]:
        """Flat numbers for a metrics logger: read, yielded, filtered, skipped, skip_fraction, skipped/<reason>..."""
        out: dict[str, float] = {
            f"{prefix}read": self.read,
            f"{prefix}yielded": self.yielded,
            f"{prefix}filtered": self.filtered,
            f"{prefix}skipped": self.skipped,
            f"{prefix}skip_fraction": self.skip_fraction,
        }
        out.update({f"{prefix}skipped/{k}": v for k, v in self.by_reason.items()})
        out.update({f"{prefix}ignored/{k}": v for k, v in self.ignored_members.items()})
        return out

    def summary(self) -> str:
        worst = ", ".join(f"{k}={v}" for k, v in self.worst(len(REASONS))) or "none"
        return (
            f"skipped {self.skipped} of {self.read - self.filtered} samples read ({self.skip_fraction:.1%}; "
            f"reasons: {worst}); yielded {self.yielded}, filtered by task {self.filtered}"
        )

    def to_vector(self) -> list[int]:
        vec = [self.read, self.yielded, self.filtered]
        vec += [self.by_reason.get(r, 0) for r in REASONS]
        vec += [self.ignored_members.get(k, 0) for k in IGNORED_KINDS]
        return vec

    @classmethod
    def from_vector(cls, vec: Sequence[int]) -> "SkipStats":
        vec = [int(v) for v in vec]
        stats = cls(read=vec[0], yielded=vec[1], filtered=vec[2])
        n = len(_COUNTERS)
        stats.by_reason = {r: v for r, v in zip(REASONS, vec[n : n + len(REASONS)]) if v}
        stats.ignored_members = {k: v for k, v in zip(IGNORED_KINDS, vec[n + len(REASONS) :]) if v}
        return stats


class _Tracker:
    """Counts one process's events into a local SkipStats and the dataset's shared table; warns; enforces the limit."""

    def __init__(
        self, table: torch.Tensor | None, slot: int, max_skip_fraction: float, min_read: int, what: str
    ) -> None:
        self.stats = SkipStats()
        self.table = table if table is not None and slot < table.shape[0] else None
        self.slot = slot
        self.max_skip_fraction = max_skip_fraction
        self.min_read = min_read
        self.what = what

    def _bump(self, column: str, n: int) -> None:
        if self.table is not None:
            self.table[self.slot, _COL[column]] += n

    def read(self, n: int = 1) -> None:
        self.stats.read += n
        self._bump("read", n)
        self._check()

    def yielded(self) -> None:
        self.stats.yielded += 1
        self._bump("yielded", 1)

    def filtered(self) -> None:
        self.stats.filtered += 1
        self._bump("filtered", 1)

    def ignored(self, ext: str) -> None:
        kind = ext.rsplit(".", 1)[-1].lower()
        kind = kind if kind in IGNORED_KINDS else "other"
        self.stats.ignored_members[kind] = self.stats.ignored_members.get(kind, 0) + 1
        self._bump(f"ignored:{kind}", 1)

    def skip(self, reason: str, shard: str, key: str, detail: str, n: int = 1) -> None:
        """Count ``n`` skipped samples; log the first few and then every 100th; raise past the limit."""
        stats = self.stats
        before = stats.skipped
        stats.by_reason[reason] = stats.by_reason.get(reason, 0) + n
        stats.examples.setdefault(reason, f"{shard}:{key}: {detail}")
        self._bump(f"skip:{reason}", n)
        after = stats.skipped
        if before < _WARN_FIRST or after // _WARN_EVERY > before // _WARN_EVERY:
            tail = " (further skips are logged every 100th)" if before < _WARN_FIRST <= after else ""
            logger.warning(
                "Skipping sample %r in %s: %s (%s); %d of %d samples skipped so far in this %s%s",
                key, shard, reason, detail, after, stats.read - stats.filtered, self.what, tail,
            )  # fmt: skip
        self._check()

    def _check(self) -> None:
        stats = self.stats
        judged = stats.read - stats.filtered
        if stats.skipped and judged >= self.min_read and stats.skip_fraction > self.max_skip_fraction:
            examples = "; ".join(f"{stats.examples[r]}" for r, _ in stats.worst() if r in stats.examples)
            raise ShardDataError(
                f"Too many corrupt samples in {self.what}: {stats.summary()}, above "
                f"data.max_skip_fraction={self.max_skip_fraction:g}. Examples: {examples}"
            )


# ----------------------------------------------------------------------------------------------------------------------
# Shard sets: expansion and sizes
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ShardSet:
    """One resolved shard set: its pattern, mixing weight, shard files and (if sizes.json knew them) sample counts."""

    pattern: str
    weight: float
    shards: list[str]
    #: Samples per shard file, from sizes.json next to the shards; None if any shard is not listed.
    sizes: dict[str, int] | None = None

    @property
    def num_samples(self) -> int | None:
        return None if self.sizes is None else sum(self.sizes[s] for s in self.shards)


def expand_shards(pattern: str) -> list[str]:
    """Shard files of one pattern: brace-expanded, ``~``/``$VAR`` expanded; a directory means its ``*.tar`` sorted.

    Raises FileNotFoundError naming the pattern when it matches nothing or when some expanded files are missing (a
    half-present shard range is almost always a typo or an unfinished copy, and silently training on part of it is
    worse than stopping). Remote patterns (``https://``, ``s3://``, other fsspec URLs, ``pipe:CMD``) are expanded by
    :func:`_expand_remote` with the same rule; bad credentials raise :class:`~chexone.data.remote.RemoteAuthError`.
    """
    if remote.is_remote(str(pattern)):
        return _expand_remote(str(pattern))
    text = os.path.expanduser(os.path.expandvars(remote.local_path(str(pattern))))
    found: list[str] = []
    missing: list[str] = []
    for path in braceexpand(text):
        if os.path.isdir(path):
            tars = sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
            if not tars:
                raise FileNotFoundError(f"Shard pattern {pattern!r}: directory {path!r} holds no *.tar files")
            found += tars
        elif any(c in path for c in "*?["):
            found += sorted(p for p in glob.glob(path) if os.path.isfile(p))
        elif os.path.isfile(path):
            found.append(path)
        else:
            missing.append(path)
    return _checked(pattern, found, missing)


def _checked(pattern: str, found: list[str], missing: list[str]) -> list[str]:
    """``found`` without duplicates, or FileNotFoundError when anything is missing or nothing was found."""
    if missing:
        shown = ", ".join(repr(remote.redact(m)) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise FileNotFoundError(
            f"Shard pattern {remote.redact(pattern)!r}: {len(missing)} of {len(missing) + len(found)} shard file(s) "
            f"do not exist: {shown}"
        )
    if not found:
        raise FileNotFoundError(f"Shard pattern {remote.redact(pattern)!r} matches no existing shard file")
    return list(dict.fromkeys(found))


def _expand_remote(pattern: str) -> list[str]:
    """Shard URLs of a remote pattern. Brace ranges expand without any request (webdataset's way of naming shards);
    a glob in an ``s3://`` (or listable fsspec) key, or a URL ending in ``/`` (its ``*.tar`` objects), is listed.
    Every named object is then checked to exist (S3: one listing per prefix), so a missing shard fails here, before
    training, as a local one does. ``pipe:`` commands are not expanded for ``$VAR`` (the shell does that, so a secret
    in an environment variable never becomes part of a logged name) and cannot be checked before they run."""
    scheme = remote.scheme_of(pattern)
    if scheme == "pipe":
        return list(dict.fromkeys(braceexpand(pattern)))
    found: list[str] = []
    named: list[str] = []
    for url in braceexpand(os.path.expandvars(pattern)):
        key = urllib.parse.urlsplit(url).path
        if scheme not in ("http", "https") and (url.endswith("/") or any(c in key for c in "*?[")):
            matches = remote.glob(url)
            if url.endswith("/") and not matches:
                raise FileNotFoundError(f"Shard pattern {remote.redact(pattern)!r}: {remote.redact(url)!r} holds no "
                                        "*.tar objects")
            found += matches
        else:
            named.append(url)
    absent = remote.missing(named)
    found += [u for u in named if u not in set(absent)]
    return _checked(pattern, found, absent)


def load_sizes(shards: Sequence[str]) -> dict[str, int] | None:
    """Sample count of every shard from the ``sizes.json`` next to it, or None when any shard is not covered.

    ``sizes.json`` maps shard *file names* (not paths) to sample counts, as the shard writer writes it. A sizes.json
    that cannot be parsed is warned about and ignored (training can still run with an explicit samples_per_epoch).
    """
    by_dir: dict[str, dict[str, Any] | None] = {}
    sizes: dict[str, int] = {}
    for shard in shards:
        if remote.scheme_of(shard) == "pipe":
            return None  # a command's output has no directory to hold a sizes.json
        directory, name = remote.split_name(shard)
        if directory not in by_dir:
            by_dir[directory] = _read_sizes_json(remote.sibling(shard, "sizes.json"))
        table = by_dir[directory]
        count = None if table is None else table.get(name)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return None
        sizes[shard] = count
    return sizes


def _read_sizes_json(path: str) -> dict[str, Any] | None:
    """The table of one ``sizes.json`` (a path or URL); None when it does not exist or cannot be used (warned)."""
    try:
        table = json.loads(remote.read_bytes(path).decode("utf-8"))
        if not isinstance(table, dict):
            raise ValueError(f"expected an object, got {type(table).__name__}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # unreadable, not JSON, or a remote error (named redacted by remote.py)
        logger.warning("Ignoring unreadable %s: %s", remote.redact(path), e)
        return None
    return table


def resolve_shard_sets(shard_sets: Any) -> list[ShardSet]:
    """Normalise shard sets given as one path, a ``{path, weight}`` mapping, a ShardSetConfig, or a list of those.

    Sets with weight 0 are dropped (a cheap way to switch one off in a recipe); a negative weight is an error.
    """
    if isinstance(shard_sets, (str, os.PathLike, Mapping)) or hasattr(shard_sets, "path"):
        shard_sets = [shard_sets]
    resolved = []
    for item in shard_sets:
        if isinstance(item, (str, os.PathLike)):
            path, weight = os.fspath(item), 1.0
        elif isinstance(item, Mapping):
            path, weight = item["path"], item.get("weight", 1.0)
        else:
            path, weight = item.path, getattr(item, "weight", 1.0)
        weight = float(weight)
        if weight < 0:
            raise ValueError(f"Shard set {remote.redact(path)!r}: weight must be >= 0, got {weight}")
        if weight == 0:
            continue
        shards = expand_shards(str(path))
        resolved.append(ShardSet(str(path), weight, shards, load_sizes(shards)))
    if not resolved:
        raise ValueError("No shard sets given (or all have weight 0)")
    return resolved


# ----------------------------------------------------------------------------------------------------------------------
# Reading and decoding
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """Undecoded members of one sample key: only ``json`` and image members are ever read."""

    shard: str
    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    #: The shared image block in scope for this sample: member name (``__shared__<digest>.png``) -> bytes.
    shared: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Parsed:
    """A sample whose JSON passed the checks; images are still bytes (cheap to hold in a shuffle buffer)."""

    shard: str
    key: str
    record: dict[str, Any]
    images: list[bytes]


def _split_name(name: str) -> tuple[str, str]:
    """``dir/abc.img0.png`` -> (``dir/abc``, ``img0.png``): the key ends at the first dot of the file name."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext


def _wanted_member(ext: str) -> bool:
    return ext == "json" or ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def _read_shard(
    path: str,
    tracker: _Tracker,
    *,
    expected: int | None = None,
    start: int = 0,
    want: Callable[[int], bool] | None = None,
    stop: int | None = None,
) -> Iterator[_Raw]:
    """Yield the samples of one tar, grouped by key, in order; return how many sample indices the shard spans.

    Sample ``i`` of the shard has global index ``start + i``; only indices where ``want(index)`` is true are read
    (members of the others are skipped unread) and counted; reading stops before index ``stop``. The tar is read as a
    stream, so a truncated file yields what it holds, and the sample it ends in is counted as "truncated_tar"; when
    ``expected`` (from sizes.json) exceeds what the tar holds, the shortfall is counted too. ``path`` is a local path
    or a URL (see :func:`chexone.data.remote.open_stream`).
    """

    def wanted(index: int) -> bool:
        return (stop is None or index < stop) and (want is None or want(index))

    seen = 0
    current: _Raw | None = None
    key: str | None = None
    shared: dict[str, bytes] = {}  # the shared image block in scope
    in_shared = False  # the previous key was a shared image member
    fileobj = None
    url, path = path, remote.redact(path)  # the name in samples, logs and errors never carries a token
    try:
        fileobj = remote.open_stream(url)
        tar = tarfile.open(fileobj=fileobj, mode="r|*")
    except remote.RemoteAuthError as e:
        if fileobj is not None:
            fileobj.close()
        raise ShardAccessError(str(e)) from None  # every shard would fail the same way: stop, naming the object
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        if fileobj is not None:
            fileobj.close()
        span = max(expected or 0, 1)  # an unreadable shard of unknown size counts as one lost sample
        lost = sum(1 for i in range(start, start + span) if wanted(i))
        if lost:
            tracker.read(lost)
            tracker.skip("unreadable_shard", path, "*", f"{type(e).__name__}: {e}", n=lost)
        return span
    with fileobj, tar:
        try:
            while True:
                member = tar.next()
                tar.members = []  # stream mode keeps every TarInfo otherwise: memory grows with the shard
                if member is None:
                    break
                if not member.isfile():
                    continue
                member_key, ext = _split_name(member.name)
                if member_key != key:
                    if current is not None:
                        yield current
                        current = None
                    key = member_key
                    if member_key.rpartition("/")[2].startswith(SHARED_IMAGE_PREFIX):
                        if not in_shared:  # a new block replaces the previous one (a fresh dict: no aliasing)
                            shared, in_shared = {}, True
                    else:
                        in_shared = False
                        if stop is not None and start + seen >= stop:
                            return seen
                        index = start + seen
                        seen += 1
                        current = _Raw(path, key, shared=shared) if wanted(index) else None
                        if current is not None:
                            tracker.read()
                if in_shared:
                    if ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                        data = tar.extractfile(member)
                        shared[f"{member_key.rpartition('/')[2]}.{ext}"] = data.read() if data is not None else b""
                    else:
                        tracker.ignored(ext)
                    continue
                if current is None:
                    continue
                if not _wanted_member(ext):
                    tracker.ignored(ext)  # never read: pickles and anything else stay bytes on disk
                    continue
                data = tar.extractfile(member)
                current.members[ext] = data.read() if data is not None else b""
        except remote.RemoteAuthError as e:
            raise ShardAccessError(str(e)) from None
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            # a remote stream raises here only once its retries are spent: the rest of the shard is lost
            if current is not None:
                tracker.skip("truncated_tar", path, key or "?", f"{type(e).__name__}: {e}")
            current = None
        if current is not None:
            yield current
    if expected is not None and seen < expected:
        lost = sum(1 for i in range(start + seen, start + expected) if wanted(i))
        if lost:
            tracker.read(lost)
            detail = f"sizes.json lists {expected} samples, tar holds {seen}"
            tracker.skip("truncated_tar", path, f"<{lost} after {key}>", detail, n=lost)
    return max(seen, expected or 0)


def _parse(raw: _Raw, tracker: _Tracker, task_filter: frozenset[str] | None,
           known_tasks: frozenset[str] | None = None) -> _Parsed | None:
    """Check the JSON and that every image it names is present; apply the task filter. None = dropped (counted)."""
    shard, key = raw.shard, raw.key
    if "json" not in raw.members:
        tracker.skip("missing_json", shard, key, f"members {sorted(raw.members)} but no {key}.json")
        return None
    try:
        record = json.loads(raw.members["json"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        tracker.skip("bad_json", shard, key, f"{type(e).__name__}: {e}")
        return None
    if not isinstance(record, dict):
        tracker.skip("bad_json", shard, key, f"JSON is {type(record).__name__}, expected an object")
        return None
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        tracker.skip("missing_field", shard, key, f"missing field(s) {missing}")
        return None
    if task_filter is not None and record.get("task") not in task_filter:
        tracker.filtered()
        return None
    if known_tasks is not None and record.get("task") not in known_tasks:
        close = difflib.get_close_matches(str(record.get("task")), sorted(known_tasks), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else " (install the plugin that provides it)"
        tracker.skip("unknown_task", shard, key, f"task {record.get('task')!r} is not a registered task{hint}")
        return None
    names = record.get("images", [])
    if not isinstance(names, list) or not all(
        isinstance(n, str) and "." in n and "/" not in n and n.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
        for n in names
    ):
        tracker.skip("bad_image_name", shard, key, f"'images' must list <name>.png|jpg|jpeg strings, got {names!r}")
        return None
    absent = [n for n in names if n not in raw.members and n not in raw.shared]
    if absent:
        shown = [n if n.startswith(SHARED_IMAGE_PREFIX) else f"{key}.{n}" for n in absent]
        tracker.skip("missing_image", shard, key, f"no member(s) {shown}")
        return None
    return _Parsed(shard, key, record, [raw.members[n] if n in raw.members else raw.shared[n] for n in names])


def decode_image(data: bytes) -> Image.Image:
    """Decode PNG/JPEG bytes with PIL (no other format is tried), returning a loaded image in mode "L" or "RGB".

    Grayscale stays "L" and colour stays "RGB" — the processor decides about channels, and keeping 1-channel X-rays
    1-channel saves memory in the shuffle buffer and workers. Other modes are mapped: 1/LA -> L; 16/32-bit grayscale
    (I;16, I, F — e.g. DICOM exports) -> L by per-image min-max scaling (a fixed /257 would leave 12-bit data nearly
    black); palette, alpha and other colour modes -> RGB (alpha dropped).
    """
    image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
    image.load()
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _decode(parsed: _Parsed, tracker: _Tracker) -> Sample | None:
    """Images -> PIL and JSON -> Sample; None when that fails (counted)."""
    images = []
    for i, data in enumerate(parsed.images):
        try:
            images.append(decode_image(data))
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
            name = parsed.record["images"][i]
            tracker.skip("undecodable_image", parsed.shard, parsed.key, f"{name}: {type(e).__name__}: {e}")
            return None
    try:
        sample = Sample.from_json(parsed.record, images, source=f"{parsed.shard}:{parsed.key}")
    except (SampleError, TypeError) as e:
        tracker.skip("invalid_field", parsed.shard, parsed.key, str(e))
        return None
    tracker.yielded()
    return sample


# ----------------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------------


def _derive_seed(*parts: Any) -> int:
    """A 64-bit seed from the parts, stable across processes and Python runs (unlike hash())."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def _worker() -> tuple[int, int, int]:
    """(worker id, number of workers, shared-table slot) of the calling process."""
    info = get_worker_info()
    return (0, 1, 0) if info is None else (info.id, info.num_workers, info.id + 1)


def _split_evenly(total: int, parts: int, index: int, unit: int = 1) -> int:
    """Part ``index`` of ``total`` split into ``parts`` in whole ``unit``s (sizes differ by at most one unit)."""
    units = total // unit
    return (units // parts + (1 if index < units % parts else 0)) * unit


class ShardDatasetBase(IterableDataset):
    """What both datasets share: resolved shard sets, the skip limit, and the shared skip-stats table."""

    def __init__(
        self, shard_sets: Any, *, max_skip_fraction: float, task_filter: Iterable[str] | None, min_read: int,
        known_tasks: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        #: Task names a sample may carry (None = any); others are skipped and counted as "unknown_task".
        self.known_tasks = frozenset(known_tasks) if known_tasks is not None else None
        self.shard_sets = resolve_shard_sets(shard_sets)
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self.max_skip_fraction = float(max_skip_fraction)
        self.task_filter = frozenset(task_filter) if task_filter else None
        self.min_read = int(min_read)
        # Shared memory: DataLoader workers (fork or spawn) write their rows, the owning process reads the sum.
        self._table = torch.zeros(_MAX_SLOTS, len(_COLUMNS), dtype=torch.int64).share_memory_()
        self._tracker: _Tracker | None = None
        self._tracker_pid = -1

    def skip_stats(self) -> SkipStats:
        """Totals over this process and all of its DataLoader workers (= this rank), since the dataset was built.

        Cheap (sums a small shared table); call it from the training loop and log ``.as_dict()``. For totals over
        DDP ranks, all-reduce ``torch.tensor(stats.to_vector())`` and rebuild with ``SkipStats.from_vector``.
        """
        return SkipStats.from_vector(self._table.sum(0).tolist())

    def _local_tracker(self, slot: int) -> _Tracker:
        """The tracker of the calling process (a forked worker gets a fresh one, not a copy of its parent's)."""
        if self._tracker is None or self._tracker_pid != os.getpid():
            what = "worker" if slot else "process"
            sets = ", ".join(repr(remote.redact(s.pattern)) for s in self.shard_sets)
            self._tracker = _Tracker(
                self._table, slot, self.max_skip_fraction, self.min_read, f"{what} reading shard set(s) {sets}"
            )
            self._tracker_pid = os.getpid()
        return self._tracker

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tracker"], state["_tracker_pid"] = None, -1
        return state


class ShardTrainDataset(ShardDatasetBase):
    """Endless resampled shards with a fixed epoch length per rank and worker; see :func:`build_train_dataset`."""

    def __init__(
        self,
        shard_sets: Any,
        *,
        samples_per_epoch: int | None,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 256,
        max_skip_fraction: float = 0.05,
        task_filter: Iterable[str] | None = None,
        min_read: int = DEFAULT_MIN_READ,
        batch_size: int = 1,
        known_tasks: Iterable[str] | None = None,
        balance_groups: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(shard_sets, max_skip_fraction=max_skip_fraction, task_filter=task_filter, min_read=min_read,
                         known_tasks=known_tasks)
        self.balance_groups = dict(balance_groups) if balance_groups else None
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if not samples_per_epoch:
            unknown = [remote.redact(s.pattern) for s in self.shard_sets if s.sizes is None]
            if unknown:
                raise ValueError(
                    f"data.samples_per_epoch is required: no sizes.json covers every shard of {unknown} "
                    "(the shard writer writes one next to the shards)"
                )
            samples_per_epoch = sum(s.num_samples or 0 for s in self.shard_sets)
        for s in self.shard_sets:
            if s.sizes is not None and not s.num_samples:
                raise ShardDataError(f"Shard set {remote.redact(s.pattern)!r} is empty according to its sizes.json")
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle_buffer = int(shuffle_buffer)
        self.batch_size = max(1, int(batch_size))
        self.samples_per_rank = (self.samples_per_epoch // self.world_size) // self.batch_size * self.batch_size
        if self.samples_per_rank == 0:
            raise ValueError(
                f"samples_per_epoch={self.samples_per_epoch} gives no sample (batch_size={self.batch_size}) "
                f"to each of {self.world_size} ranks"
            )
        # Epoch number shared with (persistent) workers; -1 = set_epoch never called: then each process slot counts
        # its own iter() calls in shared memory, so fresh (non-persistent) workers still see a new epoch each time.
        self._epoch = torch.full((1,), -1, dtype=torch.int64).share_memory_()
        self._iterations = torch.zeros(_MAX_SLOTS, dtype=torch.int64).share_memory_()
        # Resume point per worker (chexone.data.stream_position): [epoch, items consumed, samples yielded]; epoch -1 =
        # none. Shared memory, so persistent workers see what the training process sets before the epoch starts.
        self._resume = torch.full((_MAX_SLOTS, 3), -1, dtype=torch.int64).share_memory_()
        #: Names this stream for ``StampingCollate`` (the training stream's batches carry their position).
        self.stream_key: str | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random stream (call before each epoch; also reaches persistent workers).

        Without it, every ``iter()`` starts the next epoch of the calling process or worker slot, which is fine for a
        single run but not reproducible after a resume: the training loop should call it with the epoch number.
        """
        self._epoch.fill_(int(epoch))

    def resume_from(self, positions: Iterable[Any]) -> None:
        """Continue each worker's epoch after the given ``StreamPosition``s (from a checkpoint) instead of from its
        start; applies to the epoch named in the positions only. An empty iterable clears the resume point."""
        self._resume.fill_(-1)
        for p in positions:
            if 0 <= int(p.worker) < _MAX_SLOTS:
                self._resume[int(p.worker)] = torch.tensor([int(p.epoch), int(p.consumed), int(p.yielded)])

    def __len__(self) -> int:
        """Samples this rank yields per epoch (over all its workers)."""
        return self.samples_per_rank

    def worker_num_samples(self, worker: int, num_workers: int) -> int:
        """Samples worker ``worker`` of ``num_workers`` yields per epoch (whole batches of ``batch_size``)."""
        return _split_evenly(self.samples_per_rank, num_workers, worker, self.batch_size)

    def _balanced(self, stream: Iterator[_Parsed]) -> Iterator[_Parsed]:
        from chexone.data.balance import round_robin_by_group

        groups = self.balance_groups
        return round_robin_by_group(stream, lambda p: groups.get(str(p.record.get("task")), str(p.record.get("task"))),
                                    sorted(set(groups.values())))

    def _endless_set(self, shard_set: ShardSet, rng: random.Random, tracker: _Tracker) -> Iterator[_Parsed]:
        """Shards of one set drawn uniformly with replacement and read whole, so every sample is equally likely."""
        dry, patience = 0, max(100, 3 * len(shard_set.shards))
        while True:
            shard = rng.choice(shard_set.shards)
            expected = shard_set.sizes[shard] if shard_set.sizes else None
            produced = False
            for raw in _read_shard(shard, tracker, expected=expected):
                parsed = _parse(raw, tracker, self.task_filter, self.known_tasks)
                if parsed is not None:
                    produced = True
                    yield parsed
            dry = 0 if produced else dry + 1
            if dry >= patience:
                filt = f" passing the task filter {sorted(self.task_filter)}" if self.task_filter else ""
                raise ShardDataError(
                    f"Shard set {remote.redact(shard_set.pattern)!r} yielded no usable sample{filt} from {dry} shard "
                    "reads in a row "
                    f"({tracker.stats.summary()})"
                )

    def __iter__(self) -> Iterator[Sample]:
        worker, num_workers, slot = _worker()
        epoch = int(self._epoch.item())
        if epoch < 0 and slot < _MAX_SLOTS:
            epoch = int(self._iterations[slot].item())
            self._iterations[slot] += 1
        epoch = max(epoch, 0)
        count = self.worker_num_samples(worker, num_workers)
        tracker = self._local_tracker(slot)
        rng = random.Random(_derive_seed(self.seed, epoch, self.rank, worker))

        # 1. one endless stream per shard set: resampled shards -> tar members grouped by key -> checked JSON
        streams = [self._endless_set(s, random.Random(rng.getrandbits(64)), tracker) for s in self.shard_sets]
        # 2. mix the sets sample by sample in proportion to their weights
        stream = _mix(streams, [s.weight for s in self.shard_sets], rng)
        # 3. shuffle buffer over undecoded samples (PNG bytes are far smaller than decoded images)
        stream = _shuffle(stream, self.shuffle_buffer, rng)
        # 3a. optionally, turns by task group (chexone.data.balance); before the cursor, so resume replays it exactly
        if self.balance_groups:
            stream = self._balanced(stream)
        # 3b. position in this stream (exact resume): skip what was consumed before a resume, count what follows
        resume_epoch, consumed, yielded = (int(v) for v in self._resume[worker].tolist()) if worker < _MAX_SLOTS \
            else (-1, 0, 0)
        if resume_epoch != epoch:
            consumed = yielded = 0
        cursor = StreamCursor(worker, epoch, skip_items=consumed, already_yielded=yielded)
        set_current_cursor(cursor, self.stream_key)
        stream = cursor.items(stream)
        # 4. decode images -> Sample; corrupt ones are counted and dropped
        samples = cursor.samples(s for s in map(lambda p: _decode(p, tracker), stream) if s is not None)
        # 5. fixed epoch length for this rank and worker
        try:
            yield from itertools.islice(samples, max(0, count - yielded))
        finally:
            for s in streams:  # close the open shard files now rather than at garbage collection
                s.close()


def _mix(streams: list[Iterator[_Parsed]], weights: list[float], rng: random.Random) -> Iterator[_Parsed]:
    """Endless interleaving: each item comes from stream i with probability weight_i / sum(weights)."""
    if len(streams) == 1:
        yield from streams[0]
        return
    index = range(len(streams))
    while True:
        yield next(streams[rng.choices(index, weights)[0]])


def _shuffle(stream: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle buffer: fill ``size`` items, then emit a random one and put the newcomer in its place."""
    if size <= 1:
        yield from stream
        return
    buffer: list[Any] = []
    for item in stream:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardEvalDataset(ShardDatasetBase):
    """Every sample once, in order; see :func:`build_eval_dataset`."""

    def __init__(
        self,
        shard_sets: Any,
        *,
        rank: int = 0,
        world_size: int = 1,
        limit: int | None = None,
        max_skip_fraction: float = 0.05,
        task_filter: Iterable[str] | None = None,
        min_read: int = DEFAULT_MIN_READ,
        known_tasks: Iterable[str] | None = None,
    ) -> None:
        super().__init__(shard_sets, max_skip_fraction=max_skip_fraction, task_filter=task_filter, min_read=min_read,
                         known_tasks=known_tasks)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.limit = None if limit is None or limit <= 0 else int(limit)

    def __iter__(self) -> Iterator[Sample]:
        worker, num_workers, slot = _worker()
        tracker = self._local_tracker(slot)
        rank, world = self.rank, self.world_size

        def mine(index: int) -> bool:
            # sample-level split over ranks, then round-robin over this rank's workers (keeps DataLoader order)
            return index % world == rank and (index // world) % num_workers == worker

        offset = 0
        for shard_set in self.shard_sets:
            for shard in shard_set.shards:
                if self.limit is not None and offset >= self.limit:
                    return
                expected = shard_set.sizes[shard] if shard_set.sizes else None
                reader = _read_shard(shard, tracker, expected=expected, start=offset, want=mine, stop=self.limit)
                while True:
                    try:
                        raw = next(reader)
                    except StopIteration as done:
                        offset += done.value
                        break
                    parsed = _parse(raw, tracker, self.task_filter, self.known_tasks)
                    sample = _decode(parsed, tracker) if parsed is not None else None
                    if sample is not None:
                        yield sample


# ----------------------------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------------------------


def build_train_dataset(
    shard_sets: Any,
    *,
    samples_per_epoch: int | None,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 256,
    max_skip_fraction: float = 0.05,
    task_filter: Iterable[str] | None = None,
    min_read: int = DEFAULT_MIN_READ,
    batch_size: int = 1,
    known_tasks: Iterable[str] | None = None,
    balance_groups: Mapping[str, str] | None = None,
) -> ShardTrainDataset:
    """Training stream of :class:`Sample`: resampled shards, weighted set mixing, shuffle buffer, fixed epoch length.

    Each rank yields exactly ``samples_per_epoch // world_size`` samples per epoch (rounded down to whole
    ``batch_size`` batches), split evenly over its DataLoader workers in whole batches, so every rank runs the same
    number of steps. ``samples_per_epoch`` 0/None = total of sizes.json. Randomness is a deterministic function of
    (seed, epoch, rank, worker); call ``set_epoch`` before each epoch for a fresh order (without it, each ``iter()``
    in the same process advances the epoch). ``task_filter``: keep only these task names (None/empty = all).
    ``known_tasks``: samples of any other task are skipped and counted as ``unknown_task`` (None = no check).
    ``balance_groups``: task name -> group (e.g. its family); the shuffled stream then takes the groups in turns
    (:func:`chexone.data.balance.round_robin_by_group`; None = as drawn).
    """
    return ShardTrainDataset(
        shard_sets,
        samples_per_epoch=samples_per_epoch,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=shuffle_buffer,
        max_skip_fraction=max_skip_fraction,
        task_filter=task_filter,
        min_read=min_read,
        batch_size=batch_size,
        known_tasks=known_tasks,
        balance_groups=balance_groups,
    )


def build_eval_dataset(
    shard_sets: Any,
    *,
    rank: int = 0,
    world_size: int = 1,
    limit: int | None = None,
    max_skip_fraction: float = 0.05,
    task_filter: Iterable[str] | None = None,
    min_read: int = DEFAULT_MIN_READ,
    known_tasks: Iterable[str] | None = None,
) -> ShardEvalDataset:
    """Every sample once, in shard order (sets in the given order, shards sorted), deterministic, no resampling.

    Global sample ``i`` goes to rank ``i % world_size`` (ranks differ by at most one sample); ``limit`` keeps only the
    first ``limit`` samples of the whole set before that split. Corrupt samples are skipped and counted as in training.
    """
    return ShardEvalDataset(
        shard_sets,
        rank=rank,
        world_size=world_size,
        limit=limit,
        max_skip_fraction=max_skip_fraction,
        task_filter=task_filter,
        min_read=min_read,
        known_tasks=known_tasks,
    )


__all__ = [
    "IMAGE_EXTENSIONS",
    "REASONS",
    "SHARED_IMAGE_PREFIX",
    "ShardAccessError",
    "ShardDataError",
    "ShardEvalDataset",
    "ShardSet",
    "ShardTrainDataset",
    "SkipStats",
    "build_eval_dataset",
    "build_train_dataset",
    "decode_image",
    "expand_shards",
    "load_sizes",
    "resolve_shard_sets",
]
