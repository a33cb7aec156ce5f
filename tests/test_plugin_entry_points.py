"""Entry-point groups ``chexone.recipes`` (recipe directories) and ``chexone.sources`` (shard sources), and plugin
tasks in ``python -m webdata.build jsonl``, exercised with real installed distributions.

As in test_registry.py, a tiny distribution is written at test time (``<name>-<ver>.dist-info`` with METADATA +
entry_points.txt, plus its package files) into a temp dir put on ``sys.path``: ``importlib.metadata`` finds it exactly
like a pip-installed package. One test really pip-installs ``plugins/chexone-example-plugin`` into a ``--target`` dir.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from chexone.config import load as config_load
from chexone.config.cli import format_listing
from chexone.config.load import ConfigError, find_recipe, list_groups, load_config, plugin_recipe_dirs, recipe_dirs
from chexone.data.shards import build_eval_dataset
from chexone.registry import AUTOLOAD_ENV, RegistryWarning, refresh_plugins
from chexone.tasks import clear_task_cache
from webdata import build as B
from webdata.sources import REGISTRY as SOURCES, get_source
from webdata.synthetic import write_png

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPO / "plugins" / "chexone-example-plugin"


# ---------------------------------------------------------------------------------------------------------- helpers
def make_dist(root: Path, name: str, version: str, entry_points: dict[str, dict[str, str]],
              files: dict[str, str]) -> Path:
    """An installed distribution under ``root``: dist-info (METADATA, entry_points.txt) and ``files`` (relative
    path -> text)."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for group, eps in entry_points.items()))
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def _refresh() -> None:
    refresh_plugins()
    SOURCES.refresh()
    clear_task_cache()
    config_load._plugin_recipes_cache.clear()


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(name, version, entry_points, files)``: a distribution on sys.path for this test only; the task,
    source and recipe registries are rescanned before and after."""
    before = set(sys.modules)
    counter = iter(range(1000))

    def _install(name, version, entry_points, files):
        root = make_dist(tmp_path / f"site{next(counter)}", name, version, entry_points, files)
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        _refresh()
        return root

    _refresh()
    yield _install
    monkeypatch.undo()
    _refresh()
    for mod in set(sys.modules) - before:
        if mod.startswith(("cxp_", "chexone_example_plugin")):
            del sys.modules[mod]


SOURCE_MODULE = """
    import os
    from chexone.data.sample import Sample
    from webdata.sources.common import Skip, Source, Unit, ids_from_path, input_files, read_csv


    class PairSource(Source):
        '''CSV rows image,finding -> cxp_finding samples.'''
        name = "cxp-pairs"
        dataset = "CXP"
        version = "7"
        description = "test plugin source: image,finding rows"

        @classmethod
        def add_arguments(cls, p):
            p.add_argument("--images", default="")

        def plan(self, split, index):
            for path in input_files(self.args.input, ("*.csv",)):
                for line, row in read_csv(path, require=("image", "finding")):
                    if not row["finding"]:
                        yield Skip(f"{path}:{line}", "no_finding", "empty finding")
                        continue
                    image = self.under(self.args.images, row["image"])
                    yield Unit(f"row{line}", f"{path}:{line}", {"image": image, "finding": row["finding"]},
                               ids_from_path(image))

        def convert(self, unit, load):
            image = load(unit.data["image"])
            yield Sample(id=unit.uid, task="open_vqa", question="Which finding?", answer=unit.data["finding"],
                         images=[image.image], dataset=self.dataset)
"""

TASKS_MODULE = """
    from chexone.tasks.base import Task
    from chexone.tasks.builtin import MultipleChoiceTask


    class LateralityTask(MultipleChoiceTask):
        name = "cxp_laterality"
        family = "multiple_choice"


    class CountTask(Task):
        name = "cxp_count"
        family = "counting"
"""

RECIPE = """\
# Evaluate the cxp benchmark (a plugin recipe).
defaults:
  - model: tiny
  - data: cxp_bench

output_dir: runs/${recipe}
model:
  path: tiny
eval:
  benchmarks:
    cxp:
      title: CXP benchmark
      tasks: [cxp_laterality]
