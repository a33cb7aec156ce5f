"""Shared images: ShardWriter.write_group stores an image several samples use once, and the shard reader
(chexone.data.shards) resolves it — in eval order, split over ranks, in training, and with the block scoping rule."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from chexone.data.sample import Sample
from chexone.data.shards import build_eval_dataset, build_train_dataset
from webdata.writer import SHARED_IMAGE_PREFIX, ShardWriter, image_digest


def gray(value: int, size=(16, 12)) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0]), value, np.uint8), "L")


def sample(i: int, images: list[Image.Image], task: str = "open_vqa") -> Sample:
    return Sample(id=f"s{i}", task=task, question=f"q{i}?", answer=f"a{i}", images=images)


def members(path) -> list[str]:
    with tarfile.open(path) as tf:
        return tf.getnames()


def test_group_stores_shared_image_once_and_reads_back(tmp_path):
    xray, prior, other = gray(10), gray(200), gray(90)
    group = [sample(0, [xray]), sample(1, [xray]), sample(2, [prior, xray]), sample(3, [other])]
    with ShardWriter(tmp_path, prefix="t", max_samples_per_shard=100) as w:
        w.write(sample(9, [gray(5)]))
        w.write_group(group)
    names = members(tmp_path / "t-000000.tar")
    shared = [n for n in names if n.startswith(SHARED_IMAGE_PREFIX)]
    # xray is used by three samples -> once; prior and other are used by one sample each -> their own members
    assert shared == [f"{SHARED_IMAGE_PREFIX}{image_digest(xray)}.png"]
    assert "s2.img0.png" in names and "s2.img1.png" not in names and "s3.img0.png" in names
    assert names.index(shared[0]) < names.index("s0.json")  # the block comes before the samples using it
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"t-000000.tar": 5}
    assert w.manifest["shared_images"] == 1 and w.manifest["image_members"] == 3

    got = {s.id: s for s in build_eval_dataset(str(tmp_path))}
    assert sorted(got) == ["s0", "s1", "s2", "s3", "s9"]
    for sid, want in [("s0", [10]), ("s1", [10]), ("s2", [200, 10]), ("s3", [90]), ("s9", [5])]:
        assert [int(np.asarray(im).max()) for im in got[sid].images] == want
    # split over two ranks: shared members are read by both, never counted as samples
    r0 = [s.id for s in build_eval_dataset(str(tmp_path), rank=0, world_size=2)]
    r1 = [s.id for s in build_eval_dataset(str(tmp_path), rank=1, world_size=2)]
    assert sorted(r0 + r1) == sorted(got) and len(r0) == 3 and len(r1) == 2
    # training stream (resampled, shuffled) resolves them too
    train = build_train_dataset(str(tmp_path), samples_per_epoch=10, seed=0, shuffle_buffer=4)
    for s in train:
        assert s.images and all(im.size == (16, 12) for im in s.images)
    assert train.skip_stats().skipped == 0


def test_group_goes_to_one_shard(tmp_path):
    img = gray(1)
    with ShardWriter(tmp_path, prefix="t", max_samples_per_shard=3) as w:
        w.write(sample(0, [gray(2)]))
        w.write(sample(1, [gray(3)]))
        w.write_group([sample(i, [img]) for i in range(2, 5)])  # 3 samples: do not fit after 2 -> new shard
        w.write_group([sample(i, [img]) for i in range(5, 10)])  # larger than a shard: a shard of its own
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"t-000000.tar": 2, "t-000001.tar": 3,
                                                                 "t-000002.tar": 5}
    assert len(list(build_eval_dataset(str(tmp_path)))) == 10


def test_reader_scopes_blocks_and_counts_missing_shared_images(tmp_path):
    """A sample may only use the shared block right before it: a reference to an earlier block is missing_image."""
    def png(v):
        buf = io.BytesIO()
        gray(v).save(buf, format="PNG")
        return buf.getvalue()

    def rec(sid, images):
        return json.dumps({"id": sid, "task": "open_vqa", "question": "q", "answer": "a", "images": images}).encode()

    a, b = f"{SHARED_IMAGE_PREFIX}aaa.png", f"{SHARED_IMAGE_PREFIX}bbb.png"
    entries = [(a, png(1)), ("x0.json", rec("x0", [a])), (b, png(2)), ("x1.json", rec("x1", [b])),
               ("x2.json", rec("x2", [a])), ("x3.json", rec("x3", ["__shared__zzz.png"]))]
    path = tmp_path / "s-000000.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ds = build_eval_dataset(str(path), max_skip_fraction=1.0)
    assert [s.id for s in ds] == ["x0", "x1"]
    stats = ds.skip_stats()
    assert stats.read == 4 and stats.by_reason == {"missing_image": 2}


def test_reserved_key_and_duplicate_ids_are_refused(tmp_path):
    with ShardWriter(tmp_path, prefix="t") as w:
        with pytest.raises(ValueError, match="reserved"):
            w.write(Sample(id="__shared__x", task="open_vqa", question="q", answer="a"))
        with pytest.raises(ValueError, match="duplicate"):
            w.write_group([sample(1, [gray(1)]), sample(1, [gray(1)])])
