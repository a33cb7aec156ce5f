"""``python -m chexone.bench {rollout,sft} [options]`` (chexone against itself) or
``python -m chexone.bench compare {grpo,sft,all} [options]`` (chexone against TRL)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "compare":
        from chexone.bench.compare import main as compare_main

        return compare_main(argv[1:])
    from chexone.bench.internal import main as internal_main

    return internal_main(argv)


if __name__ == "__main__":
    sys.exit(main())
