"""Recipe loading: find recipe files, compose config groups and overrides, validate against the schema, resolve.

Merge order (later wins)::

    schema defaults < recipe's ``defaults:`` groups < recipe body < command-line groups < command-line key=value

A *recipe* is a YAML file at the top of a recipe directory (``recipes/stage1_sft.yaml``). A *config group* is a
sub-directory (``recipes/model/``, ``recipes/data/``); one of its files is selected with ``model=tiny`` and its content
is merged under that key. A group file may carry a ``_global_:`` block, merged at the config root right after the file
(this is how ``data=demo`` shortens the run). A group chosen on the command line replaces the recipe's choice.

:func:`load_config` returns an OmegaConf ``DictConfig`` backed by the dataclass schema (struct mode: unknown keys and
wrong types are rejected on assignment), with every interpolation resolved. ``OmegaConf.to_object(cfg)`` (or
:func:`to_dataclass`) gives the plain dataclass instance.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chexone.config.schema import RecipeConfig

RECIPES_ENV = "CHEXONE_RECIPES"
GLOBAL_KEY = "_global_"
#: ``_global_sft_:`` / ``_global_grpo_:`` blocks merge at the root like ``_global_``, only when the recipe's stage
#: (as set so far) matches: one group file (e.g. data=demo) can scale both stages' demo runs.
STAGE_GLOBAL = re.compile(r"_global_([a-z0-9]+)_")
DEFAULTS_KEY = "defaults"
MISSING = "???"
COMMAND_LINE = None  # the source label of command-line overrides (error messages then carry no "in FILE")


class ConfigError(ValueError):
    """A configuration problem, with a human message. ``errors`` lists every problem found (all reported at once)."""

    def __init__(self, errors: str | Sequence[str]):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        if len(self.errors) == 1:
            msg = self.errors[0]
        else:
            msg = f"{len(self.errors)} problems in the configuration:\n" + "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(msg)


# --------------------------------------------------------------------------------------------------------------------
# Finding recipes and groups
# --------------------------------------------------------------------------------------------------------------------


#: Entry-point group through which an installed distribution adds a directory of recipes (and config groups).
RECIPES_GROUP = "chexone.recipes"


@dataclasses.dataclass(frozen=True)
class PluginRecipes:
    """A recipe directory that an installed distribution declares in entry-point group ``chexone.recipes``."""

    path: Path
    distribution: str
    version: str
    #: "name = value" of the entry point
    entry_point: str

    @property
    def label(self) -> str:
        return f"{self.distribution}=={self.version}" if self.version else self.distribution


_plugin_recipes_cache: dict[tuple, list[PluginRecipes]] = {}


def forget_plugin_recipes() -> None:
    """Rescan plugin recipe directories on the next lookup (``chexone.registry.refresh_plugins`` calls it)."""
    _plugin_recipes_cache.clear()


def _packaged_recipes() -> Path:
    """The recipes shipped with chexone (see :func:`recipe_dirs`)."""
    from importlib import resources

    try:  # an installed wheel: pyproject.toml ships the top-level recipes/ as the package data chexone/recipes/
        found = resources.files("chexone").joinpath("recipes")
        if isinstance(found, Path) and found.is_dir():  # a real directory (not in a zip): recipes are read as files
            return found
    except (ModuleNotFoundError, TypeError, OSError):
        pass
    # a source checkout or an editable install: chexone/ sits beside the recipes/ it ships
    return Path(__file__).resolve().parents[2] / "recipes"


def _entry_point_dir(ep: Any) -> Path:
    """The directory an entry point of ``chexone.recipes`` names: a package (``my_plugin.recipes``: its directory,
    found without importing anything) or an attribute holding a directory path (``my_plugin:RECIPES``, imported)."""
    import importlib.util

    if ep.attr:
        obj = ep.load()
        if not isinstance(obj, (str, os.PathLike)):
            raise TypeError(f"{ep.value} must be a directory path (str or pathlib.Path), got {type(obj).__name__}")
        path = Path(obj)
    else:
        top, *rest = ep.module.split(".")
        spec = importlib.util.find_spec(top)  # finds a top-level package without importing it
        if spec is None:
            raise ModuleNotFoundError(f"No module named {top!r}")
        locations = list(spec.submodule_search_locations or [])
        if not locations:
            raise ValueError(f"{ep.value} is a module, not a package: name the package whose directory holds the "
                             "recipe files")
        found = [Path(loc).joinpath(*rest) for loc in locations]
        path = next((p for p in found if p.is_dir()), found[0])
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory on disk (recipes are read as files)")
    return path


def _recipe_entries(d: Path) -> set[str]:
    """Recipe names and ``group/option`` names a directory provides."""
    if not d.is_dir():
        return set()
    names = {p.stem for p in _yaml_files(d)}
    for sub in d.iterdir():
        if sub.is_dir() and not sub.name.startswith((".", "_")):
            names |= {f"{sub.name}/{p.stem}" for p in _yaml_files(sub)}
    return names


def _describe_entry(name: str) -> str:
    group, sep, option = name.partition("/")
    return f"config group option {group}={option}" if sep else f"recipe '{name}'"


def plugin_recipe_dirs() -> list[PluginRecipes]:
    """Recipe directories of installed distributions (entry-point group ``chexone.recipes``), sorted by distribution
    name; [] when ``CHEXONE_DISABLE_PLUGIN_AUTOLOAD`` is set.

    An entry point is a package whose directory holds recipe YAML files and config-group sub-directories, laid out
    like the top-level ``recipes/``: ``my_plugin = "my_plugin.recipes"`` (found without importing the package). One
    that cannot be used (no such package, not a directory) is skipped with a ``RegistryWarning`` naming the
    distribution. A recipe or group option that a plugin shares with chexone's own recipes is ignored (built-ins
    win); one that two plugins share comes from the first by distribution name. Both are warned about once. Cached
    per ``sys.path``."""
    import importlib.metadata as md
    import sys
    import warnings

    from chexone.registry import RegistryWarning, autoload_disabled

    if autoload_disabled():
        return []
    key = tuple(sys.path)
    if key in _plugin_recipes_cache:
        return _plugin_recipes_cache[key]
    found: list[PluginRecipes] = []
    seen: set[tuple[str, str]] = set()
    for ep in md.entry_points(group=RECIPES_GROUP):
        dist = getattr(ep, "dist", None)
        name = (dist.metadata["Name"] if dist is not None else None) or "<unknown distribution>"
        version = (dist.version if dist is not None else "") or ""
        if (name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((name, ep.value))
        label = f"{name}=={version}" if version else name
        try:
            path = _entry_point_dir(ep)
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break every recipe lookup: warned, skipped
            warnings.warn(f'Recipe directory of plugin "{ep.name}" ({label}) is ignored: {type(e).__name__}: {e} '
                          f"[entry point {ep.name} = {ep.value} in group {RECIPES_GROUP}]", RegistryWarning,
                          stacklevel=2)
            continue
        found.append(PluginRecipes(path, name, version, f"{ep.name} = {ep.value}"))
    found.sort(key=lambda p: (p.distribution.lower(), p.entry_point))
    builtin = _recipe_entries(_packaged_recipes())
    owner: dict[str, PluginRecipes] = {}
    for plugin in found:
        for entry in sorted(_recipe_entries(plugin.path)):
            if entry in builtin:
                warnings.warn(f"{_describe_entry(entry)} of plugin {plugin.label} ({plugin.path}) is ignored: chexone "
                              "ships one of that name and built-ins win. Ask the plugin's authors to rename it.",
                              RegistryWarning, stacklevel=2)
            elif entry in owner:
                first = owner[entry]
                warnings.warn(f"{_describe_entry(entry)} is provided by two plugins, {first.label} ({first.path}) "
                              f"and {plugin.label} ({plugin.path}); using {first.label}'s (the first by distribution "
                              "name). Uninstall one or ask its authors to rename it.", RegistryWarning, stacklevel=2)
            else:
                owner[entry] = plugin
    _plugin_recipes_cache[key] = found
    return found


def recipe_origin(path: Path) -> str | None:
    """The plugin (``dist==version``) whose recipe directory holds ``path`` (a recipe file, a group file or the
    directory itself); None for chexone's own recipes and other directories."""
    p = Path(path).resolve()
    for plugin in plugin_recipe_dirs():
        root = plugin.path.resolve()
        if p == root or root in p.parents:
            return plugin.label
    return None


