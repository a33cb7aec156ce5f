"""``python -m webdata.build example-yes-no-csv``: a shard source for the plugin's own task.

Reads CSV files with the columns ``image,question,answer`` (answer ``yes``/``no``, any case) and writes one
``example_yes_no`` sample per row::

    image,question,answer
    study1/frontal.png,Is there a pleural effusion?,no

Image paths are relative to ``--images`` (default: the CSV's directory). A row whose answer is not yes/no is skipped
(reason ``not_yes_no``), a missing image as ``missing_image``; both are listed with their file and line in
``OUT/skipped.jsonl``. The build machinery (planning, partitions, workers, image loading, leak check, manifest) is
chexone's: a source only reads its annotations into units and turns a unit into samples.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

from chexone.data.sample import Sample
from webdata.sources.common import Skip, Source, SplitIndex, Unit, clean_text, ids_from_path, input_files, read_csv

from chexone_example_plugin import TASK_NAME

_LETTERS = {"yes": "A", "no": "B"}


class YesNoCSVSource(Source):
    """CSV rows (image, question, answer yes/no) -> example_yes_no samples. See the module docstring."""

    name = "example-yes-no-csv"
    dataset = "example-yes-no"
    version = "1"
    description = "example plugin: CSV rows image,question,answer(yes/no) -> example_yes_no samples"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", default="", metavar="DIR",
                       help="directory the CSV's image paths are relative to (default: the CSV's directory)")

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        """One unit per row (no pixels are read here)."""
        for path in input_files(self.args.input, ("*.csv",)):
            root = self.args.images or os.path.dirname(os.path.abspath(path))
            for line, row in read_csv(path, require=("image", "question", "answer")):
                where = f"{path}:{line}"
                answer = clean_text(row["answer"]).lower().rstrip(".")
                if answer not in _LETTERS:
                    yield Skip(where, "not_yes_no", f"answer {row['answer']!r} is not yes/no")
                    continue
                image = self.under(root, row["image"])
                yield Unit(uid=f"{os.path.basename(path)}:{line}", where=where, ids=ids_from_path(image),
                           data={"image": image, "question": clean_text(row["question"]), "answer": _LETTERS[answer]})

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        """Load the image (a broken one is reported and skipped by the builder) and yield the sample."""
        image = load(unit.data["image"])
        yield Sample(id=unit.uid, task=TASK_NAME, question=unit.data["question"], answer=unit.data["answer"],
                     images=[image.image], dataset=self.dataset)
