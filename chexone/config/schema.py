"""The typed recipe schema: one place for every key, its default and its one-line description.

Each field's ``doc`` metadata is what ``python -m chexone.fit --help`` prints. Recipes in ``recipes/`` override these
defaults; ``key=value`` on the command line overrides recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def doc(default: Any, text: str, **kw: Any) -> Any:
    """A dataclass field with a default and a one-line description.

    Extra keywords go into the field metadata and are enforced by ``chexone.config.load``:
    ``choices=(...)`` (allowed values, with did-you-mean), ``ge``/``gt``/``le``/``lt`` (numeric bounds) and
    ``example="key=value"`` (shown when a required ``???`` value is missing).
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": text, **kw})
    return field(default=default, metadata={"doc": text, **kw})


@dataclass
class FreezeConfig:
    vision: bool = doc(False, "Freeze the vision encoder (ViT blocks + patch embedding).")
    merger: bool = doc(False, "Freeze the vision-language merger (projector).")
    llm: bool = doc(False, "Freeze the language model (decoder layers, embeddings, LM head).")


@dataclass
class ModelConfig:
    path: str = doc("tiny", "Hub id (e.g. Qwen/Qwen2.5-VL-3B-Instruct), local directory, or 'tiny' (random, offline).")
    attn_implementation: str = doc(
        "auto",
        "auto | flash_attention_2 | sdpa | eager. auto = flash_attention_2 on CUDA when installed, else sdpa.",
        choices=("auto", "flash_attention_2", "sdpa", "eager"),
    )
    dtype: str = doc(
        "auto",
        "Weight dtype: auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    trust_remote_code: bool = doc(False, "Allow custom modelling code from the model directory (off unless you set it).")
    local_files_only: bool = doc(False, "Never contact the hub (also implied by HF_HUB_OFFLINE=1).")
    min_pixels: int = doc(3136, "Smallest image area in pixels after resizing (56*56).", ge=1)
    max_pixels: int = doc(262144, "Largest image area in pixels after resizing (512*512 in the paper).", ge=1)
    gradient_checkpointing: bool = doc(False, "Recompute activations in the backward pass to save memory.")
    freeze: FreezeConfig = field(default_factory=FreezeConfig, metadata={"doc": "Which parts stay frozen."})
    tiny_cache_dir: str = doc(
        "${oc.env:CHEXONE_CACHE,'~/.cache/chexone'}/tiny-model",
        "Where the offline 'tiny' model (config + locally trained tokenizer) is cached.",
    )
    seed: int = doc(0, "Seed for the random weights of the 'tiny' model.")


@dataclass
class ShardSetConfig:
    path: str = doc("???", "Shard pattern (brace-expanded, e.g. shards/train-{000000..000031}.tar) or directory.")
    weight: float = doc(1.0, "Relative sampling weight when several shard sets are mixed.", ge=0)


@dataclass
class DataConfig:
    name: str = doc("custom", "Name of this data selection (demo | custom | ...), for logs.")
    train: list[ShardSetConfig] = field(
        default_factory=list,
        metadata={
            "doc": "Training shard sets: a list of {path, weight}, or one path string.",
            "example": "data.train=/data/shards/train-{000000..000255}.tar (or data=demo)",
        },
    )
    val: list[ShardSetConfig] = field(default_factory=list, metadata={"doc": "Held-out shard sets for validation."})
    demo_dir: str = doc(
        "${oc.env:CHEXONE_CACHE,'~/.cache/chexone'}/demo-shards",
        "Where data=demo writes its generated shards on first use.",
    )
    demo_train_split: str = doc(
        "train", "With data=demo, the demo split trained on: train | rl (a pool of 24 prompts, 8 per rewarded task "
                 "family, that the stage-2 demo trains on: docs/grpo.md, the CPU demo).", choices=("train", "rl"))
    samples_per_epoch: int = doc(0, "Samples per epoch over all ranks (0 = total from sizes.json).", ge=0)
    micro_batch_size: int = doc(4, "Samples per device per forward pass.", ge=1)
    num_workers: int = doc(-1, "DataLoader worker processes per device; -1 = auto: one per core this process's share of "
                                "the CPU leaves free, at most 8 (0 = load in the training process).", ge=-1)
    worker_start_method: str = doc(
        "auto", "How DataLoader workers start. forkserver forks them from a small single-threaded server process; "
                "fork copies the training process, which can deadlock a worker when that process runs threads "
                "(progress bars, torch.distributed); spawn starts fresh interpreters. auto = forkserver, except fork "
                "when the program is a script without an `if __name__ == \"__main__\":` guard (forkserver and spawn "
                "re-import the main script in every worker).",
        choices=("auto", "forkserver", "spawn", "fork"))
    shuffle_buffer: int = doc(256, "Sample shuffle buffer size.", ge=0)
    max_length: int = doc(
        4096, "Maximum tokens per sample (prompt + image tokens + target); longer samples are skipped.", ge=1
    )
    packing: bool = doc(
        True, "SFT: pack each micro-batch's samples back to back into fewer rows (padding-free; attention stays within "
              "each sample, the loss is unchanged). Off with trainer.strategy=fsdp2.")
    pack_length: int = doc(
        0, "SFT packing: tokens per packed row (0 = auto: the whole micro-batch in one row with FlashAttention-2, "
           "the longest sample's length with sdpa/eager, whose attention cost grows with the row's square).", ge=0)
    reasoning: str = doc(
        "auto",
        "auto (reasoning mode when the sample has a trace) | always | never.",
        choices=("auto", "always", "never"),
    )
    system_prompt: str = doc("You are a helpful assistant.", "System prompt of every conversation ('' for none).")
    reasoning_suffix: str = doc(
        "Please reason step by step and put your final answer within \\boxed{}.",
        "Appended to the question in reasoning mode (the paper's wording by default).",
    )
    boxed: str = doc(
        "last", "Which \\boxed{} is the final answer when there are several: first | last.", choices=("first", "last")
    )
    max_skip_fraction: float = doc(
        0.05, "Fail the run when more than this fraction of read samples is corrupt.", ge=0, le=1
    )
    tasks: list[str] = field(default_factory=list, metadata={"doc": "Keep only these task names ([] = all)."})


@dataclass
class LRScaleConfig:
    vision: float = doc(1.0, "Learning-rate multiplier for the vision encoder.", ge=0)
    merger: float = doc(1.0, "Learning-rate multiplier for the vision-language merger.", ge=0)
    llm: float = doc(1.0, "Learning-rate multiplier for the language model.", ge=0)


@dataclass
class OptimConfig:
    lr: float = doc(1e-6, "Peak learning rate (AdamW).", gt=0)
    weight_decay: float = doc(0.0, "AdamW weight decay.", ge=0)
    betas: list[float] = doc([0.9, 0.999], "AdamW betas.")
    eps: float = doc(1e-8, "AdamW epsilon.", gt=0)
    scheduler: str = doc(
        "cosine", "cosine | constant | linear (all with linear warmup).", choices=("cosine", "constant", "linear")
    )
    warmup_ratio: float = doc(0.05, "Fraction of max_steps spent in linear warmup.", ge=0, lt=1)
    min_lr_ratio: float = doc(0.0, "Final LR as a fraction of the peak (cosine/linear).", ge=0, le=1)
    max_grad_norm: float = doc(1.0, "Clip the global gradient norm to this (0 = no clipping).", ge=0)
    lr_scale: LRScaleConfig = field(default_factory=LRScaleConfig,
                                    metadata={"doc": "Per-part learning-rate multipliers (vision / merger / LLM)."})


@dataclass
class TrainerConfig:
    max_steps: int = doc(100, "Optimizer steps to train.", ge=1)
    global_batch_size: int = doc(
        256, "Samples per optimizer step over all devices; accumulation = global / (micro_batch * devices).", ge=1
    )
    accelerator: str = doc("auto", "auto | cpu | gpu.", choices=("auto", "cpu", "gpu"))
    devices: Any = doc("auto", "Number of devices (or 'auto').")
    num_nodes: int = doc(1, "Number of nodes.", ge=1)
    strategy: str = doc("auto", "auto | ddp | fsdp2 (sharded data parallel).", choices=("auto", "ddp", "fsdp2"))
    precision: str = doc(
        "auto",
        "auto (bf16-mixed on GPU, 32 on CPU) | 32 | bf16-mixed | bf16-true | 16-mixed.",
        choices=("auto", "32", "bf16-mixed", "bf16-true", "16-mixed"),
    )
    log_every_n_steps: int = doc(1, "Log metrics every N optimizer steps.", ge=1)
    checkpoint_every_n_steps: int = doc(
        500, "Save a resumable checkpoint every N optimizer steps (and at the end).", ge=0
    )
    max_consecutive_skipped_steps: int = doc(
        10, "Stop the run after this many optimizer steps in a row were skipped for a NaN/inf loss or gradient norm "
            "(each skipped step leaves the weights unchanged and is counted in train/skipped_steps).", ge=1)
    val_every_n_steps: int = doc(
        0, "Run validation every N optimizer steps (0 = only at the end, if val data is set).", ge=0
    )
    val_samples: int = doc(64, "Samples per validation run.", ge=0)
    val_max_new_tokens: int = doc(256, "Greedy-decoding length limit for validation accuracy.")
    val_metrics: list[str] = doc(
        ["accuracy", "exact_match", "iou", "map", "bleu2"],
        "Metrics computed in validation, where a task lists them (model-free ones by default; same code as "
        "python -m chexone.evaluate).")
    ckpt_path: str | None = doc(None, "Resume from this Lightning checkpoint ('last' = newest in output_dir).")
    seed: int = doc(1234, "Global seed (data order, dropout, sampling).")
    progress_bar: bool = doc(True, "Show a progress bar.")


@dataclass
class WandbConfig:
    project: str = doc("chexone", "W&B project.")
    entity: str | None = doc(None, "W&B entity (team or user).")
    mode: str = doc(
        "auto",
        "auto (offline when no API key) | online | offline | disabled.",
        choices=("auto", "online", "offline", "disabled"),
    )
    log_samples: int = doc(4, "Sample images with prompt/target to log at the start of a run.", ge=0)


@dataclass
class RewardConfig:
    name: str = doc("???", "Reward name in the chexone.rewards registry (built-in or plugin).")
    weight: float = doc(1.0, "Weight in the total reward (0 = logged only).")
    kwargs: dict[str, Any] = field(default_factory=dict, metadata={"doc": "Keyword arguments for the reward."})
    tasks: list[str] = field(
        default_factory=list,
        metadata={"doc": "Tasks this reward scores; [] = the tasks that declare it in Task.rewards, or every task "
                         "when none does (docs/plugins.md, the reward contract)."})


@dataclass
class GRPOConfig:
    num_generations: int = doc(8, "Completions sampled per prompt (G).", ge=2)
    prompts_per_step: int = doc(2, "Prompts per generation batch on each device.", ge=1)
    balance_tasks: bool = doc(
        False, "Feed the prompts in turns by task family (chexone.data.balance), so that a generation batch of at "
               "least as many prompts as families scores every reward at every step: less noisy per-reward curves "
               "with rare families. Families then come up equally often, whatever their share of the data.")
    micro_batch_prompts: int = doc(1, "Prompts (x G completions) per forward/backward pass.", ge=1)
    num_iterations: int = doc(1, "Optimizer steps per generation batch (mu); >1 computes old log-probs once.", ge=1)
    share_prompt: bool = doc(
        True, "Teacher-forced passes compute each prompt once per group, its G completions attending to that one copy "
              "(same log-probs and gradients as G copies). Needs model.attn_implementation sdpa or eager and no FSDP2; "
              "otherwise the prompt is repeated per completion.")
    temperature: float = doc(1.0, "Sampling temperature.", gt=0)
    top_p: float = doc(0.9, "Nucleus sampling.", gt=0, le=1)
    top_k: int = doc(50, "Top-k sampling (0 = off).", ge=0)
    repetition_penalty: float = doc(1.1, "Repetition penalty during sampling.", gt=0)
    max_completion_length: int = doc(2048, "Maximum new tokens per completion.", ge=1)
    epsilon_low: float = doc(0.2, "Lower clip range: ratio >= 1 - epsilon_low.", ge=0)
    epsilon_high: float = doc(0.2, "Upper clip range: ratio <= 1 + epsilon_high.", ge=0)
    beta: float = doc(0.001, "KL (k3) coefficient to the frozen reference model; 0 = no reference model is loaded.",
                      ge=0)
    loss_type: str = doc("grpo", "Loss aggregation: grpo | bnpo | dr_grpo | dapo.",
                         choices=("grpo", "bnpo", "dr_grpo", "dapo"))
    scale_rewards: str = doc("group", "Advantage scaling: group (std of the group) | batch | none.",
                             choices=("group", "batch", "none"))
    mask_truncated_completions: bool = doc(False, "Exclude completions that hit max_completion_length from the loss.")
    dynamic_sampling: bool = doc(False, "Drop prompt groups whose rewards all agree and refill the batch.")
    max_resample_rounds: int = doc(3, "Extra generation rounds allowed per step to refill the batch.", ge=0)
    rewards: list[RewardConfig] = field(
        default_factory=lambda: [RewardConfig(name=n) for n in ("format", "vqa", "grounding_iou", "report")],
        metadata={"doc": "Rewards summed into the total: a list of {name, weight, kwargs}."},
    )
    reward_errors: str = doc("fail", "When a reward raises: fail the run | zero (score 0 and count it).",
                             choices=("fail", "zero"))
    engine: str = doc("shared_prefill", "Rollout engine: shared_prefill (prefill each prompt once) | hf_generate.",
                      choices=("shared_prefill", "hf_generate"))
    log_completions_every_n_steps: int = doc(10, "Write sampled completions to completions.jsonl (and W&B) every N.",
                                             ge=0)
    init_from: str = doc("", "'' = model.path as given; 'demo_sft' = the cached stage-1 demo model (built once).",
                         choices=("", "demo_sft"))


@dataclass
class FilterConfig:
    out: str = doc("${output_dir}/filtered", "Output directory: scores/, shards/, report.md, report.json.")
    num_generations: int = doc(8, "Stochastic generations per sample (K).", ge=2)
    temperature: float = doc(1.0, "Sampling temperature.", gt=0)
    top_p: float = doc(1.0, "Nucleus sampling (1 = off).", gt=0, le=1)
    top_k: int = doc(0, "Top-k sampling (0 = off).", ge=0)
    max_completion_length: int = doc(1024, "Maximum new tokens per generation.", ge=1)
    keep_fraction: float = doc(0.2, "Fraction kept within each task, highest reward variance first.", gt=0, le=1)
    batch_prompts: int = doc(4, "Samples per generation batch (x K completions).", ge=1)


@dataclass
class BenchmarkConfig:
    path: str = doc("", "Shards (pattern or directory), a JSONL file, or demo:<split>; '' = not given (skipped). "
                        "Shorthand on the command line: data.<benchmark>=PATH.")
    tasks: list[str] = field(default_factory=list,
                             metadata={"doc": "Keep only samples of these tasks ([] = every task in the data)."})
    metrics: list[str] = field(default_factory=list,
                               metadata={"doc": "Metric names (chexone.metrics registry); [] = each task's defaults."})
    metric_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"doc": "Per-metric keyword arguments, e.g. {map: {iou_thresholds: [0.5, 0.75]}}; merged over "
                         "eval.metric_kwargs."})
    group_by: str = doc("", "Also report each value of this sample field or meta key (e.g. question_type, dataset).")
    limit: int = doc(0, "Evaluate only the first N samples (0 = all).", ge=0)
    title: str = doc("", "Name shown in the results table ('' = the benchmark key).")


