"""Recipes: the typed schema, loading with config groups and overrides, validation, help and listing.

    from chexone.config import parse_cli_or_exit
    cfg = parse_cli_or_exit(argv, command="fit")   # None after --help / ls; exits 2 on a ConfigError
    cfg.trainer.max_steps                           # a resolved OmegaConf DictConfig typed by RecipeConfig

See docs/recipes.md.
"""

from chexone.config.cli import format_help, format_listing, parse_cli, parse_cli_or_exit
from chexone.config.load import (
    ConfigError,
    compose,
    dump_config,
    find_recipe,
    list_groups,
    list_recipes,
    load_config,
    recipe_dirs,
    register_check,
    to_dataclass,
    validate,
)
from chexone.config.schema import RecipeConfig

__all__ = [
    "ConfigError",
    "RecipeConfig",
    "compose",
    "dump_config",
    "find_recipe",
    "format_help",
    "format_listing",
    "list_groups",
    "list_recipes",
    "load_config",
    "parse_cli",
    "parse_cli_or_exit",
    "recipe_dirs",
    "register_check",
    "to_dataclass",
    "validate",
]
