"""Synthesise CheXReason-style reasoning traces for a shard set with an OpenAI-compatible chat endpoint.

    python -m webdata.reason --input shards/mimic --out shards/mimic_reason \\
        --endpoint http://HOST:PORT/v1 --model NAME [--concurrency 8] [--tries 2] [--tasks close_vqa,...]

For every sample the endpoint (vLLM, TGI, SGLang, llama.cpp's server, or any server speaking ``POST
/v1/chat/completions``) gets the reference report, the question (with its ``(A) ...`` options) and the correct
answer, and is asked for step-by-step reasoning that ends in ``\\boxed{answer}`` (:data:`SYSTEM_PROMPT`,
:data:`USER_TEMPLATE`; docs/data.md shows them). A trace is **accepted** only if it is "reasoning text, then exactly
one non-empty ``\\boxed{}``" and the boxed answer matches the ground truth by the task's own rule (option letters for
multiple choice, boxes for grounding, case/space-insensitive text otherwise); otherwise the sample is asked again, up
to ``--tries`` times, then **rejected**. Transport problems — timeouts, connection errors, HTTP 429/5xx, replies that
are not chat-completion JSON — are retried ``--retries`` times with exponential backoff and jitter (``Retry-After``
honoured); when they persist, or on another 4xx, the sample is **failed** (retried on the next run).

Every outcome is appended to ``OUT/.cache/traces.jsonl`` keyed by sample id as soon as it is known, so an interrupted
run resumes where it stopped (accepted and rejected samples are never asked again; the cache is tied to the model,
prompt version and sampling settings in ``OUT/.cache/config.json``). The output shard set holds the accepted samples
only, each with its trace in ``reasoning`` (images copied byte for byte, shared images kept shared), plus
``sizes.json``, ``manifest.json`` and ``reason_report.json`` with acceptance rates per task.

Samples without a reference report (``meta.report``; report-generation samples use their answer) are skipped unless
``--without-report allow``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import email.utils
import glob
import http.client
import json
import os
import random
import re
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braceexpand import braceexpand

from chexone.data.sample import Sample, SampleError
from chexone.hosts import is_loopback
from chexone.tasks.answers import find_boxed
from webdata.writer import SHARED_IMAGE_PREFIX, ShardWriter, _write_json

#: Version of the synthesiser (output format, acceptance rules); the prompt has its own version.
REASON_VERSION = "1.0"
PROMPT_VERSION = "chexreason-v1"

SYSTEM_PROMPT = "You are an expert thoracic radiologist who teaches residents how to read chest X-rays."

USER_TEMPLATE = """You are given the reference radiology report of a chest X-ray study, a question about the image(s) \
and its correct answer. Write the step-by-step reasoning a radiologist would follow while looking at the image(s) to \
arrive at this answer.

Rules:
- Reason from the image findings described in the report as if you were looking at the image yourself; do not \
mention the report, a reference, or that you were given the answer.
- Be concise and factual: state only findings the report supports.
- Start with "**Thinking Process:**" followed by numbered steps.
- End with "**Final Answer:** \\boxed{{ANSWER}}", where ANSWER is the correct answer below, copied exactly.

Reference report:
{report}

Question:
{question}

Correct answer:
{answer}"""

STATUS_FINAL = ("accepted", "rejected")


def build_messages(report: str, question: str, answer: str) -> list[dict[str, str]]:
    """The chat messages sent for one sample."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(report=report.strip(), question=question.strip(),
                                                             answer=answer.strip())}]


# ----------------------------------------------------------------------------------------------------------------------
# Acceptance
# ----------------------------------------------------------------------------------------------------------------------