def recipe_dirs() -> list[Path]:
    """Directories searched for recipes, in order: the recipes shipped with the package (``chexone/recipes`` of an
    installed wheel, found through importlib.resources; in a source checkout or an editable install, the top-level
    ``recipes/`` they are built from), then the recipe directories of installed plugins (entry-point group
    ``chexone.recipes``, sorted by distribution name: :func:`plugin_recipe_dirs`), then each entry of
    ``$CHEXONE_RECIPES`` (``os.pathsep``-separated), then ``./recipes``. The first file found wins."""
    cands = [_packaged_recipes()]
    cands += [p.path for p in plugin_recipe_dirs()]
    cands += [Path(p).expanduser() for p in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if p.strip()]
    cands.append(Path.cwd() / "recipes")
    out: list[Path] = []
    for d in cands:
        if d.is_dir() and all(d.resolve() != o.resolve() for o in out):
            out.append(d)
    return out


def _yaml_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def list_recipes(dirs: Sequence[Path] | None = None) -> dict[str, Path]:
    """Recipe name -> file, over all recipe directories (the first directory holding a name wins)."""
    out: dict[str, Path] = {}
    for d in recipe_dirs() if dirs is None else dirs:
        for p in _yaml_files(Path(d)):
            out.setdefault(p.stem, p)
    return dict(sorted(out.items()))


