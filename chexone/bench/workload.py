"""The workload both frameworks run in ``python -m chexone.bench compare``: one definition, read by both workers.

Everything that shapes the work lives in :class:`Workload` (prompts, G, forced completion length, image tokens, batch,
dtype, freezing, sampling); the prompts and targets both frameworks see are rendered by chexone's own task
definitions from the same demo samples, so the token streams are identical (each worker reports a fingerprint of the
prompt tokens it actually fed the model, and ``compare`` refuses results whose fingerprints differ).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

#: Pixels per image token of Qwen2.5-VL: 14-pixel patches, merged 2x2 into one token.
PIXELS_PER_TOKEN_SIDE = 28
#: The processor never shrinks an image below this area (56x56: 4 image tokens).
MIN_PIXELS = 3136

#: Pure sampling in both frameworks (temperature 1, no top-p/top-k, no repetition penalty): the same distribution,
#: and no logits-processor cost that one framework implements better than the other.
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


@dataclass
class Workload:
    """One benchmark point, identical for chexone and TRL."""

    bench: str = "grpo"                    # grpo | sft
    model: str = "tiny"                    # tiny | qwen2_5_vl_3b (random weights either way)
    device: str = "cpu"                    # cpu | cuda
    dtype: str = "fp32"                    # fp32 | bf16 (bf16 = mixed precision over fp32 weights, as chexone trains)
    attn: str = "sdpa"                     # sdpa | eager | flash_attention_2
    threads: int = 0                       # torch intra-op threads in each worker (0 = all cores)
    steps: int = 3                         # timed optimizer steps per run
    warmup: int = 1                        # steps run first and left out of the timing
    seed: int = 0
    image_tokens: int = 64                 # image tokens per image (a square number: the image is its square)
    gradient_checkpointing: bool = False
    freeze_vision: bool = True             # the vision tower (not the merger) frozen, in both frameworks
    lr: float = 1e-6
    # GRPO
    prompts: int = 2                       # P prompts per generation batch
    generations: int = 8                   # G completions per prompt
    completion_tokens: int = 512           # every completion is exactly this long (EOS suppressed)
    micro_batch_prompts: int = 0           # prompts per forward/backward pass (0 = all P at once)
    # SFT
    sft_batch: int = 4                     # samples per optimizer step (one micro-batch, right-padded)

    def __post_init__(self) -> None:
        if self.bench not in ("grpo", "sft"):
            raise ValueError(f"bench={self.bench!r}; choose grpo | sft")
        side = math.isqrt(self.image_tokens)
        if side * side != self.image_tokens or side < 2:
            raise ValueError(f"--image-tokens {self.image_tokens}: must be a square number >= 4 (4, 16, 64, 256, ...): "
                             "each image is a square of that many 28x28-pixel tokens")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"--dtype {self.dtype!r}; choose fp32 | bf16")
        if self.micro_batch_prompts and self.prompts % self.micro_batch_prompts:
            raise ValueError(f"--micro-batch-prompts {self.micro_batch_prompts} must divide --prompts {self.prompts}")
        if self.steps < 1 or self.warmup < 0:
            raise ValueError("--steps must be >= 1 and --warmup >= 0")

    # ------------------------------------------------------------------ derived sizes
    @property
    def image_side(self) -> int:
        """Side in pixels of the square demo images: exactly ``image_tokens`` tokens after 28x28 merging."""
        return math.isqrt(self.image_tokens) * PIXELS_PER_TOKEN_SIDE

    @property
    def max_pixels(self) -> int:
        return self.image_side**2

    @property
    def micro_prompts(self) -> int:
        return self.micro_batch_prompts or self.prompts

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Workload":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def describe(self) -> str:
        common = f"{self.model}, {self.dtype}, {self.attn}, {self.image_tokens} image tokens/image"
        if self.bench == "grpo":
            return (f"GRPO: {self.prompts} prompts x G={self.generations}, {self.completion_tokens} forced completion "
                    f"tokens, micro-batch {self.micro_prompts} prompt(s), dapo, beta 0, on-policy; {common}")
        return f"SFT: batch {self.sft_batch}, right-padded; {common}"


# ---------------------------------------------------------------------------------------------- the recipe


def chexone_config(w: Workload, model_dir: str, output_dir: str, *, packing: bool | None = None) -> Any:
    """The chexone recipe for this workload (stage2_grpo or stage1_sft, every setting that shapes the work explicit).

    The TRL worker reads the same config for the prompt style, so both frameworks render identical prompts.
    """
    from chexone.config.load import load_config

    precision = "32" if w.dtype == "fp32" else "bf16-mixed"
    common = [
        f"model.path={model_dir}", "data=demo", "logger=none", f"output_dir={output_dir}",
        f"model.attn_implementation={w.attn}", "model.dtype=float32", f"trainer.precision={precision}",
        f"trainer.accelerator={'gpu' if w.device == 'cuda' else 'cpu'}", "trainer.devices=1",
        f"model.min_pixels={MIN_PIXELS}", f"model.max_pixels={w.max_pixels}",
        f"model.gradient_checkpointing={str(w.gradient_checkpointing).lower()}",
        f"model.freeze.vision={str(w.freeze_vision).lower()}", "model.freeze.merger=false", "model.freeze.llm=false",
        f"trainer.max_steps={w.total_steps}", f"trainer.seed={w.seed}", "trainer.progress_bar=false",
        "data.num_workers=0", "data.max_length=32768", f"optim.lr={w.lr}", "optim.weight_decay=0.0",
        "optim.scheduler=constant", "optim.warmup_ratio=0.0", "optim.max_grad_norm=1.0",
    ]
    if w.bench == "grpo":
        s = SAMPLING
        overrides = common + [
            "grpo.init_from=''", f"grpo.num_generations={w.generations}", f"grpo.prompts_per_step={w.prompts}",
            f"grpo.micro_batch_prompts={w.micro_prompts}", "grpo.num_iterations=1",
            f"grpo.max_completion_length={w.completion_tokens}", "grpo.loss_type=dapo", "grpo.beta=0.0",
            "grpo.scale_rewards=group", "grpo.mask_truncated_completions=false", "grpo.dynamic_sampling=false",
            "grpo.rewards=[{name: format, weight: 1.0}]", "grpo.log_completions_every_n_steps=0",
            "grpo.engine=shared_prefill", "data.tasks=[]", f"grpo.temperature={s['temperature']}",
            f"grpo.top_p={s['top_p']}", f"grpo.top_k={s['top_k']}",
            f"grpo.repetition_penalty={s['repetition_penalty']}",
        ]
        return load_config("stage2_grpo", overrides)
    overrides = common + [f"data.micro_batch_size={w.sft_batch}", f"trainer.global_batch_size={w.sft_batch}",
                          "trainer.val_every_n_steps=0", "data.reasoning=auto"]
    if packing is not None:
        overrides.append(f"data.packing={str(packing).lower()}")
    return load_config("stage1_sft", overrides)


def sft_packing_available() -> bool:
    """Whether this chexone has padding-free SFT packing (the ``data.packing`` recipe key)."""
    from dataclasses import fields as dc_fields

    from chexone.config.schema import DataConfig

    return any(f.name == "packing" for f in dc_fields(DataConfig))


# ---------------------------------------------------------------------------------------------- the samples


def grpo_samples(w: Workload) -> list:
    """The P prompts: demo close-ended VQA questions, one image each, at the workload's image size."""
    from chexone.data.demo.generate import demo_samples

    picked = [s for s in demo_samples("train", 16 * w.prompts, seed=w.seed, image_size=w.image_side)
              if s.task == "close_vqa" and len(s.images) == 1][: w.prompts]
    if len(picked) < w.prompts:
        raise RuntimeError(f"the demo generator gave only {len(picked)} close-ended VQA samples for {w.prompts} "
                           "prompts")
    return picked


