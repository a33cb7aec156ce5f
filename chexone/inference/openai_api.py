"""The OpenAI chat-completions request/response shapes, translated to and from chexone's :class:`Conversation`.

Kept apart from the HTTP server so the translation (what is accepted, what is refused and why) is tested on its own.
Accepted: ``messages`` with ``system`` / ``user`` / ``assistant`` roles, content as a string or a list of ``text`` and
``image_url`` parts (``data:`` URLs, or file paths / ``file://`` URLs under a directory the server allows);
``temperature``, ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``seed``, ``stream``, ``n`` = 1. Refused
with a 400 that names the field: anything that would silently change the meaning (``n`` > 1, tools, logprobs,
remote image URLs).
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from chexone.inference.engine import Conversation
from chexone.tasks.base import DEFAULT_SYSTEM_PROMPT
from chexone.training.generation import GenerationSettings
from webdata.images import ImageError, load_image, load_image_bytes

#: Fields clients commonly send that do not change a greedy/sampled chexone answer; accepted and ignored.
IGNORED_FIELDS = {"user", "frequency_penalty", "presence_penalty", "stream_options", "metadata", "store",
                  "service_tier", "parallel_tool_calls", "response_format", "reasoning_effort"}
KNOWN_FIELDS = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stream",
                "n", "stop", "tools", "tool_choice", "logprobs", "top_logprobs", "logit_bias"} | IGNORED_FIELDS


class APIError(Exception):
    """An error returned to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ServerLimits:
    max_images: int = 8
    max_pixels: int = 262144
    max_new_tokens: int = 4096
    #: Directories whose files ``image_url`` may name; empty = only data URLs.
    file_roots: list[Path] = field(default_factory=list)
    default_max_tokens: int = 1024


@dataclass
class ChatRequest:
    conversation: Conversation
    settings: GenerationSettings
    seed: int | None
    stream: bool
    model: str
    include_usage: bool = False


def _image_from_url(url: str, where: str, limits: ServerLimits):
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head:
            raise APIError(400, f"{where}: a data URL must be base64-encoded (data:image/png;base64,...)",
                           param=where)
        mime = head[5:].split(";")[0].lower()
        if mime and not (mime.startswith("image/") or mime in ("application/dicom", "application/octet-stream")):
            raise APIError(400, f"{where}: content type {mime!r} is not an image (send image/png, image/jpeg or "
                                "application/dicom)", param=where, code="not_an_image")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise APIError(400, f"{where}: invalid base64 data ({err})", param=where) from err
        try:
            return load_image_bytes(data, source=where, max_pixels=limits.max_pixels).image
        except ImageError as err:
            raise APIError(400, f"{err} (not a readable PNG, JPEG or DICOM image)", param=where,
                           code="not_an_image") from err
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        raise APIError(400, f"{where}: the server does not fetch remote URLs; send the image as a data URL",
                       param=where)
    if parsed.scheme not in ("", "file"):
        raise APIError(400, f"{where}: unsupported URL scheme {parsed.scheme!r}", param=where)
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else url).expanduser()
    if not limits.file_roots:
        raise APIError(400, f"{where}: file paths are off on this server (start it with --allow-file-root DIR) — "
                            "send the image as a data URL", param=where)
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in limits.file_roots):
        raise APIError(403, f"{where}: {path} is outside the allowed file roots", param=where)
    if not resolved.is_file():
        raise APIError(400, f"{where}: {path}: file not found", param=where)
    try:
        return load_image(resolved, max_pixels=limits.max_pixels).image
    except ImageError as err:
        raise APIError(400, f"{where}: {err}", param=where, code="not_an_image") from err


def _number(body: dict[str, Any], key: str, default: Any, kind: type, lo: float, hi: float) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
        raise APIError(400, f"{key} must be a{'n integer' if kind is int else ' number'}, got {value!r}", param=key)
    if not lo <= value <= hi:
        raise APIError(400, f"{key} must be between {lo:g} and {hi:g}, got {value!r}", param=key)
    return kind(value)


def parse_chat_request(body: Any, *, model_name: str, limits: ServerLimits) -> ChatRequest:
    """Validate an OpenAI chat-completions body and turn it into a conversation + generation settings."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise APIError(400, f"unsupported field(s): {', '.join(unknown)}", param=unknown[0])
    model = body.get("model")
    if model is not None and model != model_name:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {model_name!r}", param="model",
                       code="model_not_found")
    for key in ("tools", "logit_bias"):
        if body.get(key):
            raise APIError(400, f"{key} is not supported by this server", param=key)
    if body.get("logprobs"):
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    if body.get("stop"):
        raise APIError(400, "stop sequences are not supported (the model stops at the end of its turn)", param="stop")
    if _number(body, "n", 1, int, 1, 1 << 30) != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    temperature = _number(body, "temperature", 0.0, float, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, float, 0.0, 1.0)
    if top_p <= 0:
        raise APIError(400, "top_p must be > 0", param="top_p")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, limits.default_max_tokens, int, 1, limits.max_new_tokens)
    seed = _number(body, "seed", None, int, -(1 << 63), (1 << 63) - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    out: list[dict[str, Any]] = []
    images = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise APIError(400, f"{where}: needs a role of system, user or assistant", param=where)
        content = msg.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                pwhere = f"{where}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                elif kind == "image_url":
                    if msg["role"] != "user":
                        raise APIError(400, f"{pwhere}: images are only allowed in user messages", param=pwhere)
                    spec = part.get("image_url")
                    url = spec.get("url") if isinstance(spec, dict) else spec
                    if not isinstance(url, str) or not url:
                        raise APIError(400, f"{pwhere}: image_url needs a url", param=pwhere)
                    images.append(_image_from_url(url, pwhere, limits))
                    if len(images) > limits.max_images:
                        raise APIError(400, f"more than {limits.max_images} images in one request", param=pwhere)
                    parts.append({"type": "image"})
                else:
                    raise APIError(400, f"{pwhere}: unsupported content part (use text or image_url)", param=pwhere)
        else:
            raise APIError(400, f"{where}: content must be a string or a list of parts", param=where)
        out.append({"role": msg["role"], "content": parts})
    if out[-1]["role"] != "user":
        raise APIError(400, "the last message must be the user's", param=f"messages[{len(out) - 1}]")
    if out[0]["role"] != "system":  # the system prompt every stage of training used
        out.insert(0, {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]})
    sample = temperature > 0
    settings = GenerationSettings(max_new_tokens=max_tokens, do_sample=sample,
                                  temperature=temperature if sample else 1.0, top_p=top_p if sample else 1.0)
    return ChatRequest(Conversation(out, images), settings, seed, stream, model_name,
                       include_usage=bool(isinstance(options, dict) and options.get("include_usage")))


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion_body(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": finish_reason, "logprobs": None}
    if extra:
        choice.update(extra)
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def chunk_body(cid: str, model: str, delta: dict[str, Any], finish_reason: str | None,
               usage: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": None}]}
    if usage is not None:
        body["usage"] = usage
    return body


def models_body(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "chexone"}]}
