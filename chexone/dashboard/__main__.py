"""``python -m chexone.dashboard``: the run report, the W&B workspace and the metric docs, from one metric catalog.

    python -m chexone.dashboard report RUN_DIR                    # RUN_DIR/report.html (+ report/*.png), offline
    python -m chexone.dashboard wandb --entity E --project P      # create the W&B workspace (needs a W&B API key)
    python -m chexone.dashboard wandb --entity E --project P --url URL   # update the workspace saved at URL
    python -m chexone.dashboard wandb --entity E --project P --dry-run   # print its definition (JSON), send nothing
    python -m chexone.dashboard docs [--check]                    # regenerate (check) the table in docs/logging.md
"""

from __future__ import annotations

import argparse
import json
import netrc
import os
import sys
from pathlib import Path
from urllib.parse import urlparse


def has_wandb_credentials() -> bool:
    """A W&B API key in WANDB_API_KEY, or stored by ``wandb login`` (~/.netrc entry for the W&B host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _report(args: argparse.Namespace) -> int:
    from chexone.dashboard.report import build_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir} is not a directory (pass a run's output_dir, e.g. runs/stage2_grpo)",
              file=sys.stderr)
        return 2
    if not 0 <= args.smoothing < 1:
        print(f"error: --smoothing must be in [0, 1), got {args.smoothing}", file=sys.stderr)
        return 2
    print(f"report: {build_report(run_dir, smoothing=args.smoothing)}")
    return 0


def _wandb(args: argparse.Namespace) -> int:
    from chexone.dashboard.workspace import MissingExtraError, build_workspace, dashboard_definition, save_workspace

    definition = dashboard_definition()
    try:
        workspace = build_workspace(args.entity, args.project, args.name, definition)  # validates every field
    except MissingExtraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps({"entity": args.entity, "project": args.project, "name": args.name, **definition},
                         indent=2))
        return 0
    if not has_wandb_credentials():
        print("error: no W&B API key: set WANDB_API_KEY (or run `wandb login`) to create the workspace, or pass "
              "--dry-run to print its definition without sending anything", file=sys.stderr)
        return 2
    saved = save_workspace(workspace, url=args.url)
    print(f"W&B workspace {'updated' if args.url else 'created'}: {saved.url}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from chexone.dashboard.docgen import main

    return main(["--check"] if args.check else [])


def build_parser() -> argparse.ArgumentParser:
    from chexone.dashboard.catalog import SMOOTHING
    from chexone.dashboard.workspace import DEFAULT_NAME

    parser = argparse.ArgumentParser(prog="python -m chexone.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="write RUN_DIR/report.html from the run's own logs (offline)")
    r.add_argument("run_dir", help="a fit or evaluate output directory")
    r.add_argument("--smoothing", type=float, default=SMOOTHING,
                   help=f"EMA weight of the smoothed curves, in [0, 1) (default {SMOOTHING}; 0 = raw only)")
    r.set_defaults(func=_report)
    w = sub.add_parser("wandb", help="create or update the W&B workspace (the `dashboard` extra)")
    w.add_argument("--entity", required=True, help="W&B entity (user or team)")
    w.add_argument("--project", required=True, help="W&B project (the recipe's wandb.project, default chexone)")
    w.add_argument("--name", default=DEFAULT_NAME, help=f"workspace name (default {DEFAULT_NAME})")
    w.add_argument("--url", help="URL of a workspace saved before: update it instead of creating a new one")
    w.add_argument("--dry-run", action="store_true", help="print the definition as JSON; send nothing")
    w.set_defaults(func=_wandb)
    d = sub.add_parser("docs", help="regenerate the metric table in docs/logging.md")
    d.add_argument("--check", action="store_true", help="exit 1 when docs/logging.md is out of date")
    d.set_defaults(func=_docs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
