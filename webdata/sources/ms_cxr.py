"""MS-CXR phrase grounding: report phrases with their boxes on MIMIC-CXR images.

Input: ``MS_CXR_Local_Alignment_v1.x.csv`` (PhysioNet) with columns dicom_id, category_name, label_text, path, x, y,
w, h, image_width, image_height (and, in later versions, split). ``path`` is the MIMIC-CXR image path
(``files/p15/p15xxxxxx/s5xxxxxxx/<dicom_id>.dcm``) below ``--images`` (MIMIC-CXR or MIMIC-CXR-JPG root;
``--image-ext auto`` tries the path as given, then .jpg, .dcm, .png). Boxes (x, y, w, h) are pixels of an
``image_width`` x ``image_height`` image, so they are normalised with those columns, not the loaded file. A phrase
one of whose boxes does not fit inside that size is skipped (``box_outside_image``, with the CSV row of the box);
an empty box or size is ``bad_box``.

Rows with the same (dicom_id, label_text) are one phrase with one or more boxes; all phrases of one image form one
unit (the image is stored once). Each phrase gives a ``phrase_grounding`` sample: "Locate the following phrase in
the given image: {phrase}" -> ``<|ref|>{phrase}<|/ref|><|box|>(x1,y1),(x2,y2)<|/box|>...``. ``--split`` takes the
CSV's split column when it has one, else the MIMIC-CXR split file (``--split-file mimic-cxr-2.0.0-split.csv.gz``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

from chexone.data.sample import Sample
from chexone.tasks.answers import format_boxes
from webdata.sources.common import (
    Skip,
    Source,
    SplitIndex,
    Unit,
    clean_text,
    grid_boxes,
    ids_from_path,
    merge_ids,
    normalise_split,
    read_csv,
    skip_box_outside,
)

QUESTION = "Locate the following phrase in the given image: {phrase}"
COLUMNS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"]


class MSCXRSource(Source):
    name = "ms-cxr"
    dataset = "MS-CXR"
    version = "2"
    description = "MS-CXR local alignment CSV -> phrase grounding on MIMIC-CXR images"
    selects_split = True

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", required=True, help="MIMIC-CXR(-JPG) root that the CSV's 'path' is relative to")
        p.add_argument("--image-ext", default="auto", choices=["auto", "jpg", "dcm", "png"],
                       help="image file type (auto: the path as given, then jpg, dcm, png)")

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        units: dict[str, dict[str, Any]] = {}
        rows: dict[tuple[str, str], list[list[Any]]] = {}  # (dicom, phrase) -> [[where, box]], for the bounds check
        for path in self.args.input:
            for line, row in read_csv(path, require=COLUMNS):
                where = f"{path}:{line}"
                try:
                    x, y, w, h, width, height = (float(row[c]) for c in ("x", "y", "w", "h", "image_width",
                                                                          "image_height"))
                except ValueError:
                    yield Skip(where, "bad_box", f"non-numeric box/size {[row[c] for c in COLUMNS[4:]]}")
                    continue
                if w <= 0 or h <= 0 or width <= 0 or height <= 0:
                    yield Skip(where, "bad_box", f"empty box or image size {[row[c] for c in COLUMNS[4:]]}")
                    continue
                dicom = row["dicom_id"].strip()
                unit = units.setdefault(dicom, {"where": where, "path": row["path"].strip(), "size": [width, height],
                                                "phrases": {}, "split": (row.get("split") or "").strip()})
                if unit["size"] != [width, height]:
                    yield Skip(where, "bad_record", f"{dicom}: image size {width}x{height} differs from "
                                                    f"{unit['size']} given on an earlier row")
                    continue
                phrase = clean_text(row["label_text"])
                entry = unit["phrases"].setdefault(phrase, {"category": row["category_name"].strip(), "boxes": []})
                entry["boxes"].append([x, y, x + w, y + h])
                rows.setdefault((dicom, phrase), []).append([where, [x, y, x + w, y + h]])
        for dicom, u in units.items():
            ids = merge_ids({"image": [dicom]}, ids_from_path(u["path"]))
            if split is not None:
                own = normalise_split(u["split"], u["where"]) if u["split"] else index.split_of(ids)
                if own is None:
                    yield Skip(u["where"], "not_in_split_file", f"{dicom}: no split column and in no split file")
                    continue
                if own != split:
                    continue
            width, height = u["size"]
            for phrase in list(u["phrases"]):
                outside = skip_box_outside(rows[dicom, phrase], width, height, f"{dicom} {phrase!r}")
                if outside:
                    yield outside
                    del u["phrases"][phrase]
            if not u["phrases"]:
                continue
            yield Unit(f"ms-cxr_{dicom}", u["where"], {"dicom_id": dicom, "path": u["path"], "size": u["size"],
                                                        "phrases": u["phrases"]}, ids)

    def image_path(self, rel: str) -> str:
        base = self.under(self.args.images, rel)
        stem = os.path.splitext(base)[0]
        cands = ([base, f"{stem}.jpg", f"{stem}.dcm", f"{stem}.png"] if self.args.image_ext == "auto"
                 else [f"{stem}.{self.args.image_ext}"])
        return next((c for c in cands if os.path.isfile(c)), cands[0])

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        d = unit.data
        loaded = load(self.image_path(d["path"]))
        width, height = d["size"]
        for k, (phrase, entry) in enumerate(d["phrases"].items()):
            grid = grid_boxes(entry["boxes"], width, height)
            yield Sample(id=f"{unit.uid}_{k}", task="phrase_grounding", question=QUESTION.format(phrase=phrase),
                         answer=format_boxes(phrase, grid), images=[loaded.image], dataset=self.dataset,
                         meta={"boxes": grid, "ref_name": phrase, "category": entry["category"],
                               "dicom_id": d["dicom_id"]})
