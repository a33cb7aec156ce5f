"""``python -m chexone.plugins``: list, check and scaffold chexone plugins (docs/plugins.md).

::

    python -m chexone.plugins list [--plugins-only] [--no-load] [--kind K] [--strict]
    python -m chexone.plugins check NAME... [--task TASK] [--kwargs JSON] [-n N]
    python -m chexone.plugins new NAME [--dir DIR] [--package PKG]

``list`` prints every task, reward and metric: name, kind, origin (``built-in`` or ``dist==version``), the plugin
API version it was built for, and its status with the error of a broken, incompatible or conflicting one (each entry
is imported unless ``--no-load``). ``check`` runs the conformance checks of :mod:`chexone.testing` on tiny generated
samples, one line per check. ``new`` writes a plugin package (one task, reward and metric, tests using the kit, a
README and a CI script) whose tests pass straight after ``pip install -e``.

Exit status: 0 fine; 1 a check failed, or (``list --strict``) an entry is broken, incompatible or in conflict; 2 a
usage error (an unknown name, a bad package name, an existing directory).
"""

from __future__ import annotations

import argparse
import difflib
import json
import keyword
import re
import sys
import warnings
from pathlib import Path

__all__ = ["ScaffoldError", "main", "scaffold"]

_PROG = "python -m chexone.plugins"


# ---------------------------------------------------------------------------------------------------------- list
def _origin(row) -> str:
    """``built-in``, ``dist==version`` or ``registered at file.py:line``."""
    if row.origin == "built-in" or row.origin.startswith("registered"):
        return row.origin
    return f"{row.distribution}=={row.version}" if row.version else row.distribution


