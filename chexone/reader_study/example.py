"""``example --out DIR``: copy the shipped demonstration study (synthetic phantom images, model drafts, two readers)
to a directory of the user's, so it can be served and exported without writing into the installed package."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

FILES = ("study.yaml", "drafts.jsonl", "images/case1.png", "images/case2.png", "images/case3.png",
         "images/case4.png")


class ExampleError(ValueError):
    pass


def write_example(out: Path) -> Path:
    """Copy the example study into ``out`` (which must not already hold a study.yaml); returns its study.yaml."""
    if (out / "study.yaml").exists():
        raise ExampleError(f"{out / 'study.yaml'} already exists; choose another --out")
    if out.exists() and not out.is_dir():
        raise ExampleError(f"{out}: exists and is not a directory")
    src = resources.files("chexone.reader_study").joinpath("example")
    for rel in FILES:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with resources.as_file(src.joinpath(rel)) as path:
            shutil.copyfile(path, target)
    return out / "study.yaml"
