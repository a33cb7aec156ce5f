"""``python -m chexone.serve --model DIR [--port 8000]`` — an OpenAI-compatible HTTP API for a trained model.

    python -m chexone.serve --model runs/stage1_sft/hf --port 8000
    curl http://127.0.0.1:8000/v1/models

``POST /v1/chat/completions`` takes the OpenAI chat format with images as ``image_url`` data URLs (or file paths
under ``--allow-file-root``), ``temperature`` (default 0 = greedy), ``top_p``, ``max_tokens``, ``seed`` and
``stream``. Binds 127.0.0.1 unless ``--host`` says otherwise; ``--api-key`` (or ``CHEXONE_API_KEY``) requires
``Authorization: Bearer KEY``. See docs/inference.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from chexone.hosts import is_loopback

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chexone.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (e.g. runs/stage1_sft/hf), hub id, or 'tiny'")
    p.add_argument("--name", help="the model name clients send (default: from the directory, e.g. stage1_sft)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it — set --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port, printed)")
    p.add_argument("--api-key", default=os.environ.get("CHEXONE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $CHEXONE_API_KEY, else no key)")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests answered together (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long the first queued request waits for others to batch with (default 10 ms)")
    p.add_argument("--max-request-mb", type=float, default=32.0, help="largest request body (default 32 MiB)")
    p.add_argument("--max-images", type=int, default=8, help="most images in one request (default 8)")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=1024, help="max_tokens when a request gives none")
    p.add_argument("--max-prompt-tokens", type=int, default=8192, help="longest prompt, image tokens included")
    p.add_argument("--allow-file-root", action="append", default=[], metavar="DIR",
                   help="let image_url name files under DIR (repeatable; default: data URLs only)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may wait for its answer")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--attn", default="auto", choices=("auto", "flash_attention_2", "sdpa", "eager"))
    p.add_argument("--max-pixels", type=int, default=262144, help="pixel budget per image (default 512x512)")
    p.add_argument("--min-pixels", type=int, default=3136)
    p.add_argument("--trust-remote-code", action="store_true")
    return p


def _stop(*_: object) -> None:
    """SIGTERM stops the server like Ctrl-C (clean shutdown: the batcher finishes, the socket closes)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for flag, value in (("--max-batch-size", args.max_batch_size), ("--max-images", args.max_images),
                        ("--max-tokens-limit", args.max_tokens_limit), ("--max-prompt-tokens", args.max_prompt_tokens),
                        ("--default-max-tokens", args.default_max_tokens)):
        if value < 1:
            print(f"error: {flag} must be at least 1", file=sys.stderr)
            return EXIT_USAGE
    if args.max_request_mb <= 0:
        print("error: --max-request-mb must be > 0", file=sys.stderr)
        return EXIT_USAGE
    roots = []
    for root in args.allow_file_root:
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            print(f"error: --allow-file-root {root}: not a directory", file=sys.stderr)
            return EXIT_USAGE
        roots.append(path)
    if not is_loopback(args.host) and not args.api_key:
        print(f"warning: binding {args.host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)

    from chexone.inference.engine import InferenceError, InferenceModel
    from chexone.inference.openai_api import ServerLimits
    from chexone.inference.server import ChexoneHTTPServer, serve_forever
    from chexone.model import ModelLoadError

    try:
        model = InferenceModel.load(args.model, device=args.device, dtype=args.dtype, attn_implementation=args.attn,
                                    min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                    trust_remote_code=args.trust_remote_code, name=args.name,
                                    max_prompt_tokens=args.max_prompt_tokens)
    except (ModelLoadError, InferenceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(model.summary, file=sys.stderr, flush=True)
    limits = ServerLimits(max_images=args.max_images, max_pixels=args.max_pixels,
                          max_new_tokens=args.max_tokens_limit, file_roots=roots,
                          default_max_tokens=min(args.default_max_tokens, args.max_tokens_limit))
    try:
        server = ChexoneHTTPServer((args.host, args.port), model, limits=limits,
                                   max_request_bytes=int(args.max_request_mb * 1024 * 1024), api_key=args.api_key,
                                   max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                                   request_timeout=args.request_timeout)
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _stop)
    serve_forever(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
