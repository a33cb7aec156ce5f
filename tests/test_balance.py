"""Task-family turns in the prompt stream (``grpo.balance_tasks``) and the stage-2 demo's prompt pool (the "rl"
demo split): orders worked out by hand, the shard stream's own order kept within each family, and a short GRPO run
whose every step holds one prompt of each family."""

import json
from collections import Counter

import pytest

from chexone.data.balance import round_robin_by_group


def _first_letter(item: str) -> str:
    return item[0]


def test_round_robin_takes_the_groups_in_turns_and_holds_the_rest_back():
    stream = ["a1", "a2", "a3", "b1", "a4", "c1", "b2"]
    out = list(round_robin_by_group(stream, _first_letter, ["a", "b", "c"]))
    # a1 | b1 (a2, a3 held) | c1 (a4 held) | a2 | b2 | c: stream ended, leaves | a3 | b: none left | a4
    assert out == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]


def test_a_group_missing_from_the_stream_leaves_after_patience_and_a_new_group_joins_the_end():
    stream = ["a1", "b1", "a2", "b2", "x1", "a3"]
    out = list(round_robin_by_group(stream, _first_letter, ["a", "z", "b"], patience=3))
    # a1 | z: 3 reads (b1, a2, b2) without a z, leaves | b1 | a2 | b2 | a: a3 not read yet -> reads x1 (joins), a3
    # -> a3 | x1
    assert out == ["a1", "b1", "a2", "b2", "a3", "x1"]
    with pytest.raises(ValueError, match="patience"):
        list(round_robin_by_group(stream, _first_letter, ["a"], patience=0))


def test_a_group_that_left_rejoins_when_its_items_turn_up():
    stream = ["a1", "a2", "a3", "b1", "a4"]
    out = list(round_robin_by_group(stream, _first_letter, ["a", "b"], patience=1))
    # a1 | b: no b in 1 read (a2), leaves | a2 | a3 | a: reads b1 (b rejoins), no a, leaves | b1 | b: reads a4
    # (a rejoins), leaves | a4
    assert out == ["a1", "a2", "a3", "b1", "a4"]


DEMO_TASKS = ["close_vqa", "view_classification", "temporal_classification", "disease_classification",
              "findings_generation", "impression_generation", "progression_generation", "phrase_grounding",
              "abnormality_grounding"]


def _families():
    from chexone.tasks import get_task

    return {t: get_task(t).family for t in DEMO_TASKS}


def _stream(demo_shards, balance_groups, n):
    from chexone.data.shards import build_train_dataset

    ds = build_train_dataset([{"path": demo_shards["train"], "weight": 1.0}], samples_per_epoch=None, seed=5,
                             task_filter=DEMO_TASKS, balance_groups=balance_groups)
    ds.set_epoch(0)
    out = []
    for s in ds:
        out.append(s)
        if len(out) == n:
            return out
    return out


def test_balanced_shard_stream_holds_every_family_in_each_turn_and_keeps_each_familys_order(cache_dir, demo_shards):
    families = _families()
    balanced = _stream(demo_shards, families, 30)
    fams = [families[s.task] for s in balanced]
    turns = [fams[i : i + 3] for i in range(0, 30, 3)]
    assert all(sorted(t) == ["grounding", "multiple_choice", "report"] for t in turns), turns
    assert turns[0] == sorted(turns[0])  # the groups' order: sorted family names
    plain = _stream(demo_shards, None, 400)  # the same stream as drawn: multiple choice ~61%, grounding ~18%
    assert Counter(families[s.task] for s in plain[:30])["multiple_choice"] > 10
    for family in ("grounding", "multiple_choice", "report"):
        mine = [s.id for s in balanced if families[s.task] == family]
        drawn = [s.id for s in plain if families[s.task] == family]
        assert drawn[: len(mine)] == mine, family  # within a family: the stream's own (shuffled) order


def test_rl_pool_has_families_and_tasks_in_turns_and_only_groundable_prompts():
    from chexone.data.demo.generate import RL_POOL_FAMILIES, rl_pool_samples

    pool = list(rl_pool_samples(24, seed=0, image_size=56))
    assert len(pool) == 24 and len({s.id for s in pool}) == 24
    assert [s.id for s in pool][:2] == ["demo-rl-000000", "demo-rl-000001"]
    assert [s.task for s in pool[:6]] == ["close_vqa", "findings_generation", "phrase_grounding",
                                          "view_classification", "impression_generation", "abnormality_grounding"]
    for i, s in enumerate(pool):
        assert s.task in RL_POOL_FAMILIES[i % 3]
    counts = Counter(s.task for s in pool)
    assert counts["close_vqa"] == counts["disease_classification"] == 2
    assert counts["findings_generation"] == 3 and counts["progression_generation"] == 2
    assert counts["phrase_grounding"] == counts["abnormality_grounding"] == 4
    assert all(s.meta["boxes"] for s in pool if "grounding" in s.task)  # no "No nodule detected." prompt
    again = list(rl_pool_samples(24, seed=0, image_size=56))
    assert [(s.id, s.question, s.answer) for s in again] == [(s.id, s.question, s.answer) for s in pool]


def test_demo_train_split_rl_trains_on_the_pool(cache_dir, demo_shards):
    from chexone.config.load import load_config
    from chexone.training.run import resolve_data

    cfg = load_config("stage2_grpo", ["model=tiny", "data=demo", f"data.demo_dir={cache_dir / 'demo-shards'}"])
    assert cfg.data.demo_train_split == "rl" and cfg.grpo.balance_tasks  # the stage-2 demo's defaults
    resolve_data(cfg)
    assert cfg.data.train[0].path == demo_shards["rl"] and "/rl/demo-rl-" in demo_shards["rl"]
    cfg = load_config("stage1_sft", ["model=tiny", "data=demo", f"data.demo_dir={cache_dir / 'demo-shards'}"])
    resolve_data(cfg)
    assert cfg.data.train[0].path == demo_shards["train"]


def test_grpo_with_balance_tasks_gets_one_prompt_of_each_family_every_step(tmp_path, cache_dir, demo_shards, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path / "grpo"
    overrides = {
        "model": "tiny", "data": "demo", "logger": "csv", "output_dir": str(out), "trainer.progress_bar": "false",
        "grpo.init_from": "''", "data.num_workers": "0", "grpo.num_generations": "2", "grpo.prompts_per_step": "2",
        "grpo.micro_batch_prompts": "2", "grpo.max_completion_length": "8", "data.demo_train_split": "train",
        "data.tasks": "[close_vqa,phrase_grounding]", "grpo.balance_tasks": "true", "grpo.beta": "0",
        "grpo.rewards": "[{name: format},{name: vqa},{name: grounding_iou}]", "export_hf": "false",
        "grpo.log_completions_every_n_steps": "1", "trainer.max_steps": "4", "trainer.checkpoint_every_n_steps": "0",
    }
    run_fit(load_config("stage2_grpo", [f"{k}={v}" for k, v in overrides.items()]))
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    per_step: dict[int, Counter] = {}
    for r in rows:
        per_step.setdefault(r["step"], Counter())[r["task"]] += 1
    # drawn as stored, close_vqa outnumbers phrase_grounding 800 to 140: 4 mixed steps in a row would be luck
    assert len(per_step) == 4
    assert all(c == {"close_vqa": 2, "phrase_grounding": 2} for c in per_step.values()), per_step
