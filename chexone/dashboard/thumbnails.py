"""Small PNG thumbnails of the images GRPO completions answered, with grounding boxes drawn (reference green,
prediction red, as in the evaluation's grounding overlays), so a completion can be judged at a glance in the report
and in the W&B completions table."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from chexone.tasks.answers import extract_boxed, find_boxed, parse_boxes

#: Longest side of a thumbnail in pixels: small enough for dozens per report, large enough to see a box.
THUMB_SIDE = 160
#: The evaluation overlays' colours (chexone.evaluation.plots, which this light module does not import: it pulls in
#: the model code; a test keeps the two equal).
TRUE_COLOUR = (40, 200, 80)
PRED_COLOUR = (230, 50, 50)
#: Where the thumbnails go, next to completions.jsonl (whose rows name their file relative to that directory).
THUMB_DIR = "completions"


def predicted_answer(completion: str, boxed: str = "last") -> str:
    """The final answer of a completion: its ``\\boxed{}`` content (``boxed``: first | last), or the whole text when it
    has none (an instruction-mode answer)."""
    if find_boxed(completion):
        return extract_boxed(completion, boxed) or ""
    return completion


def completion_thumbnail(image: Image.Image, *, reference: str | None = None, prediction: str | None = None,
                         side: int = THUMB_SIDE) -> Image.Image:
    """An RGB copy of ``image`` scaled so its longest side is ``side``, with the boxes of ``reference`` (green) and
    ``prediction`` (red) drawn when given (0-99 grid answers; text without boxes draws nothing)."""
    img = image.convert("RGB")
    scale = side / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for answer, colour in ((reference, TRUE_COLOUR), (prediction, PRED_COLOUR)):
        for box in parse_boxes(answer or ""):
            # the 0-99 grid is percent of width/height (docs/method.md); x2/y2 exclusive, so the outline ends at -1
            x1, y1, x2, y2 = (box.x1 * img.width / 100, box.y1 * img.height / 100, box.x2 * img.width / 100,
                              box.y2 * img.height / 100)
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=2)
    return img


def thumbnail_path(step: int, prompt: int, completion: int | None = None) -> str:
    """The thumbnail's path relative to completions.jsonl's directory: one per prompt, or one per completion when its
    predicted boxes are drawn."""
    name = f"p{prompt}" if completion is None else f"p{prompt}-c{completion}"
    return f"{THUMB_DIR}/step-{step:06d}/{name}.png"


def save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)


__all__ = ["THUMB_DIR", "THUMB_SIDE", "completion_thumbnail", "predicted_answer", "save_png", "thumbnail_path"]
