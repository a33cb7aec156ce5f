"""BERTScore (bert-score package), SembScore (CheXbert), RadCliQ-v1 and its batched/cached per-sample scorer for the
GRPO report reward — all on tiny models built here, offline."""

from __future__ import annotations

import importlib.util
import math
import re
import time

import numpy as np
import pytest
import torch

from chexone.metrics._common import MissingExtraError, MissingWeightsError
from chexone.metrics.radcliq import RADCLIQ_FEATURES, RadCliQ, RadCliQScorer, radcliq_v1
from chexone.metrics.testing import simulated_ranks
from chexone.metrics.text import bleu2

needs_bert_score = pytest.mark.skipif(importlib.util.find_spec("bert_score") is None,
                                      reason="optional package bert-score not installed")

REFS = ["The heart size is normal. No pleural effusion.", "mild cardiomegaly with bilateral pleural effusions",
        "the lungs are clear.", "left lower lobe opacity is seen ."]
PREDS = ["heart size is normal. no effusion.", "moderate cardiomegaly", "", "left  lower lobe   opacity is seen ."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from chexone.metrics.tiny import (
        build_tiny_bert,
        build_tiny_chexbert,
        build_tiny_roberta,
    )

    root = tmp_path_factory.mktemp("report-metrics")
    roberta = build_tiny_roberta(root / "roberta", seed=0)
    bert = build_tiny_bert(root / "bert", seed=0)
    chexbert = build_tiny_chexbert(root / "chexbert.pth", bert, seed=0)
    baseline = root / "baseline.tsv"  # same format as bert-score's shipped files, values of our own
    baseline.write_text("LAYER,P,R,F\n0,0.1,0.2,0.3\n1,0.4,0.45,0.42\n2,0.5,0.52,0.51\n3,0.6,0.6,0.6\n")
    return {"root": root, "roberta": str(roberta), "bert": str(bert), "chexbert": str(chexbert),
            "baseline": str(baseline)}


# ------------------------------------------------------------------------------------------------ BERTScore
def hand_bertscore(model_dir: str, layer: int, cand: str, ref: str, baseline_f: float,
                   idf_sents: list[str] | None = None) -> float:
    """Greedy cosine matching written out: RoBERTa tokens of " " + text (prefix space, as bert-score under
    transformers 4), layer ``layer`` hidden states, special tokens weigh 0 but can be matched (without idf), or
    idf weights log((M + 1) / (df + 1)) over ``idf_sents`` (BERTScorer's, special tokens included); F rescaled."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()

    def ids_of(text):
        return tok(" " + re.sub(" +", " ", text).strip(), return_tensors="pt")["input_ids"]

    def embed(text):
        ids = ids_of(text)
        with torch.no_grad():
            h = model(ids, output_hidden_states=True).hidden_states[layer][0]
        return ids[0], h / h.norm(dim=-1, keepdim=True)

    ci, ce = embed(cand)
    ri, re_ = embed(ref)
    sim = ce @ re_.T
    special = {tok.cls_token_id, tok.sep_token_id}
    if idf_sents is None:
        def weight(i):
            return 0.0 if i in special else 1.0
    else:
        df: dict[int, int] = {}
        for s in idf_sents:
            for i in set(ids_of(s)[0].tolist()):
                df[i] = df.get(i, 0) + 1

        def weight(i):
            return math.log((len(idf_sents) + 1) / (df.get(i, 0) + 1))
    wc = torch.tensor([weight(int(i)) for i in ci])
    wr = torch.tensor([weight(int(i)) for i in ri])
    p = float((sim.max(1).values * wc).sum() / wc.sum())
    r = float((sim.max(0).values * wr).sum() / wr.sum())
    f = 2 * p * r / (p + r)
    return (f - baseline_f) / (1 - baseline_f)


@needs_bert_score
def test_bertscore_matches_hand_computed_greedy_cosine(models):
    from chexone.metrics.bertscore import BERTScore

    m = BERTScore(models["roberta"], num_layers=2, baseline_path=models["baseline"], device="cpu")
    got = m.score(REFS[:2], PREDS[:2])  # any order of lengths in the batch
    for (c, r), g in zip(zip(REFS[:2], PREDS[:2]), got):
        assert g == pytest.approx(hand_bertscore(models["roberta"], 2, c, r, 0.51), abs=1e-5)
    # the pair scores do not depend on the batch they are scored in
    alone = BERTScore(models["roberta"], num_layers=2, baseline_path=models["baseline"], device="cpu",
                      cache_size=0).score(REFS[1:2], PREDS[1:2])
    assert alone[0] == pytest.approx(got[1], abs=1e-5)
    m.update(PREDS, REFS)  # includes an empty prediction and runs of spaces
    vals = m.per_sample()
    assert len(vals) == 4 and torch.isfinite(vals).all()
    # an empty candidate scores raw 0 in bert-score, then rescaled: (0 - 0.51) / (1 - 0.51)
    assert float(vals[2]) == pytest.approx(-0.51 / 0.49, abs=1e-6)
    # runs of spaces are collapsed (ReXRank): same score as the single-spaced text
    assert float(vals[3]) == pytest.approx(m.score(["left lower lobe opacity is seen ."], [REFS[3]])[0], abs=1e-6)
    assert float(m.compute()) == pytest.approx(float(vals.mean()))


@needs_bert_score
def test_bertscore_idf_no_rescaling_and_shipped_baseline_lookup(models, tmp_path):
    from chexone.metrics.bertscore import BERTScoreScorer, shipped_baseline

    raw = BERTScoreScorer(models["roberta"], 2, rescale_with_baseline=False, device="cpu")
    f = raw.score(REFS[:1], PREDS[:1])[0]
    assert f == pytest.approx(hand_bertscore(models["roberta"], 2, REFS[0], PREDS[0], 0.0), abs=1e-5)
    idf = BERTScoreScorer(models["roberta"], 1, rescale_with_baseline=False, idf=True, idf_sents=REFS,
                          device="cpu")
    f = idf.score(PREDS[:1], REFS[:1])[0]
    assert f == pytest.approx(hand_bertscore(models["roberta"], 1, PREDS[0], REFS[0], 0.0, idf_sents=REFS),
                              abs=1e-5)
    with pytest.raises(ValueError, match="idf_sents"):
        BERTScoreScorer(models["roberta"], 1, rescale_with_baseline=False, idf=True)
    assert shipped_baseline("distilroberta-base") is not None
    # a local copy named like its hub id finds the shipped ReXRank baseline
    import shutil

    local = tmp_path / "distilroberta-base"
    shutil.copytree(models["roberta"], local)
    assert BERTScoreScorer(str(local), 2, device="cpu").baseline_path == shipped_baseline("distilroberta-base")
    with pytest.raises(MissingWeightsError, match="baseline_path"):
        BERTScoreScorer(models["roberta"], 2, device="cpu")


# ------------------------------------------------------------------------------------------------ SembScore
def test_semb_score_matches_an_independent_chexbert_forward(models):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from chexone.metrics.semb import SembScore

    m = SembScore(models["chexbert"], models["bert"], device="cpu", batch_size=3)
    got = m.score(PREDS, REFS)

    state = torch.load(models["chexbert"], weights_only=True)["model_state_dict"]
    bert = BertModel(BertConfig.from_pretrained(models["bert"])).eval()
    bert.load_state_dict({k[len("module.bert."):]: v for k, v in state.items() if k.startswith("module.bert.")},
                         strict=False)
    tok = AutoTokenizer.from_pretrained(models["bert"])

    def cls(text):
        text = " ".join(text.split())
        ids = tok(text)["input_ids"] if text else [tok.cls_token_id, tok.sep_token_id]
        with torch.no_grad():
            return bert(torch.tensor([ids]))[0][0, 0]

    for p, r, g in zip(PREDS, REFS, got):
        a, b = cls(p), cls(r)
        assert g == pytest.approx(float((a @ b) / (a.norm() * b.norm())), abs=1e-5)
    assert m.score(REFS[:1], REFS[:1])[0] == pytest.approx(1.0, abs=1e-6)


def test_chexbert_loading_is_strict(models, tmp_path):
    from chexone.metrics.semb import load_chexbert

    state = torch.load(models["chexbert"], weights_only=True)["model_state_dict"]
    extra = dict(state, **{"module.extra.weight": torch.zeros(1)})
    torch.save({"model_state_dict": extra}, tmp_path / "extra.pth")
    with pytest.raises(RuntimeError, match="unexpected keys.*extra.weight"):
        load_chexbert(str(tmp_path / "extra.pth"), models["bert"])
    missing = {k: v for k, v in state.items() if "linear_heads.13" not in k}
    torch.save({"model_state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(RuntimeError, match="missing keys.*linear_heads.13"):
        load_chexbert(str(tmp_path / "missing.pth"), models["bert"])


# ------------------------------------------------------------------------------------------------ RadCliQ
class CountingScorer:
    """A component that counts the pairs it is asked to score (stands in for RadGraph in the caching test)."""

    def __init__(self):
        self.calls: list[int] = []

    def score(self, preds, refs):
        self.calls.append(len(preds))
        return [len(set(p.split()) & set(r.split())) / max(1, len(set(r.split()))) for p, r in zip(preds, refs)]


@pytest.fixture(scope="module")
def radcliq_kwargs(models):
    return {"bertscore_model": models["roberta"], "bertscore_num_layers": 2, "bertscore_baseline_path":
            models["baseline"], "chexbert_path": models["chexbert"], "chexbert_bert_model": models["bert"],
            "device": "cpu"}


@needs_bert_score
def test_radcliq_scorer_combines_the_components_and_caches_pairs(models, radcliq_kwargs):
    from chexone.metrics.bertscore import BERTScoreScorer
    from chexone.metrics.semb import SembScorer

    rg = CountingScorer()
    scorer = RadCliQScorer(**radcliq_kwargs, radgraph_scorer=rg)
    comps = scorer.score_components(PREDS, REFS)
    bs = BERTScoreScorer(models["roberta"], 2, baseline_path=models["baseline"], device="cpu").score(PREDS, REFS)
    se = SembScorer(models["chexbert"], models["bert"], device="cpu").score(PREDS, REFS)
    for i, c in enumerate(comps):
        assert c["bleu"] == pytest.approx(bleu2(PREDS[i], REFS[i]))
        assert c["bertscore"] == pytest.approx(bs[i], abs=1e-5)
        assert c["semb_score"] == pytest.approx(se[i], abs=1e-5)
        assert c["radgraph_combined"] == pytest.approx(rg.score([PREDS[i]], [REFS[i]])[0])
        assert c["radcliq"] == pytest.approx(radcliq_v1(*(c[k] for k in RADCLIQ_FEATURES)))
    rg.calls.clear()
    scored = scorer.pairs_scored

    # a GRPO group: 8 completions for one reference, with repeats, plus pairs already seen
    group = ["mild cardiomegaly", "normal heart", "mild cardiomegaly", PREDS[0], "normal heart", "x", "x", "x"]
    q = scorer.score(group, [REFS[0]] * 8)
    assert scorer.pairs_scored - scored == 3  # the distinct pairs not cached yet ((PREDS[0], REFS[0]) is)
    assert rg.calls == [3]  # one batched call for them
    assert q[0] == q[2] and q[1] == q[4] and q[5] == q[6] == q[7]
    assert q[3] == comps[0]["radcliq"]
    assert scorer.score(group, [REFS[0]] * 8) == q and rg.calls == [3]  # all cached now
    assert scorer.cache_info["size"] == 7


@needs_bert_score
def test_report_reward_uses_the_registered_radcliq_scorer(models, radcliq_kwargs, monkeypatch):
    from chexone.data.sample import Sample
    from chexone.metrics import radcliq as radcliq_mod
    from chexone.rewards.builtin import _scorer, report_reward

    _scorer.cache_clear()  # the reward keeps one scorer per settings; build ours under the patch below
    rg = CountingScorer()
    original = radcliq_mod.RadCliQScorer.__init__

    def with_counting_radgraph(self, **kw):
        kw.setdefault("radgraph_scorer", rg)
        original(self, **kw)

    monkeypatch.setattr(radcliq_mod.RadCliQScorer, "__init__", with_counting_radgraph)
    samples = [Sample(id=f"r{i}", task="findings_generation", question="Findings?", answer=REFS[0]) for i in range(4)]
    responses = ["Reasoning. \\boxed{mild cardiomegaly}", "\\boxed{mild cardiomegaly}",
                 "Reasoning. \\boxed{the heart size is normal.}", "no box: the heart size is normal."]
    out = report_reward(responses, samples, metric="radcliq", metric_kwargs=dict(radcliq_kwargs))
    assert rg.calls == [3]  # one batch; the repeated completion was scored once
    ref_scorer = RadCliQScorer(**radcliq_kwargs)
    q = ref_scorer.score(["mild cardiomegaly", "mild cardiomegaly", "the heart size is normal.",
                          "no box: the heart size is normal."], [REFS[0]] * 4)
    assert out == pytest.approx([1 / (1 + math.exp(x)) for x in q], abs=1e-6)
    assert out[0] == out[1]


@needs_bert_score
def test_radcliq_metric_corpus_value_and_ddp(models, radcliq_kwargs):
    rg = CountingScorer()
    m = RadCliQ(scorer=RadCliQScorer(**radcliq_kwargs, radgraph_scorer=rg))
    m.update(PREDS, REFS)
    out = m.compute()
    q = m.per_sample()
    assert float(out["radcliq"]) == pytest.approx(float(q.mean()))
    assert float(out["inv_radcliq"]) == pytest.approx(1 / float(q.mean()))
    assert float(out["bleu"]) == pytest.approx(np.mean([bleu2(p, r) for p, r in zip(PREDS, REFS)]))
    assert RadCliQ.lower_is_better and m.score(PREDS[:1], REFS[:1]) == pytest.approx([float(q[0])])
    shared = m.scorer
    r0, r1 = simulated_ranks(lambda **kw: RadCliQ(scorer=shared, **kw), 2)
    r0.update(PREDS[:3], REFS[:3])
    r1.update(PREDS[3:], REFS[3:])
    assert float(r0.compute()["inv_radcliq"]) == pytest.approx(float(out["inv_radcliq"]))


# ------------------------------------------------------------------------------------------------ offline
@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _fails_fast(make, *words):
    t0 = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        make()
    assert time.perf_counter() - t0 < 1.0, "must fail before loading anything"
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_missing_chexbert_fails_fast_with_the_key_to_set(empty_caches, models):
    from chexone.metrics.semb import SembScore

    _fails_fast(lambda: SembScore(), "chexbert_path", "chexbert.pth")
    _fails_fast(lambda: SembScore(models["chexbert"]), "bert_model", "bert-base-uncased")


@needs_bert_score
def test_missing_weights_fail_fast_with_the_key_to_set(empty_caches, models):
    from chexone.metrics.bertscore import BERTScore

    _fails_fast(lambda: BERTScore(), "model_name_or_path", "distilroberta-base", "config.json", "HF_HUB_OFFLINE")
    _fails_fast(lambda: BERTScore(str(empty_caches / "missing-dir")), "model_name_or_path", "missing-dir")
    _fails_fast(lambda: RadCliQ(), "bertscore_model", "distilroberta-base")
    _fails_fast(lambda: RadCliQScorer(bertscore_model=models["roberta"], bertscore_num_layers=2,
                                      bertscore_baseline_path=models["baseline"]), "chexbert_path")


def test_ratescore_is_optional(empty_caches):
    import importlib.util

    from chexone.metrics.ratescore import RaTEScore

    if importlib.util.find_spec("RaTEScore") is None:
        t0 = time.perf_counter()
        with pytest.raises(MissingExtraError, match=r"chexone\[ratescore\]"):
            RaTEScore()
        assert time.perf_counter() - t0 < 1.0
        pytest.skip("optional extra 'ratescore' not installed")
    _fails_fast(lambda: RaTEScore(), "ner_model", "RaTE-NER-Deberta")
