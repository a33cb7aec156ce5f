"""A small client for OpenAI-compatible chat endpoints (standard library only), and the judge's on-disk cache.

Errors are one line and never contain the API key. They subclass ``ValueError`` on purpose: chexone's evaluation
harness builds every metric before it generates any answer and turns a ``ValueError`` raised there into a one-line
``error: benchmark ..., metric 'llm_judge': ...`` (exit status 2), so an unreachable or misconfigured judge stops the
run in seconds instead of after hours of decoding.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import ipaddress
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any


class JudgeError(ValueError):
    """Base of the judge's errors (a one-line message; see the module docstring for why a ValueError)."""


class JudgeConfigError(JudgeError):
    """No or a malformed base URL or model, or a key the endpoint refuses."""


class JudgeUnavailableError(JudgeError):
    """The endpoint cannot be reached, times out or keeps failing (HTTP 429/5xx) after the retries."""


class JudgeResponseError(JudgeError):
    """The endpoint answers something unusable: an HTTP 4xx, a body that is not a chat completion, or a judgement
    that is not the JSON object the prompt asks for."""


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_base_url(base_url: str) -> str:
    """``http(s)://HOST[:PORT][/PATH]`` without a trailing slash or ``/chat/completions``; a URL without a path gets
    ``/v1`` (the OpenAI convention). Raises :class:`JudgeConfigError`."""
    url = str(base_url).strip().rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JudgeConfigError(f"llm_judge: base_url {base_url!r} is not an http(s)://HOST:PORT/v1 URL")
    if parsed.username or parsed.password:
        raise JudgeConfigError("llm_judge: base_url must not hold credentials; pass the key through the API key "
                               "environment variable")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    if not urllib.parse.urlparse(url).path:
        url += "/v1"
    return url


def _snippet(raw: bytes | str, n: int = 120) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    return repr(text[:n] + ("..." if len(text) > n else ""))