def cmd_list(args: argparse.Namespace) -> int:
    from chexone.registry import AUTOLOAD_ENV, autoload_disabled, list_plugins

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = list_plugins(load=not args.no_load, include_builtins=not args.plugins_only)
    if args.kind:
        rows = [r for r in rows if r.kind == args.kind]
    if rows:
        header = ("name", "kind", "origin", "api", "status")
        table = [header] + [(r.name, r.kind, _origin(r), r.api or "-", " ".join(r.status.split())) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    else:
        what = "plugin " if args.plugins_only else ""
        print(f"no {what}{args.kind or 'task, reward or metric'} entries (entry-point groups chexone.tasks, "
              "chexone.rewards, chexone.metrics)")
    sys.stdout.flush()
    if autoload_disabled():
        print(f"plugin entry points are ignored: {AUTOLOAD_ENV} is set", file=sys.stderr)
    for w in caught:
        print(f"warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    bad = [r for r in rows if r.status.startswith(("error", "conflict", "incompatible"))]
    if bad and args.strict:
        print(f"{len(bad)} broken, incompatible or conflicting entr{'y' if len(bad) == 1 else 'ies'}: "
              f"{', '.join(sorted({r.name for r in bad}))}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------------- check
def _unknown_line(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"error: {name!r} is not a task, reward or metric known to chexone.{hint} "
            f"See {_PROG} list (an installed plugin's names come from its entry points).")


def cmd_check(args: argparse.Namespace) -> int:
    from chexone import testing
    from chexone.registry import AUTOLOAD_ENV, METRICS, REWARDS, TASKS, autoload_disabled

    registries = (("task", TASKS), ("reward", REWARDS), ("metric", METRICS))
    targets, unknown = [], []
    for name in dict.fromkeys(args.names):
        kinds = [kind for kind, reg in registries if name in reg]
        targets += [(kind, name) for kind in kinds]
        if not kinds:
            unknown.append(name)
    if unknown:
        known = sorted(set().union(*(reg.names() for _, reg in registries)))
        for name in unknown:
            print(_unknown_line(name, known), file=sys.stderr)
        if autoload_disabled():
            print(f"plugin entry points are ignored: {AUTOLOAD_ENV} is set", file=sys.stderr)
        return 2
    try:
        kwargs = json.loads(args.kwargs) if args.kwargs else {}
    except json.JSONDecodeError as err:
        print(f"error: --kwargs is not JSON ({err}): give an object, e.g. --kwargs '{{\"wrong\": -1}}'", file=sys.stderr)
        return 2
    if not isinstance(kwargs, dict):
        print(f"error: --kwargs must be a JSON object, got {type(kwargs).__name__}", file=sys.stderr)
        return 2
    if args.task and args.task not in TASKS:
        print(_unknown_line(args.task, TASKS.names()).replace("a task, reward or metric", "a task"), file=sys.stderr)
        return 2
    results = []
    for kind, name in targets:
        if kind == "task":
            rows = testing.check_task(name, n=args.n)
        elif kind == "reward":
            own = testing.samples_for(args.task, args.n) if args.task else None
            rows = testing.check_reward(name, own, kwargs=kwargs, n=args.n)
        else:
            rows = testing.check_metric(name, task=args.task, kwargs=kwargs, n=max(4, args.n))
        for r in rows:
            print(r.line(), flush=True)
        results += rows
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip", "n/a")}
    print(f"{len(results)} checks: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped, "
          f"{counts['n/a']} not applicable")
    return 1 if counts["fail"] else 0


# ---------------------------------------------------------------------------------------------------------- new
class ScaffoldError(ValueError):
    """A plugin package cannot be written as asked (bad name, existing directory); nothing was written."""


_DIST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_RESERVED = {"chexone", "webdata", "test", "tests", "src"}


def _chexone_requirement() -> str:
    """``>=X.Y,<X.Y+1`` for the installed chexone (the releases the new plugin is tested with), "" if unknown."""
    from packaging.version import InvalidVersion, Version

    import chexone

    try:
        v = Version(chexone.__version__)
    except InvalidVersion:
        return ""
    if v.local:  # "0+unknown": a source tree that was never installed
        return ""
    return f">={v.major}.{v.minor},<{v.major}.{v.minor + 1}"


def scaffold(name: str, directory: str | Path | None = None, package: str | None = None) -> Path:
    """Write a plugin package named ``name`` (a distribution name such as ``my-plugin``) into ``directory``
    (default ``./name``), with import package ``package`` (default: ``name`` with ``-``/``.`` as ``_``). Its entry
    points are ``<package>_laterality`` (task), ``<package>_side_match`` (reward) and ``<package>_side_accuracy``
    (metric). Raises :class:`ScaffoldError` before writing anything when the names or the directory are unusable.
    Returns the directory."""
    if not _DIST_NAME.match(name or ""):
        raise ScaffoldError(f"{name!r} is not a distribution name: use letters, digits, '-', '_' and '.', starting and "
                            "ending with a letter or digit (e.g. my-chexone-plugin)")
    pkg = package or re.sub(r"[-.]+", "_", name).lower()
    if not pkg.isidentifier() or keyword.iskeyword(pkg) or not pkg.isascii():
        raise ScaffoldError(f"{pkg!r} is not a valid Python package name; pass --package, e.g. --package my_plugin")
    if pkg in _RESERVED or pkg in sys.stdlib_module_names:
        what = "the standard library" if pkg in sys.stdlib_module_names else "a chexone module"
        raise ScaffoldError(f"package name {pkg!r} would shadow {what}; pass --package with another name")
    target = Path(directory) if directory is not None else Path.cwd() / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} already exists and is not an empty directory; choose another --dir "
                            "(nothing was written)")
    from chexone.registry import API_VERSION

    requirement = _chexone_requirement()
    values = {
        "<DIST>": name, "<PKG>": pkg, "<TASK>": f"{pkg}_laterality", "<REWARD>": f"{pkg}_side_match",
        "<METRIC>": f"{pkg}_side_accuracy", "<CHEXONE_REQ>": requirement, "<API>": str(API_VERSION),
        "<CHEXONE_RANGE>": requirement or " (any version: the installed chexone has no release number)",
    }
    files = {path.replace("<PKG>", pkg): text for path, text in _TEMPLATES.items()}
    for rel, text in files.items():
        for key, value in values.items():
            text = text.replace(key, value)
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip("\n"), encoding="utf-8")
    (target / "ci.sh").chmod(0o755)
    return target


