"""The stage-2 demo's ingredients: task-specific reasoning traces in the demo data (each ends in the answer shape the
rewards parse), a stage-1 model trained briefly on them that answers grounding prompts with boxes in reasoning mode,
the offline demo report scorer on the real report reward -> RadCliQ path, and the end-of-run reward trend."""

from __future__ import annotations

import importlib.util
import math
import re

import pytest

from chexone.data.demo.generate import MAKERS, TASK_STEPS, make_sample
from chexone.rewards.builtin import format_reward, grounding_iou_reward, report_reward, vqa_reward
from chexone.tasks import get_task
from chexone.tasks.answers import extract_boxed, parse_boxes

GROUNDING = ("phrase_grounding", "abnormality_grounding")


def traced_samples(per_task: int = 6, split: str = "val") -> list:
    """At least ``per_task`` samples with a reasoning trace for every built-in task (indices walked in order)."""
    out = []
    for task in MAKERS:
        found, index = 0, 0
        while found < per_task:
            s = make_sample(split, index, task, index)
            index += 1
            if s.reasoning:
                out.append(s)
                found += 1
    return out


@pytest.fixture(scope="module")
def traced():
    return traced_samples()


def steps_of(trace: str) -> list[str]:
    return re.findall(r"^\d+\. (.*)$", trace, flags=re.M)


# --------------------------------------------------------------------------- traces


def test_every_trace_is_well_formed_and_starts_with_its_task(traced):
    assert format_reward([s.reasoning for s in traced], traced) == [1.0] * len(traced)
    first_words = {}
    for s in traced:
        steps = steps_of(s.reasoning)
        assert len(steps) >= 2, s.reasoning
        assert steps[0] == TASK_STEPS[s.task].format(name=s.meta.get("ref_name", "")), (s.id, steps[0])
        first_words.setdefault(get_task(s.task).family, set()).add(steps[0].split()[0])
    # the first word of the reasoning already tells the answer shapes apart (no word shared between families)
    families = list(first_words)
    for i, a in enumerate(families):
        for b in families[i + 1:]:
            assert not first_words[a] & first_words[b], (a, b, first_words)


def test_traces_end_in_the_answer_shape_the_rewards_parse(traced):
    for s in traced:
        family = get_task(s.task).family
        boxed = extract_boxed(s.reasoning)
        assert boxed == get_task(s.task).answer_text(s), s.reasoning
        if family == "multiple_choice":
            assert vqa_reward([s.reasoning], [s]) == [1.0]
            assert steps_of(s.reasoning)[-1] == f"Therefore the answer is: {boxed}"
        elif family == "grounding":
            truth = s.meta["boxes"]
            if truth:
                assert grounding_iou_reward([s.reasoning], [s]) == [1.0]
                # the last step names the same corners the boxed answer holds, in the same notation
                corners = [tuple(map(int, m)) for m in re.findall(r"\((\d+),(\d+)\),\((\d+),(\d+)\)",
                                                                 steps_of(s.reasoning)[-1])]
                assert corners == sorted(tuple(b) for b in truth), s.reasoning
                assert [b.coords for b in parse_boxes(boxed)] == corners
            else:
                raise AssertionError(f"{s.id}: a negative grounding sample has a trace")
        elif family == "report":
            assert boxed == s.answer.strip() and boxed.endswith(".")
        else:  # open_vqa
            assert boxed == s.answer


def test_negative_grounding_samples_have_no_trace():
    """The grounding reward scores a negative 0 whatever the answer: its reasoning-mode trace would only teach the model
    to write "No ... detected." where stage 2 needs boxes. Negatives still train the instruction-mode answer."""
    negatives = [make_sample("val", i, "abnormality_grounding", i) for i in range(60)]
    negatives = [s for s in negatives if not s.meta["boxes"]]
    assert len(negatives) >= 15
    assert all(s.reasoning is None and s.answer.startswith("No ") for s in negatives)


def test_traces_fit_the_demo_generation_budget(traced, tiny_processor):
    """Stage-1 validation and stage-2 generation stop after 160 new tokens (recipes/data/demo.yaml): a longer trace
    would teach the model answers it cannot finish."""
    tok = tiny_processor.tokenizer
    lengths = {s.id: len(tok(get_task(s.task).target(s, reasoning=True))["input_ids"]) for s in traced}
    assert max(lengths.values()) < 150, sorted(lengths.items(), key=lambda kv: -kv[1])[:3]


# --------------------------------------------------------------------------- a briefly trained model


