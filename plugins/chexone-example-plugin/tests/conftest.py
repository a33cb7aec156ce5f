"""Everything offline; chexone's cache (the tiny model) in a per-session temp dir."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def chexone_cache(tmp_path_factory):
    """CHEXONE_CACHE in a temp dir, so runs never touch the user's ~/.cache/chexone."""
    path = tmp_path_factory.mktemp("chexone-cache")
    old = os.environ.get("CHEXONE_CACHE")
    os.environ["CHEXONE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CHEXONE_CACHE", None)
    else:
        os.environ["CHEXONE_CACHE"] = old
