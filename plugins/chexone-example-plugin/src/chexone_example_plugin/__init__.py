"""Example chexone plugin package.

Nothing is imported here on purpose: chexone reads this package's entry points (pyproject.toml) without importing it,
and imports ``tasks``, ``rewards`` or ``metrics`` only when a recipe selects one of their names.
"""

__version__ = "0.1.0"

#: The chexone plugin API this package was written for; chexone refuses the plugin if its own API differs.
CHEXONE_API_VERSION = 1

#: The task this plugin owns; its reward returns None for samples of any other task.
TASK_NAME = "example_yes_no"
