"""Low-variance filtering: per-task variance ranking on a hand-made table; a real run on tiny shards; resume."""

import json

import pytest

from chexone.training.low_variance import ScoredSample, reward_variance, select_top_variance


def test_reward_variance_by_hand():
    assert reward_variance([1.0, 0.0, 1.0, 0.0]) == pytest.approx(0.25)
    assert reward_variance([2.0, None, 2.0]) == 0.0
    assert reward_variance([None, None]) == 0.0


def test_top_variance_within_each_task():
    table = [
        ScoredSample("a1", "close_vqa", "s0", 0.25, 0.5), ScoredSample("a2", "close_vqa", "s0", 0.00, 1.0),
        ScoredSample("a3", "close_vqa", "s1", 0.10, 0.4), ScoredSample("a4", "close_vqa", "s1", 0.20, 0.6),
        ScoredSample("a5", "close_vqa", "s1", 0.25, 0.5),  # ties with a1: broken by id
        ScoredSample("g1", "phrase_grounding", "s0", 0.01, 0.2), ScoredSample("g2", "phrase_grounding", "s1", 0.3, 0.3),
    ]
    kept, summary = select_top_variance(table, 0.4)
    # close_vqa: ceil(0.4 * 5) = 2 -> a1, a5 (0.25 each); grounding: ceil(0.8) = 1 -> g2. Not a global ranking:
    # a4 (0.20) is dropped although it beats g1.
    assert kept == {"a1", "a5", "g2"}
    assert summary["close_vqa"]["kept"] == 2 and summary["close_vqa"]["total"] == 5
    assert summary["close_vqa"]["zero_variance"] == 1
    assert summary["phrase_grounding"]["threshold"] == 0.3
    assert sum(summary["close_vqa"]["histogram"]["counts"]) == 5
    with pytest.raises(ValueError, match="keep_fraction"):
        select_top_variance(table, 0.0)


@pytest.fixture()
def tiny_shards(tmp_path, demo_shards):
    """Two small shards of demo test samples (4 each)."""
    from chexone.data.shards import build_eval_dataset
    from webdata.writer import ShardWriter

    samples = [s for s in build_eval_dataset(demo_shards["test"], task_filter=["close_vqa", "phrase_grounding"])][:8]
    out = tmp_path / "in"
    with ShardWriter(out, prefix="cand", max_samples_per_shard=4) as w:
        for s in samples:
            w.write(s)
    return out, [s.id for s in samples]


def test_filter_run_writes_shards_report_and_resumes(tmp_path, tiny_shards, cache_dir, tiny_dir, monkeypatch):
    from chexone.config.load import load_config
    from chexone.filter import run_filter
    from chexone.training import low_variance

    shard_dir, ids = tiny_shards
    out = tmp_path / "filtered"
    overrides = ["model=tiny", f"data.train={shard_dir}", f"filter.out={out}", "filter.num_generations=3",
                 "filter.max_completion_length=6", "filter.keep_fraction=0.5", "grpo.init_from=''",
                 f"output_dir={tmp_path}", "grpo.rewards=[{name: format},{name: vqa},{name: grounding_iou}]"]
    calls = []
    real = low_variance.VarianceScorer.score

    def counting(self, samples, shard):
        calls.append(shard)
        return real(self, samples, shard)

    monkeypatch.setattr(low_variance.VarianceScorer, "score", counting)
    result = run_filter(load_config("filter_low_variance", overrides))
    assert len(calls) == 2 and result["total"] == 8
    report = json.loads((out / "report.json").read_text())
    assert sum(t["total"] for t in report.values()) == 8
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["total"] == sum(t["kept"] for t in report.values()) == result["kept"]
    from chexone.data.shards import build_eval_dataset

    written = [s.id for s in build_eval_dataset(str(out / "shards"))]
    assert set(written) <= set(ids) and len(written) == result["kept"]
    assert "Variance histograms" in (out / "report.md").read_text()
    # Interrupted after the first shard: only the missing shard is scored again.
    first = sorted((out / "scores").glob("*.jsonl"))[0]
    before = first.read_text()
    sorted((out / "scores").glob("*.jsonl"))[1].unlink()
    calls.clear()
    run_filter(load_config("filter_low_variance", overrides))
    assert len(calls) == 1 and calls[0].endswith("cand-000001.tar")
    assert first.read_text() == before
