"""Build everything a recipe asks for and run it: output dir, model, data, logger, Lightning Trainer, export.

``python -m chexone.fit`` is a thin wrapper around ``run_fit``.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from chexone.training.progress_bars import make_progress_bar

log = logging.getLogger("chexone")

# Benign Lightning notices for our streaming data: the dataset splits its epoch per worker itself (so __len__ is exact),
# and a resumed run continues on a freshly resampled stream by design (docs/training.md).
warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# GRPO (manual optimisation) checkpoints hold the weights after the step's update, matching global_step: intended.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization.*")
warnings.filterwarnings("ignore", message=".*passed in a `val_dataloader` but have no `validation_step`.*")


# ------------------------------------------------------------------------------------------------ devices


def device_type_for(cfg: Any) -> str:
    acc = str(cfg.trainer.accelerator)
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def world_size_for(cfg: Any, device_type: str) -> int:
    devices = cfg.trainer.devices
    if devices in ("auto", None, -1, "-1"):
        n = torch.cuda.device_count() if device_type == "cuda" else 1
    else:
        n = int(devices)
    return max(1, n) * int(cfg.trainer.num_nodes)


def accumulation_steps(cfg: Any, world_size: int) -> int:
    """global_batch_size / (micro_batch_size * world_size), which must divide exactly."""
    per_step = cfg.data.micro_batch_size * world_size
    if cfg.trainer.global_batch_size % per_step:
        raise ValueError(
            f"trainer.global_batch_size={cfg.trainer.global_batch_size} is not a multiple of "
            f"data.micro_batch_size={cfg.data.micro_batch_size} x {world_size} device(s) = {per_step}; "
            "change one of them"
        )
    return cfg.trainer.global_batch_size // per_step


def resolve_precision(cfg: Any, device_type: str) -> str:
    p = str(cfg.trainer.precision)
    if p == "auto":
        return "bf16-mixed" if device_type == "cuda" else "32-true"
    return {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}.get(p, p)


def training_dtype(cfg: Any, precision: str) -> str:
    """Weights stay fp32 under mixed precision (fp32 master weights); bf16 weights only for ``bf16-true``."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "bfloat16" if precision == "bf16-true" else "float32"


def build_strategy(cfg: Any, device_type: str, world_size: int):
    name = str(cfg.trainer.strategy)
    if name == "auto":
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # Text-only batches leave the vision tower unused, so DDP must tolerate unused parameters.
        return DDPStrategy(find_unused_parameters=True,
                           process_group_backend="gloo" if device_type == "cpu" else "nccl")
    if name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        # Pure data-parallel sharding over all ranks ("auto" would mean one data-parallel group per node).
        return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1)
    raise ValueError(f"trainer.strategy={name!r}; choose auto | ddp | fsdp2")


# ------------------------------------------------------------------------------------------------ data


