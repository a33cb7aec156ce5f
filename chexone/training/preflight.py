"""Check every name and value a run depends on before any model loads, and report all problems at once.

The recipe schema checks keys, types, choices and bounds as the config is read. What only the installed registries or
the file system can answer is checked here, first thing in ``fit``/``filter``/``evaluate``: task, reward and metric
names (with did-you-mean, from built-ins and installed plugins), duplicate rewards, shard patterns that match
nothing, and the global batch arithmetic. A typo then costs seconds and one line per problem (exit 2), not a model
load or hours of training.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any, Iterable

from chexone.config.load import ConfigError


def _lookup_problem(registry: Any, key: str, name: str) -> str | None:
    """Why ``name`` cannot be used from ``registry`` (unknown, conflicting, broken plugin), or None."""
    from chexone.registry import PluginLoadError, PluginTypeError, RegistryError

    try:
        registry.get(name)
    except (RegistryError, PluginLoadError, PluginTypeError) as err:
        return f"'{key}': {err}"
    return None


def task_problems(key: str, names: Iterable[str]) -> list[str]:
    from chexone.registry import TASKS

    return [p for n in names if (p := _lookup_problem(TASKS, key, str(n)))]


def metric_problems(key: str, names: Iterable[str], task: str = "close_vqa") -> list[str]:
    """Unknown or broken metric names, and metrics that do not follow the metric protocol (built once here, so a
    metric without update() fails now, not after every answer has been generated)."""
    from chexone.evaluation.scoring import build_metric
    from chexone.registry import METRICS

    problems = []
    for name in map(str, names):
        problem = _lookup_problem(METRICS, key, name)
        if problem is None:
            try:
                build_metric(name, task, {})
            except Exception as err:  # noqa: BLE001 - any failure to build is reported, one line per metric
                problem = f"'{key}': {err}"
        problems += [problem] if problem else []
    return problems


def reward_problems(rewards: Iterable[Any]) -> list[str]:
    from chexone.registry import REWARDS

    rewards = list(rewards)
    problems = []
    for i, r in enumerate(rewards):
        problem = _lookup_problem(REWARDS, f"grpo.rewards[{i}].name", r.name)
        if problem is None:
            problem = _signature_problem(f"grpo.rewards[{i}].name", r.name, REWARDS.get(r.name))
        problems += [problem] if problem else []
        problems += task_problems(f"grpo.rewards[{i}].tasks", getattr(r, "tasks", None) or [])
    for name, count in Counter(r.name for r in rewards).items():
        if count > 1:
            where = [i for i, r in enumerate(rewards) if r.name == name]
            problems.append(f"'grpo.rewards': reward {name!r} is listed {count} times (entries {where}); a reward is "
                            "counted once, with one weight: merge the entries")
    return problems


def _signature_problem(key: str, name: str, fn: Any) -> str | None:
    """A reward must take ``(responses, samples, **kwargs)``: chexone passes context (boxed, prompts, reasoning,
    step) as keyword arguments, and more may come."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None  # a builtin or C callable: cannot tell, the first call will
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return (f"'{key}': reward {name!r} must accept **kwargs (it is called as reward(responses, samples, boxed=..., "
                "prompts=..., reasoning=..., step=..., **recipe_kwargs)); add **kwargs to its signature")
    return None


def shard_problems(key: str, shard_sets: Iterable[Any]) -> list[str]:
    """Shard patterns that match nothing (or only partly), remote shards that are missing or refused (bad
    credentials, an unreachable server), or a scheme whose client is not installed: named by key, before the model
    loads. Messages name objects without any token (``chexone.data.remote.redact``)."""
    from chexone.data.shards import expand_shards

    problems = []
    for i, s in enumerate(shard_sets):
        if float(getattr(s, "weight", 1.0)) == 0:
            continue
        try:
            expand_shards(str(s.path))
        except (OSError, ImportError, ValueError) as err:  # FileNotFoundError, RemoteAuthError, RemoteError ...
            problems.append(f"'{key}[{i}].path': {err}")
    return problems


def batch_problems(cfg: Any) -> list[str]:
    from chexone.training.run import device_type_for, world_size_for

    world = world_size_for(cfg, device_type_for(cfg))
    per_step = cfg.data.micro_batch_size * world
    if cfg.trainer.global_batch_size % per_step:
        return [f"'trainer.global_batch_size' ({cfg.trainer.global_batch_size}) is not a multiple of "
                f"'data.micro_batch_size' ({cfg.data.micro_batch_size}) x {world} device(s) = {per_step}; "
                "change one of them"]
    return []


def preflight_problems(cfg: Any, command: str) -> list[str]:
    """Every problem found for ``python -m chexone.<command>`` (fit | filter | evaluate) with this config."""
    problems = task_problems("data.tasks", cfg.data.tasks)
    if command == "evaluate":
        for name, bench in cfg.eval.benchmarks.items():
            problems += task_problems(f"eval.benchmarks.{name}.tasks", bench.tasks)
        return problems
    if command == "filter" or cfg.stage == "grpo":
        problems += reward_problems(cfg.grpo.rewards)
    if command == "fit" and cfg.stage == "sft":
        problems += batch_problems(cfg)
        problems += metric_problems("trainer.val_metrics", cfg.trainer.val_metrics,
                                    task=(list(cfg.data.tasks) or ["close_vqa"])[0])
    if not cfg.data.train and cfg.data.name != "demo":
        problems.append("'data.train' is empty: set data.train=<shards> (e.g. data.train='/data/train-{000000..000031}"
                        ".tar') or use data=demo")
    problems += shard_problems("data.train", cfg.data.train)
    if command == "fit" and cfg.stage == "sft":
        problems += shard_problems("data.val", cfg.data.val)
    return problems


def preflight(cfg: Any, command: str) -> None:
    """Raise :class:`ConfigError` listing every problem (the CLI prints them, one per line, and exits 2)."""
    problems = preflight_problems(cfg, command)
    if problems:
        raise ConfigError(problems)


__all__ = ["preflight", "preflight_problems"]
