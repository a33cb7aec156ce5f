"""Model drafts: the JSONL file of precomputed model outputs keyed by item id, and filling it from a running
OpenAI-compatible server (``python -m chexone.serve``, vLLM, ...), resumably: one line is appended per item as soon as
its reply arrives, and items already in the file are skipped.

One record per line: ``{"id", "answer", "reasoning", "raw", "model", "question", "boxed", "created"}``; only ``id``
and ``answer`` are required (docs/reader_study.md). ``answer`` is the final ``\\boxed{}`` content (the draft report,
or the answer of a reasoning item), ``reasoning`` the text before it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from chexone.tasks.answers import BOXED, extract_boxed
from chexone.tasks.base import PAPER_REASONING_SUFFIX

if TYPE_CHECKING:  # pragma: no cover
    from chexone.reader_study.study import Item, Study

DRAFT_KEYS = ("id", "answer", "reasoning", "raw", "model", "question", "boxed", "created")
_FINAL_LABEL = re.compile(r"(\*\*)?\s*final\s+(answer|report)\s*:?\s*(\*\*)?\s*:?\s*$", re.IGNORECASE)


class DraftError(RuntimeError):
    """A drafts file or model-server problem; the message is one line naming the file, line, item or server."""


@dataclass(frozen=True)
class Draft:
    id: str
    answer: str
    reasoning: str = ""
    raw: str = ""
    model: str = ""       # recorded for the export; never shown to readers
    question: str = ""
    boxed: bool = True
    created: str = ""


def read_drafts(path: str | Path) -> dict[str, Draft]:
    """id -> Draft; a later line for the same id replaces an earlier one."""
    path = Path(path)
    out: dict[str, Draft] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DraftError(f"{path}: drafts file not found") from None
    except UnicodeDecodeError as e:
        raise DraftError(f"{path}: not UTF-8 text ({e.reason})") from None
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines) and not text.endswith("\n"):  # a write cut short; `drafts` drops it and asks again
                print(f"{path}:{n}: ignoring an incomplete last line (an interrupted write)", file=sys.stderr)
                break
            raise DraftError(f"{path}:{n}: not a JSON object ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DraftError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        unknown = [k for k in rec if k not in DRAFT_KEYS]
        if unknown:
            from chexone.reader_study.study import did_you_mean

            raise DraftError(f"{path}:{n}: unknown key '{unknown[0]}'{did_you_mean(unknown[0], DRAFT_KEYS)} "
                             f"(allowed: {', '.join(DRAFT_KEYS)})")
        if not isinstance(rec.get("id"), str) or not rec["id"]:
            raise DraftError(f"{path}:{n}: missing 'id' (the study item id, a string)")
        if not isinstance(rec.get("answer"), str) or not rec["answer"].strip():
            raise DraftError(f"{path}:{n}: item '{rec['id']}': missing or empty 'answer' (the draft report text)")
        for key in ("reasoning", "raw", "model", "question", "created"):
            if not isinstance(rec.get(key, ""), str):
                raise DraftError(f"{path}:{n}: item '{rec['id']}': '{key}' must be a string")
        out[rec["id"]] = Draft(**{k: rec[k] for k in DRAFT_KEYS if k in rec})
    return out


def append_draft(path: Path, draft: Draft) -> None:
    """One line, flushed and synced, so an interrupted run keeps every finished item."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(draft), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _drop_partial_tail(path: Path, out: TextIO) -> None:
    """A run killed mid-write can leave half a line at the end: drop it so appending goes on cleanly."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    print(f"{path}: dropping an incomplete last line (an interrupted write) of {len(data) - cut} bytes", file=out)
    with open(path, "r+b") as f:
        f.truncate(cut)


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """(reasoning, answer, boxed) of a reasoning-form reply: the last ``\\boxed{}`` is the answer and the text
    before it the reasoning (a dangling "Final Answer:" label dropped); without a box, the whole text is the answer."""
    answer = extract_boxed(text)
    if answer is None or not answer.strip():
        return "", text.strip(), False
    cut = text.rfind(BOXED + answer + "}")
    reasoning = text[:cut].rstrip() if cut >= 0 else ""
    reasoning = _FINAL_LABEL.sub("", reasoning).rstrip()
    return reasoning, answer.strip(), True


# --------------------------------------------------------------------------------------------- the model server


def redact_url(url: str) -> str:
    """The URL without user:password@, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=host)
    return urllib.parse.urlunsplit(parts)


