"""VinDr-CXR box annotations -> abnormality grounding samples on the 0-99 grid.

Input: ``annotations_train.csv`` / ``annotations_test.csv`` of VinDr-CXR 1.0.0 (PhysioNet; columns image_id, rad_id,
class_name, x_min, y_min, x_max, y_max) or the VinBigData Kaggle ``train.csv`` (same plus class_id) — coordinates are
pixels of the original DICOM. Images: ``--images DIR`` holding ``<image_id>.dicom`` (PhysioNet), ``.dcm``, ``.png``
or ``.jpg`` (also in ``train/``/``test/`` below it). Box coordinates are divided by the size of the image file as
loaded (before resizing); a PNG export must therefore keep the original resolution. A finding one of whose boxes
does not fit inside that size is skipped (``box_outside_image``, with the CSV row of the box); a box with
x_max <= x_min or y_max <= y_min is ``bad_box``, a finding row without coordinates ``no_box``.

Per image and finding class, one ``abnormality_grounding`` sample: "Detect {finding} in the given image." ->
``<|ref|>finding<|/ref|><|box|>(x1,y1),(x2,y2)<|/box|>...`` (finding names lower-cased). The training set has three
radiologists per image; ``--merge`` fuses their boxes of one class greedily, CheXinstruct-style: the first remaining
box absorbs every box of the class whose IoU with it exceeds ``--merge-iou``; ``union`` keeps the enclosing box of
that group, ``mean`` the coordinate-wise mean, ``none`` keeps all boxes (exact duplicates removed). ``--negatives K``
adds K samples per image for classes absent from it (chosen deterministically from the image id), answered
"No {finding} detected.". "No finding" rows carry no box and only mark the image as annotated.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Iterator
from typing import Any

from chexone.data.sample import Sample
from chexone.tasks.answers import box_iou, format_boxes
from webdata.sources.common import Skip, Source, SplitIndex, Unit, grid_boxes, read_csv, skip_box_outside

NO_FINDING = "no finding"
QUESTION = "Detect {name} in the given image."
IMAGE_EXTS = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")


def merge_boxes(boxes: list[list[float]], mode: str, threshold: float) -> list[list[float]]:
    """Fuse overlapping boxes of one class (see the module docstring); the result is sorted."""
    if mode == "none":
        return [list(b) for b in sorted({tuple(b) for b in boxes})]
    rest = [list(b) for b in boxes]
    out = []
    while rest:
        base = rest.pop(0)
        group, keep = [base], []
        for b in rest:
            (group if box_iou(base, b) > threshold else keep).append(b)
        rest = keep
        if mode == "union":
            out.append([min(b[0] for b in group), min(b[1] for b in group),
                        max(b[2] for b in group), max(b[3] for b in group)])
        else:
            out.append([sum(b[k] for b in group) / len(group) for k in range(4)])
    return sorted(out)


def pick_negatives(image_id: str, absent: list[str], k: int) -> list[str]:
    """K absent classes, chosen by a rotation seeded with the image id (stable across runs and machines)."""
    if k <= 0 or not absent:
        return []
    start = int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) % len(absent)
    return [absent[(start + i) % len(absent)] for i in range(min(k, len(absent)))]


def find_image(directory: str, stem: str) -> str:
    for sub in ("", "train", "test"):
        for ext in IMAGE_EXTS:
            p = os.path.join(directory, sub, stem + ext)
            if os.path.isfile(p):
                return p
    return os.path.join(directory, stem + IMAGE_EXTS[0])  # reported as missing by the loader


class VinDrCXRSource(Source):
    name = "vindr-cxr"
    dataset = "VinDr-CXR"
    version = "2"
    description = "VinDr-CXR / VinBigData box CSV -> abnormality grounding"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", required=True, help="directory of <image_id>.dicom|dcm|png|jpg")
        p.add_argument("--merge", default="union", choices=["union", "mean", "none"],
                       help="fuse overlapping boxes of one class from several radiologists (default union)")
        p.add_argument("--merge-iou", type=float, default=0.1, help="IoU above which boxes are fused (default 0.1)")
        p.add_argument("--negatives", type=int, default=1, metavar="K",
                       help="'No X detected.' samples per image for absent classes (default 1)")
        p.add_argument("--max-boxes", type=int, default=0, metavar="N",
                       help="skip a finding with more than N boxes after merging (0 = no limit)")

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        images: dict[str, dict[str, Any]] = {}
        classes: set[str] = set()
        for path in self.args.input:
            for line, row in read_csv(path, require=["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]):
                where = f"{path}:{line}"
                image_id = row["image_id"].strip()
                name = " ".join(row["class_name"].split()).lower()
                entry = images.setdefault(image_id, {"where": where, "boxes": {}, "rows": {}, "present": set()})
                if name == NO_FINDING:
                    continue
                entry["present"].add(name)  # never a negative for this image, even when its box is unusable
                try:
                    box = [float(row[c]) for c in ("x_min", "y_min", "x_max", "y_max")]
                except ValueError:
                    yield Skip(where, "no_box", f"{row['class_name']!r} row without coordinates")
                    continue
                if box[2] <= box[0] or box[3] <= box[1]:
                    yield Skip(where, "bad_box", f"empty box {box}")
                    continue
                entry["boxes"].setdefault(name, []).append(box)
                entry["rows"].setdefault(name, []).append([where, box])
                classes.add(name)
        vocabulary = sorted(classes)  # classes with at least one box: the ones a negative can ask about
        for image_id, entry in images.items():
            findings = {name: merge_boxes(boxes, self.args.merge, self.args.merge_iou)
                        for name, boxes in sorted(entry["boxes"].items())}
            absent = [c for c in vocabulary if c not in entry["present"]]
            negatives = pick_negatives(image_id, absent, self.args.negatives)
            yield Unit(f"vindr-cxr_{image_id}", entry["where"],
                       {"image_id": image_id, "findings": findings, "rows": entry["rows"], "negatives": negatives},
                       {"image": [image_id]})

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        d = unit.data
        loaded = load(find_image(self.args.images, d["image_id"]))
        w, h = loaded.original_size
        for name, boxes in d["findings"].items():
            # checked on the radiologists' own boxes: a merged (mean) box may fall inside when one of them does not
            outside = skip_box_outside(d["rows"][name], w, h, f"{d['image_id']} {name}")
            if outside:
                yield outside
                continue
            grid = grid_boxes(boxes, w, h)
            if self.args.max_boxes and len(grid) > self.args.max_boxes:
                yield Skip(unit.where, "too_many_boxes", f"{d['image_id']} {name}: {len(grid)} boxes")
                continue
            yield Sample(id=f"{unit.uid}_{name.replace(' ', '-')}", task="abnormality_grounding",
                         question=QUESTION.format(name=name), answer=format_boxes(name, grid),
                         images=[loaded.image], dataset=self.dataset,
                         meta={"boxes": grid, "ref_name": name, "image_id": d["image_id"],
                               "image_size": [w, h]})
        for name in d["negatives"]:
            yield Sample(id=f"{unit.uid}_{name.replace(' ', '-')}_neg", task="abnormality_grounding",
                         question=QUESTION.format(name=name), answer=format_boxes(name, []),
                         images=[loaded.image], dataset=self.dataset,
                         meta={"boxes": [], "ref_name": name, "image_id": d["image_id"], "image_size": [w, h]})