def launched_as_global_rank_zero() -> bool:
    """Whether this process will be global rank 0, known before Lightning sets up: from torchrun's ``RANK``, from
    SLURM's ``SLURM_PROCID`` (srun tasks), else from Lightning's own launcher (``NODE_RANK`` and ``LOCAL_RANK``). On
    several nodes ``LOCAL_RANK`` alone is 0 once per node, so it cannot decide who writes shared files."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            if name == "SLURM_PROCID" and os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
                continue  # an interactive SLURM shell: Lightning launches the processes itself
            return int(os.environ[name]) == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def resolve_data(cfg: Any) -> None:
    """Fill ``data.train``/``data.val`` for ``data=demo`` from the demo cache (generating it on first use)."""
    if cfg.data.name != "demo" or cfg.data.train:
        return
    from chexone.data.demo import ensure_demo_shards

    verbose = launched_as_global_rank_zero()
    shards = ensure_demo_shards(os.path.expanduser(cfg.data.demo_dir), verbose=verbose)
    train = shards[cfg.data.demo_train_split]  # "rl": the stage-2 demo's prompt pool
    OmegaConf.update(cfg, "data.train", [{"path": train, "weight": 1.0}])
    if not cfg.data.val:
        OmegaConf.update(cfg, "data.val", [{"path": shards["val"], "weight": 1.0}])
    log.info("data=demo: train %s | val %s", train, shards["val"])


#: Stream key of the training stream (chexone.data.stream_position); the GRPO refill stream has none.
TRAIN_STREAM = "train"


class ChexoneDataModule(L.LightningDataModule):
    """Streams shards per rank; training collates in workers, validation yields raw sample lists."""

    def __init__(self, cfg: Any, train_collate, batch_size: int, num_workers: int = 0):
        from chexone.data.stream_position import StampingCollate

        super().__init__()
        self.cfg = cfg
        self.num_workers = num_workers  # resolved (data.num_workers=-1 means auto, see chexone.runtime)
        # batches carry their position in the training stream (exact resume)
        self.train_collate = StampingCollate(train_collate, key=TRAIN_STREAM)
        self.batch_size = batch_size
        self.train_dataset = None
        self._refill_iter = None
        self._refill_taken = 0  # samples taken from the refill stream so far (replayed on resume)
        self._trained: dict[int, Any] = {}  # worker -> StreamPosition of the newest batch trained on
        self._resume: dict[str, Any] | None = None  # from a checkpoint, applied when its epoch starts

    def refill(self, n: int) -> list:
        """``n`` more training samples from a second stream (GRPO dynamic sampling), read in this process."""
        from chexone.data.shards import build_train_dataset

        if self._refill_iter is None:
            rank, world = self._rank_world()
            d = self.cfg.data
            ds = build_train_dataset(d.train, samples_per_epoch=None, seed=self.cfg.trainer.seed + 7919, rank=rank,
                                     world_size=world, shuffle_buffer=d.shuffle_buffer,
                                     max_skip_fraction=d.max_skip_fraction, task_filter=list(d.tasks) or None,
                                     known_tasks=_known_tasks())
            self._refill_iter = _forever(ds)
            replay = (self._resume or {}).get("refill_taken", [0] * (rank + 1))
            replay = replay[rank] if isinstance(replay, list) and rank < len(replay) else 0
            for _ in range(replay):  # a resumed run continues this rank's refill stream where it stopped
                next(self._refill_iter)
            self._refill_taken = replay
        self._refill_taken += n
        return [next(self._refill_iter) for _ in range(n)]

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """GRPO's batches are lists of samples (PIL images, text): nothing to move, so they are returned as they are
        (not deep-copied, and keeping their stream position); tensor batches move as usual."""
        if isinstance(batch, list):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # --- exact resume of the training stream (chexone.data.stream_position)
    def note_trained(self, batch: Any) -> None:
        """Remember the stream position of a batch the model trains on (called by the training step)."""
        from chexone.data.stream_position import position_of

        position = position_of(batch)
        if position is not None:
            self._trained[int(position.worker)] = position

    def state_dict(self) -> dict[str, Any]:
        """Every rank's stream positions and refill count (gathered: only rank 0 writes the checkpoint)."""
        import torch.distributed as dist

        mine = ([tuple(p) for p in self._trained.values()], self._refill_taken)
        ranks = [mine]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        return {"stream_positions": [r[0] for r in ranks], "refill_taken": [r[1] for r in ranks],
                "num_workers": self.num_workers, "world_size": len(ranks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state)

    def _apply_resume(self, epoch: int) -> None:
        from chexone.data.stream_position import StreamPosition

        state, self._resume = self._resume, ({"refill_taken": self._resume.get("refill_taken", [])}
                                             if self._resume else None)
        rank, world = self._rank_world()
        if not state or "stream_positions" not in state:
            return
        if state.get("world_size") != world or state.get("num_workers") != self.num_workers:
            log.warning("resuming with %d rank(s) x %d worker(s) where the checkpoint had %s x %s: the data stream "
                        "restarts at the beginning of epoch %d instead of where it stopped", world, self.num_workers,
                        state.get("world_size"), state.get("num_workers"), epoch)
            return
        positions = [StreamPosition(*p) for p in state["stream_positions"][rank]]
        positions = [p for p in positions if p.epoch == epoch]
        self.train_dataset.resume_from(positions)
        self._trained = {p.worker: p for p in positions}

    def skip_stats(self) -> dict[str, float]:
        """Corrupt/filtered sample counters of this rank's training stream (all workers)."""
        return self.train_dataset.skip_stats().as_dict(prefix="data/") if self.train_dataset is not None else {}

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch`` of the training stream (from its start, or where a checkpoint left it). Called when
        the loader is built and at every epoch start: Lightning skips the epoch-start hooks when it restarts in the
        middle of an epoch, so the loader must already know its epoch and position then."""
        if self.train_dataset is not None:
            self.train_dataset.set_epoch(epoch)
            self.train_dataset.resume_from([])
            self._trained = {}
            if self._resume is not None:
                self._apply_resume(epoch)

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self):
        from chexone.data.shards import build_train_dataset

        rank, world = self._rank_world()
        d = self.cfg.data
        balance = self.cfg.stage == "grpo" and self.cfg.grpo.balance_tasks  # prompts in turns by task family
        ds = self.train_dataset = build_train_dataset(
            d.train, samples_per_epoch=d.samples_per_epoch or None, seed=self.cfg.trainer.seed, rank=rank,
            world_size=world, shuffle_buffer=d.shuffle_buffer, max_skip_fraction=d.max_skip_fraction,
            task_filter=list(d.tasks) or None, batch_size=self.batch_size, known_tasks=_known_tasks(),
            balance_groups=_task_families(d.tasks) if balance else None,
        )
        ds.stream_key = TRAIN_STREAM
        if self.trainer is not None:
            self.set_epoch(self.trainer.current_epoch)
        from chexone.runtime import worker_options

        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, collate_fn=self.train_collate,
                                           **worker_options(self.num_workers, d.worker_start_method, rank=rank))

    def val_dataloader(self):
        from chexone.data.shards import build_eval_dataset

        if not self.cfg.data.val or self.cfg.stage == "grpo":
            return []
        rank, world = self._rank_world()
        ds = build_eval_dataset(self.cfg.data.val, rank=rank, world_size=world, limit=self.cfg.trainer.val_samples,
                                max_skip_fraction=self.cfg.data.max_skip_fraction,
                                task_filter=list(self.cfg.data.tasks) or None, known_tasks=_known_tasks())
        return torch.utils.data.DataLoader(ds, batch_size=self.cfg.data.micro_batch_size, collate_fn=list,
                                           num_workers=0)


def _known_tasks() -> list[str]:
    """Registered task names: a sample of any other task is skipped and counted, not a crash in the collator."""
    from chexone.registry import TASKS

    return TASKS.names()


def _task_families(tasks: Any) -> dict[str, str]:
    """Task name -> family, for the tasks in ``data.tasks`` (all registered tasks when it is empty)."""
    from chexone.registry import TASKS
    from chexone.tasks import get_task

    return {name: get_task(name).family for name in (list(tasks) or TASKS.names())}


def _forever(dataset):
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        yield from dataset
        epoch += 1


# ------------------------------------------------------------------------------------------------ logging


def build_logger(cfg: Any, out: Path):
    kind = str(cfg.logger)
    if kind == "none":
        return False
    if kind == "csv":
        from chexone.training.checkpointing import ResumableCSVLogger

        # Every step flushed (a killed run keeps all it logged); a resumed run keeps the rows before its checkpoint.
        return ResumableCSVLogger(save_dir=str(out), name="csv", version="", flush_logs_every_n_steps=1)
    if kind == "wandb":
        mode = str(cfg.wandb.mode)
        if mode == "disabled":
            return False
        from chexone.training.lightning_compat import wandb_logger

        offline = mode == "offline" or (mode == "auto" and not os.environ.get("WANDB_API_KEY"))
        if offline:
            os.environ.setdefault("WANDB_MODE", "offline")
        from chexone.training.checkpointing import wandb_run_id

        # One W&B run per output dir: a resumed run (trainer.ckpt_path set) continues the stored run id.
        rank_zero = launched_as_global_rank_zero()
        run_id = wandb_run_id(out, resume=cfg.trainer.ckpt_path is not None, write=rank_zero)
        return wandb_logger(project=cfg.wandb.project, entity=cfg.wandb.entity, save_dir=str(out), offline=offline,
                            name=Path(out).name, id=run_id, resume="allow")
    raise ValueError(f"logger={kind!r}; choose wandb | csv | none")


def with_csv_copy(logger: Any, out: Path) -> Any:
    """A fit's loggers: under W&B also a CSV copy in ``<out>/csv/metrics.csv`` (W&B stays first, so ``module.logger``
    is W&B). wandb has no public API that reads an offline run's files back, and the run report
    (``chexone.dashboard``) draws its curves from this CSV."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return logger
    from chexone.training.checkpointing import ResumableCSVLogger

    return [logger, ResumableCSVLogger(save_dir=str(out), name="csv", version="", flush_logs_every_n_steps=1)]