def _write_traced_shards(out, n_per_task: dict[str, int]) -> str:
    """Shards of traced samples only (grounding + multiple choice), for a short stage-1 run in reasoning mode."""
    from webdata.writer import ShardWriter

    with ShardWriter(out, prefix="traced", max_samples_per_shard=10_000, builder="tests") as writer:
        for task, n in n_per_task.items():
            found, index = 0, 0
            while found < n:
                s = make_sample("train", index, task, index)
                index += 1
                if s.reasoning:
                    s.id = f"traced-{task}-{index:05d}"  # make_sample ids repeat across tasks
                    writer.write(s)
                    found += 1
    return str(out / "traced-000000.tar")


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_briefly_trained_model_answers_grounding_with_boxes_in_reasoning_mode(tmp_path, cache_dir, tiny_dir):
    """A shortened stage 1 on the traced demo samples, then grounding prompts with the reasoning suffix sampled at
    T=1.0 (the stage-2 settings): nearly every completion boxes a parseable box, none a multiple-choice answer."""
    from chexone.config.load import load_config
    from chexone.inference.engine import Conversation, InferenceModel
    from chexone.tasks.base import PromptStyle
    from chexone.training.generation import GenerationSettings
    from chexone.training.run import run_fit

    shards = _write_traced_shards(tmp_path / "shards", {"phrase_grounding": 60, "abnormality_grounding": 60,
                                                        "close_vqa": 80, "disease_classification": 20})
    out = tmp_path / "run"
    overrides = ["model=tiny", "data=demo", "logger=none", f"output_dir={out}", "trainer.progress_bar=false",
                 f"model.tiny_cache_dir={cache_dir / 'tiny-model'}", f"data.train=[{{path: '{shards}'}}]",
                 "data.val=[]", "data.num_workers=0", "trainer.max_steps=400", "trainer.checkpoint_every_n_steps=1000"]
    run_fit(load_config("stage1_sft", overrides))

    model = InferenceModel.load(str(out / "hf"), device="cpu", max_pixels=12544)
    prompts = [make_sample("test", i, task, i) for task in GROUNDING for i in range(12)]
    prompts = [s for s in prompts if s.meta["boxes"]]  # a negative's right answer is "No X detected.", not a box
    settings = GenerationSettings(max_new_tokens=160, do_sample=True, temperature=1.0, top_p=0.9, top_k=50,
                                  repetition_penalty=1.1)
    conversations = [Conversation(get_task(s.task).messages(s, reasoning=True, style=PromptStyle()), s.images)
                     for s in prompts]
    texts = [c.text for c in model.generate(conversations, settings, seed=0)]
    boxed = [extract_boxed(t) for t in texts]
    with_box = [b is not None and bool(parse_boxes(b)) for b in boxed]
    assert sum(with_box) / len(texts) >= 0.9, list(zip(with_box, texts))
    letters = [b for b in boxed if b is not None and re.fullmatch(r"\([A-E]\).*", b.strip())]
    assert not letters, letters


# --------------------------------------------------------------------------- the demo report scorer

needs_report_extras = pytest.mark.skipif(
    importlib.util.find_spec("bert_score") is None or importlib.util.find_spec("radgraph") is None,
    reason="the demo report reward needs the metrics and radgraph extras")


@needs_report_extras
@pytest.mark.timeout(300)
@pytest.mark.slow
def test_demo_report_reward_runs_the_real_radcliq_path_offline(tmp_path, capsys):
    from chexone.metrics.demo_scorers import DEMO_SCORERS_BANNER, DEMO_SCORERS_VERSION, demo_scorer_settings
    from chexone.metrics.radcliq import RadCliQScorer
    from chexone.rewards.builtin import _scorer

    _scorer.cache_clear()
    demo_scorer_settings.cache_clear()
    samples = [s for s in traced_samples(2, "test") if s.task == "findings_generation"]
    ref = samples[0].answer
    other = samples[1].answer
    assert ref != other
    responses = [f"Reasoning.\n\\boxed{{{ref}}}", f"Reasoning.\n\\boxed{{{other}}}", "Reasoning.\n\\boxed{The}"]
    directory = str(tmp_path / "scorers")
    got = report_reward(responses, [samples[0]] * 3, metric="radcliq", mapping="sigmoid",
                        metric_kwargs={"demo_scorers": directory})
    printed = capsys.readouterr().out
    assert DEMO_SCORERS_BANNER in printed and "built now" in printed

    # the same numbers from RadCliQ built by hand on the files the demo scorer wrote
    root = tmp_path / "scorers" / f"v{DEMO_SCORERS_VERSION}"
    by_hand = RadCliQScorer(bertscore_model=str(root / "roberta"), bertscore_num_layers=2,
                            bertscore_baseline_path=str(root / "bertscore-baseline.tsv"),
                            chexbert_path=str(root / "chexbert.pth"), chexbert_bert_model=str(root / "bert"),
                            radgraph_model_dir=str(root / "radgraph" / "radgraph"),
                            radgraph_backbone_path=str(root / "bert"), device="cpu")
    q = by_hand.score([ref, other, "The"], [ref] * 3)
    assert got == pytest.approx([1 / (1 + math.exp(x)) for x in q], abs=1e-6)
    # the exact reference scores best, a one-word answer worst; every component varies with the text
    assert got[0] > got[1] > got[2]
    comps = by_hand.score_components([ref, other], [ref, ref])
    assert all(comps[0][k] > comps[1][k] for k in ("radgraph_combined", "bertscore", "semb_score", "bleu")), comps

    # an unboxed response is scored whole: a long one (past 128 tokens) must fit the models as it fits the real ones
    long = report_reward(["no box: " + " ".join([ref] * 10)], samples[:1], metric="radcliq",
                         metric_kwargs={"demo_scorers": directory})
    assert 0 < long[0] < 1

    # a second process-level use finds the cache: nothing is rebuilt
    demo_scorer_settings.cache_clear()
    stamp = (root / "manifest.json").stat().st_mtime_ns
    demo_scorer_settings(directory)
    assert "cached" in capsys.readouterr().out and (root / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="radcliq"):
        demo_scorer_settings(directory, "bertscore")
    _scorer.cache_clear()


