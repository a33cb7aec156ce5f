"""``python -m chexone.infer``: images in (DICOM / PNG / JPEG), answers out; boxes in pixels; batch and resume."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from chexone.inference import InferenceModel
from chexone.inference.batch import BatchError, run_batch
from chexone.inference.draw import draw_boxes
from chexone.inference.engine import Completion, Conversation, InferenceError
from chexone.inference.questions import Question, answer_questions, grid_to_pixels, split_reasoning
from chexone.tasks.base import PromptStyle
from chexone.training.generation import GenerationSettings
from webdata.images import LoadedImage, load_image, load_image_bytes
from webdata.synthetic import write_dicom



class CannedModel:
    """Stands in for InferenceModel: returns fixed texts, records the conversations it was given."""

    path = "canned"
    name = "canned"

    def __init__(self, texts):
        self.texts = list(texts)
        self.seen: list[Conversation] = []

    def generate(self, conversations, settings, *, seed=None, on_text=None, encoded=None):
        self.seen.extend(conversations)
        out = [self.texts.pop(0) for _ in conversations]
        return [Completion(t, 10, len(t.split()), "stop") for t in out]


def gray(w=200, h=100, value=128):
    return LoadedImage(Image.new("L", (w, h), value), (w, h), "mem")


# --------------------------------------------------------------------------------------------- pure parts


def test_grid_boxes_become_pixels_of_the_original_image():
    # grid = percent of width / height: 10% of 200 = 20, 50% of 200 = 100, 20% of 100 = 20, 60% of 100 = 60
    assert grid_to_pixels([10, 20, 50, 60], (200, 100)) == [20.0, 20.0, 100.0, 60.0]
    assert grid_to_pixels([0, 0, 99, 99], (3000, 2500)) == [0.0, 0.0, 2970.0, 2475.0]


def test_reasoning_is_the_text_before_the_last_box_without_the_label():
    text = "**Thinking Process:**\n1. A.\n2. B.\n\n**Final Answer:** \\boxed{(A) Yes}"
    assert split_reasoning(text) == "**Thinking Process:**\n1. A.\n2. B."
    assert split_reasoning("no box at all") == ""


def test_grounding_answer_boxes_are_in_pixels_of_the_current_image():
    model = CannedModel(["1. The effusion is at the left base.\n**Final Answer:** "
                         "\\boxed{<|ref|>left pleural effusion<|/ref|><|box|>(60,50),(90,80)<|/box|>}"])
    prior, current = gray(100, 100), gray(400, 200)
    q = Question(images=[prior, current], task="phrase_grounding", phrase="left pleural effusion")
    [a] = answer_questions(model, [q], settings=GenerationSettings())
    assert a.prompt.startswith("Please locate the following phrase in the image: left pleural effusion.")
    assert a.well_formed and a.final.startswith("<|ref|>left pleural effusion")
    assert a.parsed == [[60, 50, 90, 80]]
    assert [(b.name, b.grid, b.pixels) for b in a.boxes] == [("left pleural effusion", [60, 50, 90, 80],
                                                               [240.0, 100.0, 360.0, 160.0])]
    assert a.reasoning == "1. The effusion is at the left base."
    # the conversation the model saw: system prompt, two image placeholders before the text
    msgs = model.seen[0].messages
    assert [p["type"] for p in msgs[-1]["content"]] == ["image", "image", "text"]


def test_free_question_with_options_is_relettered_multiple_choice():
    model = CannedModel(["\\boxed{(B) No}"])
    q = Question(images=[gray()], question="Is there a pneumothorax?", options=["Yes", "No"])
    [a] = answer_questions(model, [q], settings=GenerationSettings())
    assert a.task == "close_vqa" and a.parsed == ["B"] and a.well_formed
    assert a.prompt.startswith("Is there a pneumothorax?\n(A) Yes\n(B) No")


def test_instruction_mode_takes_the_whole_output_and_asks_the_bare_question():
    model = CannedModel(["Small left pleural effusion."])
    q = Question(images=[gray()], task="findings_generation", indication="dyspnea")
    [a] = answer_questions(model, [q], reasoning=False, settings=GenerationSettings())
    assert a.final == "Small left pleural effusion." and a.reasoning == ""
    assert a.prompt == ("Indication: dyspnea\nWrite the findings section of the radiology report for this chest "
                        "X-ray.")


def test_questions_a_task_cannot_build_are_refused_clearly():
    with pytest.raises(InferenceError, match="--phrase"):
        answer_questions(CannedModel([""]), [Question(images=[gray()], task="phrase_grounding")])
    with pytest.raises(InferenceError, match="no default question"):
        answer_questions(CannedModel([""]), [Question(images=[gray()], task="close_vqa")])


def test_drawn_boxes_land_on_the_right_pixels():
    img = Image.new("L", (600, 600), 0)
    box = type("B", (), {"name": "x", "pixels": [120.0, 60.0, 300.0, 240.0]})()
    # original 1200x1200 -> drawn at 600x600: the box edges land at half the pixel coordinates
    out = np.asarray(draw_boxes(img, [box], (1200, 1200)))
    assert tuple(out[90, 60]) == (0xE6, 0x9F, 0x00)  # left edge x=60, halfway down
    assert tuple(out[90, 100]) == (0, 0, 0)  # inside stays untouched
    assert tuple(out[119, 100]) == (0xE6, 0x9F, 0x00)  # bottom edge y = 120 - 1


def test_image_bytes_decode_like_files(tmp_path):
    pixels = (np.arange(64 * 48).reshape(48, 64) % 4096).astype(np.uint16)
    path = write_dicom(tmp_path / "a.dcm", pixels, photometric="MONOCHROME1")
    from_file = load_image(path)
    from_bytes = load_image_bytes(path.read_bytes(), source="upload")
    assert from_file.original_size == from_bytes.original_size == (64, 48)
    assert np.array_equal(np.asarray(from_file.image), np.asarray(from_bytes.image))
    from webdata.images import ImageError

    with pytest.raises(ImageError, match="upload: cannot decode image: not a recognised image format"):
        load_image_bytes(b"not an image at all", source="upload")


# ------------------------------------------------------------------------------------- real model, real CLI


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from webdata.demo import write_demo_images

    root = tmp_path_factory.mktemp("demo-images")
    write_demo_images(str(root), n=12)
    return root


@pytest.fixture(scope="module")
def lively_model(sft_export):
    """The export with its weights jittered: a 2-step model answers every prompt with the same newlines, which would
    make comparisons of two generation paths vacuous."""
    model = InferenceModel.load(str(sft_export), device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def run_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "chexone.infer", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_greedy_answers_equal_the_evaluation_harness(lively_model):
    """The inference engine (shared prefill, one row per prompt) and the evaluation path (HF generate) agree."""
    from chexone.data.collate import PromptCollator
    from chexone.data.demo import demo_samples
    from chexone.model.processor import PromptEncoder
    from chexone.tasks import get_task
    from chexone.training.generation import generate

    model = lively_model
    samples = list(demo_samples("test", 3))
    settings = GenerationSettings(max_new_tokens=24)
    batch = PromptCollator(PromptEncoder(model.processor), get_task, reasoning="always")(samples)
    reference = generate(model.model, model.encoder, batch, settings).texts
    convs = [Conversation(get_task(s.task).messages(s, reasoning=True, style=PromptStyle()), s.images)
             for s in samples]
    ours = [c.text for c in model.generate(convs, settings)]
    assert ours == reference
    assert len(set(ours)) > 1  # different prompts, different answers: the comparison is not vacuous


def test_streamed_text_adds_up_to_the_answer(lively_model):
    from chexone.data.demo import demo_samples
    from chexone.tasks import get_task

    model = lively_model
    samples = list(demo_samples("test", 2))
    convs = [Conversation(get_task(s.task).messages(s, reasoning=True), s.images) for s in samples]
    pieces: dict[int, list[str]] = {0: [], 1: []}
    out = model.generate(convs, GenerationSettings(max_new_tokens=16), on_text=lambda r, t: pieces[r].append(t))
    assert ["".join(pieces[i]) for i in range(2)] == [c.text for c in out]
    assert all(len(pieces[i]) > 1 for i in range(2))


@pytest.mark.slow
def test_cli_answers_a_dicom_and_a_png_from_the_demo_export(sft_export, demo_files, tmp_path):
    proc = run_cli("--model", sft_export, "--image", demo_files / "demo.dcm",
                   "--image", demo_files / "demo-test-000001.img0.png", "--task", "progression_generation",
                   "--max-new-tokens", 12, "--json", "--out", tmp_path / "o", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["task"] == "progression_generation" and record["model"] == str(sft_export)
    assert record["image_sizes"] == [[112, 112], [112, 112]]
    assert record["prompt"].startswith("Compare the current chest X-ray")
    assert record["completion_tokens"] >= 1 and record["finish_reason"] in ("stop", "length")
    assert json.loads((tmp_path / "o" / "answer.json").read_text())["output"] == record["output"]


def test_cli_grounding_writes_the_boxes_png(demo_files, tmp_path, monkeypatch):
    """With a canned grounding answer, the CLI path draws the PNG (model loading replaced)."""
    from chexone import infer

    canned = CannedModel(["\\boxed{<|ref|>nodule<|/ref|><|box|>(10,10),(50,50)<|/box|>}"])
    canned.summary = "canned"
    monkeypatch.setattr(InferenceModel, "load", classmethod(lambda cls, *a, **k: canned))
    rc = infer.main(["--model", "x", "--image", str(demo_files / "demo-test-000000.img0.png"), "--task",
                     "abnormality_grounding", "--phrase", "nodule", "--out", str(tmp_path)])
    assert rc == 0
    png = Image.open(tmp_path / "boxes.png")
    assert png.size == (512, 512)  # the 112-px demo image enlarged for readable labels
    rgb = np.asarray(png.convert("RGB"))
    # left edge of the box: x = 10% of 512 ~ 51, between y = 51 and 256
    assert tuple(rgb[150, 51]) == (0xE6, 0x9F, 0x00)


@pytest.mark.parametrize("args, message", [
    (["--image", "missing.png", "--task", "findings_generation"], "missing.png: image file not found"),
    (["--image", "{png}", "--task", "findings_generaton"], "findings_generation"),
    (["--image", "{png}"], "give --question TEXT or --task NAME"),
    (["--batch", "{png}", "--image-root", "."], "--batch needs --output"),
])
@pytest.mark.slow
def test_cli_usage_errors_fail_before_the_model_loads(args, message, demo_files):
    png = demo_files / "demo-test-000000.img0.png"
    proc = run_cli("--model", "/nonexistent/model", *[a.format(png=png) for a in args], timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Could not load" not in proc.stderr  # it stopped before trying the model


@pytest.mark.slow
def test_cli_corrupt_dicom_is_a_clear_error(sft_export, tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00garbage")
    proc = run_cli("--model", sft_export, "--image", bad, "--task", "findings_generation", "--device", "cpu")
    assert proc.returncode == 2
    assert "broken.dcm" in proc.stderr and "DICOM" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_missing_model_directory_says_what_to_do(demo_files):
    proc = run_cli("--model", "/nonexistent/model", "--image", demo_files / "demo-test-000000.img0.png", "--task",
                   "findings_generation", timeout=120)
    assert proc.returncode == 2
    assert "Could not load model.path='/nonexistent/model'" in proc.stderr


# ------------------------------------------------------------------------------------------------- batches


def rexrank_input(tmp_path, demo_files):
    data = {
        "s1": {"image_path": ["/demo-test-000001.img0.png"], "context": "Indication: cough."},
        "s2": {"image_path": "demo-test-000002.img0.png"},
        "s3": {"image_path": ["missing.png"]},
    }
    path = tmp_path / "rexrank.json"
    path.write_text(json.dumps(data))
    return path


def test_batch_keeps_the_rexrank_shape_and_records_failures(tmp_path, demo_files):
    model = CannedModel(["1. x\n**Final Answer:** \\boxed{Normal chest.}", "\\boxed{Small effusion.}"])
    out = tmp_path / "pred.json"
    report = run_batch(model, rexrank_input(tmp_path, demo_files), out, image_root=str(demo_files),
                       default_task="findings_generation", reasoning=True, settings=GenerationSettings(),
                       style=PromptStyle())
    result = json.loads(out.read_text())
    assert list(result) == ["s1", "s2", "s3"]
    assert result["s1"]["model_prediction"] == "Normal chest." and result["s1"]["model_reasoning"] == "1. x"
    assert result["s1"]["context"] == "Indication: cough."  # input fields kept
    assert result["s2"]["model_prediction"] == "Small effusion."
    assert "missing.png: image file not found" in result["s3"]["model_error"]
    assert report.answered == 2 and list(report.failed) == ["s3"]
    # the context reached the prompt as the indication
    assert model.seen[0].messages[-1]["content"][-1]["text"].startswith("Indication: Indication: cough.")
    assert not (tmp_path / "pred.json.partial.jsonl").exists()


def test_batch_resumes_after_an_interruption_and_refuses_other_settings(tmp_path, demo_files):
    src = rexrank_input(tmp_path, demo_files)
    out = tmp_path / "pred.json"

    class Interrupt(Exception):
        pass

    def stop_after_first(key, result):
        raise Interrupt

    first = CannedModel(["\\boxed{first run}"] * 3)
    with pytest.raises(Interrupt):
        run_batch(first, src, out, image_root=str(demo_files), default_task="findings_generation", reasoning=True,
                  settings=GenerationSettings(), style=PromptStyle(), batch_size=1, on_answer=stop_after_first)
    partial = tmp_path / "pred.json.partial.jsonl"
    assert partial.exists() and not out.exists()
    with partial.open("a") as f:
        f.write('{"id": "s2", "res')  # a torn line from the crash
    second = CannedModel(["\\boxed{second run}"] * 3)
    report = run_batch(second, src, out, image_root=str(demo_files), default_task="findings_generation",
                       reasoning=True, settings=GenerationSettings(), style=PromptStyle(), batch_size=1)
    result = json.loads(out.read_text())
    assert result["s1"]["model_prediction"] == "first run"  # not asked again
    assert result["s2"]["model_prediction"] == "second run"
    assert report.resumed == 1 and len(second.seen) == 1  # s3 fails on its image before reaching the model

    with pytest.raises(Interrupt):
        run_batch(first, src, out, image_root=str(demo_files), default_task="findings_generation", reasoning=True,
                  settings=GenerationSettings(), style=PromptStyle(), batch_size=1, on_answer=stop_after_first)
    with pytest.raises(BatchError, match="differs in: generation"):
        run_batch(second, src, out, image_root=str(demo_files), default_task="findings_generation", reasoning=True,
                  settings=GenerationSettings(max_new_tokens=7), style=PromptStyle())


@pytest.mark.slow
def test_batch_cli_on_the_demo_questions(sft_export, demo_files, tmp_path):
    questions = json.loads((demo_files / "questions.json").read_text())[:3]
    src = tmp_path / "q.jsonl"
    src.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "answers.jsonl"
    proc = run_cli("--model", sft_export, "--batch", src, "--image-root", demo_files, "--output", out,
                   "--max-new-tokens", 8, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [q["id"] for q in questions]
    assert all("model_output" in r and "model_error" not in r for r in rows)
    assert "3 answered" in proc.stdout


def test_engine_refuses_prompts_longer_than_the_limit(sft_export):
    model = InferenceModel.load(str(sft_export), device="cpu", max_prompt_tokens=20)
    conv = Conversation([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                        [Image.new("L", (112, 112))])
    with pytest.raises(InferenceError, match="more than the limit of 20"):
        model.generate([conv], GenerationSettings(max_new_tokens=2))
    assert torch.get_num_threads() >= 1
