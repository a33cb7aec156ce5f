"""Registry, plugin discovery and the example plugin, exercised with real installed distributions.

Most tests build a tiny distribution in a temp dir (``<name>-<ver>.dist-info`` with METADATA + entry_points.txt, and
a module next to it) and put that dir on ``sys.path``: ``importlib.metadata`` then finds it exactly like a
pip-installed package. One test really pip-installs ``plugins/chexone-example-plugin`` into a ``--target`` dir.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest

from chexone import registry as reg_mod
from chexone.registry import (
    AUTOLOAD_ENV,
    METRICS,
    REWARDS,
    TASKS,
    DuplicateNameError,
    PluginLoadError,
    PluginTypeError,
    Registry,
    RegistryError,
    RegistryWarning,
    UnknownNameError,
    refresh_plugins,
)
from chexone.tasks import clear_task_cache, get_task

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPO / "plugins" / "chexone-example-plugin"
GROUP = "chexone_test.widgets"  # a private group, so tests never see real plugins (and vice versa)


# ---------------------------------------------------------------------------------------------------------- helpers
def make_dist(root: Path, name: str, version: str, entry_points: dict[str, dict[str, str]],
              modules: dict[str, str] | None = None) -> Path:
    """Write an installed distribution (dist-info + modules) under ``root``; return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    for mod, src in (modules or {}).items():
        (root / f"{mod}.py").write_text(textwrap.dedent(src))
    return root


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(name, version, entry_points, modules)``: a real distribution on sys.path for this test only."""
    before = set(sys.modules)
    counter = iter(range(1000))

    def _install(name, version, entry_points, modules=None):
        root = make_dist(tmp_path / f"site{next(counter)}", name, version, entry_points, modules)
        monkeypatch.syspath_prepend(str(root))  # also invalidates importlib caches
        importlib.invalidate_caches()
        return root

    yield _install
    for mod in set(sys.modules) - before:
        if mod.startswith("cxt_") or mod.startswith("chexone_example_plugin"):
            del sys.modules[mod]


@pytest.fixture
def fresh_singletons():
    """Rescan TASKS/REWARDS/METRICS before and after a test that installs plugins into their real groups."""
    refresh_plugins()
    clear_task_cache()
    yield
    refresh_plugins()
    clear_task_cache()


def new_registry(**builtins: str) -> Registry:
    return Registry(GROUP, builtins, kind="widget")


# ---------------------------------------------------------------------------------------------------------- built-ins
def test_builtin_tasks_resolve_lazily_to_task_classes():
    from chexone.builtin_plugins import BUILTIN_TASKS
    from chexone.tasks.base import Task

    assert set(BUILTIN_TASKS) <= set(TASKS.names())
    for name in BUILTIN_TASKS:
        assert TASKS.origin(name) == "built-in"
        cls = TASKS.get(name)
        assert isinstance(cls, type) and issubclass(cls, Task)
        assert cls.name == name, f"built-in {name} resolves to a class named {cls.name}"
        assert TASKS.get(name) is cls  # cached


def test_builtin_is_not_imported_until_get(install):
    install("cxt-builtin-holder", "0.0", {}, {"cxt_lazy_builtin": "VALUE = object()\n"})
    reg = new_registry(thing="cxt_lazy_builtin:VALUE")
    assert "thing" in reg and reg.names() == ["thing"] and reg.origin("thing") == "built-in"
    assert "cxt_lazy_builtin" not in sys.modules
    value = reg.get("thing")
    assert value is sys.modules["cxt_lazy_builtin"].VALUE and reg["thing"] is value


def test_unknown_name_suggests_and_lists_available():
    with pytest.raises(UnknownNameError) as exc_info:
        TASKS.get("clos_vqa")
    err = exc_info.value
    assert isinstance(err, RegistryError) and isinstance(err, KeyError)
    msg = str(err)
    assert 'Unknown task "clos_vqa"' in msg and 'Did you mean "close_vqa"' in msg
    assert "Available:" in msg and "phrase_grounding" in msg
    assert "close_vqa" in err.suggestions and "open_vqa" in err.available
    assert not msg.startswith("'")  # readable, not KeyError's repr
    with pytest.raises(UnknownNameError, match="(none)"):
        new_registry().get("x")


def test_names_are_names_not_import_paths():
    with pytest.raises(UnknownNameError):
        TASKS.get("os:system")
    with pytest.raises(ValueError, match="must not contain ':'"):
        new_registry().register("os:system", print)


# ---------------------------------------------------------------------------------------------------------- register
def test_register_decorator_and_call_record_origin():
    reg = new_registry()

    @reg.register("deco")
    def deco():
        return 1

    line = deco.__code__.co_firstlineno  # the decorator line (Python >= 3.8)
    assert reg.origin("deco") == f"registered at {__file__}:{line}"
    assert reg.get("deco") is deco
    reg.register("lazy", "json:dumps", origin="my test")
    import json

    assert reg.get("lazy") is json.dumps and reg.origin("lazy") == "my test"


def test_duplicate_register_names_both_origins_and_identical_is_noop():
    reg = new_registry(builtin_one="json:dumps")

    def f(): ...

    def g(): ...

    reg.register("x", f, origin="first place")
    reg.register("x", f, origin="second place")  # same object: no-op
    with pytest.raises(DuplicateNameError) as exc_info:
        reg.register("x", g, origin="third place")
    assert "first place" in str(exc_info.value) and "third place" in str(exc_info.value)
    assert reg.get("x") is f

    def factory(n):
        def reward():
            return n
        return reward

    reg.register("made", factory(1), origin="made once")
    with pytest.raises(DuplicateNameError):  # same qualname, different object
        reg.register("made", factory(2), origin="made twice")

    import json

    reg.register("builtin_one", json.dumps)  # the built-in's own object: no-op
    with pytest.raises(DuplicateNameError) as exc_info:
        reg.register("builtin_one", g)
    msg = str(exc_info.value)
    assert "built-in" in msg and f"registered at {__file__}:" in msg


# ---------------------------------------------------------------------------------------------------------- plugins
def test_entry_points_are_discovered_lazily_and_not_imported(install):
    install("lazy-dist", "1.0", {GROUP: {"lazy_thing": "cxt_lazy_mod:THING"}},
            {"cxt_lazy_mod": "THING = ('loaded',)\n"})
    reg = new_registry()
    assert reg._plugins is None  # nothing scanned at construction
    assert reg.names() == ["lazy_thing"] and "lazy_thing" in reg
    assert reg.origin("lazy_thing") == "lazy-dist==1.0 (entry point lazy_thing = cxt_lazy_mod:THING)"
    rows = reg.list_plugins(load=False)
    assert [(r.name, r.kind, r.distribution, r.version, r.status) for r in rows] == [
        ("lazy_thing", "widget", "lazy-dist", "1.0", "not loaded")]
    assert "cxt_lazy_mod" not in sys.modules
    assert reg.get("lazy_thing") == ("loaded",)
    assert "cxt_lazy_mod" in sys.modules


def test_discovery_is_cached_until_refresh(install):
    reg = new_registry()
    assert reg.names() == []
    install("late-dist", "1.0", {GROUP: {"late": "cxt_late:X"}}, {"cxt_late": "X = 1\n"})
    assert reg.names() == []  # cached scan
    reg.refresh()
    assert reg.names() == ["late"] and reg.get("late") == 1


def test_autoload_switch_disables_entry_points(install, monkeypatch):
    install("switch-dist", "1.0", {GROUP: {"switched": "cxt_switch:X"}}, {"cxt_switch": "X = 1\n"})
    reg = new_registry(kept="json:dumps")
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert reg.names() == ["kept"] and "switched" not in reg
    with pytest.raises(UnknownNameError, match=AUTOLOAD_ENV):
        reg.get("switched")
    monkeypatch.setenv(AUTOLOAD_ENV, "0")
    assert reg.names() == ["kept", "switched"] and reg.get("switched") == 1


def test_two_plugins_same_name_error_names_both(install):
    install("dist-a", "1.0", {GROUP: {"dup": "cxt_moda:OBJ", "only_a": "cxt_moda:OBJ"}}, {"cxt_moda": "OBJ = 'a'\n"})
    install("dist-b", "2.0", {GROUP: {"dup": "cxt_modb:OBJ"}}, {"cxt_modb": "OBJ = 'b'\n"})
    reg = new_registry()
    assert reg.names() == ["dup", "only_a"]
    with pytest.raises(DuplicateNameError) as exc_info:
        reg.get("dup")
    msg = str(exc_info.value)
    assert "dist-a==1.0 (entry point dup = cxt_moda:OBJ)" in msg and "dist-b==2.0 (entry point dup = cxt_modb:OBJ)" in msg
    assert len(exc_info.value.origins) == 2
    assert reg.get("only_a") == "a"  # the rest of dist-a still works
    with pytest.warns(RegistryWarning, match="conflicting"):
        rows = [r for r in reg.list_plugins() if r.name == "dup"]
    assert {r.distribution for r in rows} == {"dist-a", "dist-b"}
    assert all(r.status.startswith("conflict with") for r in rows)
    assert "cxt_modb" not in sys.modules  # conflicts are detected without importing


def test_same_target_from_two_dists_is_not_a_conflict(install):
    install("twin-a", "1.0", {GROUP: {"twin": "cxt_twin:OBJ"}}, {"cxt_twin": "OBJ = 'same'\n"})
    install("twin-b", "1.0", {GROUP: {"twin": "cxt_twin:OBJ"}})
    assert new_registry().get("twin") == "same"


def test_builtin_wins_over_plugin_with_warning(install):
    install("shadow-dist", "9.9", {GROUP: {"kept": "cxt_shadow:X"}}, {"cxt_shadow": "X = 'plugin'\n"})
    reg = new_registry(kept="json:dumps")
    with pytest.warns(RegistryWarning, match=r"shadow-dist==9\.9.*built-in"):
        assert reg.names() == ["kept"]
    import json

    assert reg.get("kept") is json.dumps and reg.origin("kept") == "built-in"
    assert "cxt_shadow" not in sys.modules
    rows = reg.list_plugins(load=False)
    assert [(r.distribution, r.status) for r in rows] == [("chexone", "ok"),
                                                          ("shadow-dist", "shadowed by built-in (ignored)")]


def test_builtin_wins_in_real_tasks_registry(install, fresh_singletons):
    install("evil-tasks", "0.1", {"chexone.tasks": {"close_vqa": "cxt_evil:EvilTask"}},
            {"cxt_evil": "raise RuntimeError('must never be imported')\n"})
    refresh_plugins()
    with pytest.warns(RegistryWarning, match="evil-tasks==0.1"):
        cls = TASKS.get("close_vqa")
    from chexone.tasks.builtin import MultipleChoiceTask

    assert cls is MultipleChoiceTask and type(get_task("close_vqa")) is MultipleChoiceTask


def test_broken_plugin_raises_when_selected_and_warns_when_listed(install):
    install("broken-dist", "0.3", {GROUP: {"broken": "cxt_broken:THING", "fine": "cxt_fine:THING"}},
            {"cxt_broken": "raise RuntimeError('boom at import')\n", "cxt_fine": "THING = 42\n"})
    reg = new_registry()
    assert reg.names() == ["broken", "fine"]  # discovery does not import (or fail)
    with pytest.raises(PluginLoadError) as exc_info:
        reg.get("broken")
    err = exc_info.value
    assert str(err).startswith('Error importing plugin "broken" (broken-dist==0.3): RuntimeError: boom at import')
    assert isinstance(err.__cause__, RuntimeError) and isinstance(err, ImportError)

    with pytest.warns(RegistryWarning, match=r'Error importing plugin "broken" \(broken-dist==0\.3\)'):
        rows = {r.name: r for r in reg.list_plugins()}
    assert rows["broken"].status == "error: boom at import" and rows["fine"].status == "ok"

    with pytest.warns(RegistryWarning, match="boom at import"):
        errors = reg.load_all()
    assert list(errors) == ["broken"] and isinstance(errors["broken"], PluginLoadError)
    assert reg.get("fine") == 42


def test_missing_attribute_is_a_load_error(install):
    install("noattr-dist", "1.0", {GROUP: {"noattr": "cxt_noattr:MISSING"}}, {"cxt_noattr": "X = 1\n"})
    with pytest.raises(PluginLoadError, match=r'"noattr" \(noattr-dist==1\.0\): AttributeError'):
        new_registry().get("noattr")


def test_wrong_kind_is_rejected_naming_the_plugin(install, fresh_singletons):
    install("badkind-dist", "1.0", {"chexone.tasks": {"not_a_task": "cxt_badkind:func"},
                                    "chexone.rewards": {"not_callable": "cxt_badkind:NUMBER"}},
            {"cxt_badkind": "def func():\n    pass\nNUMBER = 3\n"})
    refresh_plugins()
    with pytest.raises(PluginTypeError, match=r"badkind-dist==1\.0.*Task subclass or instance"):
        TASKS.get("not_a_task")
    with pytest.raises(PluginTypeError, match=r"badkind-dist==1\.0.*callable"):
        REWARDS.get("not_callable")
    with pytest.raises(PluginTypeError, match="Task subclass"):
        TASKS.register("cxt_bad_register", 5)


def test_plugin_module_that_also_registers_itself_is_not_a_conflict(install, monkeypatch):
    reg = new_registry()
    holder = types.ModuleType("cxt_holder")
    holder.REG = reg
    monkeypatch.setitem(sys.modules, "cxt_holder", holder)
    install("selfreg-dist", "1.0", {GROUP: {"selfreg": "cxt_selfreg:widget"}},
            {"cxt_selfreg": "from cxt_holder import REG\n\n@REG.register('selfreg')\ndef widget():\n    return 7\n"})
    assert reg.get("selfreg")() == 7
    assert reg.get("selfreg")() == 7  # now registered + plugin, same object
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(r.status == "ok" for r in reg.list_plugins())


def test_registered_and_plugin_with_different_objects_conflict(install):
    install("clash-dist", "1.0", {GROUP: {"clash": "cxt_clash:X"}}, {"cxt_clash": "X = 'plugin'\n"})
    reg = new_registry()
    reg.register("clash", "json:loads", origin="local code")
    with pytest.raises(DuplicateNameError, match=r"local code.*clash-dist==1\.0"):
        reg.get("clash")


# ---------------------------------------------------------------------------------------------------------- get_task
def test_get_task_instantiates_once_and_raises_registry_errors(install, fresh_singletons):
    from chexone.tasks.builtin import OpenVQATask

    task = get_task("open_vqa")
    assert type(task) is OpenVQATask and get_task("open_vqa") is task
    with pytest.raises(UnknownNameError, match='Did you mean "open_vqa"'):
        get_task("open_vqaa")
    with pytest.raises(KeyError):
        get_task("no_such_task_at_all")

    install("task-dist", "1.0", {"chexone.tasks": {"cxt_plugin_task": "cxt_taskmod:MyTask"}},
            {"cxt_taskmod": """
                from chexone.tasks.builtin import OpenVQATask
                class MyTask(OpenVQATask):
                    name = "cxt_plugin_task"
             """})
    refresh_plugins()
    assert "cxt_plugin_task" in TASKS.names()
    plugin_task = get_task("cxt_plugin_task")
    assert type(plugin_task).__name__ == "MyTask" and get_task("cxt_plugin_task") is plugin_task
    assert get_task("open_vqa") is task


# ---------------------------------------------------------------------------------------------------------- CLI
def test_plugins_cli_lists_and_strict_fails_on_broken(install, fresh_singletons, capsys):
    from chexone import plugins_cli

    install("cli-broken", "0.1", {"chexone.rewards": {"cxt_cli_broken": "cxt_cli_broken:reward"}},
            {"cxt_cli_broken": "import cxt_no_such_dependency\n"})
    refresh_plugins()
    assert plugins_cli.main(["--plugins-only"]) == 0
    out, err = capsys.readouterr()
    assert "cxt_cli_broken" in out and "cli-broken" in out and "error: No module named" in out
    assert 'Error importing plugin "cxt_cli_broken" (cli-broken==0.1)' in err
    assert "close_vqa" not in out
    assert plugins_cli.main(["--strict"]) == 1
    assert "close_vqa" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------- example plugin
@pytest.fixture
def example_plugin_src(monkeypatch):
    """The example plugin importable from its source tree (behaviour tests; no installation)."""
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN / "src"))
    yield
    for mod in [m for m in sys.modules if m.startswith("chexone_example_plugin")]:
        del sys.modules[mod]


def _sample(task: str, answer: str = "A", **kw):
    from chexone.data.sample import Sample

    return Sample(id=f"s-{task}", task=task, question="Is there a pleural effusion?", answer=answer, **kw)


def test_example_reward_owns_only_its_task(example_plugin_src):
    from chexone_example_plugin.rewards import length_penalty

    samples = [_sample("example_yes_no"), _sample("close_vqa", options=["x", "y"]), _sample("example_yes_no"),
               _sample("example_yes_no")]
    responses = ["short answer", "anything " * 500, "w " * 6, "w " * 20]
    assert length_penalty(responses, samples, max_words=4, unused_kwarg=1) == [0.0, None, -0.5, -1.0]
    with pytest.raises(ValueError):
        length_penalty(["a"], samples)


def test_example_metric_computes_mean_words(example_plugin_src):
    from chexone_example_plugin.metrics import AnswerLength

    metric = AnswerLength()
    metric.update(["one two", "one two three four"], ["x", "y"])
    metric.update(["a b c"], ["z"])
    assert float(metric.compute()) == pytest.approx(3.0)
    metric.reset()
    with pytest.raises(ValueError):
        metric.update(["a"], [])


def test_example_task_fixed_yes_no_options(example_plugin_src):
    from chexone_example_plugin.tasks import YesNoTask

    task = YesNoTask()
    sample = _sample("example_yes_no", answer="yes")
    text = task.messages(sample, reasoning=False)[-1]["content"][-1]["text"]
    assert text.endswith("(A) Yes\n(B) No")
    assert task.target(sample, reasoning=True) == "\\boxed{(A) Yes}"
    assert task.is_correct("I think \\boxed{Yes}", sample, reasoning=True)
    assert task.is_correct("(A) Yes", sample, reasoning=False)
    assert not task.is_correct("\\boxed{(B) No}", sample, reasoning=True)
    assert task.answer_text(_sample("example_yes_no", answer="B")) == "(B) No"


def test_pip_installed_example_plugin_resolves_by_name(tmp_path, monkeypatch, fresh_singletons):
    """Really pip-install plugins/chexone-example-plugin (offline, no deps) and use it through the registries."""
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
    refresh_plugins()
    try:
        origin = TASKS.origin("example_yes_no")
        assert origin.startswith("chexone-example-plugin==0.1.0 (entry point example_yes_no = ")
        assert "chexone_example_plugin" not in sys.modules  # discovered, not imported

        task = get_task("example_yes_no")
        assert type(task).__name__ == "YesNoTask" and task.name == "example_yes_no"
        assert Path(sys.modules["chexone_example_plugin.tasks"].__file__).is_relative_to(target)

        for name in task.rewards + task.metrics:  # the task's own reward/metric names resolve
            if name.startswith("example_"):
                assert name in REWARDS or name in METRICS
        reward = REWARDS.get("example_length_penalty")
        assert reward(["yes", "yes"], [_sample("example_yes_no"), _sample("open_vqa")]) == [0.0, None]
        metric = METRICS.get("example_answer_length")()
        metric.update(["a b c d"], ["t"])
        assert float(metric.compute()) == 4.0

        # the evaluation harness scores the plugin task with the plugin metric, both by name
        from chexone.evaluation.predict import Prediction
        from chexone.evaluation.scoring import score_predictions

        preds = [Prediction(id=f"p{i}", task="example_yes_no", family=task.family, dataset="x", prompt="q",
                            reasoning=False, output=o, final=o, parsed=None, reference="(A) Yes", well_formed=True,
                            truncated=False) for i, o in enumerate(["(A) Yes", "No it is not"])]
        scored = score_predictions(preds, get_task, metrics=["accuracy", "example_answer_length"], n_resamples=0)
        assert scored.rows["all"]["accuracy"].value == 0.5
        assert scored.rows["all"]["example_answer_length"].value == pytest.approx((2 + 4) / 2)

        rows = [r for r in reg_mod.list_plugins(include_builtins=False) if r.distribution == "chexone-example-plugin"]
        assert sorted((r.name, r.kind, r.version, r.status) for r in rows) == [
            ("example_answer_length", "metric", "0.1.0", "ok"),
            ("example_length_penalty", "reward", "0.1.0", "ok"),
            ("example_yes_no", "task", "0.1.0", "ok"),
        ]
    finally:
        for mod in [m for m in sys.modules if m.startswith("chexone_example_plugin")]:
            del sys.modules[mod]
