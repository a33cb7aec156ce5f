"""List installed chexone plugins: ``python -m chexone.plugins_cli [--no-load] [--plugins-only] [--strict]``.

Prints one row per task / reward / metric: name, kind, distribution, version, status and origin. By default every entry
is imported to report its status (a broken plugin is shown and warned about, not raised). ``--strict`` exits with
status 1 when any entry failed to load or conflicts with another.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from chexone.registry import AUTOLOAD_ENV, autoload_disabled, list_plugins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chexone.plugins_cli", description=__doc__.splitlines()[0])
    parser.add_argument("--no-load", action="store_true", help="do not import entries (status shows 'not loaded')")
    parser.add_argument("--plugins-only", action="store_true", help="hide chexone's built-ins")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any entry fails to load or conflicts")
    args = parser.parse_args(argv)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = list_plugins(load=not args.no_load, include_builtins=not args.plugins_only)
    header = ("name", "kind", "distribution", "version", "status", "origin")
    table = [header] + [(r.name, r.kind, r.distribution, r.version or "-", r.status, r.origin) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    sys.stdout.flush()
    if autoload_disabled():
        print(f"\nplugin entry points are ignored: {AUTOLOAD_ENV} is set", file=sys.stderr)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    bad = [r for r in rows if r.status.startswith(("error", "conflict"))]
    return 1 if args.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())