def test_the_demo_recipe_scores_all_four_rewards():
    from omegaconf import OmegaConf

    from chexone.config.load import load_config
    from chexone.tasks import get_task as task_of

    cfg = load_config("stage2_grpo", ["model=tiny", "data=demo"])
    rewards = {r["name"]: r for r in OmegaConf.to_container(cfg.grpo.rewards, resolve=True)}
    assert set(rewards) == {"format", "vqa", "grounding_iou", "report"}
    assert rewards["report"]["kwargs"]["metric"] == "radcliq"
    assert rewards["report"]["kwargs"]["metric_kwargs"]["demo_scorers"].endswith("demo-report-scorers")
    families = {task_of(t).family for t in cfg.data.tasks}
    assert families == {"multiple_choice", "grounding", "report"}


# --------------------------------------------------------------------------- the trend line


def test_reward_trend_interval_matches_scipy_welch_and_judges_the_rise():
    from scipy import stats

    from chexone.training.grpo_report import reward_trend

    # 20 steps; grounding is scored only in some steps, report rises clearly, vqa is flat noise
    history = []
    for i in range(20):
        h = {"reward/total_mean": 1.0 + 0.02 * i + (0.05 if i % 2 else -0.05),
             "reward/vqa_mean": 0.5 + (0.1 if i % 3 == 0 else -0.05),
             "reward/report_mean": 0.2 + 0.03 * i + (0.01 if i % 2 else 0.0),
             "reward/grounding/total_mean": 9.0}  # a per-family key: not a reward of its own
        if i % 3:
            h["reward/grounding_iou_mean"] = 0.1 + 0.01 * i
        history.append(h)
    trend = reward_trend(history, fraction=0.25)
    assert trend["window"] == 5 and trend["steps"] == 20
    for key in ("reward/total_mean", "reward/vqa_mean", "reward/report_mean", "reward/grounding_iou_mean"):
        first = [h[key] for h in history[:5] if key in h]
        last = [h[key] for h in history[-5:] if key in h]
        ref = stats.ttest_ind(last, first, equal_var=False).confidence_interval(0.95)
        got = trend[key]
        assert got["first"] == pytest.approx(sum(first) / len(first))
        assert got["last"] == pytest.approx(sum(last) / len(last))
        assert got["ci"] == pytest.approx((ref.low, ref.high), abs=1e-9)
        assert (got["n_first"], got["n_last"]) == (len(first), len(last))
    assert trend["reward/report_mean"]["verdict"] == "rose"
    assert trend["reward/vqa_mean"]["verdict"] == "no clear change"
    assert "reward/grounding/total_mean" not in trend and "grounding/total" not in trend["message"]
    lines = trend["message"].splitlines()
    assert [ln.split()[0] for ln in lines[2:]] == ["total", "vqa", "grounding_iou", "report"]
    assert "(3 vs 3 steps scored it)" in trend["message"]  # grounding: steps 1, 2, 4 and 16, 17, 19


def test_reward_trend_edge_cases():
    from chexone.training.grpo_report import reward_trend, welch_interval

    assert reward_trend([])["message"] == "GRPO reward trend: no steps logged"
    one = reward_trend([{"reward/total_mean": 1.0}])
    assert one["reward/total_mean"]["verdict"] == "too few steps" and one["reward/total_mean"]["ci"] is None
    assert welch_interval([1.0, 1.0], [2.0, 2.0]) == (1.0, 1.0)  # no noise: the interval is the change itself
    falling = [{"reward/format_mean": 1.0 - 0.1 * i + 0.01 * (i % 2)} for i in range(10)]
    assert reward_trend(falling)["reward/format_mean"]["verdict"] == "fell"
