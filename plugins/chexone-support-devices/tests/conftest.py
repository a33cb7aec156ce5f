"""Fixtures: everything offline, chexone's cache (the tiny model) in a per-session temp dir, the plugin's demo shards
generated once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def chexone_cache(tmp_path_factory):
    """CHEXONE_CACHE in a temp dir, so the runs never touch the user's ~/.cache/chexone."""
    path = tmp_path_factory.mktemp("chexone-cache")
    old = os.environ.get("CHEXONE_CACHE")
    os.environ["CHEXONE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CHEXONE_CACHE", None)
    else:
        os.environ["CHEXONE_CACHE"] = old


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """The plugin's demo shard sets: {"train": dir (48 samples), "test": dir (12 samples)}, written by its CLI."""
    from chexone_support_devices.demo import main

    root = tmp_path_factory.mktemp("support-devices-shards")
    out = {}
    for split, n in (("train", 48), ("test", 12)):
        assert main(["--out", str(root / split), "--n", str(n), "--split", split]) == 0
        out[split] = root / split
    return out
