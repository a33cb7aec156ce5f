"""Shard streaming: expansion, equal per-rank counts, mixing, corrupt-sample accounting, pickle safety, eval order.

Shards are written here with plain tarfile + PIL in the documented format (chexone/data/sample.py), so these tests do
not depend on the shard writer.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from chexone.config.schema import ShardSetConfig
from chexone.data.sample import Sample
from chexone.data.shards import (
    ShardDataError,
    SkipStats,
    build_eval_dataset,
    build_train_dataset,
    decode_image,
    expand_shards,
    resolve_shard_sets,
)


def png(value: int = 128, size: tuple[int, int] = (8, 8), mode: str = "L", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value if mode != "RGB" else (value, 0, 0)).save(buf, format=fmt)
    return buf.getvalue()


PNG = png()


def record(sample_id: str, task: str = "vqa", images: list[str] | None = None, **extra) -> dict:
    rec = {"id": sample_id, "task": task, "question": "q?", "answer": "a", "images": images or []}
    rec.update(extra)
    return rec


def good(sample_id: str, task: str = "vqa") -> tuple[str, dict[str, bytes]]:
    """A valid sample with one PNG, as (key, {ext: bytes})."""
    return sample_id, {"json": json.dumps(record(sample_id, task, ["img0.png"])).encode(), "img0.png": PNG}


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_set(directory: Path, counts: list[int], prefix: str, *, sizes: bool = True, task: str = "vqa") -> Path:
    """Shards ``<prefix>-00000i.tar`` with ``counts[i]`` valid samples each, ids ``<prefix>-<shard>-<j>``."""
    directory.mkdir(parents=True, exist_ok=True)
    table = {}
    for i, n in enumerate(counts):
        name = f"{prefix}-{i:06d}.tar"
        write_tar(directory / name, [good(f"{prefix}-{i}-{j}", task) for j in range(n)])
        table[name] = n
    if sizes:
        (directory / "sizes.json").write_text(json.dumps(table))
    return directory


def ids_of(loader_or_ds) -> list[str]:
    out = []
    it = iter(loader_or_ds)
    try:
        for item in it:
            batch = item if isinstance(item, list) else [item]
            assert all(isinstance(s, Sample) for s in batch)
            out += [s.id for s in batch]
    finally:
        # Shut DataLoader workers down now: an error's traceback keeps the iterator alive, and later forks inherit it.
        getattr(it, "_shutdown_workers", lambda: None)()
    return out


def loader(ds, num_workers: int, batch_size: int = 4, **kw) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=lambda b: b, **kw)


# ---------------------------------------------------------------------------------------------------------------------


def test_expand_brace_dir_single_and_errors(tmp_path):
    d = write_set(tmp_path / "s", [2, 2, 2], "train")
    brace = expand_shards(str(d / "train-{000000..000002}.tar"))
    assert [Path(p).name for p in brace] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert expand_shards(str(d)) == brace  # directory = its *.tar, sorted
    assert expand_shards(str(d / "train-000001.tar")) == [brace[1]]
    with pytest.raises(FileNotFoundError, match=r"nothing-\{0\.\.3\}\.tar"):
        expand_shards(str(d / "nothing-{0..3}.tar"))
    with pytest.raises(FileNotFoundError, match=r"2 of 5 shard file\(s\) do not exist"):
        expand_shards(str(d / "train-{000000..000004}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        expand_shards(str(tmp_path / "empty"))

    sets = resolve_shard_sets([str(d), {"path": str(d), "weight": 2}, ShardSetConfig(path=str(d), weight=0.0)])
    assert [s.weight for s in sets] == [1.0, 2.0]  # weight 0 switches a set off
    assert sets[0].num_samples == 6
    with pytest.raises(ValueError, match="weight must be >= 0"):
        resolve_shard_sets({"path": str(d), "weight": -1})


def test_epoch_length_from_sizes_json_or_required(tmp_path):
    with_sizes = write_set(tmp_path / "a", [3, 4], "a")
    assert len(build_train_dataset(str(with_sizes), samples_per_epoch=0, seed=0)) == 7
    without = write_set(tmp_path / "b", [3, 4], "b", sizes=False)
    with pytest.raises(ValueError, match="samples_per_epoch is required"):
        build_train_dataset(str(without), samples_per_epoch=None, seed=0)
    assert len(build_train_dataset(str(without), samples_per_epoch=10, seed=0, world_size=2, rank=1)) == 5


@pytest.mark.parametrize("num_workers", [0, 2])
def test_equal_counts_per_rank_over_uneven_shards(tmp_path, num_workers):
    d = write_set(tmp_path / "s", [200, 100, 100], "s")
    counts = []
    for rank in range(2):
        ds = build_train_dataset(
            [ShardSetConfig(path=str(d))], samples_per_epoch=300, seed=7, rank=rank, world_size=2, shuffle_buffer=32
        )
        ds.set_epoch(0)
        ids = ids_of(loader(ds, num_workers))
        counts.append(len(ids))
        stats = ds.skip_stats()  # workers' counts reach the main process through shared memory
        assert stats.yielded == 150 and stats.skipped == 0 and stats.read >= 150
    assert counts == [150, 150]

    # With batch_size given, every worker yields whole batches and len(loader) is exact.
    ds = build_train_dataset(str(d), samples_per_epoch=300, seed=7, world_size=2, shuffle_buffer=8, batch_size=4)
    batches = list(loader(ds, num_workers))
    assert len(ds) == 148 and len(batches) == len(loader(ds, num_workers)) == 37
    assert all(len(b) == 4 for b in batches)


def test_deterministic_per_seed_rank_and_epoch(tmp_path):
    d = write_set(tmp_path / "s", [30, 30], "s")

    def run(seed, rank, epoch=None, ds=None):
        ds = ds or build_train_dataset(
            str(d), samples_per_epoch=40, seed=seed, rank=rank, world_size=2, shuffle_buffer=8
        )
        if epoch is not None:
            ds.set_epoch(epoch)
        return [s.id for s in ds]

    assert run(1, 0, 0) == run(1, 0, 0)
    assert run(1, 0, 0) != run(1, 1, 0)
    assert run(1, 0, 0) != run(2, 0, 0)
    assert run(1, 0, 0) != run(1, 0, 1)
    ds = build_train_dataset(str(d), samples_per_epoch=40, seed=1, shuffle_buffer=8)
    assert run(1, 0, ds=ds) != run(1, 0, ds=ds)  # without set_epoch each iter() is the next epoch


def test_mixing_weights_and_size_weighted_shards(tmp_path):
    a = write_set(tmp_path / "a", [10, 40], "a")  # uneven shards: each sample is still equally likely
    b = write_set(tmp_path / "b", [50], "b")
    ds = build_train_dataset(
        [{"path": str(a), "weight": 2.0}, {"path": str(b), "weight": 1.0}], samples_per_epoch=3000, seed=3,
        shuffle_buffer=16,
    )  # fmt: skip
    ids = [s.id for s in ds]
    assert len(ids) == 3000
    n_a = sum(i.startswith("a-") for i in ids)
    assert 1.75 < n_a / (3000 - n_a) < 2.3
    small_shard = sum(i.startswith("a-0-") for i in ids) / n_a
    assert 0.12 < small_shard < 0.28  # 10 of 50 samples


def test_corrupt_samples_skipped_and_counted_by_reason(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    bad = [
        good("ok-0"),
        ("badjson", {"json": b"{not json", "img0.png": PNG}),
        ("nofield", {"json": json.dumps({"id": "x", "task": "t", "question": "q"}).encode()}),
        ("noimage", {"json": json.dumps(record("noimage", images=["img0.png"])).encode()}),
        ("undecodable", {"json": json.dumps(record("u", images=["img0.png"])).encode(), "img0.png": b"not a png"}),
        ("badname", {"json": json.dumps(record("n", images=["img0.pyd"])).encode(), "img0.pyd": b"x"}),
        ("nojson", {"img0.png": PNG}),
        ("wrongtype", {"json": json.dumps(record("w") | {"answer": 5}).encode()}),
        good("ok-1"),
    ]
    write_tar(d / "a-000000.tar", bad)
    # A tar cut inside the image of its 4th sample: the first 3 survive, the 4th is "truncated_tar".
    full = write_tar(tmp_path / "full.tar", [good(f"t-{j}") for j in range(6)])
    with tarfile.open(full) as tar:
        cut = next(m for m in tar.getmembers() if m.name == "t-3.img0.png").offset_data + 10
    (d / "b-000000.tar").write_bytes(full.read_bytes()[:cut])
    (d / "c-000000.tar").write_bytes(b"this is not a tar archive " * 40)

    ds = build_eval_dataset(str(d), max_skip_fraction=1.0)
    assert ids_of(ds) == ["ok-0", "ok-1", "t-0", "t-1", "t-2"]
    stats = ds.skip_stats()
    assert stats.by_reason == {
        "bad_json": 1, "missing_field": 1, "missing_image": 1, "undecodable_image": 1, "bad_image_name": 1,
        "missing_json": 1, "invalid_field": 1, "truncated_tar": 1, "unreadable_shard": 1,
    }  # fmt: skip
    assert stats.read == 9 + 4 + 1 and stats.yielded == 5 and stats.skipped == 9


def test_sizes_json_shortfall_counts_as_truncated(tmp_path):
    d = write_set(tmp_path / "s", [7], "s")
    (d / "sizes.json").write_text(json.dumps({"s-000000.tar": 10}))
    ds = build_eval_dataset(str(d), max_skip_fraction=1.0)
    assert len(ids_of(ds)) == 7
    stats = ds.skip_stats()
    assert stats.read == 10 and stats.by_reason == {"truncated_tar": 3}


def test_skip_warnings_are_rate_limited(tmp_path, caplog):
    d = tmp_path / "s"
    d.mkdir()
    write_tar(d / "x.tar", [(f"k{j}", {"json": b"nope"}) for j in range(120)])
    with caplog.at_level(logging.WARNING, logger="chexone.data.shards"):
        assert ids_of(build_eval_dataset(str(d), max_skip_fraction=1.0)) == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 6  # skips 1-5, then the 100th
    assert "x.tar" in messages[0] and "'k0'" in messages[0] and "bad_json" in messages[0]
    assert "further skips are logged every 100th" in messages[4] and "'k99'" in messages[5]


def corrupt_half(directory: Path, n: int = 60) -> Path:
    directory.mkdir()
    samples = [good(f"g{j}") if j % 2 else (f"b{j}", {"json": b"{"}) for j in range(n)]
    write_tar(directory / "x-000000.tar", samples)
    (directory / "sizes.json").write_text(json.dumps({"x-000000.tar": n}))
    return directory


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_threshold_raises_with_counts(tmp_path, num_workers):
    d = corrupt_half(tmp_path / "s")
    ds = build_train_dataset(str(d), samples_per_epoch=200, seed=0, shuffle_buffer=4, max_skip_fraction=0.05)
    with pytest.raises(ShardDataError, match=r"skipped \d+ of \d+ samples read .*bad_json=\d+"):
        ids_of(loader(ds, num_workers))
    # Below min_read nothing is judged; above it a high enough limit lets the run go on.
    ds = build_eval_dataset(str(d), max_skip_fraction=0.05, min_read=1000)
    assert len(ids_of(ds)) == 30
    ds = build_train_dataset(str(d), samples_per_epoch=100, seed=0, shuffle_buffer=4, max_skip_fraction=0.6)
    assert len(ids_of(loader(ds, num_workers))) == 100
    stats = ds.skip_stats()
    assert stats.yielded == 100 and set(stats.by_reason) == {"bad_json"} and 0.3 < stats.skip_fraction < 0.7


def test_pickle_members_are_never_unpickled(tmp_path):
    class Payload:
        def __init__(self, path):
            self.path = path

        def __reduce__(self):
            return (open, (self.path, "w"))  # unpickling creates the file

    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(str(probe))))
    assert probe.exists()  # the payload is live

    sentinel = tmp_path / "pwned"
    payload = pickle.dumps(Payload(str(sentinel)))
    d = tmp_path / "s"
    d.mkdir()
    samples = []
    for j in range(10):
        key, members = good(f"p{j}")
        samples.append((key, {**members, "pyd": payload, "pickle": payload, "pth": payload}))
    write_tar(d / "p-000000.tar", samples)

    ds = build_eval_dataset(str(d))
    assert len(ids_of(ds)) == 10
    assert ds.skip_stats().ignored_members == {"pyd": 10, "pickle": 10, "pth": 10}
    train = build_train_dataset(str(d), samples_per_epoch=50, seed=0, shuffle_buffer=4)
    assert len(ids_of(loader(train, 2))) == 50
    assert train.skip_stats().ignored_members["pyd"] >= 10
    assert not sentinel.exists()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_reads_each_sample_once_in_order(tmp_path, num_workers):
    d = write_set(tmp_path / "s", [5, 3, 4], "e")
    everything = [f"e-{i}-{j}" for i, n in enumerate([5, 3, 4]) for j in range(n)]
    per_rank = [ids_of(loader(build_eval_dataset(str(d), rank=r, world_size=2), num_workers, 1)) for r in range(2)]
    assert per_rank == [everything[0::2], everything[1::2]]
    limited = [
        ids_of(loader(build_eval_dataset(str(d), rank=r, world_size=2, limit=5), num_workers, 1)) for r in (0, 1)
    ]
    assert limited == [everything[0:5:2], everything[1:5:2]]
    assert ids_of(build_eval_dataset(str(d))) == everything


def test_multi_image_samples_decode_in_order_and_keep_mode(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    sixteen = io.BytesIO()
    Image.fromarray(np.arange(25, dtype=np.uint16).reshape(5, 5) * 170).save(sixteen, format="PNG")
    names = ["img1.jpg", "img0.png", "img2.png"]
    members = {
        "json": json.dumps(record("m", images=names)).encode(),
        "img0.png": png(10, (4, 4), "L"),
        "img1.jpg": png(200, (10, 6), "RGB", "JPEG"),
        "img2.png": sixteen.getvalue(),
    }
    write_tar(d / "m.tar", [("m", members)])
    (sample,) = list(build_eval_dataset(str(d)))
    assert [im.size for im in sample.images] == [(10, 6), (4, 4), (5, 5)]
    assert [im.mode for im in sample.images] == ["RGB", "L", "L"]
    assert np.asarray(sample.images[2]).max() == 255  # 16-bit rescaled, not clipped
    assert decode_image(png(3, (2, 2), "LA")).mode == "L"


def test_task_filter(tmp_path):
    write_set(tmp_path / "s", [6], "v", task="vqa")
    write_set(tmp_path / "s", [4], "r", task="report")
    ds = build_eval_dataset(str(tmp_path / "s"), task_filter=["report"])
    assert ids_of(ds) == [f"r-0-{j}" for j in range(4)]
    assert ds.skip_stats().filtered == 6
    train = build_train_dataset(str(tmp_path / "s"), samples_per_epoch=20, seed=0, task_filter={"report"})
    assert {s.task for s in train} == {"report"}
    none = build_train_dataset(str(tmp_path / "s"), samples_per_epoch=20, seed=0, task_filter={"grounding"})
    with pytest.raises(ShardDataError, match="no usable sample passing the task filter"):
        list(none)


def test_skip_stats_merge_and_vector_roundtrip():
    a = SkipStats(read=10, yielded=8, by_reason={"bad_json": 2}, ignored_members={"pyd": 1})
    b = SkipStats(read=5, yielded=4, by_reason={"bad_json": 1})
    total = a.merge(b)
    assert total.read == 15 and total.by_reason == {"bad_json": 3} and total.skipped == 3
    assert SkipStats.from_vector(total.to_vector()).by_reason == {"bad_json": 3}
    assert total.as_dict()["data/skipped/bad_json"] == 3