def list_groups(dirs: Sequence[Path] | None = None) -> dict[str, dict[str, Path]]:
    """Config group -> {option name -> file}, over all recipe directories."""
    out: dict[str, dict[str, Path]] = {}
    for d in recipe_dirs() if dirs is None else dirs:
        for sub in sorted(p for p in Path(d).iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            files = _yaml_files(sub)
            if files:
                opts = out.setdefault(sub.name, {})
                for p in files:
                    opts.setdefault(p.stem, p)
    return {g: dict(sorted(o.items())) for g, o in sorted(out.items())}


def header_line(path: Path) -> str:
    """The first line of a recipe file's leading comment block ('' if none)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s.startswith("#"):
            break
        s = s.lstrip("#").strip()
        if s:
            return s
    return ""


def _is_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or os.sep in name or "/" in name


def display_path(path: Path) -> str:
    """A path as shown in messages: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(Path(path).resolve(), Path.cwd())
    except ValueError:  # other drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _did_you_mean(word: str, options: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    return difflib.get_close_matches(word, list(options), n=n, cutoff=cutoff)


def _quote_list(names: Sequence[str]) -> str:
    q = [f"'{n}'" for n in names]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " or " + q[-1]


def find_recipe(name: str, dirs: Sequence[Path] | None = None) -> Path:
    """Resolve ``recipe=NAME`` (a name in a recipe directory, or a path to a YAML file)."""
    dirs = recipe_dirs() if dirs is None else list(dirs)
    if _is_path(name):
        p = Path(name).expanduser()
        if p.is_file():
            return p
        raise ConfigError(f"Recipe file not found: {name}")
    recipes = list_recipes(dirs)
    if name in recipes:
        return recipes[name]
    close = _did_you_mean(name, recipes)
    hint = f" — did you mean {_quote_list(close)}?" if close else ""
    where = ", ".join(display_path(d) for d in dirs) or f"(no recipe directory found; set ${RECIPES_ENV})"
    return _raise(
        f"Unknown recipe '{name}'{hint} Available: {', '.join(recipes) or 'none'} (searched {where}; "
        f"a path to a .yaml file also works)."
    )


def _raise(msg: str) -> Any:
    raise ConfigError(msg)


def find_group_option(group: str, option: str, dirs: Sequence[Path] | None = None) -> Path:
    """Resolve a group selection such as ``model=tiny`` (an option name, or a path to a YAML file)."""
    if _is_path(option):
        p = Path(option).expanduser()
        if p.is_file():
            return p
        raise ConfigError(f"File for {group}={option} not found.")
    opts = list_groups(dirs).get(group, {})
    if option in opts:
        return opts[option]
    close = _did_you_mean(option, opts)
    hint = f" — did you mean {_quote_list(close)}?" if close else ""
    raise ConfigError(f"Unknown {group} option '{option}'{hint} Available: {', '.join(opts) or 'none'}.")


# --------------------------------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-6 as a float (YAML 1.1 wants a dot) and rejects duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: Path) -> dict:
    """A recipe/group file as a plain dict ({} when empty)."""
    try:
        data = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"Cannot parse {display_path(path)}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display_path(path)} must hold a mapping of keys, not {type(data).__name__}.")
    return data


# --------------------------------------------------------------------------------------------------------------------
# Schema introspection
# --------------------------------------------------------------------------------------------------------------------


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return tp, False


def _list_item(tp: Any) -> Any | None:
    if typing.get_origin(tp) is list and typing.get_args(tp):  # list[X] and typing.List[X] alike
        return typing.get_args(tp)[0]
    return None


