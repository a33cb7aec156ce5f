"""The offline ``tiny`` Qwen2.5-VL: real architecture, random weights, a small BPE tokenizer trained locally.

Nothing is downloaded. The model directory is written once into a cache (config, safetensors weights, tokenizer,
image processor) and then loaded through the same ``from_pretrained`` code path as a real checkpoint, so tests
exercise the real loading code. A ~1k-token vocabulary keeps a GRPO step ~10x cheaper than the real 151k one
(docs/method.md §8).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

#: Bump when the tiny model's definition changes, so caches are rebuilt.
TINY_VERSION = 2
TINY_VOCAB_SIZE = 1024

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: The Qwen2-VL chat template (images/videos rendered as vision placeholders).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A fixed radiology-flavoured corpus: the BPE merges only affect efficiency (byte-level BPE encodes any text).
_CORPUS_LINES = [
    "You are a helpful assistant.",
    "Please reason step by step and put your final answer within \\boxed{}.",
    "Please reason step by step, and put your final answer within \\boxed{{}}.",
    "**Thinking Process:** 1. The image is a frontal PA view of the chest. 2. The lungs are clear. **Final Answer:**",
    "Is there a pleural effusion? Is there a pneumothorax? Is the heart enlarged? Is there a nodule?",
    "Which side is the effusion on? (A) Left (B) Right (C) Both (D) Neither",
    "(A) Yes (B) No (A) PA (B) AP (C) Lateral (A) improved (B) stable (C) worsened",
    "What is the view of this chest radiograph? Which view is this? What abnormality is seen?",
    "Compare the prior image with the current image. Has the finding improved, remained stable or worsened?",
    "Write the findings section of the radiology report for this chest X-ray.",
    "Write the impression section of the radiology report. Indication: shortness of breath, cough, fever.",
    "FINDINGS: The cardiomediastinal silhouette is within normal limits. The lungs are clear.",
    "There is no focal consolidation, pleural effusion or pneumothorax. No acute osseous abnormality.",
    "IMPRESSION: No acute cardiopulmonary process. Mild cardiomegaly. Small left pleural effusion.",
    "A small right pleural effusion is present. Moderate left pneumothorax. A nodule in the right upper lobe.",
    "The heart is enlarged. The cardiac silhouette is enlarged. Interval increase in the size of the effusion.",
    "Interval decrease in the size of the nodule. The effusion is unchanged. Stable appearance of the lungs.",
    "Please locate the nodule in the image. Locate the pleural effusion. Where is the pneumothorax?",
    "<|ref|>nodule<|/ref|><|box|>(12,34),(56,78)<|/box|> No nodule detected. No pneumothorax detected.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 70 80 90 99",
    "left right upper lower middle lobe lung lungs heart cardiac mediastinum diaphragm costophrenic angle",
    "atelectasis consolidation edema emphysema fibrosis fracture hernia infiltration mass opacity pneumonia",
    "support devices catheter tube pacemaker lines clavicle rib ribs spine scapula trachea aorta hilum",
    "normal abnormal present absent increased decreased unchanged new resolved mild moderate severe small large",
    "frontal lateral portable upright supine projection radiograph radiography study image examination",
]


def _train_tokenizer():
    """Deterministic byte-level BPE with the Qwen2.5-VL special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS_LINES * 20, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_config(tokenizer):
    """A 2-layer Qwen2.5-VL config (values measured to work, docs/method.md §8)."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tokenizer)
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 1000000.0},
            tie_word_embeddings=True,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=128,
            intermediate_size=256,
            num_heads=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
            out_hidden_size=128,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )


def _fingerprint(seed: int, min_pixels: int, max_pixels: int) -> str:
    key = json.dumps({"v": TINY_VERSION, "seed": seed, "min": min_pixels, "max": max_pixels}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def build_tiny_model_dir(cache_dir: str | Path, *, seed: int = 0, min_pixels: int = 3136, max_pixels: int = 12544) -> Path:
    """Write (once) and return a Hugging Face model directory holding the tiny model, tokenizer and image processor.

    Written to a temporary sibling and renamed, so a crash or a concurrent rank never sees a half-written directory.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from chexone.model.processor import ChexoneVLProcessor
    from chexone.model.transformers_compat import save_local_model

    cache_dir = Path(os.path.expanduser(str(cache_dir)))
    target = cache_dir / f"tiny-v{TINY_VERSION}-{_fingerprint(seed, min_pixels, max_pixels)}"
    if (target / "config.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=cache_dir))
    try:
        tokenizer = _train_tokenizer()
        config = tiny_config(tokenizer)
        devnull_seed = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
        torch.random.set_rng_state(devnull_seed)
        save_local_model(model, tmp)
        image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
        processor = ChexoneVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: use its copy
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