def _norm_text(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(" .")


def check_trace(trace: str, sample: Sample, task: Any) -> str | None:
    """None if the trace is acceptable for ``sample``, else why not: no_box, several_boxes, empty_box,
    no_reasoning, wrong_answer."""
    boxes = find_boxed(trace)
    if not boxes:
        return "no_box"
    if len(boxes) > 1:
        return "several_boxes"
    boxed = boxes[0].strip()
    if not boxed:
        return "empty_box"
    before = trace[: trace.find("\\boxed{")]
    before = re.sub(r"\**\s*final answer\s*:?\s*\**", "", before, flags=re.I).strip(" *:\n")
    if len(before) < 20:
        return "no_reasoning"
    expected = task.answer_text(sample)
    if task.family in ("multiple_choice", "grounding", "open_vqa"):
        ok = task.parse_answer(boxed) == task.parse_answer(expected)
    else:
        ok = _norm_text(boxed) == _norm_text(expected)
    return None if ok else "wrong_answer"


def reference_report(sample: Sample, task: Any) -> str | None:
    """The report the reasoning is grounded in: meta.report, else meta findings/impression, else (report tasks) the
    answer itself."""
    meta = sample.meta or {}
    if isinstance(meta.get("report"), str) and meta["report"].strip():
        return meta["report"]
    parts = [f"{k.upper()}: {meta[k]}" for k in ("findings", "impression") if isinstance(meta.get(k), str) and meta[k]]
    if parts:
        return "\n".join(parts)
    if task.family == "report" and sample.answer.strip():
        return sample.answer
    return None


# ----------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible client
# ----------------------------------------------------------------------------------------------------------------------


class TransportError(Exception):
    """The endpoint did not give a usable reply (after retries, or a non-retryable HTTP status)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class ChatClient:
    """Minimal, thread-safe ``POST {endpoint}/chat/completions`` client on :mod:`urllib` (no extra dependency).

    ``complete`` returns the first choice's message content; it retries timeouts, connection errors, HTTP 429/5xx and
    malformed replies with exponential backoff (``backoff * 2**attempt`` seconds, capped at ``max_backoff``, times a
    jitter in [0.5, 1]; a ``Retry-After`` header wins when larger), and raises :class:`TransportError` when
    ``retries`` are used up or on any other HTTP error. Proxies from the environment are used except for loopback
    hosts.
    """

    def __init__(self, endpoint: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 4, backoff: float = 1.0, max_backoff: float = 60.0, temperature: float = 0.7,
                 max_tokens: int = 1024, extra_body: dict[str, Any] | None = None, seed: int | None = None):
        parsed = urllib.parse.urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"--endpoint {endpoint!r}: expected http(s)://HOST:PORT/v1")
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.body = {"model": model, "temperature": temperature, "max_tokens": max_tokens, **(extra_body or {})}
        self.rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(parsed.hostname) else []
        self.opener = urllib.request.build_opener(*handlers)
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        with self._rng_lock:
            jitter = 0.5 + 0.5 * self.rng.random()
        delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * jitter
        if retry_after:
            try:
                wait = float(retry_after)
            except ValueError:
                parsed = email.utils.parsedate_to_datetime(retry_after) if retry_after else None
                wait = max(0.0, parsed.timestamp() - time.time()) if parsed else 0.0
            delay = max(delay, min(wait, self.max_backoff))
        return delay

    def complete(self, messages: list[dict[str, str]]) -> str:
        data = json.dumps({**self.body, "messages": messages}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "?"
        for attempt in range(self.retries + 1):
            retry_after = None
            self._count("requests")
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with self.opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                content = _content_of(raw)
                if content is not None:
                    return content
                kind, last = "malformed", f"reply is not a chat completion: {raw[:200]!r}"
            except urllib.error.HTTPError as e:
                body = e.read()[:200] if e.fp is not None else b""
                if e.code != 429 and e.code < 500:
                    self._count(f"http_{e.code}")
                    raise TransportError(f"HTTP {e.code} from {self.url}: {body!r}", f"http_{e.code}") from None
                kind, last, retry_after = f"http_{e.code}", f"HTTP {e.code}: {body!r}", e.headers.get("Retry-After")
            except (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", e)
                kind = "timeout" if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError) else "connection"
                last = f"{type(e).__name__}: {reason}"
            self._count(kind)
            if attempt < self.retries:
                time.sleep(self._delay(attempt, retry_after))
        raise TransportError(f"{self.url}: no usable reply after {self.retries + 1} attempt(s); last: {last}", kind)


def _content_of(raw: bytes) -> str | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
        content = obj["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) and content.strip() else None


# ----------------------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------------------


class TraceCache:
    """Append-only JSONL of outcomes by sample id; the last line for an id wins; a torn last line is ignored."""

    def __init__(self, directory: Path, config: dict[str, Any], *, overwrite: bool = False):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "traces.jsonl"
        cfg_path = directory / "config.json"
        if overwrite:
            self.path.unlink(missing_ok=True)
            cfg_path.unlink(missing_ok=True)
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old != config:
                diff = {k: (old.get(k), config.get(k)) for k in set(old) | set(config) if old.get(k) != config.get(k)}
                raise ValueError(f"{directory}: the trace cache was made with other settings {diff} "
                                 "(old, new); pass --overwrite to discard it, or use another --out")
        else:
            _write_json(cfg_path, config)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(e, dict) and "id" in e:
                        self.entries[e["id"]] = e
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")

    def final(self, sample_id: str) -> dict[str, Any] | None:
        e = self.entries.get(sample_id)
        return e if e is not None and e.get("status") in STATUS_FINAL else None

    def put(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.entries[entry["id"]] = entry
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------------------------------------------------
# Reading shards
# ----------------------------------------------------------------------------------------------------------------------


def input_shards(spec: str) -> list[str]:
    """A shard directory (its ``*.tar``), a brace pattern, or one tar."""
    out: list[str] = []
    for path in braceexpand(os.path.expanduser(spec)):
        if os.path.isdir(path):
            out += sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
        elif os.path.isfile(path):
            out.append(path)
        else:
            raise FileNotFoundError(f"--input {spec}: {path} does not exist")
    if not out:
        raise FileNotFoundError(f"--input {spec}: no shard found")
    return out


def iter_members(path: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, member name, bytes) for every file member of a tar, in order (shared images have their own key)."""
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rpartition("/")[2]
            key = base.partition(".")[0]
            f = tar.extractfile(member)
            yield key, base, f.read() if f is not None else b""


def iter_events(path: str) -> Iterator[tuple[str, Any]]:
    """("shared", (name, bytes)) for shared image members and ("sample", (key, [(name, bytes), ...])) per sample."""
    key, members = None, []
    for k, name, data in iter_members(path):
        if k.startswith(SHARED_IMAGE_PREFIX):
            if key is not None:
                yield "sample", (key, members)
                key, members = None, []
            yield "shared", (name, data)
            continue
        if k != key:
            if key is not None:
                yield "sample", (key, members)
            key, members = k, []
        members.append((name, data))
    if key is not None:
        yield "sample", (key, members)


@dataclass
class Item:
    """One sample to synthesise reasoning for."""

    id: str
    task_name: str
    sample: Sample
    task: Any
    report: str

    def messages(self) -> list[dict[str, str]]:
        return build_messages(self.report, self.task.question_text(self.sample), self.task.answer_text(self.sample))


# ----------------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m webdata.reason", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="input shard set: directory, brace pattern or one .tar")
    p.add_argument("--out", required=True, help="output directory (shards + .cache/ + reason_report.json)")
    p.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://HOST:8000/v1")
    p.add_argument("--model", required=True, help="model name the server knows")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key, if the server needs one (default OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.add_argument("--retries", type=int, default=4, help="retries per request on timeouts/5xx/malformed (default 4)")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time")
    p.add_argument("--max-backoff", type=float, default=60.0, help="longest retry delay (default 60 s)")
    p.add_argument("--tries", type=int, default=2, help="generations per sample until one is accepted (default 2)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--tasks", default="", help="comma-separated task names to process (default: all)")
    p.add_argument("--without-report", choices=["skip", "allow"], default="skip",
                   help="samples with no reference report: skip (default) or send with '(not available)'")
    p.add_argument("--limit", type=int, default=0, help="process at most N eligible samples (0 = all)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per output shard")
    p.add_argument("--prefix", default="", help="output shard prefix (default: --out's name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the retry jitter")
    p.add_argument("--overwrite", action="store_true", help="discard the trace cache and output in --out")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("concurrency", "tries", "shard_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.retries < 0 or args.timeout <= 0:
        p.error("--retries must be >= 0 and --timeout > 0")
    return args


def _generate(client: ChatClient, item: Item, tries: int) -> dict[str, Any]:
    """Ask up to ``tries`` times for an acceptable trace; returns the cache entry."""
    reasons: list[str] = []
    for k in range(tries):
        try:
            trace = client.complete(item.messages())
        except TransportError as e:
            return {"id": item.id, "task": item.task_name, "status": "failed", "reason": e.kind, "detail": str(e),
                    "tries": k + 1}
        why = check_trace(trace, item.sample, item.task)
        if why is None:
            return {"id": item.id, "task": item.task_name, "status": "accepted", "trace": trace.strip(),
                    "tries": k + 1}
        reasons.append(why)
    return {"id": item.id, "task": item.task_name, "status": "rejected", "reason": reasons[-1], "reasons": reasons,
            "tries": tries}


def run(args: argparse.Namespace, log=lambda m: print(m, file=sys.stderr)) -> dict[str, Any]:
    from chexone.tasks import get_task

    shards = input_shards(args.input)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or out.resolve().name
    config = {"model": args.model, "prompt_version": PROMPT_VERSION, "temperature": args.temperature,
              "max_tokens": args.max_tokens, "tries": args.tries, "without_report": args.without_report}
    cache = TraceCache(out / ".cache", config, overwrite=args.overwrite)
    client = ChatClient(args.endpoint, args.model, api_key=os.environ.get(args.api_key_env) or None,
                        timeout=args.timeout, retries=args.retries, backoff=args.backoff,
                        max_backoff=args.max_backoff, temperature=args.temperature, max_tokens=args.max_tokens,
                        seed=args.seed)
    wanted_tasks = {t.strip() for t in args.tasks.split(",") if t.strip()}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    queried = 0
    eligible_total = 0
    bar = None
    if not args.no_progress:
        from chexone.progress import progress

        bar = progress(desc="reasoning", unit="samples", file=sys.stderr)
    t0 = time.perf_counter()
    for p in list(out.glob(f"{prefix}-*.tar")):
        p.unlink()
    writer = ShardWriter(out, prefix=prefix, max_samples_per_shard=args.shard_size, builder="webdata.reason",
                         builder_version=REASON_VERSION, overwrite=True,
                         arguments={k: v for k, v in sorted(vars(args).items())
                                    if k not in ("overwrite", "no_progress", "api_key_env")})
    try:
        for shard in shards:
            # pass 1: which samples of this shard need a trace
            items: dict[str, Item] = {}
            for kind, payload in iter_events(shard):
                if kind != "sample":
                    continue
                key, members = payload
                record = _record(members, key)
                if record is None:
                    counts["?"]["unreadable"] += 1
                    continue
                task_name = str(record.get("task"))
                counts[task_name]["samples"] += 1
                if wanted_tasks and task_name not in wanted_tasks:
                    counts[task_name]["not_selected"] += 1
                    continue
                if args.limit and eligible_total >= args.limit:
                    counts[task_name]["over_limit"] += 1
                    continue
                try:
                    task = get_task(task_name)
                    sample = Sample.from_json(record, [], source=f"{shard}:{key}")
                    task.question_text(sample), task.answer_text(sample)
                except (KeyError, SampleError, ValueError, IndexError) as e:
                    counts[task_name]["invalid"] += 1
                    log(f"skipping {shard}:{key}: {e}")
                    continue
                report = reference_report(sample, task)
                if report is None:
                    if args.without_report == "skip":
                        counts[task_name]["no_report"] += 1
                        continue
                    report = "(not available)"
                eligible_total += 1
                items[key] = Item(sample.id, task_name, sample, task, report)
            # pass 2: ask the endpoint for the ones the cache does not settle
            todo = [it for it in items.values() if cache.final(it.id) is None]
            if bar is not None:
                bar.total = (bar.total or 0) + len(items)
                bar.update(len(items) - len(todo))
            queried += len(todo)
            with cf.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                running: set[cf.Future] = set()
                for it in todo:
                    if len(running) >= 2 * args.concurrency:
                        done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                        for f in done:
                            cache.put(f.result())
                            if bar is not None:
                                bar.update(1)
                    running.add(pool.submit(_generate, client, it, args.tries))
                for f in cf.as_completed(running):
                    cache.put(f.result())
                    if bar is not None:
                        bar.update(1)
            # pass 3: copy accepted samples with their traces
            _copy_accepted(shard, items, cache, writer, args)
            for it in items.values():
                entry = cache.entries.get(it.id, {})
                counts[it.task_name][entry.get("status", "failed")] += 1
                if entry.get("status") == "rejected":
                    counts[it.task_name][f"rejected:{entry.get('reason')}"] += 1
                if entry.get("status") == "failed":
                    counts[it.task_name][f"failed:{entry.get('reason')}"] += 1
    finally:
        if bar is not None:
            bar.close()
        cache.close()
    report = _report(counts)
    manifest = writer.close()
    manifest.update({"input": args.input, "model": args.model, "endpoint": args.endpoint,
                     "prompt_version": PROMPT_VERSION, "acceptance": report,
                     "requests": dict(client.stats), "queried_samples": queried,
                     "seconds": round(time.perf_counter() - t0, 3)})
    in_manifest = Path(shards[0]).parent / "manifest.json"
    if in_manifest.exists():
        try:
            manifest["input_manifest"] = json.loads(in_manifest.read_text())
        except ValueError:
            pass
    _write_json(out / "manifest.json", manifest)
    _write_json(out / "reason_report.json", {"acceptance": report, "requests": dict(client.stats)})
    log(format_report(report, manifest, out))
    return manifest


def _record(members: list[tuple[str, bytes]], key: str) -> dict[str, Any] | None:
    for name, data in members:
        if name == f"{key}.json":
            try:
                rec = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return None
            return rec if isinstance(rec, dict) else None
    return None


def _copy_accepted(shard: str, items: dict[str, Item], cache: TraceCache, writer: ShardWriter,
                   args: argparse.Namespace) -> None:
    """Stream the shard again and write the accepted samples (with their trace) and the shared images they use."""
    block: dict[str, bytes] = {}
    block_open = False  # the last event was a shared image: the next shared image extends the block
    pending: list[tuple[str, str, list[tuple[str, bytes]]]] = []
    used: dict[str, bytes] = {}

    def flush() -> None:
        if pending:
            writer.write_raw_group(list(used.items()), list(pending))
        pending.clear()
        used.clear()

    for kind, payload in iter_events(shard):
        if kind == "shared":
            if not block_open:
                flush()
                block = {}
                block_open = True
            block[payload[0]] = payload[1]
            continue
        block_open = False
        key, members = payload
        item = items.get(key)
        entry = cache.final(item.id) if item is not None else None
        if entry is None or entry.get("status") != "accepted":
            continue
        record = _record(members, key)
        assert record is not None
        record["reasoning"] = entry["trace"]
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        meta["reasoning_source"] = {"model": args.model, "prompt_version": PROMPT_VERSION, "tries": entry.get("tries")}
        record["meta"] = meta
        new_members = [(f"{key}.json", json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))]
        new_members += [(n, d) for n, d in members if n != f"{key}.json"]
        refs = [n for n in record.get("images", []) if isinstance(n, str) and n.startswith(SHARED_IMAGE_PREFIX)]
        if refs:
            for n in refs:
                if n in block:
                    used[n] = block[n]
            pending.append((key, str(record.get("task")), new_members))
        else:
            writer.write_raw_group([], [(key, str(record.get("task")), new_members)])
    flush()


def _report(counts: dict[str, Counter[str]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for task in sorted(counts):
        c = counts[task]
        asked = c["accepted"] + c["rejected"] + c["failed"]
        row: dict[str, Any] = {k: v for k, v in sorted(c.items())}
        row["acceptance_rate"] = round(c["accepted"] / asked, 4) if asked else None
        out[task] = row
    return out


def format_report(report: dict[str, dict[str, Any]], manifest: dict[str, Any], out: Path) -> str:
    lines = [f"{'task':<24} {'samples':>8} {'asked':>7} {'accepted':>9} {'rejected':>9} {'failed':>7} "
             f"{'no report':>9} {'rate':>6}"]
    for task, r in report.items():
        asked = r.get("accepted", 0) + r.get("rejected", 0) + r.get("failed", 0)
        rate = f"{r['acceptance_rate']:.1%}" if r["acceptance_rate"] is not None else "-"
        lines.append(f"{task:<24} {r.get('samples', 0):>8} {asked:>7} {r.get('accepted', 0):>9} "
                     f"{r.get('rejected', 0):>9} {r.get('failed', 0):>7} {r.get('no_report', 0):>9} {rate:>6}")
    lines.append(f"wrote {manifest['total']} samples with reasoning to {out}/{manifest['pattern']} "
                 f"({manifest['queried_samples']} samples queried, {manifest['requests'].get('requests', 0)} "
                 f"requests); failed samples are retried on the next run")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the cache", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