class ChatClient:
    """``POST {base_url}/chat/completions`` with retries; thread-safe.

    Each attempt waits at most ``timeout`` seconds for the connection and for each read. Timeouts, connection errors,
    HTTP 429 and 5xx and bodies that are not a chat completion are retried ``retries`` times, after
    ``min(max_backoff, backoff * 2**attempt)`` seconds times a jitter in [0.5, 1] (a larger ``Retry-After`` wins, up
    to ``max_backoff``); any other HTTP status fails at once. So one call makes at most ``retries + 1`` requests and
    lasts at most about ``(retries + 1) * timeout`` plus the backoff. Proxies from the environment are used, except
    for loopback hosts.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0, temperature: float = 0.0,
                 max_tokens: int = 1024, extra_body: dict[str, Any] | None = None, seed: int | None = None):
        self.base_url = normalise_base_url(base_url)
        if not isinstance(model, str) or not model.strip():
            raise JudgeConfigError("llm_judge: no judge model: set model= (eval.metric_kwargs.llm_judge.model) or "
                                   "CHEXONE_JUDGE_MODEL")
        for name, value in (("timeout", timeout), ("backoff", backoff), ("max_backoff", max_backoff)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or \
                    (name == "timeout" and value == 0):
                raise JudgeConfigError(f"llm_judge: {name} must be a positive number of seconds, got {value!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 20:
            raise JudgeConfigError(f"llm_judge: retries must be an integer in 0..20, got {retries!r}")
        self.model = model.strip()
        self.url = f"{self.base_url}/chat/completions"
        self._api_key = api_key or None
        self.timeout, self.retries = float(timeout), int(retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.body = {"model": self.model, "temperature": temperature, "max_tokens": max_tokens, **(extra_body or {})}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(urllib.parse.urlparse(self.url).hostname) else []
        self._opener = urllib.request.build_opener(*handlers)
        self.stats: Counter[str] = Counter()

    def __deepcopy__(self, memo: dict) -> ChatClient:
        # shared, thread-safe and stateless but for its counters: metric.clone() (torchmetrics) keeps the client
        return self

    def __repr__(self) -> str:  # never the key
        return f"ChatClient({self.base_url!r}, model={self.model!r}, api_key={'set' if self._api_key else 'none'})"

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        with self._lock:
            jitter = 0.5 + 0.5 * self._rng.random()
        delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * jitter
        if retry_after:
            try:
                wait = float(retry_after)
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(retry_after)
                    wait = max(0.0, when.timestamp() - time.time())
                except (TypeError, ValueError):
                    wait = 0.0
            delay = max(delay, min(wait, self.max_backoff))
        return delay

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The first choice's message content. Raises :class:`JudgeUnavailableError` (unreachable, timeouts, 429/5xx
        after the retries) or :class:`JudgeResponseError` (another HTTP error, or bodies that are no chat completion
        after the retries)."""
        data = json.dumps({**self.body, "messages": messages}).encode("utf-8")
        kind, last = "connection", "?"
        for attempt in range(self.retries + 1):
            retry_after = None
            self._count("requests")
            try:
                req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
                with self._opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                content = chat_content(raw)
                if content is not None:
                    return content
                kind, last = "malformed", f"a body that is not an OpenAI chat completion: {_snippet(raw)}"
            except urllib.error.HTTPError as e:
                body = e.read() if e.fp is not None else b""
                if e.code in (401, 403):
                    raise JudgeConfigError(f"llm_judge: {self.url} refused the request with HTTP {e.code} (check the "
                                           "API key: CHEXONE_JUDGE_API_KEY, or the api_key_env setting)") from None
                if e.code != 429 and e.code < 500:
                    raise JudgeResponseError(f"llm_judge: {self.url} answered HTTP {e.code}: {_snippet(body)} "
                                             f"(model {self.model!r})") from None
                kind, last = "http", f"HTTP {e.code}: {_snippet(body)}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", e)
                timed_out = isinstance(e, TimeoutError) or isinstance(reason, TimeoutError)
                kind = "timeout" if timed_out else "connection"
                last = (f"no answer within {self.timeout:g} s" if timed_out
                        else f"{type(reason).__name__}: {reason}")
            self._count(kind)
            if attempt < self.retries:
                self._count("retries")
                time.sleep(self._delay(attempt, retry_after))
        tries = f"{self.retries + 1} attempt{'s' if self.retries else ''}"
        if kind == "malformed":
            raise JudgeResponseError(f"llm_judge: {self.url} answered {tries} with {last}")
        raise JudgeUnavailableError(f"llm_judge: cannot get an answer from the judge at {self.url} after {tries} "
                                    f"(last: {last})")

    def check(self) -> list[str] | None:
        """Quick reachability check before any scoring: ``GET {base_url}/models`` (one attempt, at most 10 s).
        Returns the served model ids when the endpoint lists them, else None. Raises :class:`JudgeUnavailableError`
        when nothing answers and :class:`JudgeConfigError` when the key is refused; other HTTP statuses pass (not
        every server implements ``/models``)."""
        req = urllib.request.Request(f"{self.base_url}/models", headers=self._headers(), method="GET")
        try:
            with self._opener.open(req, timeout=min(self.timeout, 10.0)) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise JudgeConfigError(f"llm_judge: {self.base_url} refused the API key (HTTP {e.code}); set "
                                       "CHEXONE_JUDGE_API_KEY (or the variable named by api_key_env)") from None
            return None
        except (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            what = ("no answer within " f"{min(self.timeout, 10.0):g} s" if isinstance(reason, TimeoutError)
                    or isinstance(e, TimeoutError) else f"{type(reason).__name__}: {reason}")
            raise JudgeUnavailableError(f"llm_judge: cannot reach the judge endpoint {self.base_url} ({what}); start "
                                        "the server or set base_url / CHEXONE_JUDGE_BASE_URL") from None
        try:
            data = json.loads(raw.decode("utf-8"))["data"]
            return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            return None


def chat_content(raw: bytes) -> str | None:
    """The first choice's message content of a chat-completion body, or None."""
    try:
        obj = json.loads(raw.decode("utf-8"))
        content = obj["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) and content.strip() else None


class DiskCache:
    """Judge answers on disk, one small JSON file per key (``DIR/ab/abcdef....json``), written atomically (a temp file
    renamed into place), so concurrent processes (DDP ranks) can share a directory. An unreadable entry is a miss."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(os.path.expanduser(str(directory)))

    @staticmethod
    def key(model: str, messages: list[dict[str, str]], settings: dict[str, Any]) -> str:
        """The cache key of a request: the model and the prompt (plus the prompt version and sampling settings, which
        change what the judge answers)."""
        blob = json.dumps({"model": model, "messages": messages, "settings": settings}, sort_keys=True,
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            obj = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) and obj.get("key") == key else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({**entry, "key": key}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
