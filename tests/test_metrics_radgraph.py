"""RadGraph F1 through the real ``radgraph`` package code path (tiny random DyGIE archive built here), the
transformers-5 compatibility module, factuality, and fast offline failures."""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("radgraph", reason="optional extra 'radgraph' not installed")

from chexone.metrics import radgraph_compat
from chexone.metrics._common import MissingWeightsError
from chexone.metrics.radgraph import (
    RADGRAPH_KEYS,
    RadGraphAnnotator,
    RadGraphF1,
    RadGraphScorer,
)
from chexone.metrics.reasoning import Factuality, entity_set, factuality_score
from chexone.metrics.testing import simulated_ranks
from chexone.metrics.tiny import build_tiny_bert, build_tiny_radgraph

REPORTS = [
    "mild cardiomegaly with bilateral pleural effusions.",
    "the lungs are clear. no pneumothorax.",
    "left lower lobe opacity, likely atelectasis.",
    "stable mediastinal contours.",
]
PREDS = [
    "mild cardiomegaly. small left pleural effusion.",
    "the lungs are clear. no pneumothorax.",
    "no focal consolidation.",
    "",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("radgraph")
    bert = build_tiny_bert(root / "bert", save_model=False)
    model = build_tiny_radgraph(root / "rg", bert, model_type="radgraph", archive=True, seed=0)
    return {"root": root, "bert": str(bert), "model": model, "archive": root / "rg" / "radgraph.tar.gz"}


def test_package_is_the_version_the_compat_module_was_written_for():
    assert radgraph_compat.installed_version() == radgraph_compat.SUPPORTED_VERSION
    assert radgraph_compat.source_digests() == radgraph_compat.PATCHED_SOURCES, (
        "radgraph's sources changed: re-check chexone/metrics/radgraph_compat.py and update PATCHED_SOURCES")


def test_tokenizers_lack_the_removed_api_that_the_compat_module_restores(tiny):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tiny["bert"])
    if hasattr(plain, "encode_plus") and hasattr(plain, "build_inputs_with_special_tokens"):
        pytest.skip("this transformers version still has the API; the compat shim is a no-op")
    radgraph_compat.install()
    from radgraph.allennlp.common import cached_transformers

    tok = cached_transformers.get_tokenizer(tiny["bert"])
    assert tok.encode_plus("a", "b")["input_ids"] == plain("a", "b")["input_ids"]
    ids = plain("lungs clear", add_special_tokens=False)["input_ids"]
    assert tok.build_inputs_with_special_tokens(ids) == plain("lungs clear")["input_ids"]
    assert tok.build_inputs_with_special_tokens(ids, ids[:1]) == plain("lungs clear", "lungs")["input_ids"]


def test_real_package_annotates_offline_from_dir_and_archive(tiny):
    t0 = time.perf_counter()
    ann = RadGraphAnnotator("radgraph", str(tiny["model"]), tiny["bert"], device="cpu")
    out = ann.annotate(REPORTS + [""])
    assert time.perf_counter() - t0 < 20
    assert len(out) == 5 and out[-1]["entities"] == {}
    for text, a in zip(REPORTS, out):
        assert a["entities"], "the tiny model should label some spans"
        words = a["text"].split()
        for e in a["entities"].values():
            assert e["tokens"] == " ".join(words[e["start_ix"] : e["end_ix"] + 1])
            for rel_type, target in e["relations"]:
                assert rel_type in ("modify", "located_at", "suggestive_of") and target in a["entities"]
    # per-text cache: annotating again runs nothing new
    misses = ann._cache.misses
    assert ann.annotate(REPORTS[:2]) == out[:2] and ann._cache.misses == misses
    from_archive = RadGraphAnnotator("radgraph", str(tiny["archive"]), tiny["bert"], device="cpu")
    assert from_archive.annotate(REPORTS) == out[:4]


def cxr_report_metric_sets(annotation: dict) -> tuple[set, set]:
    """CXR-Report-Metric's parse_entity_relation, written out independently."""
    ents = annotation["entities"]
    entities = set()
    relations = set()
    for e in ents.values():
        entities.add((e["tokens"], e["label"]))
        for rel in e["relations"]:
            target = ents[rel[1]]
            relations.add(((e["tokens"], e["label"]), (target["tokens"], target["label"]), rel[0]))
    return entities, relations


def f1(test: set, retrieved: set) -> float:
    tp = len(test & retrieved)
    fp, fn = len(retrieved) - tp, len(test) - tp
    p = tp / (tp + fp) if tp + fp else 0
    r = tp / (tp + fn) if tp + fn else 0
    return 2 * p * r / (p + r) if p + r else 0


