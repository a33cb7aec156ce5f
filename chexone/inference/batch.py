"""Batch inference over a JSON/JSONL list of questions: the ReXrank submission shape (input JSON + image root ->
output JSON), resumable.

Input: a JSON object ``{id: record}`` (ReXrank), a JSON list of records with ``id``, or JSONL of such records. A
record names its images with ``image_path`` (a string or a list, relative to ``--image-root``) or ``images``, and may
carry ``question``, ``task``, ``options``, ``phrase``, and ``context`` / ``indication`` (the clinical context, passed
to report tasks as the indication). Output: the input's shape and records, each with ``model_prediction`` (the final
answer), ``model_reasoning``, ``model_output`` (everything written), ``model_boxes`` (grounding) — or
``model_error`` when that record could not be answered (unreadable image, ...): counted and reported, never fatal.

Answers are appended to ``<output>.partial.jsonl`` batch by batch; a rerun with the same model and settings skips the
records already answered (a torn last line is dropped), and the output JSON is written atomically at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from chexone.inference.engine import InferenceError, InferenceModel
from chexone.inference.questions import Answer, Question, answer_questions
from chexone.progress import progress
from webdata.images import ImageError, load_image


class BatchError(ValueError):
    """An unusable batch input or a resume that does not match; the message names the file and the record."""


@dataclass
class BatchInput:
    records: list[tuple[str, dict[str, Any]]]
    #: "dict" (ReXrank: {id: record}), "list" or "jsonl": the output keeps the input's shape.
    shape: str


@dataclass
class BatchReport:
    answered: int = 0
    resumed: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    output: str = ""


def read_batch(path: str | Path) -> BatchInput:
    path = Path(path)
    if not path.is_file():
        raise BatchError(f"{path}: batch file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BatchError(f"{path}:{n}: not JSON: {e}") from e
        data: Any = records
        shape = "jsonl"
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BatchError(f"{path}: not JSON ({e}); a .jsonl file holds one JSON object per line") from e
        shape = "dict" if isinstance(data, dict) else "list"
    if shape == "dict":
        items = list(data.items())
    elif isinstance(data, list):
        items = []
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise BatchError(f"{path}: record {i} is {type(rec).__name__}, expected an object")
            items.append((str(rec.get("id", rec.get("unique_id", i))), rec))
    else:
        raise BatchError(f"{path}: expected a JSON object {{id: record}} or a list of records")
    seen: set[str] = set()
    for key, rec in items:
        if not isinstance(rec, dict):
            raise BatchError(f"{path}: record {key!r} is {type(rec).__name__}, expected an object")
        if key in seen:
            raise BatchError(f"{path}: duplicate id {key!r}")
        seen.add(key)
    return BatchInput([(str(k), r) for k, r in items], shape)


def record_images(rec: dict[str, Any]) -> list[str]:
    images = rec.get("image_path", rec.get("images", rec.get("image")))
    if isinstance(images, str):
        return [images]
    if isinstance(images, list) and images and all(isinstance(p, str) for p in images):
        return list(images)
    raise InferenceError("no images: give 'image_path' (a path or a list of paths) or 'images'")


def resolve_image(root: Path | None, p: str) -> Path:
    """``p`` under the image root; ReXrank paths start with '/' but are relative to the root."""
    path = Path(p)
    if root is not None and (not path.is_absolute() or not path.exists()):
        return root / p.lstrip("/")
    return path


def record_question(key: str, rec: dict[str, Any], *, root: Path | None, default_task: str | None,
                    max_pixels: int, window: str) -> Question:
    images = [load_image(resolve_image(root, p), max_pixels=max_pixels, window=window) for p in record_images(rec)]
    question = rec.get("question")
    task = rec.get("task") or rec.get("task_name") or default_task
    if not question and not task:
        raise InferenceError("neither 'question' nor 'task' in the record, and no --task given")
    options = rec.get("options") or []
    if not isinstance(options, list):
        raise InferenceError("'options' must be a list of option texts")
    indication = rec.get("indication") or rec.get("context")
    return Question(images=images, question=question, task=task, options=[str(o) for o in options],
                    phrase=rec.get("phrase"), indication=str(indication) if indication else None, id=key)


def result_fields(answer: Answer) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model_prediction": answer.final if answer.final is not None else answer.output.strip(),
        "model_reasoning": answer.reasoning,
        "model_output": answer.output,
        "model_well_formed": answer.well_formed,
    }
    if answer.family == "grounding":
        out["model_boxes"] = [{"name": b.name, "grid": b.grid, "pixels": b.pixels} for b in answer.boxes]
    return out


def _load_partial(path: Path, fingerprint: dict[str, Any], resume: bool) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    if not resume:
        path.unlink()
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    done: dict[str, dict[str, Any]] = {}
    header = None
    good = []
    for n, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line from an interrupted write
        if n == 0:
            header = obj.get("fingerprint")
            good.append(line)
            continue
        done[str(obj["id"])] = obj["result"]
        good.append(line)
    if header != fingerprint:
        changed = sorted(k for k in fingerprint if (header or {}).get(k) != fingerprint[k])
        raise BatchError(f"{path} holds answers from another model or other settings (differs in: "
                         f"{', '.join(changed) or 'header'}); rerun with --no-resume to start over")
    if len(good) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
        os.replace(tmp, path)
    return done


def run_batch(model: InferenceModel, batch_file: str | Path, output: str | Path, *, image_root: str | None,
              default_task: str | None, reasoning: bool, settings, style, batch_size: int = 4,
              max_pixels: int = 262144, window: str = "auto", resume: bool = True, seed: int | None = None,
              fingerprint_extra: dict[str, Any] | None = None,
              on_answer: Callable[[str, dict[str, Any]], None] | None = None) -> BatchReport:
    """Answer every record of ``batch_file`` and write ``output`` (see the module docstring)."""
    from dataclasses import asdict

    data = read_batch(batch_file)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial.jsonl")
    root = Path(image_root) if image_root else None
    fingerprint = {"model": model.path, "input": str(Path(batch_file).resolve()), "task": default_task,
                   "reasoning": reasoning, "generation": asdict(settings), "max_pixels": max_pixels,
                   "window": window, "seed": seed, **(fingerprint_extra or {})}
    done = _load_partial(partial, fingerprint, resume)
    report = BatchReport(resumed=len(done), output=str(output))
    if not partial.exists():
        partial.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
    todo = [(k, r) for k, r in data.records if k not in done]
    bar = progress(total=len(data.records), initial=len(done), desc="infer", unit="q")
    try:
        for start in range(0, len(todo), max(1, batch_size)):
            chunk = todo[start : start + batch_size]
            questions, results = [], {}
            for key, rec in chunk:
                try:
                    questions.append(record_question(key, rec, root=root, default_task=default_task,
                                                     max_pixels=max_pixels, window=window))
                except (ImageError, InferenceError, KeyError) as err:
                    results[key] = {"model_error": str(err).strip("'\"")}
            if questions:
                try:
                    answers = answer_questions(model, questions, reasoning=reasoning, settings=settings,
                                               style=style, seed=seed)
                    results.update({a.id: result_fields(a) for a in answers})
                except InferenceError:
                    for q in questions:  # one bad question must not sink the batch: answer them one by one
                        try:
                            a = answer_questions(model, [q], reasoning=reasoning, settings=settings, style=style,
                                                 seed=seed)[0]
                            results[q.id] = result_fields(a)
                        except InferenceError as err:
                            results[q.id] = {"model_error": str(err)}
            with partial.open("a", encoding="utf-8") as f:
                for key, _ in chunk:
                    f.write(json.dumps({"id": key, "result": results[key]}) + "\n")
                    done[key] = results[key]
                    if on_answer is not None:
                        on_answer(key, results[key])
            bar.update(len(chunk))
    finally:
        bar.close()
    merged = []
    for key, rec in data.records:
        result = done[key]
        if "model_error" in result:
            report.failed[key] = result["model_error"]
        else:
            report.answered += 1
        merged.append((key, {**rec, **result}))
    if data.shape == "dict":
        payload: Any = {k: r for k, r in merged}
    else:
        payload = [r if "id" in r else {"id": k, **r} for k, r in merged]
    tmp = output.with_name(output.name + ".tmp")
    if data.shape == "jsonl":
        tmp.write_text("".join(json.dumps(r) + "\n" for r in payload), encoding="utf-8")
    else:
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, output)
    partial.unlink(missing_ok=True)
    return report
