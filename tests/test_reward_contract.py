"""The reward contract (docs/plugins.md): which rewards score a sample, what a reward receives, what it must accept."""

from types import SimpleNamespace

from chexone.data.sample import Sample
from chexone.registry import REWARDS, TASKS
from chexone.tasks import get_task
from chexone.tasks.builtin import MultipleChoiceTask
from chexone.training.reward_set import RewardSet


class DevicesTask(MultipleChoiceTask):
    """A plugin-style multiple-choice task with its own reward."""

    name = "test_support_devices"
    rewards = ("test_devices_reward",)


SEEN = []


def devices_reward(responses, samples, **kwargs):
    SEEN.append(kwargs)
    return [0.25] * len(responses)


def no_kwargs_reward(responses, samples):
    return [0.0] * len(responses)


for name, obj, reg in (("test_support_devices", DevicesTask, TASKS), ("test_devices_reward", devices_reward, REWARDS),
                       ("test_no_kwargs", no_kwargs_reward, REWARDS)):
    if name not in reg:
        reg.register(name, obj)


def spec(name, weight=1.0, tasks=(), **kwargs):
    return SimpleNamespace(name=name, weight=weight, kwargs=kwargs, tasks=list(tasks))


def sample(i, task):
    return Sample(id=f"s{i}", task=task, question="Is there a line?", answer="A", options=["Yes", "No"])


def test_a_task_declaring_its_own_reward_is_not_scored_twice():
    rs = RewardSet([spec("format"), spec("vqa")], "last", "fail", task_names=["close_vqa", "test_support_devices"],
                   task_lookup=get_task)
    plans = {p.name: p for p in rs.plans}
    assert plans["vqa"].tasks == {"close_vqa"}  # declared by close_vqa only: not by the plugin's MC task
    assert plans["format"].tasks is None  # declared by no task: offered every sample
    assert plans["test_devices_reward"].weight == 1.0 and "declared by task test_support_devices" in rs.describe()
    texts = ["reasoning \\boxed{A}", "reasoning \\boxed{A}"]
    scores = rs.score(texts, [sample(0, "close_vqa"), sample(1, "test_support_devices")])
    assert scores["vqa"] == [1.0, None]
    assert scores["test_devices_reward"] == [None, 0.25]
    assert scores["format"] == [1.0, 1.0]


def test_tasks_in_the_recipe_override_and_weight_zero_only_logs():
    rs = RewardSet([spec("format"), spec("vqa_strict", weight=0, tasks=["close_vqa"])], "last", "fail",
                   task_names=["close_vqa", "view_classification"], task_lookup=get_task)
    scores = rs.score(["r \\boxed{A}"] * 2, [sample(0, "close_vqa"), sample(1, "view_classification")])
    assert scores["vqa_strict"] == [1.0, None] and rs.weights["vqa_strict"] == 0.0
    assert "vqa (weight 1; close_vqa, view_classification; declared by task" in rs.describe()


def test_a_reward_receives_the_documented_context():
    SEEN.clear()
    rs = RewardSet([spec("test_devices_reward", threshold=3)], "first", "fail",
                   task_names=["test_support_devices"], task_lookup=get_task)
    rs.score(["a", "b", "c"], [sample(i, "test_support_devices") for i in range(3)],
             prompts=["p0", "p1", "p2"], reasoning=[True, False, True], step=7)
    assert SEEN == [{"boxed": "first", "prompts": ["p0", "p1", "p2"], "reasoning": [True, False, True], "step": 7,
                     "threshold": 3}]


def test_preflight_refuses_rewards_without_kwargs_and_unknown_task_scopes():
    from chexone.training.preflight import reward_problems

    problems = reward_problems([spec("test_no_kwargs"), spec("vqa", tasks=["close_vq"])])
    assert any("'grpo.rewards[0].name': reward 'test_no_kwargs' must accept **kwargs" in p for p in problems)
    assert any("'grpo.rewards[1].tasks': Unknown task \"close_vq\"" in p for p in problems)