"""

DATA_GROUP = """\
# Data group of the cxp plugin.
name: cxp_bench
"""


def bench_plugin(install, name="cxp-bench", version="0.3", recipe="eval_cxp_bench", extra_files=None):
    files = {"cxp_bench/__init__.py": "", "cxp_bench/source.py": SOURCE_MODULE, "cxp_bench/tasks.py": TASKS_MODULE,
             f"cxp_bench/recipes/{recipe}.yaml": RECIPE, "cxp_bench/recipes/data/cxp_bench.yaml": DATA_GROUP,
             **(extra_files or {})}
    return install(name, version, {
        "chexone.recipes": {name: "cxp_bench.recipes"},
        "chexone.sources": {"cxp-pairs": "cxp_bench.source:PairSource"},
        "chexone.tasks": {"cxp_laterality": "cxp_bench.tasks:LateralityTask", "cxp_count": "cxp_bench.tasks:CountTask"},
    }, files)


def csv_input(tmp_path: Path) -> Path:
    write_png(tmp_path / "imgs" / "a.png", np.full((12, 10), 33, np.uint8))
    path = tmp_path / "pairs.csv"
    path.write_text("image,finding\na.png,Effusion\na.png,\n")
    return path


# ---------------------------------------------------------------------------------------------------------- recipes
def ours(entries):
    """Only the plugin recipe directories these tests installed (other plugins may be installed in the venv)."""
    return [p for p in entries if p.distribution.startswith("cxp-")]


def foreign_dirs():
    return {p.path.resolve() for p in plugin_recipe_dirs() if not p.distribution.startswith("cxp-")}


def test_plugin_recipe_directory_is_searched_after_the_packaged_one(install, tmp_path, monkeypatch):
    root = bench_plugin(install)
    env = tmp_path / "env_recipes"
    env.mkdir()
    monkeypatch.setenv("CHEXONE_RECIPES", str(env))
    dirs = [d.resolve() for d in recipe_dirs() if d.resolve() not in foreign_dirs()]
    plugin_dir = (root / "cxp_bench" / "recipes").resolve()
    assert dirs[:3] == [config_load._packaged_recipes().resolve(), plugin_dir, env.resolve()]
    assert [(p.distribution, p.version, p.entry_point) for p in ours(plugin_recipe_dirs())] == [
        ("cxp-bench", "0.3", "cxp-bench = cxp_bench.recipes")]

    assert find_recipe("eval_cxp_bench").resolve() == plugin_dir / "eval_cxp_bench.yaml"
    assert "cxp_bench" not in sys.modules  # recipe directories are found without importing the plugin
    assert list_groups()["data"]["cxp_bench"].resolve() == plugin_dir / "data" / "cxp_bench.yaml"
    cfg = load_config("eval_cxp_bench")
    assert cfg.recipe == "eval_cxp_bench" and cfg.data.name == "cxp_bench"
    assert list(cfg.eval.benchmarks) == ["cxp"] and list(cfg.eval.benchmarks.cxp.tasks) == ["cxp_laterality"]

    listing = format_listing("evaluate")
    line = next(x for x in listing.splitlines() if x.strip().startswith("eval_cxp_bench"))
    assert "Evaluate the cxp benchmark (a plugin recipe)." in line and line.endswith("[plugin: cxp-bench==0.3]")
    assert any(x.strip().startswith("cxp_bench") and x.endswith("[plugin: cxp-bench==0.3]")
               for x in listing.splitlines())
    assert not any(x.strip().startswith("stage1_sft") and "[plugin" in x for x in listing.splitlines())
    assert "(plugin cxp-bench==0.3)" in listing.splitlines()[-2]  # the Searched: line

    monkeypatch.setenv(AUTOLOAD_ENV, "1")  # the switch turns plugin recipe directories off too
    assert plugin_recipe_dirs() == [] and plugin_dir not in [d.resolve() for d in recipe_dirs()]
    with pytest.raises(ConfigError, match="Unknown recipe 'eval_cxp_bench'"):
        find_recipe("eval_cxp_bench")


def test_recipe_clashes_builtins_win_and_two_plugins_are_reported(install):
    clash = {"cxp_other/__init__.py": "", "cxp_other/recipes/stage1_sft.yaml": "# shadow\n",
             "cxp_other/recipes/eval_cxp_bench.yaml": "# second copy\n"}
    install("cxp-zzz-other", "1.0", {"chexone.recipes": {"other": "cxp_other.recipes"}}, clash)
    root = bench_plugin(install, name="cxp-aaa-bench")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dirs = ours(plugin_recipe_dirs())
    assert [p.distribution for p in dirs] == ["cxp-aaa-bench", "cxp-zzz-other"]  # sorted by distribution name
    messages = [str(w.message) for w in caught if issubclass(w.category, RegistryWarning)]
    assert any("recipe 'stage1_sft' of plugin cxp-zzz-other==1.0" in m and "built-ins win" in m for m in messages)
    assert any("recipe 'eval_cxp_bench' is provided by two plugins, cxp-aaa-bench==0.3" in m
               and "cxp-zzz-other==1.0" in m and "using cxp-aaa-bench==0.3's" in m for m in messages)
    assert find_recipe("stage1_sft").resolve() == (config_load._packaged_recipes() / "stage1_sft.yaml").resolve()
    assert find_recipe("eval_cxp_bench").resolve() == (root / "cxp_bench" / "recipes" / "eval_cxp_bench.yaml").resolve()


def test_recipe_entry_point_may_name_a_directory_attribute(install):
    root = install("cxp-attr", "1.1", {"chexone.recipes": {"cxp-attr": "cxp_attr:RECIPES"}}, {
        "cxp_attr.py": "from pathlib import Path\nRECIPES = Path(__file__).parent / 'cxp_attr_recipes'\n",
        "cxp_attr_recipes/eval_cxp_attr.yaml": "# An attribute-declared recipe.\n"})
    assert [(p.path, p.label) for p in ours(plugin_recipe_dirs())] == [(root / "cxp_attr_recipes", "cxp-attr==1.1")]
    assert find_recipe("eval_cxp_attr") == root / "cxp_attr_recipes" / "eval_cxp_attr.yaml"


def test_broken_recipe_entry_point_is_warned_about_and_skipped(install):
    install("cxp-broken-recipes", "2.0", {"chexone.recipes": {"broken": "cxp_no_such_package.recipes",
                                                             "module": "cxp_plain"}},
            {"cxp_plain.py": "X = 1\n"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ours(plugin_recipe_dirs()) == []
        assert find_recipe("stage1_sft")  # everything else still works
    messages = [str(w.message) for w in caught if issubclass(w.category, RegistryWarning)]
    assert any(m.startswith('Recipe directory of plugin "broken" (cxp-broken-recipes==2.0) is ignored: '
                            "ModuleNotFoundError") for m in messages)
    assert any('"module" (cxp-broken-recipes==2.0)' in m and "is a module, not a package" in m for m in messages)


# ---------------------------------------------------------------------------------------------------------- sources
def test_plugin_source_builds_by_name_and_is_listed(install, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # --help on one line per source
    bench_plugin(install)
    assert "cxp-pairs" in SOURCES and SOURCES.origin("cxp-pairs").startswith("cxp-bench==0.3 (entry point")
    assert "cxp_bench.source" not in sys.modules  # discovered, not imported
    out = tmp_path / "out"
    code = B.main(["cxp-pairs", "--input", str(csv_input(tmp_path)), "--images", str(tmp_path / "imgs"),
                   "--out", str(out), "--no-progress", "--workers", "1"])
    assert code == 0, capsys.readouterr().err
    (s,) = build_eval_dataset(str(out), max_skip_fraction=0.0)
    assert (s.id, s.task, s.answer, s.dataset) == ("row2", "open_vqa", "Effusion", "CXP")
    assert s.images[0].size == (10, 12)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["source"], manifest["source_version"], manifest["source_origin"]) == (
        "cxp-pairs", "7", "cxp-bench==0.3")
    assert manifest["skipped"] == {"no_finding": 1}

    with pytest.raises(SystemExit) as exc:
        B.main(["--help"])
    assert exc.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "cxp-pairs test plugin source: image,finding rows [plugin: cxp-bench==0.3]" in help_text
    assert "jsonl records in chexone's sample schema" in help_text


def test_plugin_source_runs_from_the_command_line(install, tmp_path):
    """``python -m webdata.build cxp-pairs`` in a fresh interpreter: the name alone selects the plugin's source."""
    root = bench_plugin(install)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}
    env.pop(AUTOLOAD_ENV, None)
    out = tmp_path / "cli_out"
    argv = [sys.executable, "-m", "webdata.build", "cxp-pairs", "--input", str(csv_input(tmp_path)), "--images",
            str(tmp_path / "imgs"), "--out", str(out), "--no-progress", "--workers", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "manifest.json").read_text())["total"] == 1
    proc = subprocess.run(argv, capture_output=True, text=True, env={**env, AUTOLOAD_ENV: "1"}, timeout=300)
    assert proc.returncode == 2
    assert 'Unknown source "cxp-pairs"' in proc.stderr and f"because {AUTOLOAD_ENV} is set" in proc.stderr


