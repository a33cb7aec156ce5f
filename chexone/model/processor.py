"""An image-only Qwen2.5-VL processor and the prompt encoder used by every stage.

The stock ``Qwen2_5_VLProcessor`` needs a video processor, which needs torchvision; torchvision has no CPU build on
some machines, and chest X-rays have no video. ``ChexoneVLProcessor`` keeps the tokenizer + PIL image processor only and
saves/loads with the standard ``save_pretrained``/``from_pretrained`` files, so an exported model directory also works
with the stock processor where torchvision exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_END = "<|im_end|>"
#: Tokens that must never be generated: sampling one breaks the next forward ("image features and tokens do not match").
VISION_SPECIAL_TOKENS = (IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END, "<|vision_pad|>")


class ChexoneVLProcessor(ProcessorMixin):
    """Tokenizer + Qwen2-VL PIL image processor; no video processor (and so no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = IMAGE_PAD
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "ChexoneVLProcessor":
        """Load tokenizer + image processor from a hub id or directory (any Qwen2.5-VL or chexone export)."""
        min_pixels = kwargs.pop("min_pixels", None)
        max_pixels = kwargs.pop("max_pixels", None)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        ip_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, **kwargs, **ip_kwargs)
        template = getattr(tokenizer, "chat_template", None)
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)


@dataclass
class EncodedPrompt:
    """A tokenised prompt with its images. ``pixel_values`` is None for text-only prompts."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None


class PromptEncoder:
    """Turns chat messages + PIL images into token ids with expanded image placeholders, and targets into ids.

    Expanding placeholders here (instead of in the processor call) keeps the prompt/target boundary exact, which the
    SFT label mask and the GRPO completion mask rely on.
    """

    def __init__(self, processor: ChexoneVLProcessor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = processor.image_token_id
        self.eos_token_id = self.tokenizer.convert_tokens_to_ids(IM_END)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def render(self, messages: list[dict[str, Any]]) -> str:
        """Chat-template text of the prompt, ending with the assistant header."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, messages: list[dict[str, Any]], images: list[Image.Image]) -> EncodedPrompt:
        text = self.render(messages)
        pieces = text.split(IMAGE_PAD)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"prompt has {len(pieces) - 1} image placeholders but {len(images)} images were given")
        pixel_values = grid = None
        if images:
            out = self.processor.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
            pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
            merge = self.processor.merge_size**2
            counts = [int(g.prod()) // merge for g in grid]
            text = pieces[0] + "".join(IMAGE_PAD * n + rest for n, rest in zip(counts, pieces[1:]))
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return EncodedPrompt(list(ids), pixel_values, grid)

    def encode_target(self, target: str) -> list[int]:
        """Ids of the assistant turn, ending with ``<|im_end|>`` so the model learns to stop."""
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        return list(ids) + [self.eos_token_id]

    def suppressed_token_ids(self) -> list[int]:
        """Vision special tokens to forbid during generation (those present in the vocabulary)."""
        unk = self.tokenizer.unk_token_id
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
        return sorted({i for i in ids if i is not None and i != unk})
