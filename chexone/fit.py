"""``python -m chexone.fit recipe=NAME [group=option] [key=value ...]`` — train as a recipe says (stage 1 or 2).

``--help`` lists every key with its default and description; ``ls`` lists recipes and config groups.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from chexone.config.cli import run_command
    from chexone.training.run import run_fit

    return run_command(argv, "fit", run_fit)


if __name__ == "__main__":
    sys.exit(main())
