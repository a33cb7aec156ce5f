"""The example plugin's recipes: this package's directory holds recipe YAML files (and could hold config-group
sub-directories such as ``data/``), laid out like chexone's top-level ``recipes/``. chexone finds it through the
``chexone.recipes`` entry point in pyproject.toml; nothing in here is Python."""
