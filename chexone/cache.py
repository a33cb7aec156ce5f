"""Where chexone keeps what it builds or extracts once and reuses (the tiny model, the demo shards, the cached stage-1
demo model, the demo report scorers, extracted model archives): ``$CHEXONE_CACHE``, else ``~/.cache/chexone``.

Recipes name the same place through ``${oc.env:CHEXONE_CACHE,'~/.cache/chexone'}``; code outside recipes asks
:func:`cache_root`, so the rule lives in one function."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE = "~/.cache/chexone"


def cache_root() -> Path:
    """``$CHEXONE_CACHE`` (``~`` expanded), or ``~/.cache/chexone`` when it is unset or empty."""
    return Path(os.path.expanduser(os.environ.get("CHEXONE_CACHE") or DEFAULT_CACHE))


__all__ = ["DEFAULT_CACHE", "cache_root"]