def _is_dc(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _dict_item(tp: Any) -> Any | None:
    """X of ``dict[str, X]`` (named records such as ``eval.benchmarks``), else None."""
    if typing.get_origin(tp) is dict and len(typing.get_args(tp)) == 2:
        return typing.get_args(tp)[1]
    return None


def type_name(tp: Any) -> str:
    """A short readable name of a schema type: int, str | None, list[str], list[{path, weight}], ..."""
    inner, optional = _unwrap_optional(tp)
    if inner is Any:
        name = "any"
    elif _is_dc(inner):
        name = "{" + ", ".join(f.name for f in dataclasses.fields(inner)) + "}"
    elif (item := _list_item(inner)) is not None:
        name = f"list[{type_name(item)}]"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} | None" if optional else name


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One leaf key of the schema (sections are walked into, lists of records are leaves)."""

    key: str  # dotted, e.g. "trainer.max_steps"
    section: str  # top-level section ("" for root keys)
    type: Any
    field: dataclasses.Field
    default: Any

    @property
    def doc(self) -> str:
        return self.field.metadata.get("doc", "")

    @property
    def choices(self) -> tuple | None:
        return self.field.metadata.get("choices")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def iter_keys(schema: type = RecipeConfig, prefix: str = "", section: str = "") -> Iterator[KeyInfo]:
    """Every leaf key of the schema in declaration order, root keys first then section by section."""
    hints = _hints(schema)
    fields = dataclasses.fields(schema)
    leaves = [f for f in fields if not _is_dc(_unwrap_optional(hints[f.name])[0])]
    sections = [f for f in fields if _is_dc(_unwrap_optional(hints[f.name])[0])]
    for f in leaves:
        d = _field_default(f)
        if dataclasses.is_dataclass(d):
            d = dataclasses.asdict(d)
        elif isinstance(d, list):
            d = [dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x for x in d]
        yield KeyInfo(prefix + f.name, section, hints[f.name], f, d)
    for f in sections:
        yield from iter_keys(_unwrap_optional(hints[f.name])[0], prefix + f.name + ".", section or f.name)


def iter_sections(schema: type = RecipeConfig) -> Iterator[tuple[str, str]]:
    """(name, doc) of each top-level section of the schema."""
    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        if _is_dc(_unwrap_optional(hints[f.name])[0]):
            yield f.name, f.metadata.get("doc", "")


def _all_dotted(schema: type, prefix: str = "") -> list[str]:
    out = []
    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        out.append(prefix + f.name)
        inner = _unwrap_optional(hints[f.name])[0]
        if _is_dc(inner):
            out += _all_dotted(inner, prefix + f.name + ".")
    return out


def type_at(schema: type, dotted: str) -> Any | None:
    """The schema type of a dotted key, or None when the key does not exist."""
    cls: Any = schema
    tp = None
    in_dict = False
    for part in dotted.split("."):
        if in_dict:  # the name of a record in dict[str, X]
            tp, in_dict = cls, False
            continue
        if not _is_dc(cls):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            return None
        tp = _hints(cls)[part]
        cls = _unwrap_optional(tp)[0]
        item = _dict_item(cls)
        if _is_dc(item):
            cls, in_dict = item, True
    return tp


# --------------------------------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------------------------------


def _where(source: str | None) -> str:
    return "" if source is None else f" in {source}"


def _is_interp(v: Any) -> bool:
    return isinstance(v, str) and "${" in v


def _unknown_key_msg(full: str, cls: type, schema: type, source: str | None) -> str:
    prefix, _, key = full.rpartition(".")
    # the item key of a list element, e.g. data.train[0].pth -> siblings of the record
    siblings = [f.name for f in dataclasses.fields(cls)]
    close = [f"{prefix}.{c}" if prefix else c for c in _did_you_mean(key, siblings)]
    if not close and "[" not in full:
        everything = _all_dotted(schema)
        close = [k for k in everything if k.rpartition(".")[2] == key]
        close = close or [
            k
            for k in everything
            if k.rpartition(".")[2] in _did_you_mean(key, [e.rpartition(".")[2] for e in everything], cutoff=0.75)
        ]
        close = close[:3] or _did_you_mean(full, everything)
    msg = f"Unknown key '{full}'{_where(source)}"
    if close:
        return f"{msg} — did you mean {_quote_list(close)}?"
    under = f"under '{prefix}'" if prefix else "at the top level"
    return f"{msg}; valid keys {under}: {', '.join(siblings)}."


def _coerce(tp: Any, value: Any) -> Any:
    """Shorthands: a string for a list of records is [{first_field: string}] (data.train=PATH); a string for a
    list[str] is [string]; string items of a list of records become {first_field: item}."""
    inner, _ = _unwrap_optional(tp)
    item = _list_item(inner)
    if item is None or value is None or _is_interp(value) or value == MISSING:
        return value
    if isinstance(value, str) and (item is str or _is_dc(item)):
        value = [value]
    if _is_dc(item) and isinstance(value, (list, tuple)):
        first = dataclasses.fields(item)[0].name
        value = [{first: v} if isinstance(v, str) and not _is_interp(v) else v for v in value]
    return value


class _Composer:
    def __init__(self, schema: type):
        self.schema = schema
        self.cfg: DictConfig = OmegaConf.structured(schema)
        self.errors: list[str] = []
        self.origins: dict[str, str | None] = {}
        self.rejected: set[str] = set()  # keys whose new value was refused (no "missing" error for them later)

    def apply(self, raw: dict, source: str | None, cls: type | None = None, prefix: str = "") -> None:
        cls = cls or self.schema
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in raw.items():
            full = f"{prefix}{key}"
            if not isinstance(key, str) or key not in fields:
                self.errors.append(_unknown_key_msg(str(full), cls, self.schema, source))
                continue
            tp = _hints(cls)[key]
            inner, optional = _unwrap_optional(tp)
            if _is_dc(inner):
                if isinstance(value, dict):
                    self.apply(value, source, inner, full + ".")
                elif value is None and optional:
                    self._set(full, None, tp, source)
                else:
                    self.errors.append(
                        f"Invalid value for '{full}'{_where(source)}: expected a section with keys "
                        f"{type_name(inner)}, got {value!r}"
                    )
                continue
            record = _dict_item(inner)
            if _is_dc(record) and isinstance(value, dict):
                bad = False
                names = {f.name for f in dataclasses.fields(record)}
                for name, v in value.items():
                    if not isinstance(v, dict):
                        self.errors.append(f"Invalid value for '{full}.{name}'{_where(source)}: expected a section "
                                           f"with keys {type_name(record)}, got {v!r}")
                        bad = True
                        continue
                    for k in v:
                        if k not in names:
                            self.errors.append(_unknown_key_msg(f"{full}.{name}.{k}", record, self.schema, source))
                            bad = True
                if bad:
                    self.rejected.add(full)
                    continue
            value = _coerce(tp, value)
            item = _list_item(inner)
            if _is_dc(item) and isinstance(value, (list, tuple)):
                bad = False
                for i, v in enumerate(value):
                    if isinstance(v, dict):
                        for k in v:
                            if k not in {f.name for f in dataclasses.fields(item)}:
                                self.errors.append(_unknown_key_msg(f"{full}[{i}].{k}", item, self.schema, source))
                                bad = True
                    elif not _is_interp(v):
                        self.errors.append(
                            f"Invalid value for '{full}[{i}]'{_where(source)}: expected {type_name(item)} "
                            f"or a path string, got {v!r}"
                        )
                        bad = True
                if bad:
                    self.rejected.add(full)
                    continue
            self._set(full, value, tp, source)

    def _set(self, full: str, value: Any, tp: Any, source: str | None) -> None:
        try:
            OmegaConf.update(self.cfg, full, value, merge=True)
        except OmegaConfBaseException:
            self.rejected.add(full)
            self.errors.append(f"Invalid value for '{full}'{_where(source)}: expected {type_name(tp)}, got {value!r}")
            return
        for k in [k for k in self.origins if k.startswith((full + "[", full + "."))]:
            del self.origins[k]
        self.origins[full] = source

    def apply_group(self, group: str, path: Path) -> None:
        raw = read_yaml(path)
        src = display_path(path)
        if DEFAULTS_KEY in raw:
            self.errors.append(f"{src}: a group file cannot have a '{DEFAULTS_KEY}:' list (only recipes can).")
            raw.pop(DEFAULTS_KEY)
        glob = raw.pop(GLOBAL_KEY, None)
        staged = {k: raw.pop(k) for k in [k for k in raw if STAGE_GLOBAL.fullmatch(str(k))]}
        self.apply({group: raw}, src)
        blocks = [(GLOBAL_KEY, glob)] if glob is not None else []
        stage = OmegaConf.select(self.cfg, "stage", default=None)
        blocks += [(k, v) for k, v in staged.items() if STAGE_GLOBAL.fullmatch(k).group(1) == stage]
        for key, block in blocks:
            if isinstance(block, dict):
                self.apply(block, src)
            else:
                self.errors.append(f"'{key}' in {src} must be a mapping, got {block!r}")


@dataclasses.dataclass
class Composition:
    """The merged (not yet resolved or validated) config, with what went into it."""

    cfg: DictConfig
    errors: list[str]
    origins: dict[str, str | None]  # dotted key -> file that set it last (None = command line)
    recipe_path: Path
    groups: dict[str, str]  # group -> selected option (name or path)
    dirs: list[Path]
    rejected: set[str] = dataclasses.field(default_factory=set)  # keys whose value was refused


def _strip_quotes(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" else s


def _split_top(s: str) -> list[str]:
    """Split on commas that are not inside (), [], {} — for paths with brace ranges in a list."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_value(text: str, tp: Any | None) -> Any:
    """Parse the right-hand side of ``key=value`` knowing the key's schema type: strings stay verbatim (so
    ``model.path=1e-3`` or ``data.train=a-{000..009}.tar`` are not reinterpreted), everything else is YAML."""
    t = text.strip()
    inner = _unwrap_optional(tp)[0] if tp is not None else None
    if inner is str:
        return None if t == "null" else _strip_quotes(t)
    item = _list_item(inner) if inner is not None else None
    if item is not None:
        if t.startswith("[") and t.endswith("]"):
            try:
                v = parse_yaml(t)
                if isinstance(v, list):
                    return v
            except yaml.YAMLError:
                pass
            return [
                _strip_quotes(x) if item is str or _is_dc(item) else parse_value(x, item) for x in _split_top(t[1:-1])
            ]
        if item is str or _is_dc(item):
            return None if t == "null" else _strip_quotes(t)
    try:
        return parse_yaml(t) if t else None
    except yaml.YAMLError:
        return t