def test_scores_match_the_package_f1radgraph_and_radcliq_definitions(tiny):
    from radgraph import F1RadGraph

    metric = RadGraphF1("radgraph", str(tiny["model"]), tiny["bert"], device="cpu")
    metric.update(PREDS, REPORTS)
    rows = torch.stack([metric.per_sample(k) for k in RADGRAPH_KEYS], dim=1)
    # the package's own F1RadGraph (through the compat module) for simple / partial / complete
    f1rg = F1RadGraph(reward_level="all", model_type="radgraph", model_cache_dir=str(tiny["model"].parent))
    _, (simple, partial, complete), hyp_ann, ref_ann = f1rg(refs=REPORTS, hyps=PREDS)
    assert rows[:, 3].tolist() == pytest.approx(simple)
    assert rows[:, 4].tolist() == pytest.approx(partial)
    assert rows[:, 5].tolist() == pytest.approx(complete)
    # RadCliQ's entity / relation F1 on the package's annotations (the empty prediction scores 0)
    for i, (h, r) in enumerate(zip(hyp_ann, ref_ann)):
        he, hr = cxr_report_metric_sets(h)
        re_, rr = cxr_report_metric_sets(r)
        assert rows[i, 0] == pytest.approx(f1(re_, he))
        assert rows[i, 1] == pytest.approx(f1(rr, hr))
        assert rows[i, 2] == pytest.approx((f1(re_, he) + f1(rr, hr)) / 2)
    assert rows[3].tolist() == [0.0] * 6
    assert rows[1, 0] == 1.0  # identical texts
    out = metric.compute()
    assert set(out) == set(RADGRAPH_KEYS)
    assert float(out["radgraph_combined"]) == pytest.approx(float(rows[:, 2].mean()))
    assert metric.score(PREDS[:2], REPORTS[:2]) == pytest.approx(rows[:2, 2].tolist())

    # DDP-style reduction over two ranks, and merge_state
    r0, r1 = simulated_ranks(lambda **kw: RadGraphF1("radgraph", str(tiny["model"]), tiny["bert"], device="cpu",
                                                     **kw), 2)
    r0.update(PREDS[:1], REPORTS[:1])
    r1.update(PREDS[1:], REPORTS[1:])
    synced = r1.compute()
    for k in RADGRAPH_KEYS:
        assert float(synced[k]) == pytest.approx(float(out[k]))
    a = RadGraphF1("radgraph", str(tiny["model"]), tiny["bert"], device="cpu")
    b = RadGraphF1("radgraph", str(tiny["model"]), tiny["bert"], device="cpu")
    a.update(PREDS[:2], REPORTS[:2])
    b.update(PREDS[2:], REPORTS[2:])
    a.merge_state(b)
    assert float(a.compute()["entity_f1"]) == pytest.approx(float(out["entity_f1"]))


def test_stale_position_ids_in_old_archives_are_tolerated(tiny):
    legacy = build_tiny_radgraph(tiny["root"] / "legacy", tiny["bert"], legacy_position_ids=True, seed=1)
    assert any(k.endswith("position_ids") for k in torch.load(legacy / "weights.th", weights_only=True))
    scorer = RadGraphScorer("radgraph", str(legacy), tiny["bert"], device="cpu")
    assert len(scorer.score(PREDS, REPORTS)) == 4


def test_factuality_by_hand_and_with_a_radgraph_xl_model(tiny):
    fixed = {
        "r": {"entities": {"1": {"tokens": "Effusion", "label": "OBS-DP", "relations": []},
                           "2": {"tokens": "left  lung", "label": "ANAT-DP", "relations": []},
                           "3": {"tokens": "edema", "label": "OBS-DA", "relations": []}}},
        "ref": {"entities": {"1": {"tokens": "effusion", "label": "OBS-DP", "relations": []},
                             "2": {"tokens": "left lung", "label": "ANAT-DP", "relations": []},
                             "3": {"tokens": "edema", "label": "OBS-DP", "relations": []}}},
        "none": {"entities": {}},
    }
    texts = {"reasoning \\boxed{(A)}": "r", "report": "ref", "nothing": "none"}
    seen = []

    def extractor(batch):
        seen.extend(batch)
        return [fixed[texts.get(t, texts.get(t + " \\boxed{(A)}", "none"))] if t in texts else fixed["r"]
                for t in batch]

    m = Factuality(extractor=extractor)
    m.update(["reasoning \\boxed{(A)}", "nothing"], ["report", "report"])
    assert seen[0] == "reasoning "  # only the text before the box is scored
    assert m.per_sample().tolist() == pytest.approx([2 / 3])  # edema present vs absent does not match
    assert int(m.no_entities) == 1
    assert factuality_score(entity_set(fixed["r"], "tokens"), entity_set(fixed["ref"], "tokens")) == 1.0

    xl = build_tiny_radgraph(tiny["root"] / "xl", tiny["bert"], model_type="radgraph-xl", seed=2)
    fact = Factuality("radgraph-xl", str(xl), tiny["bert"], device="cpu")
    fact.update(PREDS[:3], REPORTS[:3])
    ann = RadGraphAnnotator("radgraph-xl", str(xl), tiny["bert"], device="cpu").annotate(PREDS[:3] + REPORTS[:3])
    expected = [factuality_score(entity_set(ann[i]), entity_set(ann[3 + i])) for i in range(3)]
    assert fact.per_sample().tolist() == pytest.approx([e for e in expected if e is not None])
    assert expected[1] == 1.0  # identical texts


def test_missing_weights_fail_fast_with_the_key_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for make, words in [
        (lambda: RadGraphF1(), ("radgraph_model_dir", "radgraph.tar.gz", "HF_HUB_OFFLINE")),
        (lambda: RadGraphF1(radgraph_model_dir=str(tmp_path / "nope")), ("radgraph_model_dir", "nope")),
        (lambda: Factuality(), ("radgraph_model_dir", "radgraph-xl.tar.gz")),
    ]:
        t0 = time.perf_counter()
        with pytest.raises(MissingWeightsError) as err:
            make()
        assert time.perf_counter() - t0 < 1.0
        for w in words:
            assert w in str(err.value)
