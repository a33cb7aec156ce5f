"""The command line of ``python -m chexone.<command> recipe=NAME [group=option ...] [key=value ...]``.

``parse_cli`` handles ``--help``/``-h`` (every key with type, value and description) and ``ls`` (recipes and config
groups): it prints and returns None. Otherwise it returns the loaded config (see :func:`chexone.config.load_config`).
``parse_cli_or_exit`` is the same for a ``main()``: a :class:`ConfigError` is printed without a traceback and the
process exits with code 2.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chexone.config.load import (
    MISSING,
    ConfigError,
    compose,
    display_path,
    header_line,
    iter_keys,
    iter_sections,
    list_groups,
    list_recipes,
    load_config,
    recipe_dirs,
    recipe_origin,
    type_name,
)
from chexone.config.schema import RecipeConfig

HELP_FLAGS = ("-h", "--help")
LIST_WORD = "ls"


def usage(command: str = "fit") -> str:
    return (
        f"usage: python -m chexone.{command} recipe=NAME [GROUP=OPTION ...] [KEY=VALUE ...] [--help]\n"
        f"       python -m chexone.{command} ls"
    )


def format_value(v: Any) -> str:
    """A value as written on the command line / in YAML flow style."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return "''" if v == "" else v
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {format_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)


def _value_at(cfg: DictConfig, key: str) -> Any:
    """The resolved value of ``key`` in ``cfg`` (the raw text when it cannot be resolved, ??? when missing)."""
    parent_key, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if OmegaConf.is_missing(node, leaf):
        return MISSING
    try:
        v = node[leaf]
        return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    except OmegaConfBaseException:
        raw = OmegaConf.to_container(node, resolve=False)
        return raw[leaf]


def format_listing(command: str = "fit", dirs: Sequence[Path] | None = None) -> str:
    """Available recipes (with the first line of their header comment) and config groups with their options; those
    of installed plugins (entry-point group ``chexone.recipes``) are marked ``[plugin: dist==version]``."""
    dirs = recipe_dirs() if dirs is None else list(dirs)
    recipes = list_recipes(dirs)
    groups = list_groups(dirs)

    def tag(path: Path) -> str:
        origin = recipe_origin(path)
        return f"  [plugin: {origin}]" if origin else ""

    lines = [f"Recipes (python -m chexone.{command} recipe=NAME):"]
    width = max([len(n) for n in recipes] + [len(o) + 2 for g in groups.values() for o in g] + [8])
    lines += [f"  {n:<{width}}  {header_line(p)}{tag(p)}".rstrip() for n, p in recipes.items()] or ["  (none)"]
    lines.append("")
    lines.append("Config groups (select with GROUP=OPTION, e.g. model=tiny data=demo):")
    for g, opts in groups.items():
        lines.append(f"  {g}:")
        lines += [f"    {o:<{width - 2}}  {header_line(p)}{tag(p)}".rstrip() for o, p in opts.items()]
    if not groups:
        lines.append("  (none)")
    lines.append("")
    searched = [display_path(d) + (f" (plugin {recipe_origin(d)})" if recipe_origin(d) else "") for d in dirs]
    lines.append("Searched: " + (", ".join(searched) or "(no recipe directory found)"))
    lines.append("More recipe directories: set CHEXONE_RECIPES=dir1:dir2, pass recipe=/path/to/recipe.yaml, or install "
                 "a plugin that ships recipes (entry-point group chexone.recipes, docs/plugins.md).")
    return "\n".join(lines)


