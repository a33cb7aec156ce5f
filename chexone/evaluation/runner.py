"""``python -m chexone.evaluate``: answer every benchmark of a recipe, score it, write results, tables and plots.

Per benchmark ``<eval.out>/<benchmark>/``: ``samples.jsonl`` (one line per sample: id, prompt, output, final and
parsed answer, reference, per-metric scores), ``results.json`` (metric, value, 95% CI, n per row), ``results.md``,
``plots/*.png`` and ``run.json`` (the model and settings the answers came from). ``<eval.out>/results.md`` and
``results.json`` gather every benchmark. Answers are appended to ``samples.jsonl`` batch by batch, so an interrupted
run resumes where it stopped (same model and settings; ``eval.resume=false`` starts over).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any


from chexone.data.sample import Sample
from chexone.evaluation.benchmarks import Benchmark, BenchmarkError, benchmarks_from_config, iter_samples
from chexone.evaluation.predict import Prediction, Predictor
from chexone.evaluation.report import benchmark_markdown, results_json, summary_markdown
from chexone.evaluation.scoring import score_predictions
from chexone.progress import progress
from chexone.training.generation import GenerationSettings

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"
RESULTS_FILE = "results.json"


def generation_settings(cfg: Any) -> tuple[GenerationSettings, GenerationSettings]:
    """(answer settings, self-consistency settings) from the ``eval`` section."""
    e = cfg.eval
    main = GenerationSettings(max_new_tokens=e.max_new_tokens, do_sample=e.do_sample, temperature=e.temperature,
                              top_p=e.top_p)
    consistency = GenerationSettings(max_new_tokens=e.max_new_tokens, do_sample=True,
                                     temperature=e.consistency_temperature, top_p=1.0,
                                     num_return_sequences=e.consistency_samples)
    return main, consistency


def run_fingerprint(cfg: Any, bench: Benchmark, model_path: str) -> dict[str, Any]:
    """What the answers in ``samples.jsonl`` depend on; a resumed run must match it."""
    main, consistency = generation_settings(cfg)
    return {
        "model": model_path, "benchmark": bench.name, "path": bench.path, "tasks": list(bench.tasks),
        "reasoning": cfg.data.reasoning, "system_prompt": cfg.data.system_prompt,
        "reasoning_suffix": cfg.data.reasoning_suffix, "boxed": cfg.data.boxed,
        "generation": asdict(main),
        "consistency": asdict(consistency) if "self_consistency" in bench.metrics else None,
        "max_pixels": cfg.model.max_pixels, "min_pixels": cfg.model.min_pixels,
    }


def load_done(path: Path) -> dict[str, Prediction]:
    """Predictions already written (a torn last line from a crash is dropped and the file rewritten without it)."""
    done: dict[str, Prediction] = {}
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    good = []
    for line in lines:
        try:
            p = Prediction.from_json(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        done[p.id] = p
        good.append(line)
    if len(good) != len(lines):
        write_lines(path, good)
    return done


def write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


class BenchmarkRun:
    """Answers one benchmark (resumably), then scores it and writes its files."""

    def __init__(self, bench: Benchmark, predictor: Predictor, cfg: Any, out: Path, model_path: str):
        self.bench = bench
        self.predictor = predictor
        self.cfg = cfg
        self.dir = out / bench.name
        self.model_path = model_path
        self.consistency = "self_consistency" in bench.metrics
        #: first grounding samples, kept for the overlay plot
        self.overlay: list[Sample] = []

    def _prepare(self) -> dict[str, Prediction]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fingerprint = run_fingerprint(self.cfg, self.bench, self.model_path)
        run_file = self.dir / RUN_FILE
        samples = self.dir / SAMPLES_FILE
        if self.cfg.eval.resume and samples.exists():
            previous = json.loads(run_file.read_text()) if run_file.exists() else None
            if previous != fingerprint:
                changed = sorted(k for k in fingerprint if (previous or {}).get(k) != fingerprint[k])
                raise BenchmarkError(
                    f"{samples} holds answers from another model or other settings (differs in: "
                    f"{', '.join(changed)}); set eval.resume=false to start over or choose another eval.out")
            done = load_done(samples)
            if done:
                print(f"evaluate[{self.bench.name}]: resuming, {len(done)} answers already in {samples}", flush=True)
            return done
        samples.unlink(missing_ok=True)
        run_file.write_text(json.dumps(fingerprint, indent=2))
        return {}

    def answer(self) -> list[Prediction]:
        done = self._prepare()
        batch_size = self.cfg.eval.batch_size
        order: list[str] = []
        pending: list[Sample] = []
        seen: dict[str, int] = {}
        n_overlay = self.cfg.eval.overlay_images if self.cfg.eval.plots else 0
        bar = progress(desc=f"evaluate[{self.bench.name}]", unit="samples")
        with (self.dir / SAMPLES_FILE).open("a", encoding="utf-8") as f:

            def flush() -> None:
                if not pending:
                    return
                answered = self.predictor.predict(pending, with_consistency=self.consistency)
                f.writelines(json.dumps(p.to_json()) + "\n" for p in answered)
                f.flush()
                done.update((p.id, p) for p in answered)
                bar.update(len(pending))
                pending.clear()

            for sample in iter_samples(self.bench, demo_dir=self.cfg.data.demo_dir,
                                       max_skip_fraction=self.cfg.data.max_skip_fraction,
                                       max_pixels=self.cfg.model.max_pixels):
                k = seen.get(sample.id, 0)
                seen[sample.id] = k + 1
                if k:  # repeated ids stay distinct for resuming and pairing
                    sample.id = f"{sample.id}#{k + 1}"
                order.append(sample.id)
                if len(self.overlay) < n_overlay and self.predictor.task_lookup(sample.task).family == "grounding":
                    self.overlay.append(sample)
                if sample.id in done:
                    bar.update(1)
                    continue
                pending.append(sample)
                if len(pending) >= batch_size:
                    flush()
            flush()
        bar.close()
        if not order:
            raise BenchmarkError(f"benchmark {self.bench.name!r}: no samples in {self.bench.path}"
                                 + (f" for tasks {list(self.bench.tasks)}" if self.bench.tasks else ""))
        return [done[k] for k in order]

    def run(self) -> dict[str, Any]:
        from chexone.tasks import get_task

        start = time.perf_counter()
        preds = self.answer()
        answer_s = time.perf_counter() - start
        e = self.cfg.eval
        scores = score_predictions(preds, get_task, metrics=self.bench.metrics,
                                   metric_kwargs=self.bench.metric_kwargs, group_by=self.bench.group_by,
                                   n_resamples=e.bootstrap_resamples, confidence=e.confidence,
                                   seed=self.cfg.trainer.seed)
        write_lines(self.dir / SAMPLES_FILE, [json.dumps(p.to_json()) for p in preds])
        result = results_json(self.bench, preds, scores, confidence=e.confidence, n_resamples=e.bootstrap_resamples,
                              model=self.model_path, seconds={"answer": answer_s,
                                                              "total": time.perf_counter() - start})
        if e.plots:
            from chexone.evaluation.plots import write_plots

            result["plots"] = write_plots(result, preds, self.overlay, self.dir / "plots")
        (self.dir / RESULTS_FILE).write_text(json.dumps(result, indent=2))
        (self.dir / "results.md").write_text(benchmark_markdown(result))
        return result


def check_metrics(benches: list[Benchmark], task_lookup: Any) -> None:
    """Build every metric a benchmark will use before any answer is generated, so that an unknown name, a missing
    optional package or missing local weights stop the run in seconds, not after hours of decoding."""
    from chexone.evaluation.scoring import build_metric, task_metrics
    from chexone.metrics._common import MissingExtraError, MissingWeightsError
    from chexone.registry import PluginLoadError, RegistryError

    for bench in benches:
        tasks = list(bench.tasks) or [None]
        if not bench.tasks and not bench.metrics:
            # the data's tasks are not known before reading it: check every registered task's declared metrics
            # against the metric protocol now (without building model-backed ones)
            for problem in declared_metric_problems(task_lookup):
                raise BenchmarkError(f"benchmark {bench.name!r}: {problem}")
        for task in tasks:
            names = list(bench.metrics) if task is None else task_metrics(task_lookup, task, bench.metrics)
            for name in names:
                try:
                    build_metric(name, task or "close_vqa", dict(bench.metric_kwargs.get(name, {}) or {}))
                except (MissingWeightsError, MissingExtraError) as e:
                    raise BenchmarkError(f"benchmark {bench.name!r}, metric {name!r}: {e} (keys of this metric go "
                                         f"under eval.metric_kwargs.{name}.KEY)") from e
                except (RegistryError, PluginLoadError, TypeError, ValueError) as e:
                    raise BenchmarkError(f"benchmark {bench.name!r}, metric {name!r}: {e}") from e


def declared_metric_problems(task_lookup: Any) -> list[str]:
    """Metrics declared by registered tasks (``Task.metrics``) that are unknown or break the metric protocol, checked
    on the registered class or function (nothing is instantiated)."""
    from chexone.evaluation.scoring import metric_problem
    from chexone.registry import METRICS, TASKS

    problems = []
    for task_name in TASKS.names():
        try:
            task = task_lookup(task_name)
        except Exception:  # noqa: BLE001 - a task that cannot load is reported when a benchmark selects it
            continue
        for name in getattr(task, "metrics", ()) or ():
            try:
                obj = METRICS.get(name)
            except Exception as err:  # noqa: BLE001
                problems.append(f"task {task_name!r} declares metric {name!r}: {err}")
                continue
            if isinstance(obj, type) or callable(getattr(obj, "update", None)):
                problem = metric_problem(obj)
                if problem:
                    problems.append(f"task {task_name!r} declares metric {name!r}, which {problem}")
    return problems


def run_evaluation(cfg: Any) -> dict[str, Any]:
    import lightning as L
    from omegaconf import OmegaConf

    from chexone.model import load_pretrained
    from chexone.model.processor import PromptEncoder
    from chexone.tasks import get_task
    from chexone.training.run import device_type_for
    from chexone.training.sft import prompt_style

    from chexone.runtime import configure_threads
    from chexone.training.preflight import preflight

    preflight(cfg, "evaluate")  # task names checked before the model loads (metrics: check_metrics below)
    configure_threads()
    benches, missing = benchmarks_from_config(cfg)
    check_metrics(benches, get_task)
    out = Path(os.path.expanduser(cfg.eval.out))
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.trainer.seed, verbose=False)
    device_type = device_type_for(cfg)
    OmegaConf.update(cfg, "model.gradient_checkpointing", False)  # it would switch off the KV cache in generation
    loaded = load_pretrained(cfg.model, device_type=device_type, freeze=False)
    model = loaded.model.to("cuda" if device_type == "cuda" else "cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    main, consistency = generation_settings(cfg)
    predictor = Predictor(model, PromptEncoder(loaded.processor), get_task, style=prompt_style(cfg.data),
                          reasoning=cfg.data.reasoning, settings=main, max_prompt_length=cfg.data.max_length,
                          consistency=consistency)
    mode = {"always": "reasoning", "never": "instruction", "auto": "reasoning when the sample has a trace"}
    print(f"{loaded.summary()}\nevaluate: {len(benches)} benchmark(s) ({', '.join(b.name for b in benches)}), "
          f"{'sampled' if cfg.eval.do_sample else 'greedy'} decoding, {mode[cfg.data.reasoning]} mode, "
          f"max {cfg.eval.max_new_tokens} new tokens -> {out}", flush=True)
    if missing:
        print(f"evaluate: skipping {', '.join(missing)} (no data: set "
              f"{', '.join('data.' + m + '=PATH' for m in missing)})", flush=True)
    results = {}
    for bench in benches:
        results[bench.name] = BenchmarkRun(bench, predictor, cfg, out, str(cfg.model.path)).run()
        print(benchmark_markdown(results[bench.name]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(summary_markdown(results))
    _log_results(cfg, out, results)
    print(f"evaluate: results in {out / 'results.md'}", flush=True)
    return results


def _log_results(cfg: Any, out: Path, results: dict[str, Any]) -> None:
    """Values (and plots, to W&B) through the recipe's logger."""
    from chexone.training.run import build_logger

    logger = build_logger(cfg, out)
    if not logger:
        return
    flat = {}
    for name, r in results.items():
        for row, metrics in r["rows"].items():
            for metric, est in metrics.items():
                if est["value"] is not None:
                    flat[f"eval/{name}/{row}/{metric}"] = est["value"]
    logger.log_metrics(flat, step=0)
    if hasattr(logger, "log_image"):
        for name, r in results.items():
            for kind, path in (r.get("plots") or {}).items():
                logger.log_image(key=f"eval/{name}/{kind}", images=[str(path)])
    logger.finalize("success")
    if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
        logger.experiment.finish()
