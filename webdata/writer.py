"""Write :class:`chexone.data.sample.Sample` objects into WebDataset tar shards.

Layout of one shard set (one output directory)::

    <prefix>-000000.tar, <prefix>-000001.tar, ...   # members <key>.json and <key>.img0.png, <key>.img1.png, ...
    sizes.json                                      # {shard file name: sample count}
    manifest.json                                   # builder, version, arguments, schema version, task counts, ...

``<key>.json`` is ``sample.to_json()`` (UTF-8); images are PNG. Nothing is pickled. :meth:`ShardWriter.write_group`
stores an image that several samples of the group share once, as a shared image member ``__shared__<digest>.png``
written just before the group's samples, which name it in their ``"images"`` lists (the reader,
:mod:`chexone.data.shards`, resolves it; see its docstring for the scoping rule). The output is byte-for-byte
deterministic for the same samples: tar headers carry mtime 0, uid/gid 0 and no user names, PNGs carry no time chunk.
A shard is written as ``<name>.tmp`` and renamed when complete; ``sizes.json``/``manifest.json`` are written only by
a successful :meth:`ShardWriter.close`, so a crashed build is recognisable by their absence.

The output directory may be remote (``s3://bucket/prefix``, an ``https://`` server that accepts PUT, another fsspec
URL; see :mod:`chexone.data.remote`): each shard is then written to a local temporary file and uploaded when it is
complete (an S3 or HTTP object appears only whole), and ``sizes.json``/``manifest.json`` are uploaded last, so a
reader never sees a set whose sizes.json names a shard that is not there yet.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from chexone.data import remote
from chexone.data.sample import SCHEMA_VERSION, SHARED_IMAGE_PREFIX, Sample

_KEY_OK = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def image_digest(image: Image.Image) -> str:
    """Content digest of a decoded image (mode, size and pixels): equal images share one stored member."""
    h = hashlib.sha1(f"{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:24]


def sample_key(sample_id: str) -> str:
    """WebDataset key for a sample id: the id itself when it is made of ``[A-Za-z0-9_-]`` (WebDataset splits member
    names at the first dot), otherwise a sanitised prefix plus a hash of the id (stable and collision-free)."""
    if _KEY_OK.match(sample_id):
        return sample_id
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", sample_id).strip("_")[:60]
    digest = hashlib.sha1(sample_id.encode("utf-8")).hexdigest()[:12]
    return f"{clean}_{digest}" if clean else digest


def encode_png(image: Image.Image, compress_level: int = 6) -> bytes:
    """Deterministic PNG bytes (no timestamps or text chunks). zlib level 6 is PIL's default; level 3 encodes a
    512x512 radiograph ~4x faster for ~10% more bytes (the shard builder's default)."""
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=compress_level)
    return buf.getvalue()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def brace_pattern(directory: str | Path, names: list[str]) -> str:
    """``dir/prefix-{000000..000003}.tar`` for consecutive shard names (a single name is returned as is)."""
    directory = str(directory)
    if not names:
        return ""
    if len(names) == 1:
        return remote.join(directory, names[0])
    first, last = names[0], names[-1]
    m1, m2 = re.match(r"^(.*-)(\d+)(\.tar)$", first), re.match(r"^(.*-)(\d+)(\.tar)$", last)
    assert m1 and m2 and m1.group(1) == m2.group(1)
    return remote.join(directory, f"{m1.group(1)}{{{m1.group(2)}..{m2.group(2)}}}.tar")


