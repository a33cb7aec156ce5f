"""RadGraph F1 through the ``radgraph`` package (loaded by :mod:`chexone.metrics.radgraph_compat`).

Scores per (prediction, reference), from the package's annotations of both texts:

* RadCliQ's (CXR-Report-Metric ``radgraph_evaluate_model.py``): entities = {(tokens, label)}, relations =
  {((tokens, label), (tokens, label), relation type)}; ``entity_f1`` and ``relation_f1`` = F1 of those sets (0 when
  precision + recall is 0), ``radgraph_combined`` = their mean. RadCliQ uses it with the original ``radgraph`` model.
* The package's ``F1RadGraph`` levels ``simple``, ``partial`` and ``complete`` (``radgraph.rewards.compute_reward``;
  0 when either text has no entity). ``F1RadGraph(reward_level="partial")`` is *not* ``radgraph_combined``.

An empty or whitespace-only text has no entities (the model is not run on it; F1RadGraph also scores such pairs 0).

Weights (``model_type`` "radgraph" | "radgraph-xl" | ...): ``radgraph_model_dir`` = a directory holding
``config.json``, ``vocabulary/`` and ``weights.th`` (the archive's content; one level of nesting is accepted) or the
``<model_type>.tar.gz`` archive itself. Default: the package's own cache, then the Hugging Face cache of hub repo
``StanfordAIMI/RRG_scorers``. ``backbone_path`` = a local directory with the config and tokenizer of the BERT named in
``config.json`` (its weights come from ``weights.th``); default: that hub id from the Hugging Face cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from chexone.metrics._common import (
    TOKENIZER_FILES,
    ColumnMeanMetric,
    LRUCache,
    MissingExtraError,
    MissingWeightsError,
    cached_batch,
    check_pairs,
    hf_offline,
    resolve_pretrained,
)

__all__ = [
    "RADGRAPH_KEYS",
    "RadGraphAnnotator",
    "RadGraphF1",
    "RadGraphScorer",
    "entity_relation_sets",
    "radgraph_scores",
    "set_f1",
]

RADGRAPH_REPO = "StanfordAIMI/RRG_scorers"
#: Per-sample values RadGraphF1 reports, in state order.
RADGRAPH_KEYS = ("entity_f1", "relation_f1", "radgraph_combined", "simple", "partial", "complete")
EMPTY_ANNOTATION: dict[str, Any] = {"text": "", "entities": {}}


def set_f1(test: set, retrieved: set) -> float:
    """RadCliQ's F1 of two sets (0 when there is no true positive)."""
    tp = len(test & retrieved)
    p = tp / len(retrieved) if retrieved else 0.0
    r = tp / len(test) if test else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def entity_relation_sets(annotation: dict) -> tuple[set, set]:
    """RadCliQ's entity and relation sets of one annotation (``{"entities": {id: {tokens, label, relations}}}``)."""
    ents = annotation.get("entities", {}) or {}
    entities = {(e["tokens"], e["label"]) for e in ents.values()}
    relations = set()
    for e in ents.values():
        for rel_type, target in e.get("relations", []):
            t = ents.get(str(target))
            if t is not None:
                relations.add(((e["tokens"], e["label"]), (t["tokens"], t["label"]), rel_type))
    return entities, relations


def radgraph_scores(hyp: dict, ref: dict, *, package_levels: bool = True) -> dict[str, float]:
    """All RadGraph values of one (hypothesis, reference) pair of annotations (see the module docstring)."""
    he, hr = entity_relation_sets(hyp)
    re_, rr = entity_relation_sets(ref)
    ent, rel = set_f1(re_, he), set_f1(rr, hr)
    out = {"entity_f1": ent, "relation_f1": rel, "radgraph_combined": (ent + rel) / 2}
    if package_levels:
        from radgraph.rewards import compute_reward

        simple, partial, complete = compute_reward(hyp, ref, "all")
        out.update(simple=float(simple), partial=float(partial), complete=float(complete))
    return out


