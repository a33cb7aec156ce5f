"""``python -m chexone.reader_study {serve,drafts,export,example,hash-password}`` (docs/reader_study.md).

Exit codes: 0 done, 1 a runtime failure (model server unreachable, port taken), 2 a usage or configuration error
(bad study file, drafts file or ``--db``). Errors are one line on stderr; no password is ever printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXAMPLE_HINT = "python -m chexone.reader_study example --out reader-study-demo"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chexone.reader_study",
                                description="The CheXOne reader study: a local web app where radiologists edit "
                                            "model drafts, compare reports blinded and rate reasoning.",
                                epilog=f"Try it: {EXAMPLE_HINT}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the web app")
    s.add_argument("--study", required=True, help="the study YAML")
    s.add_argument("--db", default=None, help="SQLite file or sqlite:///path URL (default: reader_study.sqlite3 "
                                              "beside the study file)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    s.add_argument("--drafts-server", default=None, metavar="URL",
                   help="before serving, fill missing drafts from this OpenAI-compatible server (as `drafts` does)")
    _model_args(s)

    d = sub.add_parser("drafts", help="ask an OpenAI-compatible model server for missing drafts (resumable)")
    d.add_argument("--study", required=True, help="the study YAML")
    d.add_argument("--server", required=True, help="base URL of the server, e.g. http://127.0.0.1:8000/v1")
    d.add_argument("--out", default=None, help="drafts JSONL to append to (default: the study's 'drafts' file)")
    _model_args(d)

    e = sub.add_parser("export", help="CSVs, summary statistics, agreement and plots from the answers")
    e.add_argument("--study", required=True, help="the study YAML")
    e.add_argument("--db", default=None, help="the database the server wrote (default as for serve)")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    x = sub.add_parser("example", help="write a small ready-to-run study (phantom images, drafts) to a directory")
    x.add_argument("--out", required=True, help="directory to create")

    h = sub.add_parser("hash-password", help="print a password_hash for the study file (reads the code from the "
                                             "terminal or stdin)")
    h.add_argument("--iterations", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name to request (default: the first the server lists)")
    p.add_argument("--max-tokens", type=int, default=2048, help="max new tokens per reply (default 2048)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one reply (default 600)")
    p.add_argument("--api-key-env", default="CHEXONE_API_KEY",
                   help="environment variable holding the server's API key, if it needs one (default "
                        "CHEXONE_API_KEY, as python -m chexone.serve reads)")


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _fill(study, server: str, out, args) -> dict[str, int]:
    from chexone.reader_study.drafts import fill_drafts

    return fill_drafts(study, server, out, model=args.model, max_tokens=args.max_tokens, timeout=args.timeout,
                       api_key=os.environ.get(args.api_key_env) or None)


def cmd_serve(args) -> int:
    from chexone.reader_study.app import ReaderStudyApp
    from chexone.reader_study.drafts import DraftError
    from chexone.reader_study.server import serve
    from chexone.reader_study.store import DatabaseError, Store, db_path
    from chexone.reader_study.study import StudyError, load_study

    if not 0 <= args.port <= 65535:
        return _error(f"--port {args.port}: not a port number", 2)
    try:
        study = load_study(args.study)
        db = db_path(args.db, study.path)
    except (StudyError, DatabaseError) as e:
        return _error(str(e), 2)
    missing = study.missing_drafts()
    if missing and args.drafts_server:
        if study.drafts_path is None:
            return _error(f"{study.path}: --drafts-server needs a 'drafts:' file in the study to write to", 2)
        try:
            _fill(study, args.drafts_server, study.drafts_path, args)
            study = load_study(args.study)
        except DraftError as e:
            return _error(str(e), 1)
        except StudyError as e:
            return _error(str(e), 2)
        missing = study.missing_drafts()
    if missing:
        ids = ", ".join(f"'{it.id}'" for it in missing[:3]) + (" ..." if len(missing) > 3 else "")
        where = f"the drafts file {study.drafts_path}" if study.drafts_path else "the study file (no 'drafts:' file)"
        return _error(f"{study.path}: {len(missing)} items have no model text in {where}: {ids}. Run "
                      f"`python -m chexone.reader_study drafts --study {args.study} --server URL` first, or add "
                      f"--drafts-server URL", 2)
    try:
        store = Store(db, study.name)
    except DatabaseError as e:
        return _error(str(e), 2)
    try:
        serve(ReaderStudyApp(study, store), args.host, args.port)
    except OSError as e:
        return _error(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}", 1)
    finally:
        store.close()
    return 0


def cmd_drafts(args) -> int:
    from chexone.reader_study.drafts import DraftError
    from chexone.reader_study.study import StudyError, load_study

    try:
        study = load_study(args.study)
    except StudyError as e:
        return _error(str(e), 2)
    out = Path(args.out) if args.out else study.drafts_path
    if out is None:
        return _error(f"{study.path}: no 'drafts:' file in the study; give --out FILE.jsonl", 2)
    try:
        counts = _fill(study, args.server, out, args)
    except DraftError as e:
        return _error(str(e), 1)
    print(f"drafts: {counts['done']} new, {counts['skipped']} already there -> {out}")
    if study.drafts_path is None or out.resolve() != study.drafts_path.resolve():
        print(f"note: the study reads drafts from {study.drafts_path or '(no drafts: key)'}; set 'drafts: {out}' in "
              f"{study.path} to use these")
    return 0


def cmd_export(args) -> int:
    from chexone.reader_study.export import export
    from chexone.reader_study.store import DatabaseError, Store, db_path
    from chexone.reader_study.study import StudyError, load_study

    try:
        study = load_study(args.study, check_images=False)
        store = Store(db_path(args.db, study.path), study.name, create=False, readonly=True)
    except (StudyError, DatabaseError) as e:
        return _error(str(e), 2)
    try:
        files = export(study, store, Path(args.out), plots=not args.no_plots)
    finally:
        store.close()
    print(f"export: {len(files)} files in {args.out}: " + ", ".join(sorted(p.name for p in files)))
    return 0


def cmd_example(args) -> int:
    from chexone.reader_study.example import ExampleError, write_example

    try:
        study_file = write_example(Path(args.out))
    except ExampleError as e:
        return _error(str(e), 2)
    print(f"example study written to {study_file.parent}\n"
          f"  serve:  python -m chexone.reader_study serve --study {study_file}\n"
          f"  then open http://127.0.0.1:8080/ and log in as reader1 (reader2 has an access code: see the top of "
          f"study.yaml)\n"
          f"  export: python -m chexone.reader_study export --study {study_file} --out {study_file.parent / 'export'}")
    return 0


def cmd_hash_password(args) -> int:
    import getpass

    from chexone.reader_study.auth import DEFAULT_ITERATIONS, hash_password

    if sys.stdin.isatty():
        first = getpass.getpass("access code: ")
        if getpass.getpass("again: ") != first:
            return _error("the two entries differ", 2)
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if not first:
        return _error("empty access code", 2)
    print(hash_password(first, iterations=args.iterations or DEFAULT_ITERATIONS))
    return 0


COMMANDS = {"serve": cmd_serve, "drafts": cmd_drafts, "export": cmd_export, "example": cmd_example,
            "hash-password": cmd_hash_password}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
