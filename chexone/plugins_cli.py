"""Alias of ``python -m chexone.plugins list``, kept so that existing scripts and READMEs keep working.

``python -m chexone.plugins_cli [--no-load] [--plugins-only] [--kind K] [--strict]`` is exactly
``python -m chexone.plugins list ...``; ``python -m chexone.plugins`` also has ``check`` and ``new``.
"""

from __future__ import annotations

import sys

from chexone.plugins import main as _plugins_main


def main(argv: list[str] | None = None) -> int:
    return _plugins_main(["list", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
