"""Grounding answers drawn on the radiograph: the predicted boxes in image coordinates, labelled with their name."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

#: Box colours, cycled per box name (colour-blind safe Okabe-Ito hues).
COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")


def draw_boxes(image: Image.Image, boxes: list, original_size: tuple[int, int], *, min_side: int = 512
               ) -> Image.Image:
    """An RGB copy of ``image`` with ``boxes`` (objects with ``name`` and ``pixels`` in ``original_size``
    coordinates) drawn on it, scaled to the copy's size; small images are enlarged to ``min_side`` so the labels
    stay readable."""
    out = image.convert("RGB")
    if min(out.size) < min_side:
        factor = min_side / min(out.size)
        out = out.resize((round(out.width * factor), round(out.height * factor)), Image.Resampling.LANCZOS)
    sx = out.width / original_size[0]
    sy = out.height / original_size[1]
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 200))
    font = ImageFont.load_default(size=max(12, round(min(out.size) / 40)))
    names: dict[str, str] = {}
    for box in boxes:
        colour = names.setdefault(box.name, COLOURS[len(names) % len(COLOURS)])
        x1, y1, x2, y2 = box.pixels
        rect = [x1 * sx, y1 * sy, max(x1 * sx, x2 * sx - 1), max(y1 * sy, y2 * sy - 1)]
        draw.rectangle(rect, outline=colour, width=width)
        label = box.name or "box"
        tx, ty = rect[0] + width, max(0, rect[1] - font.size - 2 * width)
        bbox = draw.textbbox((tx, ty), label, font=font)
        if bbox[2] > out.width - 2:  # keep the label inside the picture
            tx = max(0, tx - (bbox[2] - out.width + 2))
            bbox = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle([bbox[0] - 2, bbox[1] - 1, bbox[2] + 2, bbox[3] + 1], fill=(0, 0, 0))
        draw.text((tx, ty), label, fill=colour, font=font)
    return out
