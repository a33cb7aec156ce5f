"""A loaded model that answers chat conversations with images: the one generation path of ``chexone.infer`` and
``chexone.serve``.

It wraps the training code's pieces rather than copying them: the same model loading (local directory, hub id or
``tiny``; safetensors only), the same ``PromptEncoder`` (so a prompt is tokenised exactly as in training and
evaluation), and the shared-prefill rollout engine with one completion per prompt (left-padded batches, vision special
tokens suppressed, stop on ``<|im_end|>``). Greedy answers equal the evaluation harness's (a test checks it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image
from torch import nn

from chexone.data.collate import prompt_tensors
from chexone.model.processor import ChexoneVLProcessor, EncodedPrompt, PromptEncoder
from chexone.training.generation import GenerationSettings
from chexone.training.rollout import SamplingSettings, SharedPrefillEngine

#: Default longest prompt (tokens, image tokens included); longer prompts are refused with a clear error.
DEFAULT_MAX_PROMPT_TOKENS = 8192


class InferenceError(ValueError):
    """A request the model cannot answer (prompt too long, wrong number of images, ...); the message says why."""


@dataclass
class Conversation:
    """Chat messages in the Qwen2.5-VL content-list form (``{"type": "image"}`` placeholders in order) + the images."""

    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    #: "stop" (the model ended its turn) or "length" (max_new_tokens reached).
    finish_reason: str


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given (checked)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InferenceError(f"device={device!r} but no CUDA GPU is visible; use device=cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise InferenceError(f"device={device!r}; choose auto, cpu, cuda or cuda:N")
    return device


class InferenceModel:
    """A model + processor ready to answer; thread-safe (one generation at a time, batched by the caller)."""

    def __init__(self, model: nn.Module, processor: ChexoneVLProcessor, *, name: str, path: str,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, summary: str = ""):
        self.model = model.eval()
        self.processor = processor
        self.encoder = PromptEncoder(processor)
        self.name = name
        self.path = path
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.summary = summary or f"model: {path}"
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, path: str, *, device: str = "auto", dtype: str = "auto", attn_implementation: str = "auto",
             min_pixels: int = 3136, max_pixels: int = 262144, trust_remote_code: bool = False,
             local_files_only: bool = False, name: str | None = None,
             max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> "InferenceModel":
        """Load a Qwen2.5-VL checkpoint (a local HF directory such as ``runs/stage1_sft/hf``, a hub id, or ``tiny``)
        with the same code as training (errors say what to do when the weights are missing)."""
        from chexone.config.schema import ModelConfig
        from chexone.model import load_pretrained
        from chexone.runtime import configure_threads

        configure_threads()
        device = resolve_device(device)
        cfg = ModelConfig(path=str(path), attn_implementation=attn_implementation, dtype=dtype,
                          trust_remote_code=trust_remote_code, local_files_only=local_files_only,
                          min_pixels=min_pixels, max_pixels=max_pixels)
        cfg.tiny_cache_dir = _expand_cache(cfg.tiny_cache_dir)
        loaded = load_pretrained(cfg, device_type="cuda" if device.startswith("cuda") else "cpu", freeze=False)
        model = loaded.model.to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, loaded.processor, name=name or default_model_name(str(path)), path=str(path),
                   max_prompt_tokens=max_prompt_tokens, summary=loaded.summary())

    # ------------------------------------------------------------------------------------------------- encoding
    def encode(self, conversation: Conversation) -> EncodedPrompt:
        """Token ids + pixels of one conversation; refuses prompts that do not fit."""
        try:
            encoded = self.encoder.encode_prompt(conversation.messages, conversation.images)
        except ValueError as err:
            raise InferenceError(str(err)) from err
        if len(encoded.input_ids) > self.max_prompt_tokens:
            raise InferenceError(f"the prompt has {len(encoded.input_ids)} tokens (images included), more than the "
                                 f"limit of {self.max_prompt_tokens}; send fewer or smaller images or a shorter text")
        return encoded

    # ----------------------------------------------------------------------------------------------- generation
    def generate(self, conversations: list[Conversation], settings: GenerationSettings, *,
                 seed: int | None = None,
                 on_text: Callable[[int, str], bool | None] | None = None,
                 encoded: list[EncodedPrompt] | None = None) -> list[Completion]:
        """Answer conversations in one batch. ``on_text(row, new_text)`` (optional) receives each row's text as it
        grows (for streaming) and may return True to stop the whole batch early."""
        if not conversations:
            return []
        encoded = encoded if encoded is not None else [self.encode(c) for c in conversations]
        device = self.device
        batch = {k: v.to(device) for k, v in prompt_tensors(self.encoder, encoded).items()}
        batch["num_images"] = [len(c.images) for c in conversations]
        sampling = SamplingSettings(
            num_generations=1, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
            top_p=settings.top_p, top_k=settings.top_k, repetition_penalty=settings.repetition_penalty,
            do_sample=settings.do_sample, return_logps=False)
        generator = None
        if seed is not None and settings.do_sample:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        streamer = _TextStreamer(self.encoder, len(conversations), on_text) if on_text is not None else None
        engine = SharedPrefillEngine(generator, on_tokens=streamer)
        with self._lock, torch.inference_mode():
            out = engine.generate(self.model, self.encoder, batch, sampling)
        if streamer is not None:
            streamer.flush()
        counts = out.completion_mask.sum(dim=1).tolist()
        return [Completion(text=text, prompt_tokens=len(e.input_ids), completion_tokens=int(n),
                           finish_reason="length" if bool(t) else "stop")
                for text, e, n, t in zip(out.texts, encoded, counts, out.truncated.tolist())]


class _TextStreamer:
    """Turns the engine's per-step tokens into per-row text deltas (held back while a multi-byte character is
    incomplete, so a delta never carries a replacement character the final text lacks)."""

    def __init__(self, encoder: PromptEncoder, rows: int, on_text: Callable[[int, str], bool | None]):
        self.encoder = encoder
        self.on_text = on_text
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [0] * rows
        self.done = [False] * rows

    def _emit(self, row: int, final: bool = False) -> bool:
        text = self.encoder.tokenizer.decode(self.tokens[row], skip_special_tokens=False)
        if not final and text.endswith("\ufffd"):
            return False
        delta = text[self.sent[row]:]
        if not delta:
            return False
        self.sent[row] = len(text)
        return bool(self.on_text(row, delta))

    def __call__(self, next_tokens: torch.Tensor) -> bool:
        stop = False
        for row, tok in enumerate(next_tokens.tolist()):
            if self.done[row]:
                continue
            if tok == self.encoder.eos_token_id:
                self.done[row] = True
                stop |= self._emit(row, final=True)
                continue
            self.tokens[row].append(int(tok))
            stop |= self._emit(row)
        return stop

    def flush(self) -> None:
        for row in range(len(self.tokens)):
            if not self.done[row]:
                self._emit(row, final=True)


def default_model_name(path: str) -> str:
    """The name clients use for the model: the directory's last parts (``runs/stage1_sft/hf`` -> ``stage1_sft``)."""
    parts = [p for p in str(path).replace("\\", "/").rstrip("/").split("/") if p and p not in (".", "..")]
    if not parts:
        return "chexone"
    if parts[-1] in ("hf", "export", "model") and len(parts) > 1:
        return parts[-2]
    return parts[-1]


def _expand_cache(path: str) -> str:
    """The ``tiny`` model cache path with ``${oc.env:CHEXONE_CACHE,...}`` resolved (no OmegaConf outside recipes)."""
    import os

    from chexone.cache import cache_root

    if path.startswith("${oc.env:CHEXONE_CACHE"):
        return str(cache_root() / "tiny-model")
    return os.path.expanduser(path)