def _package_cache_dir(model_type: str) -> Path | None:
    """radgraph's default ``<user cache>/radgraph/<version>/<model_type>`` if it holds files."""
    try:
        version = importlib.metadata.version("radgraph")
        from appdirs import user_cache_dir
    except Exception:
        return None
    d = Path(user_cache_dir("radgraph")) / version / model_type
    return d if d.is_dir() and any(d.iterdir()) else None


@lru_cache(maxsize=4)
def _cached_model(model_dir: str, model_type: str, backbone: str | None, device: str) -> Any:
    from chexone.metrics import radgraph_compat

    return radgraph_compat.load_radgraph(model_dir, model_type=model_type, backbone_dir=backbone, device=device)


class RadGraphAnnotator:
    """Annotates texts with the ``radgraph`` package's model, caching annotations per text.

    Args:
        model_type: "radgraph" (RadCliQ), "radgraph-xl" (factuality), ...
        radgraph_model_dir: local model directory or ``.tar.gz`` archive (see module docstring).
        backbone_path: local directory with the backbone's config and tokenizer.
        device: "cpu", "cuda", "cuda:1"; default cuda if available.
        cache_size: texts whose annotations are kept.
    """

    def __init__(self, model_type: str = "radgraph", radgraph_model_dir: str | None = None,
                 backbone_path: str | None = None, *, device: str | None = None, cache_size: int = 65536,
                 key_names: dict[str, str] | None = None):
        from chexone.metrics.radgraph_compat import MODEL_TYPES, model_root_for

        keys = {"radgraph_model_dir": "radgraph_model_dir", "backbone_path": "backbone_path", **(key_names or {})}
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={model_type!r}; radgraph knows {', '.join(MODEL_TYPES)}")
        if importlib.util.find_spec("radgraph") is None:
            raise MissingExtraError("RadGraph needs the optional package 'radgraph' (0.1.18). Install it with: "
                                    "pip install 'chexone[radgraph]'")
        self.model_type = model_type
        what = f"RadGraph ({model_type})"
        if radgraph_model_dir:
            p = Path(os.path.expanduser(str(radgraph_model_dir)))
            if not p.exists():
                raise MissingWeightsError(f"{what}: {str(p)!r} does not exist. Set `{keys['radgraph_model_dir']}` to "
                                          f"a directory with config.json, vocabulary/ and weights.th (or the "
                                          f"{model_type}.tar.gz archive).")
            try:
                root = model_root_for(p)
            except FileNotFoundError as exc:
                raise MissingWeightsError(f"{what}: {exc}. Set `{keys['radgraph_model_dir']}` to a directory with "
                                          f"config.json, vocabulary/ and weights.th.") from exc
        else:
            root = _package_cache_dir(model_type)
            if root is None:
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(RADGRAPH_REPO, f"{model_type}.tar.gz")
                if isinstance(hit, str) and os.path.exists(hit):
                    root = model_root_for(hit)
                elif not hf_offline():
                    from huggingface_hub import hf_hub_download

                    try:
                        root = model_root_for(hf_hub_download(RADGRAPH_REPO, f"{model_type}.tar.gz"))
                    except Exception as exc:
                        raise MissingWeightsError(
                            f"{what}: could not download {model_type}.tar.gz from {RADGRAPH_REPO} "
                            f"({type(exc).__name__}: {exc}). Set `{keys['radgraph_model_dir']}` to a local copy."
                        ) from exc
            if root is None:
                raise MissingWeightsError(
                    f"{what}: no local model ({model_type}.tar.gz from hub {RADGRAPH_REPO} is neither in radgraph's "
                    f"cache nor in the Hugging Face cache"
                    f"{' and downloads are off (HF_HUB_OFFLINE=1)' if hf_offline() else ''}). Set "
                    f"`{keys['radgraph_model_dir']}` to a directory with config.json, vocabulary/ and weights.th "
                    f"(or the archive).")
            root = model_root_for(root)
        for need in ("config.json", "weights.th", "vocabulary"):
            if not (root / need).exists():
                raise MissingWeightsError(f"{what}: {root / need} is missing. Set `{keys['radgraph_model_dir']}` to "
                                          f"a complete model directory.")
        self.model_dir = str(root)
        cfg = json.loads((root / "config.json").read_text())
        hub_id = cfg["model"]["embedder"]["token_embedders"]["bert"]["model_name"]
        self.backbone_name = hub_id
        if backbone_path:
            self.backbone = resolve_pretrained(backbone_path, key=keys["backbone_path"],
                                               what=f"{what} backbone ({hub_id}) config/tokenizer",
                                               need=(("config.json",), TOKENIZER_FILES))
        else:
            resolved = resolve_pretrained(hub_id, key=keys["backbone_path"],
                                          what=f"{what} backbone ({hub_id}) config/tokenizer",
                                          need=(("config.json",), TOKENIZER_FILES))
            self.backbone = resolved if os.path.isdir(resolved) else None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._cache = LRUCache(cache_size)

    def _model(self) -> Any:
        return _cached_model(self.model_dir, self.model_type, self.backbone, str(self.device))

    def _annotate_uncached(self, texts: list[str]) -> list[dict]:
        out: list[dict | None] = [None] * len(texts)
        run = [i for i, t in enumerate(texts) if str(t).strip()]
        if run:
            with torch.no_grad():
                result = self._model()([texts[i] for i in run])
            for j, i in enumerate(run):
                out[i] = result.get(str(j), EMPTY_ANNOTATION)  # the package skips documents it fails on
        return [o if o is not None else EMPTY_ANNOTATION for o in out]

    def annotate(self, texts: Sequence[str]) -> list[dict]:
        """The package's annotation of each text (``{"text", "entities": {id: {tokens, label, relations}}}``)."""
        return cached_batch(self._cache, [str(t) for t in texts], self._annotate_uncached)


