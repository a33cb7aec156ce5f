"""``python -m chexone.evaluate recipe=eval_<suite> model.path=... data.<benchmark>=PATH ...`` — answer and score
benchmarks (see docs/evaluation.md); ``python -m chexone.evaluate compare A B`` — paired differences of two runs.

``--help`` lists every key; ``ls`` lists recipes. ``data.<benchmark>=PATH`` is shorthand for
``eval.benchmarks.<benchmark>.path=PATH``.
"""

from __future__ import annotations

import sys


def _expand(argv: list[str]) -> list[str]:
    """Apply the ``data.<benchmark>=PATH`` shorthand for the benchmarks the selected recipe (and groups) declare."""
    from chexone.config.cli import split_argv
    from chexone.config.load import ConfigError, compose, list_groups
    from chexone.evaluation.benchmarks import expand_benchmark_shorthand

    try:
        recipe, rest, want_help, want_ls = split_argv(argv)
    except ConfigError:
        return argv  # reported by the normal parser
    if recipe is None or want_ls:
        return argv
    groups = set(list_groups())
    selections = [a for a in rest if a.partition("=")[0] in groups]
    try:
        names = list(compose(recipe, selections).cfg.eval.benchmarks)
    except ConfigError:
        return argv
    expanded = expand_benchmark_shorthand(rest, names)
    return [f"recipe={recipe}", *expanded] + [a for a in argv if a in ("-h", "--help")]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        from chexone.evaluation.compare import main_compare

        return main_compare(argv[1:])
    from chexone.config.cli import run_command
    from chexone.config.load import ConfigError
    from chexone.evaluation.benchmarks import BenchmarkError

    try:
        argv = _expand(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def run(cfg):
        from chexone.evaluation.runner import run_evaluation

        try:
            results = run_evaluation(cfg)
        except BenchmarkError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        if cfg.write_report:  # the tables with CIs and the plots in one offline page; a failure only warns
            import os

            from chexone.dashboard.report import write_report_safely

            report = write_report_safely(os.path.expanduser(cfg.eval.out))
            if report is not None:
                print(f"evaluate: report in {report}", flush=True)
        return results

    return run_command(argv, "evaluate", run)


if __name__ == "__main__":
    sys.exit(main())