def cmd_new(args: argparse.Namespace) -> int:
    try:
        target = scaffold(args.name, args.dir, args.package)
    except ScaffoldError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pkg = args.package or re.sub(r"[-.]+", "_", args.name).lower()
    names = f"{pkg}_laterality {pkg}_side_match {pkg}_side_accuracy"
    print(f"created {target} (distribution {args.name}, package {pkg}):")
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(target)}")
    print(f"\nnext:\n  cd {target}\n  pip install -e '.[test]'\n  {_PROG} check {names}\n  python -m pytest\n"
          f"then edit src/{pkg}/*.py (README.md says what each file is) and run ./ci.sh before publishing.")
    return 0


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=_PROG, description="List, check and scaffold chexone plugins "
                                     "(tasks, rewards, metrics). See docs/plugins.md.")
    sub = parser.add_subparsers(dest="command", metavar="{list,check,new}")
    p_list = sub.add_parser("list", help="every task/reward/metric: origin, API version, status")
    p_list.add_argument("--plugins-only", action="store_true", help="hide chexone's built-ins")
    p_list.add_argument("--no-load", action="store_true", help="import nothing (status 'not loaded')")
    p_list.add_argument("--kind", choices=("task", "reward", "metric"), help="only this kind")
    p_list.add_argument("--strict", action="store_true",
                        help="exit 1 if an entry fails to import, is incompatible or conflicts (for CI)")
    p_check = sub.add_parser("check", help="run the conformance checks (chexone.testing) on names")
    p_check.add_argument("names", nargs="+", metavar="NAME", help="task, reward or metric names")
    p_check.add_argument("--task", help="check rewards and metrics on samples of this task (default: the tasks "
                                        "that declare them)")
    p_check.add_argument("--kwargs", metavar="JSON", help="keyword arguments for the rewards and metrics checked, as "
                         "a recipe gives them (grpo.rewards[].kwargs, eval.metric_kwargs.NAME), e.g. '{\"wrong\": -1}'")
    p_check.add_argument("-n", type=int, default=4, help="samples per task (default 4)")
    p_new = sub.add_parser("new", help="write a plugin package: task, reward, metric, tests, README, CI script")
    p_new.add_argument("name", metavar="NAME", help="distribution name, e.g. my-chexone-plugin")
    p_new.add_argument("--dir", help="directory to create (default ./NAME; must not exist or be empty)")
    p_new.add_argument("--package", help="import package name (default: NAME with '-' as '_')")
    args = parser.parse_args(argv)
    if args.command == "check":
        if args.n < 1:
            parser.error("-n must be at least 1")
        return cmd_check(args)
    if args.command == "new":
        return cmd_new(args)
    if args.command is None:  # bare `python -m chexone.plugins`: the listing
        args = parser.parse_args(["list"])
    return cmd_list(args)


# ---------------------------------------------------------------------------------------------------------- templates
# Placeholders: <DIST> distribution, <PKG> package, <TASK>/<REWARD>/<METRIC> entry-point names, <CHEXONE_REQ> the
# version range on chexone, <API> the plugin API version.
_TEMPLATES: dict[str, str] = {}

_TEMPLATES["pyproject.toml"] = '''
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "<DIST>"
version = "0.1.0"
description = "chexone plugin: a laterality task, its GRPO reward and its evaluation metric"
readme = "README.md"
requires-python = ">=3.11"
license = "Apache-2.0"  # your choice
# The chexone releases this plugin is tested with: chexone lists it as incompatible and refuses it on another.
# Widen the range only after running ./ci.sh against the new release.
dependencies = ["chexone<CHEXONE_REQ>"]

[project.optional-dependencies]
test = ["pytest"]

# chexone finds these names without importing anything; a module is imported when a recipe selects one of its names.
[project.entry-points."chexone.tasks"]
<TASK> = "<PKG>.tasks:LateralityTask"

[project.entry-points."chexone.rewards"]
<REWARD> = "<PKG>.rewards:side_match"

[project.entry-points."chexone.metrics"]
<METRIC> = "<PKG>.metrics:SideAccuracy"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

_TEMPLATES["src/<PKG>/__init__.py"] = '''
"""<DIST>: a chexone plugin (see README.md).

Keep this module light: chexone reads the entry points in pyproject.toml without importing anything, and imports
``tasks``, ``rewards`` or ``metrics`` only when a recipe selects one of their names.
"""