class ChatClient:
    """The two calls the drafts need from an OpenAI-compatible server: list models and one chat completion."""

    def __init__(self, server: str, *, timeout: float = 600.0, api_key: str | None = None):
        parts = urllib.parse.urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DraftError(f"--server {redact_url(server)!r}: expected an http(s) URL such as "
                             f"http://127.0.0.1:8000/v1")
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key

    def _request(self, path: str, body: dict | None = None) -> Any:
        url = f"{self.server}/{path}"
        shown = redact_url(url)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read(400).decode("utf-8", "replace").strip().replace("\n", " ")
            raise DraftError(f"{shown}: HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")) from None
        except urllib.error.URLError as e:
            raise DraftError(f"cannot reach the model server at {redact_url(self.server)} ({e.reason}); start one "
                             f"(e.g. python -m chexone.serve --model DIR --port 8000) or fix --server") from None
        except (TimeoutError, OSError) as e:
            raise DraftError(f"{shown}: no complete reply within {self.timeout:g} s ({e})") from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DraftError(f"{shown}: the reply is not JSON: {raw[:200]!r}") from None

    def first_model(self) -> str:
        """The first model the server lists (``GET /models``): the default for ``--model``."""
        reply = self._request("models")
        try:
            return str(reply["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise DraftError(f"{redact_url(self.server)}/models lists no model; pass --model NAME") from None

    def complete(self, model: str, pngs: list[bytes], question: str, max_tokens: int) -> tuple[str, str]:
        """(reply text, finish_reason)."""
        content: list[dict] = [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(p).decode()}}
            for p in pngs
        ]
        content.append({"type": "text", "text": question})
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": int(max_tokens),
                "temperature": 0}
        reply = self._request("chat/completions", body)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise DraftError(f"{redact_url(self.server)}/chat/completions: the reply has no "
                             f"choices[0].message.content: {json.dumps(reply)[:200]}") from None
        if isinstance(text, list):  # content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        if not isinstance(text, str):
            raise DraftError(f"{redact_url(self.server)}/chat/completions: message content is not text")
        return text, str(choice.get("finish_reason") or "")


def prompt_for(study: "Study", item: "Item") -> str:
    """The question plus the paper's reasoning instruction (so the reply ends in ``\\boxed{}``)."""
    question = study.question_for(item).strip()
    return question if "\\boxed" in question else f"{question} {PAPER_REASONING_SUFFIX}"


def fill_drafts(study: "Study", server: str, out: str | Path, *, model: str | None = None, max_tokens: int = 2048,
                timeout: float = 600.0, api_key: str | None = None, log: TextIO | None = None) -> dict[str, int]:
    """Ask the server for every item without a model text (inline or in a drafts file), appending to ``out``;
    returns counts (``done``, ``skipped``, ``unboxed``, ``truncated``). Items already in ``out`` are skipped (resume).
    An empty reply is not stored: the other items go on, then a DraftError names the items to retry."""
    from chexone.progress import progress
    from chexone.reader_study.images import ImageError, model_png

    log = log or sys.stderr
    out = Path(out)
    if not out.parent.is_dir():
        raise DraftError(f"{out}: directory {out.parent} does not exist")
    _drop_partial_tail(out, log)
    have = read_drafts(out) if out.is_file() else {}
    todo = [it for it in study.items if study.model_text(it) is None and it.id not in have]
    counts = {"done": 0, "skipped": len(study.items) - len(todo), "unboxed": 0, "truncated": 0}
    empty: list[str] = []
    if not todo:
        print(f"drafts: nothing to do, all {len(study.items)} items have a model text ({out})", file=log)
        return counts
    client = ChatClient(server, timeout=timeout, api_key=api_key)
    model = model or client.first_model()  # also the reachability check, before any image is read
    bar = progress(total=len(todo), desc="drafts", unit="item", file=log)
    try:
        for item in todo:
            try:
                pngs = [model_png(study, rel) for rel in item.images]
            except ImageError as e:
                raise DraftError(f"item '{item.id}': {e}") from None
            question = prompt_for(study, item)
            text, finish = client.complete(model, pngs, question, max_tokens)
            bar.update(1)
            if not text.strip():
                empty.append(item.id)
                continue
            reasoning, answer, boxed = split_reasoning(text)
            counts["unboxed"] += not boxed
            counts["truncated"] += finish == "length"
            created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            append_draft(out, Draft(item.id, answer, reasoning, text, model, question, boxed, created))
            counts["done"] += 1
    finally:
        bar.close()
    if counts["unboxed"]:
        print(f"drafts: {counts['unboxed']} replies had no \\boxed{{}} answer: their whole text is the draft",
              file=log)
    if counts["truncated"]:
        print(f"drafts: {counts['truncated']} replies stopped at --max-tokens {max_tokens} (finish_reason 'length'); "
              f"check them, or raise --max-tokens and ask again after deleting their lines", file=log)
    if empty:
        raise DraftError(f"{len(empty)} items got an empty reply and were not stored "
                         f"({', '.join(repr(i) for i in empty[:5])}{' ...' if len(empty) > 5 else ''}); "
                         f"{counts['done']} others were; run the command again to retry them")
    return counts
