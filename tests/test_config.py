"""Recipe loading, overrides, validation, help, listing, and the generated key reference in docs/recipes.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chexone.config import (
    ConfigError,
    dump_config,
    format_help,
    format_listing,
    list_groups,
    list_recipes,
    load_config,
    parse_cli,
    parse_cli_or_exit,
    to_dataclass,
)
from chexone.config.docgen import DOCS, render_block, render_key_table
from chexone.config.load import iter_keys, recipe_dirs
from chexone.config.schema import RecipeConfig, ShardSetConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
DEMO = ["model=tiny", "data=demo"]


def errors_of(recipe: str, overrides: list[str], **kw) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(recipe, overrides, **kw)
    return ei.value.errors


# ------------------------------------------------------------------------------------------------------- recipes


def all_recipe_files() -> list[Path]:
    return sorted(RECIPES.glob("*.yaml"))


def test_repo_recipes_found_first():
    assert recipe_dirs()[0].resolve() == RECIPES.resolve()
    assert "stage1_sft" in list_recipes()
    groups = list_groups()
    assert {"tiny", "qwen2_5_vl_3b"} <= set(groups["model"])
    assert {"demo", "custom"} <= set(groups["data"])


@pytest.mark.parametrize("path", all_recipe_files(), ids=lambda p: p.stem)
def test_every_recipe_loads_demo_scale(path):
    cfg = load_config(path.stem, DEMO)
    assert isinstance(cfg, DictConfig)
    assert cfg.recipe == path.stem
    assert "${" not in dump_config(cfg)  # fully resolved
    assert isinstance(to_dataclass(cfg), RecipeConfig)


@pytest.mark.parametrize("path", all_recipe_files(), ids=lambda p: p.stem)
def test_every_recipe_loads_full_scale(path):
    extra = ["model.path=/models/chexone"] if path.stem.startswith("eval_") else []  # eval recipes require it
    cfg = load_config(path.stem, ["data.train=/data/shards/train-{000000..000009}.tar", *extra])
    assert cfg.data.train[0].path == "/data/shards/train-{000000..000009}.tar"


def test_eval_recipes_cover_the_paper_benchmarks():
    tasks = {}
    for name in ("eval_vqa", "eval_generation", "eval_grounding", "eval_reasoning"):
        cfg = load_config(name, ["model.path=/models/chexone"])
        assert cfg.data.reasoning == "always" and cfg.eval.do_sample is False  # reasoning mode, greedy
        assert cfg.model.gradient_checkpointing is False
        for bench in cfg.eval.benchmarks.values():
            for t in bench.tasks:
                tasks.setdefault(t, []).append(name)
    assert set(tasks) == {"close_vqa", "view_classification", "temporal_classification", "disease_classification",
                          "findings_generation", "progression_generation", "phrase_grounding",
                          "abnormality_grounding"}
    with pytest.raises(ConfigError, match="model.path"):
        load_config("eval_vqa", [])


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_file_starts_with_launch_comment(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines[0]) > 10, "first line must describe the file"
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert "python -m chexone." in text, "header must show the launch command"
    assert "overrides" in text.lower(), "header must show common overrides"


def test_stage1_sft_paper_settings():
    cfg = load_config("stage1_sft", ["data.train=/d/train.tar"])
    assert cfg.stage == "sft"
    assert cfg.model.path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert cfg.model.gradient_checkpointing is True
    assert cfg.model.max_pixels == 262144
    assert cfg.model.attn_implementation == "auto"
    assert not any(cfg.model.freeze.values())
    assert cfg.optim.lr == pytest.approx(1e-6)
    assert cfg.optim.scheduler == "cosine"
    assert cfg.optim.warmup_ratio == pytest.approx(0.05)
    assert cfg.optim.max_grad_norm == pytest.approx(1.0)
    assert cfg.trainer.global_batch_size == 256
    assert cfg.trainer.precision == "auto"
    assert cfg.data.max_length == 4096
    assert cfg.data.system_prompt == "You are a helpful assistant."
    assert cfg.output_dir == "runs/stage1_sft"


def test_stage1_sft_requires_train_data():
    errs = errors_of("stage1_sft", [])
    assert len(errs) == 1
    assert "'data.train'" in errs[0] and "data=demo" in errs[0] and "custom.yaml" in errs[0]


def test_demo_run_needs_no_other_argument():
    cfg = load_config("stage1_sft", DEMO)
    assert cfg.model.path == "tiny"
    assert cfg.model.gradient_checkpointing is False
    assert (cfg.model.min_pixels, cfg.model.max_pixels) == (3136, 112 * 112)
    assert cfg.data.name == "demo" and list(cfg.data.train) == []
    assert (cfg.data.micro_batch_size, cfg.data.num_workers, cfg.data.max_length) == (8, -1, 512)  # -1: workers from the CPU cores
    # the demo-scale values come from the groups' _global_ blocks, not from the stage-1 recipe body
    demo, tiny = _group_globals("data/demo.yaml"), _group_globals("model/tiny.yaml")
    assert cfg.trainer.max_steps == demo["trainer"]["max_steps"] < 55000
    assert cfg.trainer.global_batch_size == demo["trainer"]["global_batch_size"] < 256
    assert cfg.trainer.checkpoint_every_n_steps == demo["trainer"]["checkpoint_every_n_steps"]
    assert cfg.optim.lr == pytest.approx(tiny["optim"]["lr"]) and cfg.optim.lr > 1e-6
    assert cfg.optim.warmup_ratio > 0


def _group_globals(rel):
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / rel).read_text())["_global_"]


# ------------------------------------------------------------------------------------------------ merge order


def test_merge_order(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.yaml").write_text(
        "# a\npath: from_group_a\nseed: 1\nmin_pixels: 100\n_global_:\n  trainer:\n    max_steps: 11\n    seed: 11\n"
    )
    (tmp_path / "model" / "b.yaml").write_text("# b\npath: from_group_b\n")
    (tmp_path / "r.yaml").write_text(
        "# r\ndefaults:\n  - model: a\nmodel:\n  seed: 2\ntrainer:\n  max_steps: 22\n  num_nodes: 2\n"
    )
    r = str(tmp_path / "r.yaml")
    cfg = load_config(r, [])
    assert cfg.model.path == "from_group_a"  # group < nothing else
    assert cfg.model.seed == 2  # recipe body > recipe's groups
    assert cfg.trainer.max_steps == 22  # body > group's _global_
    assert cfg.trainer.seed == 11  # group's _global_ > schema default
    assert cfg.model.max_pixels == RecipeConfig().model.max_pixels  # schema default kept
    cfg = load_config(r, ["model=b"])
    assert cfg.model.path == "from_group_b"
    assert cfg.model.min_pixels == RecipeConfig().model.min_pixels  # CLI group REPLACES the recipe's group a
    assert cfg.trainer.seed == RecipeConfig().trainer.seed  # ... including a's _global_ block
    cfg = load_config(r, ["model=a"])
    assert cfg.model.seed == 1  # a CLI group beats the recipe body
    assert cfg.trainer.max_steps == 11
    cfg = load_config(r, ["model.seed=3", "model=a", "trainer.max_steps=33"])
    assert cfg.model.seed == 3 and cfg.trainer.max_steps == 33  # key=value beats everything, wherever it stands
    assert cfg.trainer.num_nodes == 2  # untouched body value survives


def test_group_selection_by_path(tmp_path):
    p = tmp_path / "mymodel.yaml"
    p.write_text("# mine\npath: /models/mine\n")
    cfg = load_config("stage1_sft", [f"model={p}", "data=demo"])
    assert cfg.model.path == "/models/mine"
    assert cfg.model.gradient_checkpointing is False  # qwen group replaced: schema default


def test_unknown_group_option_suggests():
    errs = errors_of("stage1_sft", ["model=tinny", "data=demo"])
    assert any("Unknown model option 'tinny' — did you mean 'tiny'?" in e for e in errs)


def test_recipe_from_env_dir_and_path(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("# mine\ndefaults: [{model: tiny}, {data: demo}]\ntrainer: {max_steps: 7}\n")
    monkeypatch.setenv("CHEXONE_RECIPES", str(tmp_path))
    assert "mine" in list_recipes()
    cfg = load_config("mine")
    assert cfg.trainer.max_steps == 7 and cfg.model.path == "tiny"  # groups found in the repo's recipes/
    assert cfg.output_dir == "runs/mine"
    monkeypatch.delenv("CHEXONE_RECIPES")
    assert "mine" not in list_recipes()
    assert load_config(str(tmp_path / "mine.yaml")).trainer.max_steps == 7


def test_unknown_recipe_lists_available():
    errs = errors_of("stage1_sf", [])
    assert "did you mean 'stage1_sft'" in errs[0] and "Available:" in errs[0]


# ------------------------------------------------------------------------------------------------- overrides


def test_dotted_overrides_and_lists():
    cfg = load_config(
        "stage1_sft",
        DEMO
        + [
            "trainer.max_steps=5",
            "optim.lr=2e-6",
            "data.tasks=[close_vqa,view_classification]",
            "model.freeze.vision=true",
            "trainer.ckpt_path=null",
            "trainer.devices=2",
            "trainer.precision=32",
        ],
    )
    assert cfg.trainer.max_steps == 5
    assert cfg.optim.lr == pytest.approx(2e-6) and isinstance(cfg.optim.lr, float)
    assert list(cfg.data.tasks) == ["close_vqa", "view_classification"]
    assert cfg.model.freeze.vision is True
    assert cfg.trainer.ckpt_path is None
    assert cfg.trainer.devices == 2
    assert cfg.trainer.precision == "32"


def test_string_values_verbatim():
    cfg = load_config("stage1_sft", DEMO + ["model.path=1e-3", "wandb.project=true", "data.system_prompt="])
    assert cfg.model.path == "1e-3" and cfg.wandb.project == "true" and cfg.data.system_prompt == ""


def test_train_path_string_coercion():
    cfg = load_config("stage1_sft", ["data.train=/d/train-{000000..000031}.tar", "data.val=/d/val.tar"])
    assert OmegaConf.to_container(cfg.data.train) == [{"path": "/d/train-{000000..000031}.tar", "weight": 1.0}]
    assert OmegaConf.to_container(cfg.data.val) == [{"path": "/d/val.tar", "weight": 1.0}]
    cfg = load_config("stage1_sft", ["data.train=[/a/x-{0..3}.tar,/b/y.tar]"])
    assert [s.path for s in cfg.data.train] == ["/a/x-{0..3}.tar", "/b/y.tar"]
    assert [s.weight for s in cfg.data.train] == [1.0, 1.0]
    cfg = load_config("stage1_sft", ["data.train=[{path: /a, weight: 3}, /b]"])
    assert [(s.path, s.weight) for s in cfg.data.train] == [("/a", 3.0), ("/b", 1.0)]


def test_train_path_coercion_in_file(tmp_path):
    (tmp_path / "r.yaml").write_text("# r\ndefaults: [{model: tiny}]\ndata:\n  train: /d/a.tar\n  val: [/d/v.tar]\n")
    cfg = load_config(str(tmp_path / "r.yaml"))
    assert cfg.data.train[0].path == "/d/a.tar" and cfg.data.val[0].path == "/d/v.tar"


def test_interpolation(monkeypatch):
    monkeypatch.setenv("CHEXONE_CACHE", "/tmp/cx")
    monkeypatch.setenv("MY_RUNS", "/scratch/runs")
    cfg = load_config("stage1_sft", DEMO + ["output_dir=${oc.env:MY_RUNS}/${recipe}-${trainer.max_steps}"])
    assert cfg.output_dir == f"/scratch/runs/stage1_sft-{_group_globals('data/demo.yaml')['trainer']['max_steps']}"
    assert cfg.model.tiny_cache_dir == "/tmp/cx/tiny-model"
    assert cfg.data.demo_dir == "/tmp/cx/demo-shards"
    monkeypatch.delenv("CHEXONE_CACHE")
    assert load_config("stage1_sft", DEMO).model.tiny_cache_dir == "~/.cache/chexone/tiny-model"


def test_interpolation_error_names_key():
    errs = errors_of("stage1_sft", DEMO + ["output_dir=${oc.env:CHEXONE_SURELY_UNSET_VAR}"])
    assert any("'output_dir'" in e and "CHEXONE_SURELY_UNSET_VAR" in e for e in errs)


def test_returned_config_is_typed_struct():
    cfg = load_config("stage1_sft", DEMO)
    with pytest.raises(OmegaConfBaseException):
        cfg.trainer.max_step = 5
    with pytest.raises(OmegaConfBaseException):
        cfg.trainer.max_steps = "abc"
    # the demo builder fills data.train in: OmegaConf.update (or ShardSetConfig items) — with omegaconf 2.4 a plain
    # `cfg.data.train = [{...}]` is rejected for a list of dataclass records
    OmegaConf.update(cfg, "data.train", [{"path": "/x.tar", "weight": 1.0}])
    assert cfg.data.train[0].path == "/x.tar"
    cfg.data.val = [ShardSetConfig(path="/v.tar")]
    assert cfg.data.val[0].weight == 1.0


def test_dump_roundtrip(tmp_path):
    cfg = load_config("stage1_sft", DEMO + ["trainer.max_steps=9", "data.train=/d/a.tar"])
    text = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert "max_steps: 9" in text
    again = load_config(str(tmp_path / "run" / "config.yaml"))
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


# ------------------------------------------------------------------------------------------------ validation


def test_cli_typo_suggests_full_key():
    errs = errors_of("stage1_sft", DEMO + ["trainer.max_step=5"])
    assert errs == ["Unknown key 'trainer.max_step' — did you mean 'trainer.max_steps'?"]


def test_typo_across_sections_suggests():
    errs = errors_of("stage1_sft", DEMO + ["lr=1e-3", "trainer.lr=1"])
    assert "Unknown key 'lr' — did you mean 'optim.lr'?" in errs
    assert "Unknown key 'trainer.lr' — did you mean 'optim.lr'?" in errs


def test_file_typo_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "# bad\ndefaults: [{model: tiny}, {data: demo}]\ntrainer:\n  max_step: 5\noptim:\n  scheduler: cosin\n"
    )
    errs = errors_of(str(p), [])
    typo = [e for e in errs if "max_step'" in e]
    assert len(typo) == 1
    assert "'trainer.max_step'" in typo[0] and "bad.yaml" in typo[0] and "did you mean 'trainer.max_steps'" in typo[0]
    choice = [e for e in errs if "cosin" in e]
    assert len(choice) == 1 and "bad.yaml" in choice[0] and "did you mean 'cosine'" in choice[0]


def test_group_file_typo_names_file(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "m.yaml").write_text("# m\npaht: x\n")
    (tmp_path / "r.yaml").write_text("# r\ndefaults: [{model: m}]\n")
    errs = errors_of(str(tmp_path / "r.yaml"), [])
    assert len(errs) == 1
    assert "'model.paht'" in errs[0] and "m.yaml" in errs[0] and "did you mean 'model.path'" in errs[0]


def test_type_error_names_key_and_type():
    errs = errors_of("stage1_sft", DEMO + ["trainer.max_steps=abc"])
    assert errs == ["Invalid value for 'trainer.max_steps': expected int, got 'abc'"]
    errs = errors_of("stage1_sft", DEMO + ["model.gradient_checkpointing=maybe", "optim.betas=[a,b]"])
    assert any("'model.gradient_checkpointing'" in e and "expected bool" in e for e in errs)
    assert any("'optim.betas'" in e and "expected list[float]" in e for e in errs)


def test_choice_error_suggests():
    errs = errors_of("stage1_sft", DEMO + ["optim.scheduler=cosin"])
    assert errs == [
        "Invalid value 'cosin' for 'optim.scheduler' — did you mean 'cosine'? Allowed: cosine | constant | linear"
    ]
    for key, bad in [
        ("stage", "grop"),
        ("logger", "wandbb"),
        ("model.attn_implementation", "flash"),
        ("model.dtype", "bf16"),
        ("trainer.strategy", "fsdp"),
        ("trainer.precision", "bf16"),
        ("data.reasoning", "alwayz"),
        ("data.boxed", "lats"),
        ("wandb.mode", "offlin"),
    ]:
        errs = errors_of("stage1_sft", DEMO + [f"{key}={bad}"])
        assert len(errs) == 1 and f"'{key}'" in errs[0] and "Allowed:" in errs[0], (key, errs)


def test_bounds_and_cross_field_checks():
    errs = errors_of("stage1_sft", DEMO + ["optim.warmup_ratio=1.0"])
    assert errs == ["Invalid value for 'optim.warmup_ratio': must be >= 0 and < 1, got 1.0"]
    errs = errors_of("stage1_sft", DEMO + ["model.min_pixels=50000"])
    assert len(errs) == 1 and "'model.min_pixels'" in errs[0] and "'model.max_pixels'" in errs[0]
    errs = errors_of("stage1_sft", DEMO + ["trainer.devices=many"])
    assert len(errs) == 1 and "'trainer.devices'" in errs[0]
    assert load_config("stage1_sft", DEMO + ["optim.warmup_ratio=0"]).optim.warmup_ratio == 0


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as ei:
        load_config(
            "stage1_sft",
            [
                "trainer.max_step=5",
                "optim.lr=fast",
                "optim.scheduler=cosin",
                "data.train=[{path: a, wieght: 2}]",
                "stray",
            ],
        )
    errs = ei.value.errors
    assert len(errs) == 5, errs
    msg = str(ei.value)
    assert msg.startswith("5 problems in the configuration:")
    for part in [
        "'trainer.max_steps'",
        "'optim.lr': expected float, got 'fast'",
        "did you mean 'cosine'",
        "'data.train[0].wieght' — did you mean 'data.train[0].weight'",
        "Unexpected argument 'stray'",
    ]:
        assert part in msg, part


def test_missing_value_reported_with_other_errors():
    errs = errors_of("stage1_sft", ["trainer.max_step=5"])
    assert any("Missing value for 'data.train'" in e for e in errs) and len(errs) == 2


# -------------------------------------------------------------------------------------------------- CLI


def test_parse_cli_returns_config():
    cfg = parse_cli(["recipe=stage1_sft", "model=tiny", "data=demo", "trainer.max_steps=3"])
    assert cfg.trainer.max_steps == 3 and cfg.model.path == "tiny"


def test_parse_cli_requires_recipe():
    with pytest.raises(ConfigError) as ei:
        parse_cli(["model=tiny"])
    assert "recipe=NAME" in str(ei.value) and "stage1_sft" in str(ei.value)


def test_help_lists_every_key_with_description(capsys):
    assert parse_cli(["--help"]) is None
    out = capsys.readouterr().out
    for k in iter_keys(RecipeConfig):
        assert f"  {k.key} (" in out, k.key
        assert k.doc[:60] in out, k.key


def test_help_shows_recipe_values(capsys):
    assert parse_cli(["recipe=stage1_sft", "model=tiny", "data=demo", "-h"]) is None
    out = capsys.readouterr().out
    assert f"trainer.max_steps (int) = {_group_globals('data/demo.yaml')['trainer']['max_steps']}" in out
    assert "model.path (str) = tiny" in out
    assert f"optim.lr (float) = {_group_globals('model/tiny.yaml')['optim']['lr']}" in out
    out = format_help("stage1_sft")
    assert "model.path (str) = Qwen/Qwen2.5-VL-3B-Instruct" in out
    assert "data.train (list[{path, weight}]) = ???" in out
    assert "output_dir (str) = runs/stage1_sft" in out


def test_help_with_bad_override_still_prints_and_notes(capsys):
    parse_cli(["recipe=stage1_sft", "trainer.max_stepz=3", "--help"])
    out = capsys.readouterr().out
    assert "trainer.max_steps (int) = 55000" in out
    assert "did you mean 'trainer.max_steps'" in out


def test_ls_lists_recipes_and_groups(capsys):
    assert parse_cli(["ls"]) is None
    out = capsys.readouterr().out
    from chexone.config.load import header_line

    assert "stage1_sft" in out and header_line(RECIPES / "stage1_sft.yaml") in out
    assert "model:" in out and "data:" in out
    for opts in list_groups().values():
        for o in opts:
            assert f"    {o}" in out
    assert format_listing() in out


def test_cli_exit_code_and_message(capsys):
    with pytest.raises(SystemExit) as ei:
        parse_cli_or_exit(["recipe=stage1_sft", "trainer.max_step=5", "data=demo"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "Unknown key 'trainer.max_step' — did you mean 'trainer.max_steps'?" in err
    assert "Traceback" not in err


def test_cli_subprocess_no_traceback():
    code = "from chexone.config import parse_cli_or_exit; parse_cli_or_exit(command='fit')"
    r = subprocess.run(
        [sys.executable, "-c", code, "recipe=stage1_sft", "optim.scheduler=cosin"],
        cwd=REPO,
        capture_output=True,
        check=False,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert r.returncode == 2
    assert "did you mean 'cosine'" in r.stderr and "Missing value for 'data.train'" in r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------- docs


def test_docs_key_table_is_current():
    text = DOCS.read_text()
    assert render_block() in text, "docs/recipes.md is stale: run `python -m chexone.config.docgen`"


def test_key_table_covers_schema():
    table = render_key_table()
    for k in iter_keys(RecipeConfig):
        assert f"| `{k.key}` |" in table
    assert "sft \\| grpo" in table  # pipes in descriptions are escaped