@dataclass
class EvalConfig:
    out: str = doc("${output_dir}", "Results directory: one sub-directory per benchmark, plus results.md/json.")
    benchmarks: dict[str, BenchmarkConfig] = field(
        default_factory=dict,
        metadata={"doc": "Benchmarks to run: name -> {path, tasks, metrics, metric_kwargs, group_by, limit, title}."})
    metric_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"doc": "Keyword arguments per metric name for every benchmark (local weights: "
                         "{bertscore: {model_name_or_path: /models/distilroberta-base}})."})
    batch_size: int = doc(8, "Prompts per generation batch.", ge=1)
    max_new_tokens: int = doc(1024, "Greedy-decoding length limit.", ge=1)
    do_sample: bool = doc(False, "Sample instead of greedy decoding (the paper evaluates greedily).")
    temperature: float = doc(1.0, "Sampling temperature (with do_sample).", gt=0)
    top_p: float = doc(1.0, "Nucleus sampling (with do_sample).", gt=0, le=1)
    consistency_samples: int = doc(8, "Sampled answers per question for the self_consistency metric.", ge=2)
    consistency_temperature: float = doc(1.0, "Temperature of the self-consistency samples.", gt=0)
    bootstrap_resamples: int = doc(1000, "Bootstrap resamples for the 95% confidence intervals (0 = no CI).", ge=0)
    confidence: float = doc(0.95, "Confidence level of the intervals.", gt=0, lt=1)
    plots: bool = doc(True, "Write PNG plots (bar chart with CI whiskers; grounding overlays) and log them.")
    overlay_images: int = doc(8, "Grounding samples drawn with predicted and true boxes.", ge=0)
    resume: bool = doc(True, "Continue from the per-sample files of an interrupted run (same model and settings).")