class ShardWriter:
    """Context manager writing samples into ``<out_dir>/<prefix>-NNNNNN.tar`` shards.

    Args:
        out_dir: output directory (created), or a remote one (``s3://bucket/prefix`` ...: shards are staged in a local
            temporary directory, one at a time, and uploaded as each is finished).
        prefix: shard name prefix.
        max_samples_per_shard: start a new shard after this many samples.
        builder, builder_version, arguments: recorded in ``manifest.json`` (arguments must be plain JSON).
        overwrite: remove existing ``<prefix>-*.tar``, ``sizes.json`` and ``manifest.json`` first; otherwise their
            presence is an error.
        png_compress_level: zlib level (0-9) of the PNG image members.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        prefix: str = "shard",
        max_samples_per_shard: int = 1000,
        builder: str = "unknown",
        builder_version: str = "0",
        arguments: dict[str, Any] | None = None,
        overwrite: bool = False,
        png_compress_level: int = 6,
    ):
        if max_samples_per_shard < 1:
            raise ValueError(f"max_samples_per_shard must be >= 1, got {max_samples_per_shard}")
        if not re.match(r"^[A-Za-z0-9_.-]+$", prefix):
            raise ValueError(f"shard prefix {prefix!r} must be made of letters, digits, '_', '-', '.'")
        if not 0 <= png_compress_level <= 9:
            raise ValueError(f"png_compress_level must be in 0..9, got {png_compress_level}")
        self.png_compress_level = int(png_compress_level)
        #: The remote output directory (a URL), or None when ``out_dir`` is local.
        self.destination = str(out_dir).rstrip("/") if remote.is_remote(os.fspath(out_dir)) else None
        self.prefix = prefix
        self.max_samples_per_shard = max_samples_per_shard
        self.builder = builder
        self.builder_version = str(builder_version)
        self.arguments = json.loads(json.dumps(arguments or {}))  # must be plain JSON
        if self.destination is not None:
            self._replace_remote(overwrite)
            self.out_dir = Path(tempfile.mkdtemp(prefix="chexone-shards-"))  # one shard at a time, then uploaded
        else:
            self.out_dir = Path(remote.local_path(os.fspath(out_dir)))
            self.out_dir.mkdir(parents=True, exist_ok=True)
            existing = sorted(self.out_dir.glob(f"{prefix}-*.tar")) + [
                p for p in (self.out_dir / "sizes.json", self.out_dir / "manifest.json") if p.exists()]
            if existing:
                if not overwrite:
                    raise FileExistsError(f"{self.out_dir} already holds a shard set ({existing[0].name}, ...); "
                                          "pass overwrite=True to replace it")
                for p in existing:
                    p.unlink()
        self.sizes: dict[str, int] = {}
        self.task_counts: Counter[str] = Counter()
        self._keys: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._tar_name = ""
        self._in_shard = 0
        self.manifest: dict[str, Any] | None = None
        #: Image members written per sample, and shared image members (each stored once for several samples).
        self.image_members = 0
        self.shared_images = 0

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    # ------------------------------------------------------------------ writing
    @property
    def shard_names(self) -> list[str]:
        return list(self.sizes)

    def _replace_remote(self, overwrite: bool) -> None:
        """Refuse (or, with ``overwrite``, delete) a shard set already at the remote destination: its
        ``PREFIX-*.tar`` objects where the scheme can list, and its sizes.json / manifest.json."""
        assert self.destination is not None
        if remote.scheme_of(self.destination) == "pipe":
            raise ValueError(f"cannot write shards to {remote.redact(self.destination)}: pipe: is for reading")
        listable = remote.scheme_of(self.destination) not in ("http", "https")
        existing = remote.glob(remote.join(self.destination, f"{self.prefix}-*.tar")) if listable else []
        existing += [u for u in (remote.join(self.destination, n) for n in ("sizes.json", "manifest.json"))
                     if remote.exists(u)]
        if existing:
            if not overwrite:
                raise FileExistsError(f"{remote.redact(self.destination)} already holds a shard set "
                                      f"({remote.split_name(existing[0])[1]}, ...); pass overwrite=True to replace it")
            for url in existing:
                remote.delete(url)

    @property
    def pattern(self) -> str:
        """Brace pattern of the shards written so far (after close: of all shards)."""
        return brace_pattern(self.destination or self.out_dir, self.shard_names)

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def write(self, sample: Sample) -> str:
        """Append one sample; returns its key. Its images are stored as its own members (``<key>.img{i}.png``)."""
        key, record = self._prepare(sample, {})
        members = [(f"{key}.json", record)]
        members += [(f"{key}.img{i}.png", encode_png(img, self.png_compress_level))
                    for i, img in enumerate(sample.images)]
        self._emit([], [(key, sample.task, members)])
        return key

    def write_group(self, samples: list[Sample]) -> list[str]:
        """Append samples that belong together (e.g. all questions about one image); returns their keys.

        An image (by pixel content, :func:`image_digest`) used by two or more samples of the group is encoded and
        stored once, as a shared image member just before the group; the others are stored per sample as in
        :meth:`write`. The whole group goes into one shard: a new shard is started first when the group would not
        fit in the current one (a group larger than ``max_samples_per_shard`` gets a shard of its own).
        """
        if not samples:
            return []
        digests = [[image_digest(img) for img in s.images] for s in samples]
        users: Counter[str] = Counter()
        for ds in digests:
            users.update(set(ds))
        shared_names: dict[str, str] = {}
        shared_members: list[tuple[str, bytes]] = []
        for s, ds in zip(samples, digests):
            for img, d in zip(s.images, ds):
                if users[d] > 1 and d not in shared_names:
                    shared_names[d] = f"{SHARED_IMAGE_PREFIX}{d}.png"
                    shared_members.append((shared_names[d], encode_png(img, self.png_compress_level)))
        entries = []
        keys: set[str] = set()
        for s, ds in zip(samples, digests):
            names = {i: shared_names[d] for i, d in enumerate(ds) if d in shared_names}
            key, record = self._prepare(s, names)
            if key in keys:
                raise ValueError(f"duplicate sample id {s.id!r} (key {key!r}) within one group")
            keys.add(key)
            members = [(f"{key}.json", record)]
            members += [(f"{key}.img{i}.png", encode_png(img, self.png_compress_level))
                        for i, img in enumerate(s.images) if i not in names]
            entries.append((key, s.task, members))
        self._emit(shared_members, entries)
        return [k for k, _, _ in entries]

    def write_raw_group(self, shared: list[tuple[str, bytes]], samples: list[tuple[str, str, list[tuple[str, bytes]]]]
                        ) -> None:
        """Append already-encoded members: ``shared`` = [(member name, bytes)] of shared images, ``samples`` =
        [(key, task, [(member name, bytes), ...])] with each sample's ``<key>.json`` first. Used to copy samples
        between shard sets without decoding images (``webdata.reason``)."""
        for key, _, members in samples:
            self._check_key(key, key)
            if not members or members[0][0] != f"{key}.json":
                raise ValueError(f"sample {key!r}: the first member must be {key}.json")
        for name, _ in shared:
            if not name.startswith(SHARED_IMAGE_PREFIX) or "/" in name:
                raise ValueError(f"shared image member {name!r} must be named {SHARED_IMAGE_PREFIX}<digest>.png")
        self._emit(list(shared), samples)

    def _check_key(self, key: str, sample_id: str) -> None:
        if key.startswith(SHARED_IMAGE_PREFIX):
            raise ValueError(f"sample id {sample_id!r}: keys starting with {SHARED_IMAGE_PREFIX!r} are reserved")
        if key in self._keys:
            raise ValueError(f"duplicate sample id {sample_id!r} (key {key!r})")

    def _prepare(self, sample: Sample, shared_names: dict[int, str]) -> tuple[str, bytes]:
        """Check a sample and encode its JSON record; ``shared_names`` maps image positions to shared members."""
        if self.manifest is not None:
            raise RuntimeError("ShardWriter is closed")
        for name in ("id", "task", "question", "answer"):
            if not isinstance(getattr(sample, name), str):
                raise TypeError(f"sample {sample.id!r}: field {name!r} must be a string")
        key = sample_key(sample.id)
        self._check_key(key, sample.id)
        obj = sample.to_json()
        obj["images"] = [shared_names.get(i, name) for i, name in enumerate(obj["images"])]
        try:
            record = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise TypeError(f"sample {sample.id!r} is not JSON-serialisable: {e}") from e
        return key, record

    def _emit(self, shared: list[tuple[str, bytes]], entries: list[tuple[str, str, list[tuple[str, bytes]]]]) -> None:
        """Write a shared block and samples into one shard (starting a new shard when they would not fit)."""
        if self.manifest is not None:
            raise RuntimeError("ShardWriter is closed")
        if self._tar is None or (self._in_shard and self._in_shard + len(entries) > self.max_samples_per_shard):
            self._next_shard()
        assert self._tar is not None
        for name, data in shared:
            self._tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        self.shared_images += len(shared)
        for key, task, members in entries:
            for name, data in members:
                self._tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
                if not name.endswith(".json"):
                    self.image_members += 1
            self._keys.add(key)
            self._in_shard += 1
            self.task_counts[task] += 1
        self.sizes[self._tar_name] = self._in_shard

    def _next_shard(self) -> None:
        self._finish_shard()
        self._tar_name = f"{self.prefix}-{len(self.sizes):06d}.tar"
        tmp = self.out_dir / f"{self._tar_name}.tmp"
        self._tar = tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT)
        self._in_shard = 0
        self.sizes[self._tar_name] = 0

    def _finish_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        os.replace(self.out_dir / f"{self._tar_name}.tmp", self.out_dir / self._tar_name)
        self._tar = None
        if self.destination is not None:
            remote.upload_file(self.out_dir / self._tar_name, remote.join(self.destination, self._tar_name))
            (self.out_dir / self._tar_name).unlink()

    def _abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            (self.out_dir / f"{self._tar_name}.tmp").unlink(missing_ok=True)
            self.sizes.pop(self._tar_name, None)
            self._tar = None
        if self.destination is not None:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def close(self) -> dict[str, Any]:
        """Finish the last shard and write ``sizes.json`` and ``manifest.json``; returns the manifest."""
        if self.manifest is not None:
            return self.manifest
        self._finish_shard()
        manifest = {
            "builder": self.builder,
            "builder_version": self.builder_version,
            "arguments": self.arguments,
            "schema_version": SCHEMA_VERSION,
            "shards": self.shard_names,
            "pattern": brace_pattern(".", self.shard_names).removeprefix("./"),
            "task_counts": dict(sorted(self.task_counts.items())),
            "total": self.total,
            "image_members": self.image_members,
            "shared_images": self.shared_images,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _write_json(self.out_dir / "sizes.json", self.sizes)
        _write_json(self.out_dir / "manifest.json", manifest)
        if self.destination is not None:  # sizes.json, then manifest.json: the set is complete once they appear
            for name in ("sizes.json", "manifest.json"):
                remote.upload_file(self.out_dir / name, remote.join(self.destination, name))
            shutil.rmtree(self.out_dir, ignore_errors=True)
        self.manifest = manifest
        return manifest


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
