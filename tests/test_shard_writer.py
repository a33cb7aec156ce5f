"""ShardWriter and the demo shard cache: read back with plain tarfile, byte determinism, atomic/idempotent caching."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexone.data.demo import ensure_demo_shards, write_demo_splits
from chexone.data.demo.generate import demo_samples
from chexone.data.sample import SCHEMA_VERSION, Sample
from webdata.writer import ShardWriter, sample_key

SMALL = {"train": 12, "val": 4, "test": 6, "rl": 6}


def read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def odd_sample() -> Sample:
    img0 = Image.fromarray(np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8), "L")
    img1 = Image.new("RGB", (20, 10), (200, 10, 30))
    return Sample(id="MIMIC/p10.s5 [x]", task="open_vqa", question="Où est le nodule ? ü", answer="gauche",
                  images=[img0, img1], dataset="x", meta={"report": "Ünïcode ✓", "n": [1, 2.5, None]})


@pytest.fixture(scope="module")
def samples():
    return list(demo_samples("val", 11)) + [odd_sample()]


def write(out: Path, samples, **kw) -> dict:
    with ShardWriter(out, prefix="t", max_samples_per_shard=5, builder="test", builder_version="3",
                     arguments={"a": 1}, **kw) as w:
        for s in samples:
            w.write(s)
    return w.manifest


def test_shards_read_back_with_plain_tarfile(tmp_path, samples):
    manifest = write(tmp_path, samples)
    shards = sorted(tmp_path.glob("t-*.tar"))
    assert [p.name for p in shards] == ["t-000000.tar", "t-000001.tar", "t-000002.tar"]
    assert not list(tmp_path.glob("*.tmp"))
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert sizes == {"t-000000.tar": 5, "t-000001.tar": 5, "t-000002.tar": 2}

    members = [m for p in shards for m in read_tar(p)]
    by_name = dict(members)
    assert len(by_name) == len(members)  # no duplicate member names
    counted = {p.name: sum(n.endswith(".json") for n, _ in read_tar(p)) for p in shards}
    assert counted == sizes
    for s in samples:
        key = sample_key(s.id)
        assert "." not in key and "/" not in key
        record = json.loads(by_name[f"{key}.json"].decode("utf-8"))
        assert record == json.loads(json.dumps(s.to_json()))
        assert record["images"] == [f"img{i}.png" for i in range(len(s.images))]
        back = [Image.open(io.BytesIO(by_name[f"{key}.img{i}.png"])) for i in range(len(s.images))]
        for a, b in zip(s.images, back):
            assert b.format == "PNG" and a.mode == b.mode and a.size == b.size
            assert np.array_equal(np.asarray(a), np.asarray(b))
        assert Sample.from_json(record, back).to_json() == s.to_json()
    # the members of one sample are contiguous and the json comes first (WebDataset groups by key)
    names = [n for n, _ in members]
    assert names[0].endswith(".json") and names[1].endswith(".img0.png")

    assert manifest == json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["builder"] == "test" and manifest["builder_version"] == "3" and manifest["arguments"] == {"a": 1}
    assert manifest["total"] == len(samples) == sum(manifest["task_counts"].values())
    assert manifest["task_counts"]["open_vqa"] == sum(s.task == "open_vqa" for s in samples)
    assert manifest["created_at"]


def test_webdataset_groups_members_by_key(tmp_path, samples):
    wds = pytest.importorskip("webdataset")
    write(tmp_path, samples)
    pattern = str(tmp_path / "t-{000000..000002}.tar")
    got = list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))
    assert len(got) == len(samples)
    assert [g["__key__"] for g in got] == [sample_key(s.id) for s in samples]
    assert all("json" in g and "img0.png" in g for g in got)


def test_same_samples_give_identical_bytes(tmp_path, samples):
    write(tmp_path / "a", samples)
    write(tmp_path / "b", samples)
    for name in ("t-000000.tar", "t-000001.tar", "t-000002.tar", "sizes.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_demo_shards_deterministic_in_seed(tmp_path):
    write_demo_splits(tmp_path / "a", sizes=SMALL, seed=3)
    write_demo_splits(tmp_path / "b", sizes=SMALL, seed=3)
    write_demo_splits(tmp_path / "c", sizes=SMALL, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tar"))
    assert len(files) == 8  # two shards per split (train, val, test, rl)
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert any((tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes() for rel in files)


def test_writer_refuses_existing_set_and_duplicates(tmp_path, samples):
    write(tmp_path, samples[:2])
    with pytest.raises(FileExistsError):
        ShardWriter(tmp_path, prefix="t")
    write(tmp_path, samples[:1], overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("t-*.tar")) == ["t-000000.tar"]
    with pytest.raises(ValueError, match="duplicate"), ShardWriter(tmp_path / "d") as w:
        w.write(samples[0])
        w.write(samples[0])
    # an aborted build leaves no manifest and no temporary shard
    assert not (tmp_path / "d" / "manifest.json").exists()
    assert not list((tmp_path / "d").glob("*.tmp"))


def test_writer_rejects_non_json_meta(tmp_path):
    s = odd_sample()
    s.meta["bad"] = object()
    with pytest.raises(TypeError, match="JSON"), ShardWriter(tmp_path) as w:
        w.write(s)


def test_ensure_demo_shards_builds_once_and_rebuilds_on_change(tmp_path):
    root = tmp_path / "cache"
    patterns = ensure_demo_shards(root, sizes=SMALL, seed=0)
    assert set(patterns) == {"train", "val", "test", "rl"}
    assert patterns["train"] == str(root / "train" / "demo-train-{000000..000001}.tar")
    shard = root / "train" / "demo-train-000000.tar"
    stamp = shard.stat().st_mtime_ns
    assert ensure_demo_shards(root, sizes=SMALL, seed=0) == patterns
    assert shard.stat().st_mtime_ns == stamp  # reused, not rebuilt
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["sizes"] == SMALL

    ensure_demo_shards(root, sizes=SMALL, seed=1)
    assert json.loads((root / "manifest.json").read_text())["seed"] == 1
    # a damaged cache (missing shard) is rebuilt
    (root / "val" / "demo-val-000001.tar").unlink()
    ensure_demo_shards(root, sizes=SMALL, seed=1)
    assert (root / "val" / "demo-val-000001.tar").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_ensure_demo_shards_cleans_crash_leftovers_and_keeps_foreign_dirs(tmp_path):
    (tmp_path / ".cache.tmp-999-dead").mkdir()
    (tmp_path / ".cache.tmp-999-dead" / "half.tar").write_bytes(b"x")
    ensure_demo_shards(tmp_path / "cache", sizes=SMALL)
    assert not (tmp_path / ".cache.tmp-999-dead").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        ensure_demo_shards(foreign, sizes=SMALL)
    assert (foreign / "precious.txt").read_text() == "keep"


def test_ensure_demo_shards_concurrent_callers(tmp_path):
    root = tmp_path / "race"
    results, errors = [], []

    def run():
        try:
            results.append(ensure_demo_shards(root, sizes=SMALL, seed=2))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3 and all(r == results[0] for r in results)
    counts = json.loads((root / "test" / "sizes.json").read_text())
    assert sum(counts.values()) == SMALL["test"]


def test_cli_writes_splits_and_summary(tmp_path, capsys):
    from webdata.demo import main

    out = tmp_path / "cli"
    assert main(["--out", str(out), "--train", "6", "--val", "2", "--test", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "close_vqa" in text and "total" in text
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        assert sum(json.loads((out / split / "sizes.json").read_text()).values()) == n
    assert main(["--out", str(out), "--train", "6", "--val", "2", "--test", "3", "--no-progress"]) == 2
    assert main(["--out", str(out), "--train", "6", "--val", "2", "--test", "3", "--no-progress",
                 "--overwrite"]) == 0
