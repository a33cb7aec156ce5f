"""NIH ChestX-ray14 boxes (``BBox_List_2017.csv``) -> abnormality grounding samples on the 0-99 grid.

The CSV's header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` — the box is the four values after the label
(x, y, width, height in pixels of the 1024 x 1024 PNGs), whatever the header cells say. Images are found by file
name anywhere under ``--images`` (the release spreads them over ``images_001/images`` ... ``images_012/images``).
Coordinates are divided by the size of the PNG as loaded (``OriginalImage[Width,Height]`` in Data_Entry is the size
*before* NIH downsampled the images and is not the box coordinate space). A finding with a box that does not fit
inside the loaded PNG is skipped (``box_outside_image``, with its CSV row); an empty or non-numeric box is
``bad_box``.

Per image and finding, one ``abnormality_grounding`` sample ("Detect {finding} in the given image.", finding names
lower-cased). The box list is not exhaustive, so negatives ("No {finding} detected.") are only made with
``--labels Data_Entry_2017_v2020.csv``: ``--negatives K`` box classes absent from the image's Finding Labels
(``Infiltrate`` in the box list is ``Infiltration`` in Data_Entry). All 880 boxed images belong to NIH's official
*test* list, so a ``--split train`` build with ``--split-file test=test_list.txt`` is refused — as it should be.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

from chexone.data.sample import Sample
from chexone.tasks.answers import format_boxes
from webdata.sources.common import (
    InputError,
    Skip,
    Source,
    SplitIndex,
    Unit,
    csv_records,
    grid_boxes,
    read_csv,
    skip_box_outside,
)
from webdata.sources.vindr_cxr import QUESTION, pick_negatives

#: Box-list names -> Data_Entry names where they differ.
LABEL_ALIASES = {"infiltrate": "infiltration"}


def read_bbox_list(path: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, [image, label, x, y, w, h]) rows of BBox_List_2017.csv, checking the header.

    The header's unquoted ``Bbox [x,y,w,h]`` makes it longer than the rows, so rows are checked against six values
    rather than the header; trailing empty fields are ignored. A row with another count is an InputError: its
    values would land in the wrong places."""
    records = csv_records(path)
    line, header = next(records, (1, []))
    if [h.strip() for h in header[:2]] != ["Image Index", "Finding Label"]:
        raise InputError(f"{path} line {line}: expected a header starting 'Image Index,Finding Label,Bbox [x,y,w,h]', "
                         f"got {header!r}")
    for line, row in records:
        while row and not row[-1].strip() and len(row) > 6:
            row = row[:-1]
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 6:
            raise InputError(f"{path} line {line}: {len(row)} values, expected 6 (image, label, x, y, w, h)")
        yield line, row


class NIHBoxesSource(Source):
    name = "nih-boxes"
    dataset = "ChestX-ray14"
    version = "2"
    description = "NIH ChestX-ray14 BBox_List_2017.csv -> abnormality grounding"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", required=True, help="directory searched recursively for the PNGs")
        p.add_argument("--labels", default="", help="Data_Entry_2017[_v2020].csv[.gz], needed for negatives")
        p.add_argument("--negatives", type=int, default=1, metavar="K",
                       help="with --labels: 'No X detected.' samples per image (default 1)")

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        images: dict[str, dict[str, Any]] = {}
        classes: set[str] = set()
        for path in self.args.input:
            for line, row in read_bbox_list(path):
                where = f"{path}:{line}"
                name = " ".join(row[1].split()).lower()
                try:
                    x, y, w, h = (float(v) for v in row[2:6])
                except ValueError:
                    yield Skip(where, "bad_box", f"non-numeric box {row[2:6]}")
                    continue
                if w <= 0 or h <= 0:
                    yield Skip(where, "bad_box", f"empty box {row[2:6]}")
                    continue
                entry = images.setdefault(row[0].strip(), {"where": where, "boxes": {}, "rows": {}})
                entry["boxes"].setdefault(name, []).append([x, y, x + w, y + h])
                entry["rows"].setdefault(name, []).append([where, [x, y, x + w, y + h]])
                classes.add(name)
        labels: dict[str, set[str]] = {}
        if self.args.labels:
            for _, row in read_csv(self.args.labels, require=["Image Index", "Finding Labels"]):
                if row["Image Index"] in images:
                    labels[row["Image Index"]] = {x.strip().lower() for x in row["Finding Labels"].split("|")}
        found = self._index_images(set(images))
        vocabulary = sorted(classes)
        for name, entry in images.items():
            negatives: list[str] = []
            if self.args.labels:
                if name not in labels:
                    yield Skip(entry["where"], "no_labels", f"{name} not in {self.args.labels}: no negatives")
                else:
                    absent = [c for c in vocabulary if LABEL_ALIASES.get(c, c) not in labels[name]]
                    negatives = pick_negatives(name, absent, self.args.negatives)
            stem = os.path.splitext(name)[0]
            yield Unit(f"nih_{stem}", entry["where"],
                       {"image": name, "path": found.get(name, os.path.join(self.args.images, name)),
                        "findings": {k: sorted(v) for k, v in sorted(entry["boxes"].items())},
                        "rows": entry["rows"], "negatives": negatives},
                       {"image": [stem]})

    def _index_images(self, wanted: set[str]) -> dict[str, str]:
        """File name -> path for the wanted names, from one walk over ``--images``."""
        found: dict[str, str] = {}
        for dirpath, _, files in os.walk(self.args.images):
            for f in files:
                if f in wanted and f not in found:
                    found[f] = os.path.join(dirpath, f)
        return found

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        d = unit.data
        loaded = load(d["path"])
        w, h = loaded.original_size
        meta = {"image_id": d["image"], "image_size": [w, h]}
        for name, boxes in d["findings"].items():
            outside = skip_box_outside(d["rows"][name], w, h, f"{d['image']} {name}")
            if outside:
                yield outside
                continue
            grid = grid_boxes(boxes, w, h)
            yield Sample(id=f"{unit.uid}_{name.replace(' ', '-')}", task="abnormality_grounding",
                         question=QUESTION.format(name=name), answer=format_boxes(name, grid), images=[loaded.image],
                         dataset=self.dataset, meta={**meta, "boxes": grid, "ref_name": name})
        for name in d["negatives"]:
            yield Sample(id=f"{unit.uid}_{name.replace(' ', '-')}_neg", task="abnormality_grounding",
                         question=QUESTION.format(name=name), answer=format_boxes(name, []), images=[loaded.image],
                         dataset=self.dataset, meta={**meta, "boxes": [], "ref_name": name})
