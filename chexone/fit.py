"""``python -m chexone.fit recipe=NAME [group=option] [key=value ...]`` — train as a recipe says.

``--help`` lists every key with its default and description; ``ls`` lists recipes and config groups.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from chexone.config.cli import parse_cli_or_exit

    cfg = parse_cli_or_exit(argv, command="fit")
    if cfg is None:  # --help or ls
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from chexone.model import ModelLoadError
    from chexone.training.run import run_fit

    try:
        run_fit(cfg)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
