"""The HTTP side of ``python -m chexone.serve``: an OpenAI-compatible API over one :class:`InferenceModel`.

Requests are handled on threads; generation is not. A single batcher thread takes queued requests, waits up to
``batch_wait_ms`` for more, and answers up to ``max_batch_size`` of those with the same generation settings in one
batched ``generate`` call (so concurrent clients share the GPU/CPU instead of queuing one by one). Streaming requests
get their text as it is made (server-sent events), batched like the others. Bodies are never logged (they hold
patient images); each request logs one line: method, path, status, seconds.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chexone.inference.engine import Completion, InferenceError, InferenceModel
from chexone.inference.openai_api import (
    APIError,
    ChatRequest,
    ServerLimits,
    chunk_body,
    completion_body,
    models_body,
    new_completion_id,
    parse_chat_request,
)
from chexone.tasks.answers import extract_boxed

log = logging.getLogger("chexone.serve")

#: Default largest request body: 32 MiB (a few base64 DICOMs).
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024


@dataclass
class _Job:
    request: ChatRequest
    future: Future = field(default_factory=Future)
    #: streaming: text deltas (str), then None when done
    deltas: "queue.Queue[str | None] | None" = None
    cancelled: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """Collects jobs and runs them in batches on one thread (see the module docstring)."""

    def __init__(self, model: InferenceModel, *, max_batch_size: int = 8, batch_wait_ms: float = 10.0):
        self.model = model
        self.max_batch_size = max(1, int(max_batch_size))
        self.batch_wait = max(0.0, batch_wait_ms) / 1000.0
        self.jobs: "queue.Queue[_Job | None]" = queue.Queue()
        self.batches_run = 0
        self.largest_batch = 0
        self._held: list[_Job] = []
        self._thread = threading.Thread(target=self._loop, name="chexone-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest) -> _Job:
        job = _Job(request, deltas=queue.Queue() if request.stream else None)
        self.jobs.put(job)
        return job

    def close(self) -> None:
        self.jobs.put(None)
        self._thread.join(timeout=10)

    @staticmethod
    def _key(job: _Job) -> tuple:
        r = job.request
        return (r.settings.max_new_tokens, r.settings.do_sample, r.settings.temperature, r.settings.top_p, r.seed)

    def _next_batch(self) -> list[_Job] | None:
        first = self._held.pop(0) if self._held else self.jobs.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_wait
        key = self._key(first)
        # held jobs with the same settings first, then whatever arrives within the wait
        for job in list(self._held):
            if len(batch) < self.max_batch_size and self._key(job) == key:
                batch.append(job)
                self._held.remove(job)
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=max(0.0, remaining)) if remaining > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)
                break
            if self._key(job) == key:
                batch.append(job)
            else:
                self._held.append(job)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [j for j in batch if not j.cancelled.is_set()]
            if not batch:
                continue
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                self._run(batch)
            except Exception as err:  # noqa: BLE001 - reported to every waiting client, the server keeps serving
                log.exception("generation failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                    if job.deltas is not None:
                        job.deltas.put(None)

    def _run(self, batch: list[_Job]) -> None:
        conversations = [j.request.conversation for j in batch]
        encoded = []
        for j in batch:  # a prompt that does not fit fails alone, not the batch
            try:
                encoded.append(self.model.encode(j.request.conversation))
            except InferenceError as err:
                j.future.set_exception(err)
                if j.deltas is not None:
                    j.deltas.put(None)
                encoded.append(None)
        live = [(j, c, e) for j, c, e in zip(batch, conversations, encoded) if e is not None]
        if not live:
            return
        streaming = any(j.deltas is not None for j, _, _ in live)

        def on_text(row: int, delta: str) -> bool:
            job = live[row][0]
            if job.deltas is not None and not job.cancelled.is_set():
                job.deltas.put(delta)
            return all(j.cancelled.is_set() for j, _, _ in live)

        results = self.model.generate([c for _, c, _ in live], live[0][0].request.settings,
                                      seed=live[0][0].request.seed, on_text=on_text if streaming else None,
                                      encoded=[e for _, _, e in live])
        for (job, _, _), completion in zip(live, results):
            job.future.set_result(completion)
            if job.deltas is not None:
                job.deltas.put(None)


def _reasoning_extra(text: str) -> dict[str, Any]:
    """chexone's additions to a choice (ignored by OpenAI clients): the final answer in ``\\boxed{}``, if any."""
    return {"chexone": {"final_answer": extract_boxed(text)}}


class ChexoneHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], model: InferenceModel, *, limits: ServerLimits,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, api_key: str | None = None,
                 max_batch_size: int = 8, batch_wait_ms: float = 10.0, request_timeout: float = 600.0):
        super().__init__(address, _Handler)
        self.model = model
        self.limits = limits
        self.max_request_bytes = int(max_request_bytes)
        self.api_key = api_key
        self.request_timeout = request_timeout
        self.created = int(time.time())
        self.batcher = Batcher(model, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms)

    def server_close(self) -> None:
        self.batcher.close()
        super().server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ChexoneHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "chexone-serve"

    # ---------------------------------------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # one line per request is logged by _done instead (never bodies)

    def _done(self, status: int, started: float) -> None:
        log.info("%s %s %d %.3fs", self.command, self.path.split("?")[0], status, time.perf_counter() - started)

    def _send_json(self, status: int, body: dict[str, Any], started: float) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self._done(status, started)

    def _error(self, err: APIError, started: float) -> None:
        self._send_json(err.status, err.body(), started)

    def _authorised(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        import hmac

        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {key}".encode())

    def _route(self, started: float) -> str | None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/health", "/v1/health"):
            return "health"
        if not self._authorised():
            self._error(APIError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                 kind="authentication_error", code="invalid_api_key"), started)
            return None
        if path == "/v1/models":
            return "models"
        if path.startswith("/v1/models/"):
            return "model"
        if path == "/v1/chat/completions":
            return "chat"
        self._error(APIError(404, f"no route {path or '/'}; the API is /v1/models and /v1/chat/completions",
                             kind="not_found_error"), started)
        return None

    # ----------------------------------------------------------------------------------------------- methods
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        started = time.perf_counter()
        route = self._route(started)
        if route is None:
            return
        if route == "health":
            self._send_json(200, {"status": "ok", "model": self.server.model.name}, started)
        elif route == "models":
            self._send_json(200, models_body(self.server.model.name, self.server.created), started)
        elif route == "model":
            name = self.path.split("?")[0].rstrip("/").split("/v1/models/", 1)[1]
            if name != self.server.model.name:
                self._error(APIError(404, f"the model {name!r} does not exist; this server serves "
                                          f"{self.server.model.name!r}", code="model_not_found"), started)
            else:
                self._send_json(200, models_body(name, self.server.created)["data"][0], started)
        else:
            self._error(APIError(405, "use POST for /v1/chat/completions"), started)

    def do_POST(self) -> None:  # noqa: N802
        started = time.perf_counter()
        route = self._route(started)
        if route is None:
            return
        if route != "chat":
            self._error(APIError(405, f"use GET for {self.path}"), started)
            return
        try:
            body = self._read_body()
            request = parse_chat_request(body, model_name=self.server.model.name, limits=self.server.limits)
        except APIError as err:
            self._error(err, started)
            return
        job = self.server.batcher.submit(request)
        if request.stream:
            self._stream(job, started)
            return
        try:
            completion: Completion = job.future.result(timeout=self.server.request_timeout)
        except InferenceError as err:
            self._error(APIError(400, str(err), param="messages"), started)
            return
        except TimeoutError:
            job.cancelled.set()
            self._error(APIError(503, "generation timed out", kind="server_error"), started)
            return
        except Exception as err:  # noqa: BLE001
            self._error(APIError(500, f"generation failed: {type(err).__name__}: {err}", kind="server_error"),
                        started)
            return
        self._send_json(200, completion_body(new_completion_id(), request.model, completion.text,
                                             completion.finish_reason, completion.prompt_tokens,
                                             completion.completion_tokens, _reasoning_extra(completion.text)),
                        started)

    def _read_body(self) -> Any:
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            self._drain()
            raise APIError(415, f"Content-Type must be application/json, got {ctype or 'none'!r}")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise APIError(411, "Content-Length is required")
        try:
            n = int(length)
        except ValueError as err:
            self.close_connection = True
            raise APIError(400, "invalid Content-Length") from err
        if n > self.server.max_request_bytes:
            self.close_connection = True  # the body is not parsed: the connection is not reused
            self._discard(n)
            raise APIError(413, f"request body of {n} bytes exceeds the limit of {self.server.max_request_bytes} "
                                "bytes (--max-request-mb)", code="request_too_large")
        raw = self.rfile.read(n)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, f"the body is not valid JSON: {err}") from err

    def _discard(self, n: int, cap: int = 64 << 20, timeout: float = 10.0) -> None:
        """Read and drop up to ``cap`` bytes of a refused body before answering. Closing a socket with unread data
        resets the connection, and a client still sending its body then gets a broken pipe instead of the 413; a
        body larger than ``cap`` (or one that stalls past ``timeout``) is left unread and the connection closed."""
        if n > cap:
            return
        try:
            self.connection.settimeout(timeout)
            while n > 0:
                chunk = self.rfile.read(min(n, 1 << 16))
                if not chunk:
                    break
                n -= len(chunk)
        except OSError:
            pass

    def _drain(self) -> None:
        """Read a small unwanted body so the connection stays usable; a large one closes the connection."""
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = -1
        if 0 <= n <= 1 << 20:
            self.rfile.read(n)
        else:
            self.close_connection = True

    def _stream(self, job: _Job, started: float) -> None:
        request = job.request
        cid = new_completion_id()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def send(obj: dict[str, Any] | str) -> None:
            payload = obj if isinstance(obj, str) else json.dumps(obj)
            self.wfile.write(f"data: {payload}\n\n".encode("utf-8"))
            self.wfile.flush()

        try:
            send(chunk_body(cid, request.model, {"role": "assistant", "content": ""}, None))
            assert job.deltas is not None
            while True:
                delta = job.deltas.get(timeout=self.server.request_timeout)
                if delta is None:
                    break
                send(chunk_body(cid, request.model, {"content": delta}, None))
            try:
                completion = job.future.result(timeout=5)
            except InferenceError as err:
                send(APIError(400, str(err), param="messages").body())
                self._done(400, started)
                return
            except Exception as err:  # noqa: BLE001
                send(APIError(500, f"generation failed: {type(err).__name__}: {err}", kind="server_error").body())
                self._done(500, started)
                return
            usage = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                     "total_tokens": completion.prompt_tokens + completion.completion_tokens}
            final = chunk_body(cid, request.model, {}, completion.finish_reason)
            final["choices"][0].update(_reasoning_extra(completion.text))
            send(final)
            if request.include_usage:
                body = chunk_body(cid, request.model, {}, None, usage=usage)
                body["choices"] = []
                send(body)
            send("[DONE]")
            self._done(200, started)
        except (BrokenPipeError, ConnectionResetError, queue.Empty):
            job.cancelled.set()  # the client went away: stop spending compute on it
            self._done(499, started)


def serve_forever(server: ChexoneHTTPServer) -> None:
    host, port = server.server_address[:2]
    print(f"chexone.serve: serving {server.model.name!r} on http://{host}:{port}/v1 "
          f"(POST /v1/chat/completions, GET /v1/models; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("chexone.serve: stopping", file=sys.stderr, flush=True)
    finally:
        server.server_close()
