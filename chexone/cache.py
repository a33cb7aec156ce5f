"""Where chexone keeps what it builds or extracts once and reuses (the tiny model, the demo shards, the cached stage-1
demo model, the demo report scorers, extracted model archives): ``$CHEXONE_CACHE``, else ``~/.cache/chexone``.

Recipes name the same place through ``${oc.env:CHEXONE_CACHE,'~/.cache/chexone'}``; code outside recipes asks
:func:`cache_root`, so the rule lives in one function."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

DEFAULT_CACHE = "~/.cache/chexone"


def cache_root() -> Path:
    """``$CHEXONE_CACHE`` (``~`` expanded), or ``~/.cache/chexone`` when it is unset or empty."""
    return Path(os.path.expanduser(os.environ.get("CHEXONE_CACHE") or DEFAULT_CACHE))


@contextlib.contextmanager
def cache_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (POSIX ``flock``) while one process builds a cache entry that others wait
    for; a no-op where unavailable (the builders' atomic renames still apply)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


__all__ = ["DEFAULT_CACHE", "cache_lock", "cache_root"]