class RadGraphScorer:
    """Per-sample RadGraph values of (prediction, reference) pairs, from cached annotations."""

    higher_is_better = True
    lower_is_better = False

    def __init__(self, model_type: str = "radgraph", radgraph_model_dir: str | None = None,
                 backbone_path: str | None = None, *, device: str | None = None, cache_size: int = 65536,
                 key_names: dict[str, str] | None = None, annotator: RadGraphAnnotator | None = None):
        self.annotator = annotator or RadGraphAnnotator(model_type, radgraph_model_dir, backbone_path, device=device,
                                                        cache_size=cache_size, key_names=key_names)

    def score_all(self, preds: Sequence[str], refs: Sequence[str], *, package_levels: bool = True
                  ) -> list[dict[str, float]]:
        check_pairs(preds, refs)
        ann = self.annotator.annotate(list(preds) + list(refs))
        n = len(preds)
        return [radgraph_scores(ann[i], ann[n + i], package_levels=package_levels) for i in range(n)]

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        """``radgraph_combined`` per pair (the RadCliQ feature)."""
        return [s["radgraph_combined"] for s in self.score_all(preds, refs, package_levels=False)]


class RadGraphF1(ColumnMeanMetric):
    """Mean RadGraph values: ``compute()`` returns a dict with ``RADGRAPH_KEYS`` (primary: ``radgraph_combined``).

    Settings as :class:`RadGraphAnnotator`. States: per-key sums, count (sum) and per-sample rows (cat).
    """

    higher_is_better = True
    lower_is_better = False
    primary = "radgraph_combined"
    columns = tuple(RADGRAPH_KEYS)

    def __init__(self, model_type: str = "radgraph", radgraph_model_dir: str | None = None,
                 backbone_path: str | None = None, *, device: str | None = None, cache_size: int = 65536,
                 primary: str = "radgraph_combined", **kwargs: Any):
        super().__init__(**kwargs)
        if primary not in RADGRAPH_KEYS:
            raise ValueError(f"primary={primary!r}; choose one of {RADGRAPH_KEYS}")
        self.primary = primary
        self.scorer = RadGraphScorer(model_type, radgraph_model_dir, backbone_path, device=device,
                                     cache_size=cache_size)

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
        return [s[self.primary] for s in self.scorer.score_all(preds, refs)]

    def _rows(self, preds: list[str], targets: list[str]) -> list[dict[str, float]]:
        return self.scorer.score_all(preds, targets)