__version__ = "0.1.0"

#: The chexone plugin API this package is written for (chexone's docs/plugins.md, "Public API and versions").
CHEXONE_API_VERSION = <API>
'''

_TEMPLATES["src/<PKG>/tasks.py"] = '''
"""``<TASK>``: on which side of the chest is a finding? One-word answers: left, right, bilateral or none.

Import only from ``chexone.plugin_api`` (the public API): it keeps working across chexone releases of this API.
"""

from __future__ import annotations

import re

from chexone.plugin_api import Sample, SampleError, Task

TASK_NAME = "<TASK>"
SIDES = ("left", "right", "bilateral", "none")
_SYNONYMS = {"both": "bilateral", "neither": "none"}


def parse_side(text: str | None) -> str:
    """The one side an answer names ("" when it names none or several): "Left." -> "left", "Both" -> "bilateral"."""
    words = re.sub(r"[^a-z]+", " ", (text or "").lower()).split()
    found = {_SYNONYMS.get(w, w) for w in words if w in SIDES or w in _SYNONYMS}
    return found.pop() if len(found) == 1 else ""


class LateralityTask(Task):
    """Which side is a finding on? ``sample.answer`` names one of ``SIDES``; the model answers with one word (boxed
    in reasoning mode). Answers are compared after :func:`parse_side`."""

    name = TASK_NAME
    family = "open_vqa"  # results are grouped by family: multiple_choice, open_vqa, report, grounding, or your own
    rewards = ("<REWARD>",)  # GRPO scores this task with these rewards (format scores every task)
    metrics = ("<METRIC>",)  # python -m chexone.evaluate reports these for the task

    def question_text(self, sample: Sample) -> str:
        return f"{sample.question.strip()} Answer with one word: left, right, bilateral or none."

    def answer_text(self, sample: Sample) -> str:
        side = parse_side(sample.answer)
        if not side:  # chexone skips and counts such samples instead of training on them
            raise SampleError(f"sample {sample.id!r}: answer {sample.answer!r} is not one of {', '.join(SIDES)}")
        return side

    def parse_answer(self, answer: str) -> str:
        return parse_side(answer)

    def answer_is_parseable(self, answer: str, sample: Sample) -> bool:
        return bool(parse_side(answer))

    @classmethod
    def example_samples(cls, n: int) -> list[Sample]:
        """Valid samples for chexone.testing (its generic open-question samples have free-text answers)."""
        from chexone.testing import tiny_image

        findings = ("pleural effusion", "pneumothorax", "consolidation", "nodule")
        return [Sample(id=f"{TASK_NAME}-{i}", task=TASK_NAME, question=f"Which side is the {findings[i % 4]} on?",
                       answer=SIDES[i % len(SIDES)], images=[tiny_image(seed=i)],
                       reasoning="I compare the two hemithoraces." if i % 2 == 0 else None)
                for i in range(n)]