def sft_samples(w: Workload) -> list:
    """The SFT batch: the first one-image demo training samples (several tasks, targets of different lengths)."""
    from chexone.data.demo.generate import demo_samples

    picked = [s for s in demo_samples("train", 8 * w.sft_batch, seed=w.seed, image_size=w.image_side)
              if len(s.images) == 1][: w.sft_batch]
    if len(picked) < w.sft_batch:
        raise RuntimeError(f"the demo generator gave only {len(picked)} one-image samples for a batch of {w.sft_batch}")
    return picked


def conversation(cfg: Any, sample: Any, *, for_generation: bool) -> tuple[list[dict[str, Any]], str | None]:
    """(prompt messages, assistant target) of a sample exactly as chexone's collators render them; the target is
    None for generation prompts. Image entries are bare ``{"type": "image"}`` placeholders."""
    from chexone.data.collate import use_reasoning
    from chexone.tasks import get_task
    from chexone.tasks.base import PromptStyle

    task = get_task(sample.task)
    reasoning = use_reasoning(sample, cfg.data.reasoning)
    # what chexone.training.sft.prompt_style builds, without importing Lightning into the TRL worker (the prompt
    # fingerprint check would catch any difference)
    style = PromptStyle(system_prompt=cfg.data.system_prompt, reasoning_suffix=cfg.data.reasoning_suffix,
                        boxed=cfg.data.boxed)
    messages = task.messages(sample, reasoning=reasoning, style=style)
    return messages, None if for_generation else task.target(sample, reasoning=reasoning)


def prompt_fingerprint(prompts: list[list[int]]) -> str:
    """Order-independent hash of the prompt token sequences a framework fed its model (padding removed)."""
    h = hashlib.sha1()
    for ids in sorted(tuple(int(t) for t in p) for p in prompts):
        h.update(repr(ids).encode())
    return h.hexdigest()[:16]
