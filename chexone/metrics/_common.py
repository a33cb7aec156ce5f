"""Shared pieces of the built-in metrics: the per-sample metric base class, fast checks for local weights and optional
packages, and small helpers.

Every model-backed metric resolves its weights with :func:`resolve_pretrained` / :func:`resolve_hub_file` *before*
importing or loading anything slow, so that a missing file fails in well under a second with a message naming the file
and the constructor (recipe) key to set.
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = [
    "TOKENIZER_FILES",
    "WEIGHT_FILES",
    "LRUCache",
    "MissingExtraError",
    "MissingWeightsError",
    "PerSampleMetric",
    "cached_batch",
    "check_pairs",
    "hf_offline",
    "require_package",
    "resolve_hub_file",
    "resolve_pretrained",
]

#: Any one of these makes a Hugging Face model directory loadable.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
#: Any one of these makes a tokenizer loadable.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json", "spiece.model")


class MissingWeightsError(FileNotFoundError):
    """A model-backed metric cannot find its weights, tokenizer or baseline locally (and may not download them)."""


class MissingExtraError(ImportError):
    """An optional package that a metric needs is not installed."""


def hf_offline() -> bool:
    """True when Hugging Face downloads are switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always present with transformers
        return False


def require_package(module: str, *, extra: str, feature: str) -> Any:
    """Import ``module`` or raise :class:`MissingExtraError` telling which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs the optional package {module!r}, which is not importable ({exc}). "
            f"Install it with: pip install 'chexone[{extra}]'"
        ) from exc


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or name.count("/") > 1
        or (len(name) > 1 and name[1] == ":")  # C:\...
    )


def _missing(what: str, missing: str, key: str, hint: str = "") -> MissingWeightsError:
    msg = f"{what}: {missing}. Set `{key}` to a local copy."
    if hint:
        msg += f" {hint}"
    return MissingWeightsError(msg)


def resolve_pretrained(
    name_or_path: str,
    *,
    key: str,
    what: str,
    need: Sequence[Sequence[str]] = (("config.json",),),
) -> str:
    """Check that a Hugging Face model/tokenizer is available without downloading anything, quickly.

    ``name_or_path`` is a local directory or a hub id. ``need`` lists groups of alternative file names: each group
    must have at least one file present (e.g. ``[("config.json",), WEIGHT_FILES, TOKENIZER_FILES]``).

    * Local directory: must exist and hold the files, else :class:`MissingWeightsError`.
    * Hub id: looked up in the local Hugging Face cache. When absent and downloads are off (``HF_HUB_OFFLINE=1``),
      :class:`MissingWeightsError` naming the file and ``key``; when online, the id is returned and the loading
      library downloads it.

    Returns the local directory (expanded) or the hub id.
    """
    name = str(name_or_path)
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded) or _looks_like_path(name) or os.path.exists(expanded):
        if not os.path.isdir(expanded):
            raise _missing(what, f"local directory {expanded!r} does not exist", key)
        for group in need:
            if not any(os.path.exists(os.path.join(expanded, f)) for f in group):
                raise _missing(what, f"{expanded!r} has none of {', '.join(group)}", key)
        return expanded
    # A hub id: look in the cache without touching the network.
    from huggingface_hub import try_to_load_from_cache

    for group in need:
        found = False
        for f in group:
            try:
                hit = try_to_load_from_cache(name, f)
            except Exception:  # invalid repo id etc.
                hit = None
            if isinstance(hit, str) and os.path.exists(hit):
                found = True
                break
        if not found:
            if hf_offline():
                raise _missing(
                    what,
                    f"{' / '.join(group)} of {name!r} is not in the Hugging Face cache and downloads are off "
                    f"(HF_HUB_OFFLINE=1)",
                    key,
                    "(a directory holding config.json, the weights and the tokenizer files)",
                )
            return name  # online: let the library download it
    return name


def resolve_hub_file(path: str | None, *, repo_id: str, filename: str, key: str, what: str) -> str:
    """A single weights file: ``path`` if given (must exist), else ``repo_id/filename`` from the Hugging Face cache,
    downloaded only when online. Missing offline -> :class:`MissingWeightsError` naming ``filename`` and ``key``."""
    if path:
        p = os.path.expanduser(str(path))
        if not os.path.isfile(p):
            raise _missing(what, f"file {p!r} does not exist", key)
        return p
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, filename)
    if isinstance(hit, str) and os.path.exists(hit):
        return hit
    if hf_offline():
        raise _missing(
            what,
            f"{filename} (hub {repo_id}) is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1)",
            key,
            f"(the path of {filename})",
        )
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except Exception as exc:
        raise _missing(what, f"could not download {filename} from {repo_id} ({type(exc).__name__}: {exc})",
                       key) from exc


def check_pairs(preds: Sequence[Any], targets: Sequence[Any]) -> None:
    if isinstance(preds, str) or isinstance(targets, str):
        raise TypeError("update(preds, targets) takes lists, not single strings")
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")


class LRUCache:
    """A small least-recently-used mapping (``maxsize`` 0 disables caching; None is unbounded)."""

    def __init__(self, maxsize: int | None = 4096):
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable, default: Any = None) -> Any:
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return default

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def put(self, key: Hashable, value: Any) -> None:
        if self.maxsize == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        if self.maxsize is not None:
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()
        self.hits = self.misses = 0


def cached_batch(cache: LRUCache, keys: Sequence[Hashable], compute: Callable[[list[Hashable]], list[Any]]) -> list[Any]:
    """Values for ``keys``: cached ones from ``cache``, the others computed in one call of ``compute`` on the distinct
    missing keys (first-seen order), then cached."""
    out: list[Any] = [None] * len(keys)
    todo: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        if k in cache:
            out[i] = cache.get(k)
        else:
            todo.setdefault(k, []).append(i)
    if todo:
        uniq = list(todo)
        values = compute(uniq)
        if len(values) != len(uniq):
            raise RuntimeError(f"scorer returned {len(values)} values for {len(uniq)} inputs")
        cache.misses += len(uniq)
        for k, v in zip(uniq, values):
            cache.put(k, v)
            for i in todo[k]:
                out[i] = v
    return out


class PerSampleMetric(Metric):
    """Base of metrics that give one float per (prediction, target) pair and report their mean.

    States (reduced across DDP ranks): ``total`` and ``count`` (sums), and ``values`` (per-sample scores,
    concatenated; rank order after a sync, incoming-then-local after ``merge_state``) for bootstrap CIs and paired
    tests. Subclasses implement ``_score(preds, targets) -> list[float | None]`` (None = not scorable, skipped).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better: bool | None = True
    #: Per-sample scores are lower-is-better (RadCliQ). The GRPO report reward reads this.
    lower_is_better = False
    #: Test for paired comparisons of two models' per-sample scores (python -m chexone.evaluate compare).
    paired_test = "paired_t"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def _score(self, preds: Sequence[Any], targets: Sequence[Any]) -> list[float | None]:  # pragma: no cover
        raise NotImplementedError

    def _add(self, scores: Iterable[float | None]) -> None:
        kept = [float(s) for s in scores if s is not None]
        if not kept:
            return
        t = torch.tensor(kept, dtype=torch.float64)
        self.total += t.sum()
        self.count += t.numel()
        self.values.append(t)

    def update(self, preds: Sequence[Any], targets: Sequence[Any]) -> None:
        check_pairs(preds, targets)
        self._add(self._score(list(preds), list(targets)))

    def compute(self) -> Tensor:
        if int(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count

    def per_sample(self) -> Tensor:
        """The per-sample scores seen so far (after a sync: of all ranks)."""
        if isinstance(self.values, Tensor):
            return self.values
        if not self.values:
            return torch.zeros(0, dtype=torch.float64)
        return dim_zero_cat(self.values)


class ColumnMeanMetric(Metric):
    """Base of metrics that give several named values per (prediction, target) pair and report their means.

    Subclasses set ``columns`` and implement ``_rows(preds, targets) -> list[dict[str, float]]``. States (reduced
    across DDP ranks): per-column ``total``, ``count`` and the per-sample rows ``values`` (concatenated).
    """

    full_state_update = False
    is_differentiable = False
    columns: tuple[str, ...] = ()
    primary: str = ""
    paired_test = "paired_t"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.zeros(len(self.columns), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def _rows(self, preds: list[Any], targets: list[Any]) -> list[dict[str, float]]:  # pragma: no cover
        raise NotImplementedError

    def update(self, preds: Sequence[Any], targets: Sequence[Any]) -> None:
        rows = self._rows(list(preds), list(targets))
        if not rows:
            return
        t = torch.tensor([[r[k] for k in self.columns] for r in rows], dtype=torch.float64)
        self.total += t.sum(0)
        self.count += t.shape[0]
        self.values.append(t)

    def compute(self) -> dict[str, Tensor]:
        n = int(self.count)
        means = self.total / n if n else torch.full_like(self.total, float("nan"))
        return {k: means[i] for i, k in enumerate(self.columns)}

    def per_sample(self, key: str | None = None) -> Tensor:
        """One column of the per-sample rows seen so far (default: ``primary``; after a sync: of all ranks)."""
        if isinstance(self.values, Tensor):
            vals = self.values
        elif self.values:
            vals = dim_zero_cat(self.values)
        else:
            vals = torch.zeros(0, len(self.columns), dtype=torch.float64)
        return vals[:, self.columns.index(key or self.primary)]


def as_path(p: str | os.PathLike | None) -> Path | None:
    return None if p is None else Path(os.path.expanduser(str(p)))
