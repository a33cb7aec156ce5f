"""Tiny random stand-ins for RadCliQ's component models, built once into the chexone cache for the offline demo.

The stage-2 demo scores its report prompts with the real report reward (``report_reward`` -> ``radcliq`` ->
BERTScore + SembScore + RadGraph + BLEU-2), but the real component weights (distilroberta-base, CheXbert, the
RadGraph DyGIE model) are downloads, one of them behind a PhysioNet credential. This module builds the same kinds of
files from :mod:`chexone.metrics.tiny` (a small RoBERTa for BERTScore with a baseline file, a tiny BERT with a
``chexbert.pth`` checkpoint, a random DyGIE archive), with vocabularies taken from the demo report templates so the
scorers tell the demo's words apart, and returns the ``radcliq`` settings that point at them.

The scores are NOT clinically meaningful: random models only turn text overlap into numbers (BLEU-2 is the real
formula). What the demo shows is the reward's code path and that the policy learns from it.

Select it with ``metric_kwargs: {demo_scorers: <dir>}`` on the ``report`` reward (``recipes/data/demo.yaml``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from chexone.cache import cache_lock

__all__ = ["DEMO_SCORERS_BANNER", "DEMO_SCORERS_VERSION", "demo_report_sentences", "demo_scorer_settings",
           "ensure_demo_scorers"]

#: Bump when the built files change: a cache of another version is rebuilt.
DEMO_SCORERS_VERSION = 2
DEMO_SCORERS_BANNER = "report reward: RadCliQ composite over tiny random DEMO scorers, not clinically meaningful"
#: The BERTScore layer of the tiny RoBERTa (it has 3).
BERTSCORE_LAYER = 2
#: Rescaling baseline of the tiny BERTScore (P, R, F per layer; the same file format as bert-score's): a fixed value
#: below the typical score of two unrelated demo reports, so that the rescaled feature spreads over roughly [0, 1].
BASELINE_F = 0.85
#: Init std of the tiny BERT behind SembScore and RadGraph (see ``_build``).
INIT_RANGE = 0.2
#: Positions of the tiny models: 512 like the real BERT/RoBERTa (and RadGraph's ``max_length``), so a long answer (a
#: whole unboxed response) is scored as a real run would score it, not rejected.
MAX_POSITIONS = 512


def demo_report_sentences(n: int = 400, seed: int = 0) -> list[str]:
    """Sentences of the demo's report answers (findings, impressions, interval changes), deterministic in ``seed``.

    Built from phantom descriptions without rendering any image, so it takes milliseconds."""
    import numpy as np

    from chexone.data.demo.generate import findings_text, impression_text
    from chexone.data.demo.phantom import random_phantom

    rng = np.random.default_rng([seed, 7])
    texts: set[str] = set()
    for i in range(n):
        ph = random_phantom(rng, ("PA", "AP", "Lateral")[i % 3], p=0.5)
        texts.update(findings_text(ph).split(". "))
        texts.update(impression_text(ph).split(". "))
    for side in ("left", "right"):
        for thing in (f"{side} pleural effusion", f"{side} upper lung nodule", f"{side} lower lung nodule"):
            texts.update({f"Interval increase in the size of the {thing}", f"Interval decrease in the size of the "
                          f"{thing}", f"Stable {thing}", f"New {thing}", f"Interval resolution of the {thing}"})
    texts.update({"Enlarged heart, unchanged", "Heart size is unchanged"})
    return sorted(t.strip().rstrip(".") + " ." for t in texts if t.strip())


def _words(sentences: list[str]) -> list[str]:
    from chexone.metrics.tiny import TINY_WORDS

    found = {w for s in sentences for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", s.lower())}
    return list(TINY_WORDS) + sorted(found - set(TINY_WORDS))


def _settings(root: Path) -> dict[str, Any]:
    return {
        "bertscore_model": str(root / "roberta"),
        "bertscore_num_layers": BERTSCORE_LAYER,
        "bertscore_baseline_path": str(root / "bertscore-baseline.tsv"),
        "chexbert_path": str(root / "chexbert.pth"),
        "chexbert_bert_model": str(root / "bert"),
        "radgraph_model_dir": str(root / "radgraph" / "radgraph"),
        "radgraph_backbone_path": str(root / "bert"),
        "device": "cpu",
    }


def _build(root: Path) -> None:
    from chexone.metrics.tiny import build_tiny_bert, build_tiny_chexbert, build_tiny_radgraph, build_tiny_roberta

    sentences = demo_report_sentences()
    build_tiny_roberta(root / "roberta", sentences=sentences, seed=0, vocab_size=600, max_positions=MAX_POSITIONS)
    layers = BERTSCORE_LAYER + 1
    rows = "".join(f"{i},{BASELINE_F},{BASELINE_F},{BASELINE_F}\n" for i in range(layers + 1))
    (root / "bertscore-baseline.tsv").write_text("LAYER,P,R,F\n" + rows)
    bert = build_tiny_bert(root / "bert", words=_words(sentences), seed=0, max_positions=MAX_POSITIONS)
    # BERT's default init (std 0.02) leaves a tiny random model's [CLS] embedding the same for every text (SembScore
    # 1.0 throughout); a wider init makes it depend on the words. Only the random init reads this value.
    config = json.loads((bert / "config.json").read_text())
    config["initializer_range"] = INIT_RANGE
    (bert / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    build_tiny_chexbert(root / "chexbert.pth", bert, seed=0)
    build_tiny_radgraph(root / "radgraph", bert, model_type="radgraph", backbone_hub_id="chexone-demo/bert", seed=0)


#: Files every complete build holds (relative to its root): checked before a build is used, so a damaged one is
#: rebuilt instead of failing later inside a scorer's loader.
REQUIRED_FILES = ("manifest.json", "bertscore-baseline.tsv", "chexbert.pth", "roberta/config.json",
                  "roberta/model.safetensors", "roberta/tokenizer.json", "bert/config.json", "bert/model.safetensors",
                  "bert/vocab.txt", "radgraph/radgraph/config.json", "radgraph/radgraph/weights.th")


def _complete(root: Path) -> bool:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("version") == DEMO_SCORERS_VERSION and all((root / f).is_file() for f in REQUIRED_FILES)


def ensure_demo_scorers(directory: str | os.PathLike) -> Path:
    """Build the tiny scorer models into ``directory/v<version>`` once and return that path.

    Safe for concurrent callers (threads, ranks, runs): the build happens in a private directory, manifest included,
    under a lock file, and appears under its final name by one atomic rename, so a reader sees either no build or a
    complete one. A complete build is never modified or deleted in place; a damaged one (files missing) is first
    renamed aside, so a process still reading it keeps its open files."""
    root = Path(os.path.expanduser(str(directory))).absolute() / f"v{DEMO_SCORERS_VERSION}"
    if _complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(root.parent / f".{root.name}.lock"):
        if _complete(root):
            return root
        for left in [*root.parent.glob(f".{root.name}.tmp-*"), *root.parent.glob(f".{root.name}.stale-*")]:
            shutil.rmtree(left, ignore_errors=True)  # left by a builder that was killed (we hold the lock)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = root.parent / f".{root.name}.tmp-{tag}"
        stale = root.parent / f".{root.name}.stale-{tag}"
        try:
            _build(tmp)
            missing = [f for f in REQUIRED_FILES if f != "manifest.json" and not (tmp / f).is_file()]
            if missing:
                raise RuntimeError(f"building the demo report scorers in {tmp} wrote no {', '.join(missing)}")
            # the manifest names the final paths and is written before the rename: its presence means complete
            (tmp / "manifest.json").write_text(json.dumps({"version": DEMO_SCORERS_VERSION,
                                                           "settings": _settings(root)}, indent=1) + "\n")
            if root.exists():  # damaged or outdated (we hold the lock): move it out of the way in one step
                os.rename(root, stale)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(stale, ignore_errors=True)
    return root


@lru_cache(maxsize=4)
def demo_scorer_settings(directory: str, metric: str = "radcliq") -> dict[str, Any]:
    """The ``radcliq`` settings (``metric_kwargs``) of the demo scorers in ``directory``, built on first use.

    Says on stdout, once per process, that the report reward runs on random demo models."""
    if metric != "radcliq":
        raise ValueError(f"metric_kwargs.demo_scorers stands in for the component models of 'radcliq' only; the "
                         f"report reward's metric is {metric!r}")
    missing = [extra for extra, module in (("metrics", "bert_score"), ("radgraph", "radgraph"))
               if importlib.util.find_spec(module) is None]
    if missing:
        from chexone.metrics._common import MissingExtraError

        raise MissingExtraError(
            f"the demo report reward (RadCliQ over tiny demo scorers) needs the optional extras {', '.join(missing)}: "
            "pip install -c constraints.txt -e \".[dev,metrics,radgraph]\" (the README's install line), or leave the "
            "report reward out: grpo.rewards='[{name: format}, {name: vqa}, {name: grounding_iou}]'")
    fresh = not _complete(Path(os.path.expanduser(directory)).absolute() / f"v{DEMO_SCORERS_VERSION}")
    root = ensure_demo_scorers(directory)
    print(f"{DEMO_SCORERS_BANNER} ({'built now' if fresh else 'cached'} in {root}: a {BERTSCORE_LAYER + 1}-layer "
          "RoBERTa for BERTScore, a 2-layer BERT for SembScore's CheXbert and RadGraph's DyGIE, BLEU-2 as it is)",
          file=sys.stdout, flush=True)
    return _settings(root)