def format_help(
    recipe: str | None = None,
    overrides: Sequence[str] = (),
    *,
    command: str = "fit",
    schema: type = RecipeConfig,
    dirs: Sequence[Path] | None = None,
) -> str:
    """Every key (dotted) with its type, its value and its description, grouped by section. With a recipe the
    values are those the recipe (plus the overrides) gives, otherwise the schema defaults."""
    out = [usage(command), ""]
    values: dict[str, Any] = {}
    notes: list[str] = []
    groups_selected: dict[str, str] = {}
    groups = list_groups(dirs)
    if recipe is not None:
        comp = compose(recipe, overrides, schema=schema, dirs=dirs)  # an unknown recipe raises ConfigError
        values = {k.key: _value_at(comp.cfg, k.key) for k in iter_keys(schema)}
        groups_selected = comp.groups
        groups = list_groups(comp.dirs)
        sel = " ".join(f"{g}={o}" for g, o in comp.groups.items())
        dotted = [a for a in overrides if a.partition("=")[0].strip() not in comp.groups]
        out.append(
            f"Values below: recipe '{recipe}' ({display_path(comp.recipe_path)})"
            + (f", groups {sel}" if sel else "")
            + (f", overrides {' '.join(dotted)}" if dotted else "")
            + ". ??? = required, no value yet."
        )
        notes = comp.errors
    else:
        out.append(
            f"Values below are the schema defaults; add recipe=NAME to see a recipe's values "
            f"(python -m chexone.{command} ls lists recipes)."
        )
    out.append(
        "Override any key with KEY=VALUE (lists: data.tasks=[a,b]; data.train=PATH is short for "
        "[{path: PATH, weight: 1.0}]); select a config group file with GROUP=OPTION."
    )
    section_docs = dict(iter_sections(schema))
    current = None
    for k in iter_keys(schema):
        if k.section != current:
            current = k.section
            if current:
                title = f"{current}: {section_docs.get(current, '')}".rstrip(": ")
                if current in groups:
                    chosen = groups_selected.get(current)
                    title += f"  [group: {current}={'|'.join(groups[current])}" + (
                        f"; selected {chosen}]" if chosen else "]"
                    )
            else:
                title = "General"
            out += ["", title]
        value = values.get(k.key, k.default) if recipe is not None else k.default
        out.append(f"  {k.key} ({type_name(k.type)}) = {format_value(value)}")
        for line in textwrap.wrap(k.doc, width=100) or [""]:
            out.append(f"      {line}")
    if notes:
        out += ["", "Note: this command line has problems:"] + [f"  - {n}" for n in notes]
    return "\n".join(out)


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[str], bool, bool]:
    """(recipe, other key=value items, help wanted, ls wanted). Raises ConfigError on stray words."""
    want_help = any(a in HELP_FLAGS for a in argv)
    want_ls = LIST_WORD in argv
    recipe: str | None = None
    rest: list[str] = []
    errors = []
    for a in argv:
        if a in HELP_FLAGS or a == LIST_WORD:
            continue
        key, sep, value = a.partition("=")
        if not sep:
            errors.append(
                f"Unexpected argument '{a}': arguments are KEY=VALUE or GROUP=OPTION "
                f"(e.g. recipe=stage1_sft trainer.max_steps=5); see --help."
            )
        elif key.strip() == "recipe":
            if recipe is not None:
                errors.append(f"recipe= given twice ('{recipe}' and '{value}').")
            recipe = value.strip()
        else:
            rest.append(a)
    if errors and not want_ls:
        raise ConfigError(errors)
    return recipe, rest, want_help, want_ls


def parse_cli(
    argv: Sequence[str] | None = None,
    *,
    command: str = "fit",
    schema: type = RecipeConfig,
    out: TextIO | None = None,
) -> DictConfig | None:
    """Parse a command line (``sys.argv[1:]`` by default). Prints and returns None for ``--help`` / ``ls``;
    otherwise returns the resolved, validated config. Raises :class:`ConfigError`."""
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe, rest, want_help, want_ls = split_argv(argv)
    if want_ls:
        print(format_listing(command), file=out)
        return None
    if want_help:
        print(format_help(recipe, rest, command=command, schema=schema), file=out)
        return None
    if recipe is None:
        raise ConfigError(
            f"No recipe given: add recipe=NAME, e.g. python -m chexone.{command} recipe=stage1_sft model=tiny "
            f"data=demo\n\n{format_listing(command)}"
        )
    return load_config(recipe, rest, schema=schema)


def parse_cli_or_exit(
    argv: Sequence[str] | None = None, *, command: str = "fit", schema: type = RecipeConfig
) -> DictConfig | None:
    """:func:`parse_cli` for a ``main()``: on a ConfigError print the message to stderr and exit with code 2."""
    try:
        return parse_cli(argv, command=command, schema=schema)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"(python -m chexone.{command} --help lists every key; ls lists recipes)", file=sys.stderr)
        raise SystemExit(2) from None


def run_command(argv: Sequence[str] | None, command: str, run: Any, *, schema: type = RecipeConfig) -> int:
    """The shared ``main()`` of the ``python -m chexone.<command>`` entry points: parse the recipe (``--help``/``ls``
    print and return 0; config errors exit 2), set up logging, call ``run(cfg)``, and turn a model that cannot be
    loaded or a name checked before loading into a one-line error with exit code 2, and a run that stopped itself
    (non-finite training, a failing reward, too much corrupt data) into a one-line error with exit code 1."""
    import logging

    cfg = parse_cli_or_exit(argv, command=command, schema=schema)
    if cfg is None:
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from chexone.progress import quiet_library_bars

    quiet_library_bars()
    from chexone.data.shards import ShardDataError
    from chexone.model import ModelLoadError
    from chexone.training.guards import NonFiniteError
    from chexone.training.reward_set import RewardError

    try:
        run(cfg)
    except (ModelLoadError, ConfigError) as err:  # ConfigError here: a name or path checked before the model loads,
        # or a trainer.ckpt_path checkpoint that is missing or broken (chexone.training.checkpointing.CheckpointError)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (NonFiniteError, RewardError, ShardDataError) as err:  # the run stopped itself, for the reason given
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