def test_builtin_source_wins_and_broken_plugin_sources_name_their_distribution(install, tmp_path, capsys,
                                                                               monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # --help on one line per source
    install("cxp-bad-sources", "0.9", {"chexone.sources": {
        "jsonl": "cxp_shadow:Shadow",            # a built-in name: ignored
        "cxp-broken": "cxp_broken_src:Broken",   # its module cannot be imported
        "cxp-wrong": "cxp_wrong_src:NotASource",  # not a Source subclass
    }}, {"cxp_shadow.py": "class Shadow: pass\n", "cxp_broken_src.py": "import cxp_missing_dependency\n",
         "cxp_wrong_src.py": "class NotASource: pass\n"})
    with pytest.warns(RegistryWarning, match='Plugin source "jsonl" from distribution cxp-bad-sources==0.9'):
        names = SOURCES.names()
    assert "cxp-broken" in names and get_source("jsonl").__module__ == "webdata.sources.sample_jsonl"

    out = tmp_path / "out"
    argv = ["--input", str(tmp_path), "--out", str(out), "--no-progress"]
    assert B.main(["cxp-broken", *argv]) == B.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith('error: Error importing source "cxp-broken" (cxp-bad-sources==0.9): ModuleNotFoundError: '
                          "No module named 'cxp_missing_dependency'")
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert B.main(["cxp-wrong", *argv]) == B.EXIT_USAGE
    err = capsys.readouterr().err
    assert 'source "cxp-wrong" in chexone.sources (cxp-bad-sources==0.9' in err
    assert "must be a webdata.sources.common.Source subclass" in err and not out.exists()
    # a built-in source still runs (unselected plugin sources are not imported), and --help lists the broken ones
    assert B.main(["jsonl", "--input", str(tmp_path / "none.jsonl"), "--out", str(out), "--no-progress"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        B.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert 'cxp-broken cannot be used: Error importing source "cxp-broken" (cxp-bad-sources==0.9)' in help_text


# ------------------------------------------------------------------------------------------------------- plugin tasks
def test_plugin_tasks_in_jsonl_and_task_map(install, tmp_path, capsys):
    write_png(tmp_path / "a.png", np.full((8, 8), 5, np.uint8))
    records = [
        {"id": "lat", "task": "cxp_laterality", "question": "Which side? Options:\n(b) right\n(a) left",
         "answer": "(a) left", "images": ["a.png"], "reasoning": "Opacity on the patient's left: (a)."},
        {"id": "count", "task": "cxp_count", "question": "How many nodules?\n(A) one\n(B) two", "answer": "2",
         "images": ["a.png"]},
        {"id": "fixed", "task": "cxp_laterality", "question": "Left or right?", "answer": "A", "images": ["a.png"]},
        {"id": "mapped", "task": "Side Question", "question": "Which side?", "options": ["left", "right"],
         "answer": "right", "images": ["a.png"]},
    ]
    src = tmp_path / "s.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["jsonl", "--input", str(src), "--no-progress", "--workers", "1", "--task-map",
            "Side Question=cxp_laterality"]
    # not installed yet: the --task-map target is refused, naming it
    assert B.main([*argv, "--out", str(tmp_path / "before")]) == B.EXIT_USAGE
    assert 'unknown task "cxp_laterality"' in capsys.readouterr().err and not (tmp_path / "before").exists()

    bench_plugin(install)
    out = tmp_path / "out"
    assert B.main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    got = {s.id: s for s in build_eval_dataset(str(out), max_skip_fraction=0.0)}
    lat = got["lat"]  # a plugin multiple-choice task: options re-lettered and moved out of the question
    assert (lat.question, lat.options, lat.answer) == ("Which side?\nOptions:", ["right", "left"], "B")
    assert lat.reasoning == "Opacity on the patient's left: (B)."
    count = got["count"]  # a plugin task of another family: the question is left alone
    assert (count.question, count.options, count.answer) == ("How many nodules?\n(A) one\n(B) two", [], "2")
    fixed = got["fixed"]  # a plugin multiple-choice task without options (fixed options): kept as it is
    assert (fixed.task, fixed.options, fixed.answer) == ("cxp_laterality", [], "A")
    mapped = got["mapped"]
    assert (mapped.task, mapped.options, mapped.answer) == ("cxp_laterality", ["left", "right"], "B")
    assert mapped.meta == {"source_task": "Side Question"}


def test_broken_plugin_task_stops_a_jsonl_build(install, tmp_path, capsys):
    install("cxp-broken-task", "0.1", {"chexone.tasks": {"cxp_broken": "cxp_broken_task:T"}},
            {"cxp_broken_task.py": "import cxp_missing_dependency\n"})
    src = tmp_path / "s.jsonl"
    src.write_text(json.dumps({"id": "x", "task": "cxp_broken", "question": "q", "answer": "a", "images": []}) + "\n")
    out = tmp_path / "out"
    assert B.main(["jsonl", "--input", str(src), "--out", str(out), "--no-progress"]) == B.EXIT_USAGE
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"{src}:1: field 'task': Error importing plugin \"cxp_broken\" (cxp-broken-task==0.1)" \
        in err[0]
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------- example plugin
def test_pip_installed_example_plugin_ships_its_recipe_and_source(tmp_path, monkeypatch, capsys):
    """Really pip-install plugins/chexone-example-plugin (offline, no deps): its recipe and source work by name."""
    pytest.importorskip("setuptools", reason="building the example plugin needs setuptools")
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not available in this interpreter")
    src = tmp_path / "src"  # build from a copy so build/ and *.egg-info never land in the repo
    shutil.copytree(EXAMPLE_PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    monkeypatch.syspath_prepend(str(target))
    _refresh()
    try:
        recipe = find_recipe("eval_example_yes_no")
        shipped = target / "chexone_example_plugin" / "recipes" / "eval_example_yes_no.yaml"
        assert recipe.resolve() == shipped.resolve()
        cfg = load_config("eval_example_yes_no", ["model.path=some/model"])
        assert list(cfg.eval.benchmarks.yes_no.tasks) == ["example_yes_no"]
        assert "[plugin: chexone-example-plugin==0.1.0]" in format_listing("evaluate")

        write_png(tmp_path / "data" / "a.png", np.full((8, 8), 5, np.uint8))
        (tmp_path / "data" / "q.csv").write_text("image,question,answer\na.png,Pleural effusion?,No\n"
                                                 "a.png,Pneumothorax?,perhaps\n")
        out = tmp_path / "yes_no"
        assert B.main(["example-yes-no-csv", "--input", str(tmp_path / "data" / "q.csv"), "--out", str(out),
                       "--no-progress", "--workers", "1"]) == 0, capsys.readouterr().err
        (s,) = build_eval_dataset(str(out), max_skip_fraction=0.0)
        assert (s.task, s.question, s.answer) == ("example_yes_no", "Pleural effusion?", "B")
        assert json.loads((out / "manifest.json").read_text())["skipped"] == {"not_yes_no": 1}
    finally:
        monkeypatch.undo()
        _refresh()
        for mod in [m for m in sys.modules if m.startswith("chexone_example_plugin")]:
            del sys.modules[mod]