def log_sample_previews(cfg: Any, logger: Any, module: Any) -> None:
    """A few training samples (image, prompt, target) as a W&B table at the start of a run."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger) or cfg.wandb.log_samples <= 0:
        return
    import wandb

    from chexone.data.collate import use_reasoning
    from chexone.data.shards import build_eval_dataset

    table = wandb.Table(columns=["id", "task", "image", "prompt", "target"])
    for sample in build_eval_dataset(cfg.data.train, limit=cfg.wandb.log_samples, known_tasks=_known_tasks()):
        task = module.task_lookup(sample.task)
        reasoning = use_reasoning(sample, cfg.data.reasoning)
        prompt = module.encoder.render(task.messages(sample, reasoning=reasoning, style=module.style))
        image = wandb.Image(sample.images[0]) if sample.images else None
        table.add_data(sample.id, sample.task, image, prompt, task.target(sample, reasoning=reasoning))
    logger.experiment.log({"samples/preview": table})


# ------------------------------------------------------------------------------------------------ run


def find_last_checkpoint(out: Path) -> str | None:
    """The newest usable checkpoint in ``out/checkpoints`` (a broken ``last.ckpt`` falls back to a ``step-*.ckpt``)."""
    from chexone.training.checkpointing import newest_checkpoint

    return newest_checkpoint(Path(out) / "checkpoints")[0]


def run_fit(cfg: Any, *, callbacks: list[Any] | None = None, announce: bool = True) -> dict[str, Any]:
    """Train as the recipe says; ``callbacks`` are extra Lightning callbacks. Returns a summary (paths, metrics) and,
    with ``announce``, prints it with the next command to run."""
    from chexone.model import load_pretrained
    from chexone.tasks import get_task
    from chexone.training.preflight import preflight

    from chexone.runtime import configure_threads, resolve_num_workers, start_worker_server, worker_start_method
    from chexone.training.checkpointing import DurableCheckpointIO, remove_partial_files, resolve_ckpt_path
    from chexone.training.lightning_compat import quiet_lightning_tips, quiet_resume_warning
    from chexone.training.summary import format_summary

    t_start = time.perf_counter()
    preflight(cfg, "fit")  # every name, path and batch size checked before anything loads
    as_loaded = copy.deepcopy(cfg)  # the run fills in data paths and dtype below
    quiet_lightning_tips()
    quiet_resume_warning()  # the data stream resumes exactly (chexone.data.stream_position)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    device_type = device_type_for(cfg)
    world = world_size_for(cfg, device_type)
    local_processes = max(1, world // int(cfg.trainer.num_nodes))
    threads = configure_threads(local_processes)  # each process its share of the cores
    workers = resolve_num_workers(int(cfg.data.num_workers), local_processes)
    start_worker_server(worker_start_method(cfg.data.worker_start_method), workers)  # imports while the model loads
    rank_zero = launched_as_global_rank_zero()
    if rank_zero:
        for partial in remove_partial_files(ckpt_dir):
            print(f"removed {partial}: a checkpoint write cut short by an earlier run", flush=True)
    # a missing or broken checkpoint is reported (or replaced by the previous good one) before the model loads
    ckpt_path, notice = resolve_ckpt_path(cfg.trainer.ckpt_path, ckpt_dir)
    if notice and rank_zero:
        print(notice, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    grpo = cfg.stage == "grpo"
    accumulate = 1 if grpo else accumulation_steps(cfg, world)
    precision = resolve_precision(cfg, device_type)
    cfg.model.dtype = training_dtype(cfg, precision)
    if grpo and cfg.grpo.init_from == "demo_sft":
        from chexone.training.demo_init import ensure_demo_sft_model

        cfg.model.path = str(ensure_demo_sft_model(cfg))
    loaded = load_pretrained(cfg.model, device_type=device_type)  # first: a missing model fails in seconds
    resolve_data(cfg)
    if not cfg.data.train:
        raise ValueError("data.train is empty: set data.train=<shards> or use data=demo")
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)

    if grpo:
        module, data, batch_desc = _build_grpo(cfg, loaded, device_type, get_task, workers)
    else:
        from chexone.training.sft import SFTModule

        module = SFTModule(cfg, loaded, get_task)
        data = ChexoneDataModule(cfg, module.make_train_collator(), cfg.data.micro_batch_size, workers)
        batch_desc = (f"micro batch {cfg.data.micro_batch_size} x accumulation {accumulate} = global batch "
                      f"{cfg.trainer.global_batch_size}")
    if rank_zero:
        print(loaded.summary(), flush=True)
        print(f"stage: {cfg.stage} | devices: {world} x {device_type} | precision: {precision} | {batch_desc} | "
              f"cpu: {threads} torch thread(s), {workers} data worker(s) per process | output: {out}",
              flush=True)
        if grpo:
            print(module.rewards.describe(), flush=True)

    # last.ckpt always overwritten in place (never last-v1.ckpt next to a broken one); DurableCheckpointIO makes it a
    # hard link to the step checkpoint and writes every file atomically (chexone/training/checkpointing.py).
    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), filename="step-{step:06d}", auto_insert_metric_name=False,
                                 every_n_train_steps=cfg.trainer.checkpoint_every_n_steps, save_last=True,
                                 save_top_k=-1, enable_version_counter=False)
    callbacks = [checkpoint, *(callbacks or [])]
    bar = make_progress_bar() if cfg.trainer.progress_bar else None
    if bar is not None:
        callbacks.append(bar)
    logger = build_logger(cfg, out)
    validate = bool(cfg.data.val) and not grpo
    val_every = cfg.trainer.val_every_n_steps
    trainer = L.Trainer(
        accelerator="gpu" if device_type == "cuda" else "cpu",
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=build_strategy(cfg, device_type, world),
        precision=precision,
        max_steps=cfg.trainer.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=None if grpo else (cfg.optim.max_grad_norm or None),  # GRPO clips in its own step
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        val_check_interval=val_every * accumulate if (val_every and validate) else None,
        check_val_every_n_epoch=None,
        limit_val_batches=1.0 if (val_every and validate) else 0,
        num_sanity_val_steps=0,
        logger=with_csv_copy(logger, out),
        callbacks=callbacks,
        enable_progress_bar=bar is not None,
        enable_model_summary=False,
        default_root_dir=str(out),
        use_distributed_sampler=False,
        plugins=[DurableCheckpointIO()],
    )
    if logger:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "model_summary": loaded.summary()})
        if trainer.is_global_zero and not grpo:
            log_sample_previews(cfg, logger, module)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)

    summary: dict[str, Any] = {"output_dir": str(out), "global_step": trainer.global_step,
                               "last_checkpoint": str(ckpt_dir / "last.ckpt")}
    if validate and (not val_every or trainer.global_step % val_every):
        # Validate the final weights unless the in-loop validation just did.
        trainer.limit_val_batches = 1.0
        trainer.validate(module, datamodule=data, verbose=False)
    if getattr(module, "last_validation", None):
        summary["validation"] = module.last_validation
    if grpo and trainer.is_global_zero:
        from chexone.training.grpo_report import reward_trend

        summary["reward_trend"] = reward_trend(module.history)
        print(summary["reward_trend"]["message"], flush=True)
    if cfg.export_hf:
        summary["hf_dir"] = str(module.export_hf(out / "hf"))  # every rank: sharded weights are gathered
        if trainer.is_global_zero and announce:
            from chexone.training.demo_init import offer_as_demo_sft_model

            cached = offer_as_demo_sft_model(as_loaded, summary["hf_dir"])
            if cached is not None:
                summary["demo_sft_model"] = str(cached)
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        summary["metrics"] = metrics
        summary["skipped_steps"] = module.step_guard.skipped
        if cfg.write_report:  # the run's curves, completions and tables in one offline page; a failure only warns
            from chexone.dashboard.report import write_report_safely

            report = write_report_safely(out)
            summary["report"] = str(report) if report is not None else None
            if announce and report is not None:
                print(f"report: {summary['report']} (open it in a browser)", flush=True)
        if announce:
            print(format_summary(cfg, summary, seconds=time.perf_counter() - t_start, logger=logger,
                                 skipped_steps=module.step_guard.skipped), flush=True)
    return summary


def _build_grpo(cfg: Any, loaded: Any, device_type: str, get_task, workers: int = 0) -> tuple[Any, Any, str]:
    """The GRPO module, its reference model (only when beta > 0) and its data (raw prompt lists)."""
    from chexone.model import load_pretrained
    from chexone.training.grpo import GRPOModule

    ref = None
    if cfg.grpo.beta > 0:
        ref = load_pretrained(cfg.model, device_type=device_type, freeze=False).model
    data = ChexoneDataModule(cfg, list, cfg.grpo.prompts_per_step, workers)
    module = GRPOModule(cfg, loaded, get_task, ref_model=ref, refill=data.refill)
    g = cfg.grpo
    desc = (f"{g.prompts_per_step} prompts x {g.num_generations} completions per step, {g.num_iterations} "
            f"optimizer step(s) per generation batch, reference model: {'yes (beta=%g)' % g.beta if ref else 'none'}")
    return module, data, desc