'''

_TEMPLATES["src/<PKG>/rewards.py"] = '''
"""``<REWARD>``: the GRPO reward of ``<TASK>``, 1.0 for the right side and ``wrong`` (default 0.0) otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chexone.plugin_api import extract_boxed

from <PKG>.tasks import TASK_NAME, parse_side

if TYPE_CHECKING:
    from chexone.plugin_api import Sample


def side_match(responses: Sequence[str], samples: Sequence["Sample"], *, boxed: str = "last",
               reasoning: Sequence[bool] | None = None, wrong: float = 0.0, **kwargs: Any) -> list[float | None]:
    """chexone's reward contract: one finite number per response, None for samples of other tasks (chexone skips
    them), and ``**kwargs`` for the rest of the context (prompts, step, ...) and whatever is added later.

    In reasoning mode (``reasoning``, one flag per response) the answer is the ``\\\\boxed{}`` content (``boxed``:
    first or last box), else the whole response. ``wrong`` comes from the recipe's ``kwargs``.
    """
    if len(responses) != len(samples):
        raise ValueError(f"got {len(responses)} responses for {len(samples)} samples")
    modes = list(reasoning) if reasoning is not None else [True] * len(responses)
    out: list[float | None] = []
    for response, sample, reasoned in zip(responses, samples, modes):
        if sample.task != TASK_NAME:
            out.append(None)
            continue
        side = parse_side(extract_boxed(response, boxed) if reasoned else response)
        out.append(1.0 if side and side == parse_side(sample.answer) else float(wrong))
    return out
'''

_TEMPLATES["src/<PKG>/metrics.py"] = '''
"""``<METRIC>``: the fraction of answers that name the right side."""

from __future__ import annotations

from collections.abc import Sequence

from chexone.plugin_api import PerSampleMetric

from <PKG>.tasks import parse_side


class SideAccuracy(PerSampleMetric):
    """1.0 or 0.0 per answer (None, left out, when the reference names no side), reported as the mean.

    PerSampleMetric keeps the states (summed across processes), the per-sample scores for bootstrap confidence
    intervals and paired tests, and ``reset()``; a subclass only scores.
    """

    higher_is_better = True
    paired_test = "mcnemar"  # right/wrong per question: McNemar's test when comparing two models

    def score(self, preds: Sequence[str], refs: Sequence[str]) -> list[float | None]:
        out: list[float | None] = []
        for pred, ref in zip(preds, refs):
            truth = parse_side(ref)
            out.append(float(parse_side(pred) == truth) if truth else None)
        return out

    def _score(self, preds: Sequence[str], targets: Sequence[str]) -> list[float | None]:
        return self.score(preds, targets)
'''

_TEMPLATES["tests/test_<PKG>.py"] = '''
"""<DIST>: chexone's conformance kit on each name, then this plugin's behaviour against hand-written answers.

