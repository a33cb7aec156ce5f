"""``python -m webdata.build jsonl``: sample-schema JSONL -> shards, end to end (records written by hand, PNGs
synthesised, shards read back with the training reader); option re-lettering styles; ``--task-map`` validation and
``--unmapped-tasks error`` stopping every source before anything is written. Plugin tasks: test_plugin_entry_points.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chexone.data.shards import build_eval_dataset
from webdata import build as B
from webdata.sources.common import reletter_answer, split_options
from webdata.synthetic import write_png


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = B.main([*argv, "--no-progress", "--workers", "1"])
    return code, capsys.readouterr().err


def read_back(out: Path) -> dict:
    return {s.id: s for s in build_eval_dataset(str(out), max_skip_fraction=0.0)}


def jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ----------------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------------


def test_jsonl_records_to_shards_and_back(tmp_path, capsys):
    images = tmp_path / "images"
    write_png(images / "s1" / "frontal.png", np.full((30, 40), 200, np.uint8))   # 40 x 30
    write_png(images / "s1" / "prior.png", np.full((30, 40), 50, np.uint8))
    write_png(tmp_path / "elsewhere" / "lateral.png", np.full((16, 16), 90, np.uint8))
    absolute = str(tmp_path / "elsewhere" / "lateral.png")
    lines = [
        # 1: explicit options; the answer names an option by label and text
        {"id": "vqa-1", "task": "close_vqa", "question": "Is there a pleural effusion?", "options": ["Yes", "No"],
         "answer": "(B) No", "images": ["s1/frontal.png"], "dataset": "MyHospital",
         "meta": {"question_type": "presence"}},
        # 2: options inside the question with CheXinstruct-style shuffled labels, a reasoning trace naming them
        {"id": "cls-2", "task": "disease_classification",
         "question": "Which findings are present? Options:\n(c) Edema\n(q) Effusion\n(x) Nodule",
         "answer": "(x), (q)", "images": ["s1/frontal.png"],
         "reasoning": "The costophrenic angle is blunted, so (q) fits; a round opacity: (x).\n\\boxed{(q), (x)}"},
        # 3: "A. text" option lines and a lower-case bare answer
        {"id": "side-3", "task": "close_vqa", "question": "On which side is the effusion?\nA. Left\nB. Right",
         "answer": "b", "images": ["s1/frontal.png"]},
        # 4: open question, text answer, with the reasoning suffix and an <image> tag to strip
        {"id": "open-4", "task": "open_vqa",
         "question": "<image>What device is seen? Please reason step by step and put your final answer within "
                     "\\boxed{}.", "answer": " A central venous catheter. ", "images": [absolute]},
        # 5: grounding: boxes clamped to the 0-99 grid and sorted
        {"id": "ground-5", "task": "phrase_grounding", "question": "Locate: left effusion",
         "answer": "<|ref|>left effusion<|/ref|><|box|>(60,70),(100,100)<|/box|>"
                   "<|ref|>left effusion<|/ref|><|box|>(5,10),(20,30)<|/box|>", "images": ["s1/frontal.png"]},
        # 6: two images (prior first), a source task name mapped with --task-map
        {"id": "prog-6", "task": "Progression Report", "question": "Describe the change.",
         "answer": "Effusion has increased.", "images": ["s1/prior.png", "s1/frontal.png"]},
        # 7: not JSON
        "{not json",
        # 8: a task name nobody registers
        {"id": "bad-8", "task": "clos_vqa", "question": "q", "answer": "A", "images": []},
        # 9: a misspelt key
        {"id": "bad-9", "task": "open_vqa", "question": "q", "answer": "a", "images": [], "reasonning": "..."},
        # 10: a multiple-choice task without options
        {"id": "bad-10", "task": "close_vqa", "question": "Is it normal?", "answer": "yes", "images": []},
        # 11: an image that does not exist
        {"id": "bad-11", "task": "open_vqa", "question": "q", "answer": "a", "images": ["s1/missing.png"]},
        # 12: an id used before
        {"id": "vqa-1", "task": "open_vqa", "question": "q", "answer": "a", "images": ["s1/frontal.png"]},
        # 13: images is not a list
        {"id": "bad-13", "task": "open_vqa", "question": "q", "answer": "a", "images": "s1/frontal.png"},
        # 14: the answer names none of the options
        {"id": "bad-14", "task": "close_vqa", "question": "Which?", "options": ["x", "y"], "answer": "(C) z",
         "images": ["s1/frontal.png"]},
        # 15: options twice
        {"id": "bad-15", "task": "close_vqa", "question": "Which?\n(A) x\n(B) y", "options": ["x", "y"],
         "answer": "A", "images": ["s1/frontal.png"]},
    ]
    src = jsonl(tmp_path / "samples.jsonl", lines)
    out = tmp_path / "shards" / "mine"
    code, err = run(["jsonl", "--input", str(src), "--images", str(images), "--out", str(out),
                     "--task-map", "Progression Report=progression_generation"], capsys)
    assert code == 0, err

    got = read_back(out)
    assert sorted(got) == ["cls-2", "ground-5", "open-4", "prog-6", "side-3", "vqa-1"]
    vqa = got["vqa-1"]
    assert (vqa.task, vqa.question, vqa.options, vqa.answer) == ("close_vqa", "Is there a pleural effusion?",
                                                                 ["Yes", "No"], "B")
    assert (vqa.dataset, vqa.meta, vqa.reasoning) == ("MyHospital", {"question_type": "presence"}, None)
    assert vqa.images[0].size == (40, 30) and vqa.images[0].getpixel((0, 0)) == 200

    cls = got["cls-2"]
    assert cls.question == "Which findings are present?\nOptions:"
    assert cls.options == ["Edema", "Effusion", "Nodule"]            # (c) -> A, (q) -> B, (x) -> C
    assert cls.answer == "B,C"
    assert cls.reasoning == "The costophrenic angle is blunted, so (B) fits; a round opacity: (C).\n\\boxed{(B), (C)}"

    side = got["side-3"]
    assert (side.question, side.options, side.answer) == ("On which side is the effusion?", ["Left", "Right"], "B")

    op = got["open-4"]
    assert (op.task, op.question, op.answer, op.options) == ("open_vqa", "What device is seen?",
                                                             "A central venous catheter.", [])
    assert op.images[0].size == (16, 16) and op.images[0].getpixel((3, 3)) == 90  # an absolute path

    g = got["ground-5"]
    assert g.answer == ("<|ref|>left effusion<|/ref|><|box|>(5,10),(20,30)<|/box|>"
                        "<|ref|>left effusion<|/ref|><|box|>(60,70),(99,99)<|/box|>")
    assert g.meta == {"boxes": [[5, 10, 20, 30], [60, 70, 99, 99]], "ref_name": "left effusion"}

    prog = got["prog-6"]
    assert prog.task == "progression_generation" and prog.meta == {"source_task": "Progression Report"}
    assert [im.getpixel((0, 0)) for im in prog.images] == [50, 200]  # prior first, as listed

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "jsonl" and manifest["source_origin"] == "built-in"
    assert manifest["skipped"] == {"answer_not_an_option": 1, "bad_field": 1, "bad_json": 1, "duplicate_id": 1,
                                   "missing_image": 1, "missing_options": 1, "options_twice": 1, "unknown_field": 1,
                                   "unknown_task": 1}
    skips = {json.loads(line)["where"]: json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()}
    assert skips[f"{src}:7"]["reason"] == "bad_json"
    unknown = skips[f"{src}:8"]
    assert unknown["reason"] == "unknown_task"
    assert 'unknown task "clos_vqa" (did you mean "close_vqa"' in unknown["detail"]
    assert "field 'task'" in unknown["detail"]
    assert "unknown field 'reasonning' (did you mean 'reasoning'?)" in skips[f"{src}:9"]["detail"]
    assert skips[f"{src}:10"]["reason"] == "missing_options"
    assert skips[f"{src}:13"]["reason"] == "bad_field" and "'images'" in skips[f"{src}:13"]["detail"]
    assert skips[f"{src}:15"]["reason"] == "options_twice"
    assert any(s["reason"] == "missing_image" and "missing.png" in s["detail"] for s in skips.values())


def test_jsonl_images_default_to_the_files_directory_and_dataset_option(tmp_path, capsys):
    write_png(tmp_path / "data" / "img" / "a.png", np.full((8, 8), 7, np.uint8))
    src = jsonl(tmp_path / "data" / "s.jsonl", [
        {"id": "x", "task": "open_vqa", "question": "q?", "answer": "a", "images": ["img/a.png"]}])
    out = tmp_path / "out"
    code, err = run(["jsonl", "--input", str(tmp_path / "data"), "--out", str(out), "--dataset", "Mine"], capsys)
    assert code == 0, err
    (s,) = read_back(out).values()
    assert s.dataset == "Mine" and s.images[0].getpixel((0, 0)) == 7


# ----------------------------------------------------------------------------------------------------------------------
# Option styles
# ----------------------------------------------------------------------------------------------------------------------


def test_option_line_styles():
    dot = split_options("Which view?\nA. PA\nB. AP\nC. Lateral")
    assert (dot.stem, dot.labels, dot.options) == ("Which view?", ["A", "B", "C"], ["PA", "AP", "Lateral"])
    assert reletter_answer("C. Lateral", dot) == ["C"] and reletter_answer("b", dot) == ["B"]
    paren = split_options("Which view? Options:\na) PA\nb) AP")
    assert (paren.stem, paren.labels, paren.options) == ("Which view?\nOptions:", ["a", "b"], ["PA", "AP"])
    assert reletter_answer("B", paren) == ["B"] and reletter_answer("a)", paren) == ["A"]
    assert split_options("Steps:\n1. look\n2. compare") is None         # numbered steps are not options
    assert split_options("Which?\nA. x\nC. y") is None                  # not lettered in order
    assert split_options("Which?\nA. x\nB) y") is None                  # mixed punctuation
    assert split_options("A. x\nB. y\nthen\nA. z\nB. w") is None        # two blocks: ambiguous
    assert split_options("Which?\n(A) x\n(B) y").labels == ["A", "B"]   # the (X) form as before


# ----------------------------------------------------------------------------------------------------------------------
# --task-map validation and --unmapped-tasks error: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------------------------


def _inputs(tmp_path: Path) -> dict[str, list[str]]:
    write_png(tmp_path / "img" / "a.png", np.full((8, 8), 7, np.uint8))
    sample = jsonl(tmp_path / "s.jsonl", [
        {"id": "x", "task": "Report Evaluation", "question": "q?", "answer": "a", "images": ["img/a.png"]}])
    release = jsonl(tmp_path / "release.jsonl", [
        {"unique_id": "[Report Evaluation] [ReXVal] [1]", "images": ["img/a.png"], "task_name": "Report Evaluation",
         "messages": [{"role": "user", "content": "Rate."}, {"role": "assistant", "content": "3"}]}])
    instruct = tmp_path / "ci.json"
    instruct.write_text(json.dumps([{"unique_id": "u1", "task_name": "Report Evaluation", "image_path": "img/a.png",
                                     "qa_pair": [{"q": "Rate.", "a": "3"}]}]))
    root = str(tmp_path)
    return {"jsonl": ["jsonl", "--input", str(sample)],
            "chexone": ["chexone", "--input", str(release), "--image-root", root],
            "chexinstruct": ["chexinstruct", "--input", str(instruct), "--image-root", root]}


@pytest.mark.parametrize("source", ["jsonl", "chexone", "chexinstruct"])
def test_task_map_target_must_be_registered(tmp_path, capsys, source):
    argv = _inputs(tmp_path)[source]
    out = tmp_path / "out"
    code, err = run([*argv, "--out", str(out), "--task-map", "Report Evaluation=open_vq"], capsys)
    assert code == B.EXIT_USAGE
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --task-map 'Report Evaluation=open_vq': ")
    assert 'unknown task "open_vq" (did you mean "open_vqa"' in err and "registered tasks: " in err
    assert not out.exists()
    code, err = run([*argv, "--out", str(out), "--task-map", "no equals sign"], capsys)
    assert code == B.EXIT_USAGE and "expected SOURCE_NAME=task_name" in err and not out.exists()
    code, err = run([*argv, "--out", str(out), "--task-map", "Report Evaluation=open_vqa"], capsys)
    assert code == 0, err
    (s,) = read_back(out).values()
    assert s.task == "open_vqa"


@pytest.mark.parametrize("source", ["jsonl", "chexone", "chexinstruct"])
def test_unmapped_tasks_error_stops_before_anything_is_written(tmp_path, capsys, source):
    argv = _inputs(tmp_path)[source]
    out = tmp_path / "out"
    code, err = run([*argv, "--out", str(out), "--unmapped-tasks", "error"], capsys)
    assert code == B.EXIT_USAGE
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Report Evaluation" in error_lines[0]
    assert (".jsonl:1" in error_lines[0]) or ("ci.json[0]" in error_lines[0])
    assert not out.exists()


def test_unmapped_keep_moves_options_out_of_the_question(tmp_path, capsys):
    """--unmapped-tasks keep (a task no installed package registers): options move into 'options' when the answer
    names one of them; the chexinstruct and chexone converters do the same."""
    write_png(tmp_path / "img" / "a.png", np.full((8, 8), 7, np.uint8))
    instruct = tmp_path / "ci.json"
    instruct.write_text(json.dumps([{"unique_id": "u1", "task_name": "Report Evaluation", "image_path": "img/a.png",
                                     "qa_pair": [{"q": "Which report is better?\n(q) first\n(c) second",
                                                  "a": "(c) second"}, {"q": "Rate it.", "a": "3"}]}]))
    out = tmp_path / "ci"
    code, err = run(["chexinstruct", "--input", str(instruct), "--image-root", str(tmp_path), "--out", str(out),
                     "--unmapped-tasks", "keep"], capsys)
    assert code == 0, err
    got = read_back(out)
    pick = got["u1 #0"]
    assert (pick.task, pick.question, pick.options, pick.answer) == ("report_evaluation", "Which report is better?",
                                                                     ["first", "second"], "B")
    rate = got["u1 #1"]
    assert (rate.question, rate.options, rate.answer) == ("Rate it.", [], "3")

    src = jsonl(tmp_path / "s.jsonl", [
        {"id": "k", "task": "my_unregistered_task", "question": "Pick one:\nA. first\nB. second", "answer": "A",
         "images": ["img/a.png"]}])
    out = tmp_path / "kept"
    code, err = run(["jsonl", "--input", str(src), "--out", str(out), "--unmapped-tasks", "keep"], capsys)
    assert code == 0, err
    (s,) = read_back(out).values()
    assert (s.task, s.question, s.options, s.answer) == ("my_unregistered_task", "Pick one:", ["first", "second"], "A")