def _set_nested(d: dict, parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def parse_overrides(
    overrides: Sequence[str], schema: type, groups: Iterable[str]
) -> tuple[dict[str, str], dict, list[str]]:
    """Split command-line ``key=value`` items into group selections and a nested dict of overrides."""
    groups = set(groups)
    selected: dict[str, str] = {}
    nested: dict = {}
    errors: list[str] = []
    for arg in overrides:
        key, sep, text = arg.partition("=")
        key = key.strip().lstrip("+")
        if not sep or not key:
            errors.append(f"Unexpected argument '{arg}': expected key=value (e.g. trainer.max_steps=5).")
            continue
        if key == "recipe":
            errors.append("recipe= given more than once.")
            continue
        if "." not in key and key in groups and not text.strip().startswith("{"):
            selected.pop(key, None)
            selected[key] = text.strip()
            continue
        tp = type_at(schema, key)
        if _unwrap_optional(tp)[0] is not str and (problem := _bracket_problem(text.strip())):
            errors.append(f"Malformed value for '{key}': {text.strip()!r} {problem}. Write lists as {key}=[a,b] "
                          "(quote the whole argument in the shell).")
            continue
        _set_nested(nested, key.split("."), parse_value(text, tp))
    return selected, nested, errors


def _bracket_problem(text: str) -> str | None:
    """Why the brackets of a command-line value do not balance ("has an unclosed '['"), or None. Quoted text is
    skipped, so a path or a string item may hold brackets."""
    pairs, stack, quote = {"]": "[", "}": "{", ")": "("}, [], None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack[-1] != pairs[ch]:
                return f"has an unmatched '{ch}'"
            stack.pop()
    if quote:
        return f"has an unclosed quote {quote}"
    return f"has an unclosed '{stack[-1]}'" if stack else None


def _parse_defaults(raw: Any, src: str, errors: list[str]) -> list[tuple[str, str]]:
    out = []
    if raw is None:
        return out
    if not isinstance(raw, list):
        errors.append(f"'{DEFAULTS_KEY}' in {src} must be a list like [{{model: tiny}}, {{data: demo}}].")
        return out
    for entry in raw:
        if isinstance(entry, dict) and len(entry) == 1:
            ((g, o),) = entry.items()
            if isinstance(g, str) and isinstance(o, str):
                out.append((g, o))
                continue
        errors.append(
            f"Bad entry {entry!r} in '{DEFAULTS_KEY}' of {src}: expected {{GROUP: OPTION}}, e.g. {{model: tiny}}."
        )
    return out


def compose(
    recipe: str,
    overrides: Sequence[str] = (),
    *,
    schema: type = RecipeConfig,
    dirs: Sequence[Path] | None = None,
) -> Composition:
    """Merge schema defaults, the recipe's groups, its body, command-line groups and overrides. Errors are
    collected in ``Composition.errors`` (not raised), except for an unknown recipe, which raises ConfigError."""
    dirs = recipe_dirs() if dirs is None else [Path(d) for d in dirs]
    recipe_path = find_recipe(recipe, dirs)
    search = [recipe_path.parent] + [d for d in dirs if d.resolve() != recipe_path.parent.resolve()]
    available = list_groups(search)
    src = display_path(recipe_path)

    comp = _Composer(schema)
    if "recipe" in {f.name for f in dataclasses.fields(schema)}:
        comp.cfg.recipe = recipe_path.stem
    cli_groups, cli_nested, arg_errors = parse_overrides(overrides, schema, available)
    comp.errors += arg_errors
    try:
        body = read_yaml(recipe_path)
    except ConfigError as e:
        comp.errors += e.errors
        body = {}
    defaults = _parse_defaults(body.pop(DEFAULTS_KEY, None), src, comp.errors)

    chosen: dict[str, str] = {}

    def group(g: str, option: str) -> None:
        chosen[g] = option
        try:
            comp.apply_group(g, find_group_option(g, option, search))
        except ConfigError as e:
            comp.errors += e.errors if g in cli_groups else [f"{m} (selected in {src})" for m in e.errors]

    for g, o in defaults:
        if g not in cli_groups:
            group(g, o)
    comp.apply(body, src)
    for g, o in cli_groups.items():
        group(g, o)
    comp.apply(cli_nested, COMMAND_LINE)
    return Composition(comp.cfg, comp.errors, comp.origins, recipe_path, chosen, search, comp.rejected)


# --------------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------------

Check = Callable[[DictConfig], Iterable[str]]
CHECKS: list[Check] = []


def register_check(fn: Check) -> Check:
    """Register a cross-field check: ``fn(resolved_cfg)`` yields error messages (name the keys involved). Checks
    run after every key is individually valid; a check for keys the schema lacks is skipped."""
    CHECKS.append(fn)
    return fn


@register_check
def _check_pixels(cfg: DictConfig) -> Iterable[str]:
    lo, hi = cfg.model.min_pixels, cfg.model.max_pixels
    if lo > hi:
        yield f"'model.min_pixels' ({lo}) must not exceed 'model.max_pixels' ({hi})."


@register_check
def _check_betas(cfg: DictConfig) -> Iterable[str]:
    b = list(cfg.optim.betas)
    if len(b) != 2 or not all(0.0 <= x < 1.0 for x in b):
        yield f"'optim.betas' must be two numbers in [0, 1), got {b}."


@register_check
def _check_devices(cfg: DictConfig) -> Iterable[str]:
    d = cfg.trainer.devices
    d = OmegaConf.to_container(d) if isinstance(d, ListConfig) else d
    ok = (
        d == "auto"
        or (isinstance(d, int) and not isinstance(d, bool) and d >= -1)
        or (isinstance(d, str) and re.fullmatch(r"-1|\d+(,\d+)*,?", d.strip()) is not None)
        or (isinstance(d, list) and d and all(isinstance(x, int) and x >= 0 for x in d))
    )
    if not ok:
        yield f"'trainer.devices' must be 'auto', a count (-1 = all) or a list of device indices, got {d!r}."


_BOUNDS = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def _nonfinite_number(value: Any) -> float | None:
    """The first NaN/inf in a number or a list of numbers (``optim.lr=.inf``, ``optim.betas=[.nan, 0.9]``), else None.
    No schema key takes a non-finite number: each would end up in the weights or the loss."""
    items = list(value) if isinstance(value, (ListConfig, list, tuple)) else [value]
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            return item
    return None


def _origin(origins: dict[str, str | None], key: str) -> str | None:
    k = key
    while k:
        if k in origins:
            return origins[k]
        k = re.sub(r"(\[\d+\]|\.[^.\[]*)$", "", k) if ("." in k or "[" in k) else ""
    return None


def _walk(node: Any, cls: type, prefix: str) -> Iterator[tuple[str, Any, str, dataclasses.Field, Any]]:
    """(full key, parent node, key, field, type) for every leaf present in ``node``, descending into records in
    lists (data.train[0].path)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = _unwrap_optional(tp)[0]
        full = prefix + f.name
        if f.name not in node.keys():  # noqa: SIM118 (`in` is False for ??? values)
            continue
        if _is_dc(inner) and not OmegaConf.is_missing(node, f.name) and isinstance(node._get_node(f.name), DictConfig):
            if node._get_node(f.name)._is_none():
                continue
            yield from _walk(node[f.name], inner, full + ".")
            continue
        yield full, node, f.name, f, tp
        item = _list_item(inner)
        if _is_dc(item) and not OmegaConf.is_missing(node, f.name):
            try:
                lst = node[f.name]
            except OmegaConfBaseException:
                continue
            if isinstance(lst, ListConfig):
                for i in range(len(lst)):
                    if isinstance(lst._get_node(i), DictConfig):
                        yield from _walk(lst[i], item, f"{full}[{i}].")


def validate(
    cfg: DictConfig,
    schema: type = RecipeConfig,
    origins: dict[str, str | None] | None = None,
    *,
    cross_checks: bool = True,
    skip: Iterable[str] = (),
) -> list[str]:
    """Check a composed config: missing ``???`` values, interpolations, choices, numeric bounds, then (when all
    those pass) the registered cross-field checks. Returns the list of error messages (empty when valid)."""
    origins = origins or {}
    skip = tuple(skip)
    errors: list[str] = []
    for full, node, key, f, tp in _walk(cfg, schema, ""):
        if any(full == k or full.startswith((k + ".", k + "[")) for k in skip):
            continue  # its new value was already reported as invalid
        src = _origin(origins, full)
        if OmegaConf.is_missing(node, key):
            example = f.metadata.get("example")
            how = f"set it, e.g. {example}" if example else f"set it on the command line: {full}=VALUE"
            req = f" (required by {src})" if src else ""
            doc = f.metadata.get("doc", "")
            errors.append(f"Missing value for '{full}'{req}: {how}." + (f" [{doc}]" if doc else ""))
            continue
        try:
            value = node[key]
        except OmegaConfBaseException as e:
            errors.append(f"Cannot resolve '{full}'{_where(src)}: {str(e).splitlines()[0]}")
            continue
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            close = _did_you_mean(str(value), [str(c) for c in choices], cutoff=0.5)
            hint = f" — did you mean {_quote_list(close)}?" if close else "."
            errors.append(
                f"Invalid value '{value}' for '{full}'{_where(src)}{hint} Allowed: {' | '.join(map(str, choices))}"
            )
        bad_number = _nonfinite_number(value)
        if bad_number is not None:
            errors.append(f"Invalid value for '{full}'{_where(src)}: must be a finite number, got {bad_number}")
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for name, (op, ok) in _BOUNDS.items():
                if name in f.metadata and not ok(value, f.metadata[name]):
                    rule = " and ".join(f"{o} {f.metadata[n]}" for n, (o, _) in _BOUNDS.items() if n in f.metadata)
                    errors.append(f"Invalid value for '{full}'{_where(src)}: must be {rule}, got {value}")
                    break
    if cross_checks and not errors:
        for check in CHECKS:
            try:
                errors += list(check(cfg))
            except (OmegaConfBaseException, AttributeError, KeyError):
                continue  # the schema in use lacks keys this check reads
    return errors


# --------------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------------


def load_config(
    recipe: str,
    overrides: Sequence[str] = (),
    *,
    schema: type = RecipeConfig,
    dirs: Sequence[Path] | None = None,
) -> DictConfig:
    """Load ``recipe`` (name or path) with command-line ``overrides`` (``key=value`` / ``group=option`` strings).

    Returns a resolved ``DictConfig`` typed by ``schema`` (struct mode: assigning an unknown key or a wrong type
    raises). Raises :class:`ConfigError` listing every problem found.
    """
    comp = compose(recipe, overrides, schema=schema, dirs=dirs)
    errors = list(comp.errors)
    # with composition errors, still report missing/invalid values (all at once) but skip cross-field checks
    errors += validate(comp.cfg, schema, comp.origins, cross_checks=not errors, skip=comp.rejected)
    if errors:
        raise ConfigError(errors)
    OmegaConf.resolve(comp.cfg)
    OmegaConf.set_struct(comp.cfg, True)
    return comp.cfg


def load_recipe_file(path: str | Path, overrides: Sequence[str] = (), *, schema: type = RecipeConfig) -> DictConfig:
    """Load a YAML file (a recipe, or a config written by :func:`dump_config`) as a validated config."""
    return load_config(str(Path(path)), overrides, schema=schema)


def dump_config(cfg: DictConfig, path: str | Path | None = None) -> str:
    """The config as YAML (interpolations resolved); also written to ``path`` when given. The file is itself a
    recipe: ``recipe=PATH`` reloads it."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(
            f"# Resolved configuration of a chexone run. Reload it as a recipe: recipe={p}\n" + text,
            encoding="utf-8",
        )
    return text


def to_dataclass(cfg: DictConfig) -> Any:
    """The plain dataclass instance (e.g. a RecipeConfig) behind a loaded config."""
    return OmegaConf.to_object(cfg)