The names resolve through the installed distribution's entry points: run `pip install -e .` (again after changing
pyproject.toml) before `python -m pytest`.
"""

import pytest

from chexone.plugin_api import METRICS, REWARDS, TASKS, Sample
from chexone.testing import assert_metric_conforms, assert_reward_conforms, assert_task_conforms, make_sample

from <PKG>.tasks import parse_side

TASK, REWARD, METRIC = "<TASK>", "<REWARD>", "<METRIC>"


def test_names_are_installed():
    assert TASK in TASKS and REWARD in REWARDS and METRIC in METRICS, "run `pip install -e .` first"


def test_task_conforms():
    assert_task_conforms(TASK)


def test_reward_conforms():
    assert_reward_conforms(REWARD)  # on the task that declares it, and None for built-in tasks of other families


def test_metric_conforms():
    assert_metric_conforms(METRIC)


@pytest.mark.parametrize("text, side", [("Left.", "left"), ("RIGHT", "right"), ("both", "bilateral"),
                                        ("(none)", "none"), ("left or right", ""), ("", ""), (None, "")])
def test_parse_side(text, side):
    assert parse_side(text) == side


def test_reward_values():
    reward = REWARDS.get(REWARD)
    mine = Sample(id="s1", task=TASK, question="Which side is the effusion on?", answer="left")
    other = make_sample("close_vqa")
    responses = ["It is on the left. \\\\boxed{Left}", "\\\\boxed{right}", "left, no box", "\\\\boxed{left}"]
    assert reward(responses, [mine, mine, mine, other], reasoning=[True] * 4) == [1.0, 0.0, 0.0, None]
    assert reward(["left"], [mine], reasoning=[False], step=3, prompts=["q"]) == [1.0]
    assert reward(["\\\\boxed{right}"], [mine], wrong=-1.0) == [-1.0]


def test_metric_values():
    metric = METRICS.get(METRIC)()
    preds, refs = ["left", "right", "Bilateral", "left"], ["left", "left", "both", "unclear"]
    assert metric.score(preds, refs) == [1.0, 0.0, 1.0, None]
    metric.update(preds, refs)
    assert float(metric.compute()) == pytest.approx(2 / 3)
'''

_TEMPLATES["README.md"] = '''
# <DIST>

A chexone plugin. Installed next to chexone, it adds these names, usable in
recipes exactly like built-in ones:

| kind   | name          | what                                                                                       |
|--------|---------------|--------------------------------------------------------------------------------------------|
| task   | `<TASK>`   | "On which side is the finding?", answered left / right / bilateral / none                  |
| reward | `<REWARD>`   | GRPO reward: 1.0 for the right side, `wrong` (default 0.0) otherwise; None for other tasks |
| metric | `<METRIC>` | fraction of answers naming the right side, with bootstrap CIs and McNemar paired tests     |

Requires chexone<CHEXONE_RANGE> (chexone plugin API <API>).

## Install

```bash
pip install <DIST>            # once published
pip install -e '.[test]'      # from a checkout, for development
python -m chexone.plugins list --plugins-only     # the three names, origin <DIST>==0.1.0, status ok
python -m chexone.plugins check <TASK> <REWARD> <METRIC>
```

## Use

Samples of the task carry `"task": "<TASK>"` and an answer naming a side, e.g.
`{"id": "s1", "task": "<TASK>", "question": "Which side is the pleural effusion on?", "answer": "left", ...}`
(chexone's docs/data.md describes the sample schema and how to build shards).

```bash
# SFT: train on the task (the task builds prompts and targets)
python -m chexone.fit recipe=stage1_sft data.train='/data/laterality/train-{000000..000007}.tar' \\
    'data.tasks=[<TASK>]'
# GRPO: the task declares its reward, so it is applied with weight 1; list it to set a weight or kwargs
python -m chexone.fit recipe=stage2_grpo model.path=runs/stage1_sft/hf \\
    data.train='/data/laterality/rl-{000000..000003}.tar' \\
    'grpo.rewards=[{name: format},{name: <REWARD>, weight: 1.0, kwargs: {wrong: 0.0}}]'
# Evaluation: the task declares its metric
python -m chexone.evaluate recipe=eval_vqa model.path=runs/stage2_grpo/hf \\
    eval.benchmarks.laterality.path=/data/laterality/test.jsonl 'eval.benchmarks.laterality.tasks=[<TASK>]'
```

or in a recipe:

```yaml
data:
  tasks: [<TASK>]
grpo:
  rewards:
    - {name: format, weight: 1.0}
    - {name: <REWARD>, weight: 1.0, kwargs: {wrong: 0.0}}
eval:
  benchmarks:
    laterality:
      path: /data/laterality/test.jsonl
      tasks: [<TASK>]
      metrics: [<METRIC>]
```

## Develop

| file                       | what to change                                                               |
|----------------------------|------------------------------------------------------------------------------|
| `src/<PKG>/tasks.py`    | the task: `question_text`, `answer_text`, `parse_answer`, `example_samples` (tests) |
| `src/<PKG>/rewards.py`  | the reward: one finite number per response, None for other tasks, `**kwargs` |
| `src/<PKG>/metrics.py`  | the metric: `score(preds, refs)` per sample (PerSampleMetric does the rest)  |
| `pyproject.toml`           | the names (entry points; reinstall after changing them) and the chexone range |
| `tests/test_<PKG>.py`   | chexone's conformance kit (`chexone.testing`) plus your own expectations     |

Import only from `chexone.plugin_api` and `chexone.testing`: the rest of chexone is internal. Run `./ci.sh` (install,
`list --strict`, `check`, tests) locally and in CI.

## Publish

```bash
./ci.sh
python -m pip install build twine
python -m build                 # dist/<PKG>-0.1.0.tar.gz and the wheel
python -m twine upload dist/*
```
'''

_TEMPLATES["ci.sh"] = '''
#!/usr/bin/env bash
# CI for <DIST>: install it into the current environment (next to chexone), check that chexone loads every name and
# that each conforms to chexone's contracts, then run the tests. Usage: ./ci.sh
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -e '.[test]'
python -m chexone.plugins list --plugins-only --strict
python -m chexone.plugins check <TASK> <REWARD> <METRIC>
python -m pytest -q
'''

_TEMPLATES[".gitignore"] = '''
build/
dist/
*.egg-info/
__pycache__/
.pytest_cache/
'''


if __name__ == "__main__":
    sys.exit(main())