@dataclass
class RecipeConfig:
    recipe: str = doc("stage1_sft", "Recipe name (file in recipes/).")
    stage: str = doc("sft", "Training stage: sft | grpo.", choices=("sft", "grpo"))
    output_dir: str = doc("runs/${recipe}", "Where config, checkpoints, logs and the exported model go.")
    logger: str = doc("wandb", "wandb | csv | none.", choices=("wandb", "csv", "none"))
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "Model loading."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "Data streaming and prompting."})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"doc": "Optimizer and schedule."})
    trainer: TrainerConfig = field(default_factory=TrainerConfig, metadata={"doc": "Loop, devices, checkpoints."})
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata={"doc": "Weights & Biases logging."})
    grpo: GRPOConfig = field(default_factory=GRPOConfig, metadata={"doc": "Stage-2 GRPO (used when stage=grpo)."})
    filter: FilterConfig = field(default_factory=FilterConfig,
                                 metadata={"doc": "Low-variance filtering (python -m chexone.filter)."})
    eval: EvalConfig = field(default_factory=EvalConfig,
                             metadata={"doc": "Benchmark evaluation (python -m chexone.evaluate)."})
    export_hf: bool = doc(True, "Write a Hugging Face model directory (model + processor) at the end.")
    write_report: bool = doc(True, "Write report.html (curves, completions, result tables; offline, images embedded) "
                                   "in the output directory at the end of fit and evaluate (docs/logging.md).")
