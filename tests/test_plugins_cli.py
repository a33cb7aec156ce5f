"""``python -m chexone.plugins``: ``list`` and ``check`` on real installed distributions (a dist-info directory on
sys.path, found by importlib.metadata like a pip-installed package), and ``new``: the scaffold is pip-installed for
real, its own tests run and ``check`` passes on its names in a fresh interpreter."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import chexone
from chexone import plugins_cli
from chexone.plugins import ScaffoldError, main, scaffold
from chexone.registry import refresh_plugins
from chexone.tasks import clear_task_cache

REPO = Path(__file__).resolve().parents[1]

PLUGIN_MODULE = '''
CHEXONE_API_VERSION = 1
import math

from chexone.plugin_api import OpenVQATask


class Shouted(OpenVQATask):
    """Upper-cases its training target but compares answers case-sensitively: the target does not parse back."""

    name = "kitcli_shouted"

    def parse_answer(self, answer):
        return answer.strip()

    def target(self, sample, *, reasoning):
        return f"\\\\boxed{{{sample.answer.upper()}}}" if reasoning else sample.answer.upper()


class Dual(OpenVQATask):
    name = "kitcli_dual"


def dual(preds, refs):
    return [float(p == r) for p, r in zip(preds, refs)]


def nan_reward(responses, samples, **kwargs):
    return [math.nan] * len(responses)


def no_kwargs(responses, samples):
    return [0.0] * len(responses)


class NoUpdate:
    def compute(self):
        return 0.0
'''


def make_dist(root: Path, name: str, version: str, entry_points: dict[str, dict[str, str]],
              modules: dict[str, str], requires: str = "") -> Path:
    """An installed distribution (dist-info + modules) under ``root``."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires:
        meta += f"Requires-Dist: {requires}\n"
    (info / "METADATA").write_text(meta)
    lines = []
    for group, eps in entry_points.items():
        lines += [f"[{group}]"] + [f"{k} = {v}" for k, v in eps.items()] + [""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """``installed(name, version, entry_points, modules, requires="")``: a distribution on sys.path for this test."""
    before = set(sys.modules)
    counter = iter(range(100))

    def _install(name, version, entry_points, modules, requires=""):
        root = make_dist(tmp_path / f"site{next(counter)}", name, version, entry_points, modules, requires)
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        refresh_plugins()
        clear_task_cache()
        return root

    yield _install
    refresh_plugins()  # discovery is lazy: it runs again after monkeypatch has restored sys.path
    clear_task_cache()
    for module in set(sys.modules) - before:
        if module.startswith(("kitcli_", "kit_scaffold")):
            del sys.modules[module]


def table(out: str) -> dict[tuple[str, str], list[str]]:
    """(name, kind) -> [origin, api, status] from ``list`` output (columns split on runs of 2+ spaces)."""
    lines = out.strip().splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["name", "kind", "origin", "api", "status"]
    rows = {}
    for line in lines[1:]:
        name, kind, origin, api, status = re.split(r"\s{2,}", line, maxsplit=4)
        rows[(name, kind)] = [origin, api, status]
    return rows


# ---------------------------------------------------------------------------------------------------------- list
def test_list_shows_origin_api_and_status_and_strict_fails_on_broken(installed, capsys):
    installed("kit-cli-list", "0.3", {"chexone.tasks": {"kitcli_dual": "kitcli_mod:Dual"},
                                      "chexone.rewards": {"kitcli_broken": "kitcli_broken:reward"}},
              {"kitcli_mod": PLUGIN_MODULE, "kitcli_broken": "import kitcli_missing_dependency\n"})
    assert main(["list", "--plugins-only"]) == 0
    out, err = capsys.readouterr()
    rows = table(out)
    assert rows[("kitcli_dual", "task")] == ["kit-cli-list==0.3", "1", "ok"]
    assert rows[("kitcli_broken", "reward")] == ["kit-cli-list==0.3", "-",
                                                 "error: No module named 'kitcli_missing_dependency'"]
    assert not any(name == "close_vqa" for name, _ in rows)
    assert 'warning: Error importing plugin "kitcli_broken" (kit-cli-list==0.3)' in err

    assert main(["list", "--kind", "reward", "--strict"]) == 1
    out, err = capsys.readouterr()
    rows = table(out)
    assert rows[("vqa", "reward")] == ["built-in", "1", "ok"] and {k for _, k in rows} == {"reward"}
    assert "broken, incompatible or conflicting entr" in err and "kitcli_broken" in err.splitlines()[-1]

    assert main(["list", "--no-load", "--plugins-only", "--strict"]) == 0  # nothing imported, nothing known broken
    rows = table(capsys.readouterr().out)
    assert rows[("kitcli_broken", "reward")] == ["kit-cli-list==0.3", "-", "not loaded"]

    assert plugins_cli.main(["--plugins-only", "--kind", "task"]) == 0  # the old name forwards to `list`
    assert table(capsys.readouterr().out)[("kitcli_dual", "task")] == ["kit-cli-list==0.3", "1", "ok"]


def test_list_strict_fails_on_an_incompatible_plugin(installed, capsys):
    installed("kit-cli-future", "2.0", {"chexone.metrics": {"kitcli_future": "kitcli_mod:dual"}},
              {"kitcli_mod": PLUGIN_MODULE}, requires="chexone>=99")
    assert main(["list", "--plugins-only", "--kind", "metric", "--strict"]) == 1
    origin, api, status = table(capsys.readouterr().out)[("kitcli_future", "metric")]
    assert origin == "kit-cli-future==2.0" and api == "-"
    assert status.startswith('incompatible: Plugin "kitcli_future" (kit-cli-future==2.0) requires chexone>=99, but '
                             f"chexone {chexone.__version__} is installed")


# ---------------------------------------------------------------------------------------------------------- check
def test_check_gives_one_clear_line_per_broken_plugin(installed, capsys):
    installed("kit-cli-broken", "0.1", {
        "chexone.tasks": {"kitcli_shouted": "kitcli_mod:Shouted"},
        "chexone.rewards": {"kitcli_nan": "kitcli_mod:nan_reward", "kitcli_nokw": "kitcli_mod:no_kwargs"},
        "chexone.metrics": {"kitcli_noupdate": "kitcli_mod:NoUpdate"},
    }, {"kitcli_mod": PLUGIN_MODULE})
    assert main(["check", "kitcli_shouted", "kitcli_nan", "kitcli_nokw", "kitcli_noupdate"]) == 1
    out = capsys.readouterr().out.splitlines()
    fails = [line for line in out if line.startswith("FAIL")]
    assert len(fails) == 4, "\n".join(out)
    assert fails[0] == ("FAIL  task kitcli_shouted: parses its own targets back to its answer: the reasoning-mode "
                        "target of sample 'kit-kitcli_shouted-0' does not parse back to its answer: final answer "
                        "'LEFT' parses to 'LEFT', answer_text 'left' to 'left'")
    assert fails[1].startswith("FAIL  reward kitcli_nan: one finite number or None per completion (full context + an "
                               "unknown keyword): returned nan (rewards must be finite numbers) for completion 0 (")
    assert fails[2] == ("FAIL  reward kitcli_nokw: accepts **kwargs: its signature (responses, samples) has no "
                        "**kwargs; chexone calls reward(responses, samples, boxed=..., prompts=..., reasoning=..., "
                        "step=..., **recipe_kwargs) and may pass more: add **kwargs")
    assert fails[3] == ("FAIL  metric kitcli_noupdate: builds as the evaluation harness builds it: metric "
                        "'kitcli_noupdate' has no update() method; a metric is a class with update(preds, refs) and "
                        "compute() (e.g. a torchmetrics.Metric, or chexone.metrics.PerSampleMetric), or a plain "
                        "function fn(preds, refs) -> list[float | None]")
    # the nan reward is declared by no task: applied to every sample, so checked on every family
    assert "PASS  reward kitcli_nan: loads" in out
    assert "N/A   reward kitcli_nan: None for samples of other tasks: task-agnostic: no task declares it, so chexone " \
           "applies it to every sample" not in out  # its values failed: the ownership check was not run
    assert "SKIP  reward kitcli_nan: None for samples of other tasks: not run: 'one finite number or None per " \
           "completion (full context + an unknown keyword)' did not pass" in out
    assert re.fullmatch(r"\d+ checks: \d+ passed, 4 failed, \d+ skipped, 0 not applicable", out[-1])


def test_check_runs_every_kind_a_name_has_and_passes_builtins(installed, capsys):
    installed("kit-cli-dual", "0.2", {"chexone.tasks": {"kitcli_dual": "kitcli_mod:Dual"},
                                      "chexone.metrics": {"kitcli_dual": "kitcli_mod:dual"}},
              {"kitcli_mod": PLUGIN_MODULE})
    assert main(["check", "kitcli_dual", "vqa"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("PASS  task kitcli_dual: ") for line in out) == 7
    assert sum(line.startswith("PASS  metric kitcli_dual: ") for line in out) == 5
    assert sum(line.startswith("PASS  reward vqa: ") for line in out) == 5
    assert out[-1] == "17 checks: 17 passed, 0 failed, 0 skipped, 0 not applicable"


def test_check_passes_recipe_kwargs_to_rewards_and_metrics(capsys):
    assert main(["check", "vqa", "iou", "--kwargs", '{"semantics": "reference"}']) == 1
    out = capsys.readouterr().out.splitlines()
    # the reward takes it; the metric's constructor does not know it: one line each, naming the cause
    assert [line for line in out if line.startswith("FAIL")] == [
        "FAIL  metric iou: builds as the evaluation harness builds it: raised ValueError: Unexpected keyword "
        "arguments: `semantics`"]
    assert "PASS  reward vqa: one finite number or None per completion (full context + an unknown keyword)" in out
    assert main(["check", "vqa", "--kwargs", '{"semantics": "bogus"}']) == 1
    (fail,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert fail.startswith("FAIL  reward vqa: one finite number or None per completion (full context + an unknown "
                           "keyword): raised ValueError: reward 'vqa': semantics='bogus'; choose one of paper, reference")
    assert main(["check", "vqa", "--kwargs", "[1]"]) == 2
    assert capsys.readouterr().err.strip() == "error: --kwargs must be a JSON object, got list"


def test_check_unknown_name_exits_2_with_a_suggestion(capsys):
    assert main(["check", "close_vqa", "acuracy"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing is checked when a name is wrong
    assert err.strip() == ("error: 'acuracy' is not a task, reward or metric known to chexone. Did you mean "
                           "'accuracy'? See python -m chexone.plugins list (an installed plugin's names come from its "
                           "entry points).")


# ---------------------------------------------------------------------------------------------------------- new
def test_new_refuses_bad_names_and_existing_directories(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["new", "my-plugin", "--dir", str(busy)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {busy} already exists and is not an empty directory; choose "
                                               "another --dir (nothing was written)")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    with pytest.raises(ScaffoldError, match="'my plugin' is not a distribution name"):
        scaffold("my plugin", tmp_path / "a")
    with pytest.raises(ScaffoldError, match="package name 'json' would shadow the standard library"):
        scaffold("json", tmp_path / "b")
    with pytest.raises(ScaffoldError, match="'3d' is not a valid Python package name"):
        scaffold("3d", tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_new_writes_a_complete_package(tmp_path):
    root = scaffold("kit-scaffold-demo", tmp_path / "pkg", package="kit_scaffold_demo")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [".gitignore", "README.md", "ci.sh", "pyproject.toml", "src/kit_scaffold_demo/__init__.py",
                     "src/kit_scaffold_demo/metrics.py", "src/kit_scaffold_demo/rewards.py",
                     "src/kit_scaffold_demo/tasks.py", "tests/test_kit_scaffold_demo.py"]
    pyproject = (root / "pyproject.toml").read_text()
    major, minor = (int(x) for x in chexone.__version__.split(".")[:2])
    assert f'dependencies = ["chexone>={major}.{minor},<{major}.{minor + 1}"]' in pyproject
    assert 'kit_scaffold_demo_laterality = "kit_scaffold_demo.tasks:LateralityTask"' in pyproject
    assert 'kit_scaffold_demo_side_match = "kit_scaffold_demo.rewards:side_match"' in pyproject
    assert 'kit_scaffold_demo_side_accuracy = "kit_scaffold_demo.metrics:SideAccuracy"' in pyproject
    assert "CHEXONE_API_VERSION = 1" in (root / "src/kit_scaffold_demo/__init__.py").read_text()
    assert os.access(root / "ci.sh", os.X_OK)
    assert "python -m chexone.plugins check kit_scaffold_demo_laterality kit_scaffold_demo_side_match " \
           "kit_scaffold_demo_side_accuracy" in (root / "ci.sh").read_text()
    for module in ("tasks", "rewards", "metrics"):  # the plugin's code uses only the public API
        source = (root / f"src/kit_scaffold_demo/{module}.py").read_text()
        imported = set(re.findall(r"^\s*(?:from|import) (chexone[\w.]*)", source, re.M))
        assert imported <= {"chexone.plugin_api", "chexone.testing"}, (module, imported)
    readme = (root / "README.md").read_text()
    assert "'data.tasks=[kit_scaffold_demo_laterality]'" in readme and "<" + "TASK>" not in readme


E2E_NAMES = ["kit_scaffold_e2e_laterality", "kit_scaffold_e2e_side_match", "kit_scaffold_e2e_side_accuracy"]


@pytest.fixture(scope="module")
def new_plugin(tmp_path_factory):
    """``new kit-scaffold-e2e``, really pip-installed (offline, no deps) into a target directory: (source, site)."""
    pytest.importorskip("setuptools", reason="building the scaffold needs setuptools")
    tmp = tmp_path_factory.mktemp("new-plugin")
    root = scaffold("kit-scaffold-e2e", tmp / "src")
    site = tmp / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(root)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    shutil.rmtree(root / "build", ignore_errors=True)
    return root, site


@pytest.fixture
def on_path(new_plugin, monkeypatch):
    """The installed scaffold visible to this process's registries for one test."""
    monkeypatch.syspath_prepend(str(new_plugin[1]))
    refresh_plugins()
    clear_task_cache()
    yield new_plugin
    refresh_plugins()  # rediscovered lazily, after monkeypatch has restored sys.path
    clear_task_cache()
    for module in [m for m in sys.modules if m.startswith("kit_scaffold_e2e")]:
        del sys.modules[module]


@pytest.mark.slow
def test_a_new_plugin_passes_its_own_tests_and_its_checks(new_plugin, on_path, tmp_path, capsys):
    """Straight after installation: its tests and `check` in fresh interpreters, and `list` shows its names."""
    root, site = new_plugin
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    tests = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    check = subprocess.run([sys.executable, "-m", "chexone.plugins", "check", *E2E_NAMES], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    test_out = tests.communicate(timeout=300)[0]
    assert tests.returncode == 0, test_out[-3000:]
    assert re.search(r"^13 passed", test_out.splitlines()[-1]), test_out[-3000:]
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.splitlines()[-1] == "17 checks: 17 passed, 0 failed, 0 skipped, 0 not applicable"

    assert main(["list", "--plugins-only"]) == 0
    rows = table(capsys.readouterr().out)
    assert [rows[(n, k)] for n, k in zip(E2E_NAMES, ("task", "reward", "metric"))] == \
        [["kit-scaffold-e2e==0.1.0", "1", "ok"]] * 3


def test_a_new_plugin_runs_in_sft_grpo_and_evaluation(on_path, tmp_path, cache_dir, tiny_dir, capsys):
    """The scaffold's task, reward and metric by name in a tiny SFT run, a GRPO step and an evaluation."""
    import json

    from chexone.config.load import load_config
    from chexone.evaluate import main as evaluate
    from chexone.testing import samples_for
    from chexone.training.run import run_fit
    from webdata.writer import ShardWriter

    task, reward, metric = E2E_NAMES
    samples = samples_for(task, 8)
    with ShardWriter(tmp_path / "shards", prefix="train", builder="test") as writer:
        for s in samples:
            writer.write(s)
    common = {"model": "tiny", "data": "custom", "data.train": str(tmp_path / "shards" / "train-000000.tar"),
              "data.tasks": f"[{task}]", "trainer.progress_bar": "false", "data.num_workers": "0",
              "export_hf": "false", "trainer.max_steps": "1"}

    def overrides(out, **extra):
        return [f"{k}={v}" for k, v in {**common, "output_dir": str(out), **extra}.items()]

    sft = run_fit(load_config("stage1_sft", overrides(tmp_path / "sft", **{
        "logger": "none", "data.micro_batch_size": "2", "trainer.global_batch_size": "2",
        "trainer.val_every_n_steps": "0"})))
    assert sft["global_step"] == 1

    grpo = run_fit(load_config("stage2_grpo", overrides(tmp_path / "grpo", **{
        "logger": "none", "grpo.init_from": "''", "grpo.num_generations": "2", "grpo.prompts_per_step": "2",
        "grpo.max_completion_length": "8", "grpo.log_completions_every_n_steps": "1",
        "grpo.rewards": f"[{{name: format}},{{name: {reward}, kwargs: {{wrong: -0.5}}}}]"})))
    assert grpo["global_step"] == 1
    assert f"{reward} (weight 1; {task})" in capsys.readouterr().out  # the reward plan printed at the start
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "completions.jsonl").read_text().splitlines()]
    assert rows and all(r["task"] == task and r["rewards"][reward] in (1.0, -0.5) for r in rows)

    bench = tmp_path / "bench"
    (bench / "imgs").mkdir(parents=True)
    with (bench / "test.jsonl").open("w") as f:
        for s in samples[:4]:
            s.images[0].save(bench / "imgs" / f"{s.id}.png")
            f.write(json.dumps({**s.to_json(), "images": [f"imgs/{s.id}.png"]}) + "\n")
    out = tmp_path / "eval"
    assert evaluate(["recipe=eval_vqa", "model=tiny", f"model.path={tiny_dir}", "logger=none", f"eval.out={out}",
                     f"eval.benchmarks.laterality.path={bench / 'test.jsonl'}",
                     f"eval.benchmarks.laterality.tasks=[{task}]",
                     "eval.max_new_tokens=4", "eval.plots=false", "eval.bootstrap_resamples=20"]) == 0
    answered = [json.loads(line) for line in (out / "laterality" / "samples.jsonl").read_text().splitlines()]
    assert len(answered) == 4 and all(metric in a["scores"] for a in answered)
    assert metric in (out / "results.md").read_text()
