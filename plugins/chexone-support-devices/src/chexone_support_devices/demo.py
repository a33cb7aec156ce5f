"""A small generated shard set for the ``lines_tubes`` task: phantom radiographs with devices drawn at known
places (:mod:`chexone_support_devices.phantom`), one multi-label question each.

    python -m chexone_support_devices.demo --out shards/lines_tubes --n 48 [--split train] [--seed 0]

writes ``OUT/support-devices-<split>-000000.tar ...`` (two shards by default, so two data-parallel ranks each get
one), ``sizes.json`` and ``manifest.json`` in chexone's shard format (docs/data.md), with chexone's own
:class:`webdata.writer.ShardWriter`. Every sample is a pure function of ``(seed, split, index)``; the same arguments
write the same bytes. About 40% of the samples carry a templated reasoning trace ending in ``\\boxed{}``; every sample
carries a templated lines-and-tubes report in ``meta['report']`` and its labels in ``meta['devices']``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from chexone.plugin_api import Sample

from chexone_support_devices import TASK_NAME, __version__
from chexone_support_devices.labels import DEVICE_OPTIONS, answer_text, letters_of
from chexone_support_devices.phantom import CARINA_Y, POSITIONS, Device, Film, make_device, render

DATASET = "support-devices-demo"
GENERATOR = "chexone_support_devices.demo"
QUESTIONS = (
    "Which support devices are present on this chest radiograph, and are they well positioned? "
    "Choose all that apply.",
    "Identify the lines and tubes on this radiograph and judge the position of each. Select every option that applies.",
)
REASONING_FRACTION = 0.4
SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
#: Device kind -> probability that a film with devices has one; tube kinds are malpositioned with P_MALPOSITION.
P_DEVICE = {"ett": 0.5, "ngt": 0.5, "cvc": 0.5, "chest_tube": 0.25, "pacemaker": 0.2}
P_NONE = 0.2
P_MALPOSITION = 0.4
CM_PER_UNIT = 30.0  # image height ~ 30 cm: tip distances in the reports

_SENTENCES = {
    ("ett", "high"): "The endotracheal tube tip lies above the thoracic inlet; advance it.",
    ("ett", "bronchus"): "The endotracheal tube tip is in the right main bronchus; withdraw it.",
    ("ngt", "ok"): "The nasogastric tube courses below the diaphragm with its tip in the stomach.",
    ("ngt", "oesophagus"): "The nasogastric tube tip is in the oesophagus, above the diaphragm; advance it.",
    ("ngt", "bronchus"): "The nasogastric tube enters the right main bronchus and ends in the right lower lobe; "
                         "remove it.",
    ("cvc", "ok"): "The right subclavian central venous catheter terminates at the cavo-atrial junction.",
    ("cvc", "neck"): "The right subclavian central venous catheter is directed up into the right internal jugular "
                     "vein.",
    ("cvc", "deep"): "The right subclavian central venous catheter tip projects deep in the right heart.",
    ("pacemaker", "present"): "A left-sided cardiac pacemaker is present with its lead in the right ventricle.",
}


def device_label(device: Device) -> str:
    """The label key (labels.KEYS) of a drawn device."""
    if device.kind in ("chest_tube", "pacemaker"):
        return device.kind
    return f"{device.kind}_{'ok' if device.well_positioned else 'malpositioned'}"


def sentence(device: Device, dy: float = 0.0) -> str:
    if device.kind == "ett" and device.position == "ok":
        cm = (CARINA_Y + dy - device.tip[1]) * CM_PER_UNIT
        return f"The endotracheal tube terminates {cm:.0f} cm above the carina."
    if device.kind == "chest_tube":
        return f"A {device.position} chest tube is in place with its tip at the {device.position} lung apex."
    return _SENTENCES[(device.kind, device.position)]


def report(film: Film) -> str:
    lines = [sentence(d, film.dy) for d in film.devices] or ["No lines or tubes."]
    return " ".join(["AP portable view of the chest.", *lines, "The lungs are clear. No pneumothorax."])


def split_code(split: str) -> int:
    return SPLIT_CODES.get(split, 1000 + sum((i + 1) * ord(c) for i, c in enumerate(split)))


def random_film(rng: np.random.Generator) -> Film:
    dx, dy = float(rng.uniform(-0.015, 0.015)), float(rng.uniform(-0.015, 0.015))
    devices = []
    if rng.random() >= P_NONE:
        for kind, p in P_DEVICE.items():
            if rng.random() >= p:
                continue
            if kind in ("ett", "ngt", "cvc"):
                bad = POSITIONS[kind][1:]
                position = bad[int(rng.integers(len(bad)))] if rng.random() < P_MALPOSITION else "ok"
            elif kind == "chest_tube":
                position = ("left", "right")[int(rng.integers(2))]
            else:
                position = "present"
            devices.append(make_device(kind, position, rng, dx, dy))
        if not devices:
            devices.append(make_device("ett", "ok", rng, dx, dy))
    return Film(dx=dx, dy=dy, gain=float(rng.uniform(0.96, 1.04)), devices=tuple(devices),
                noise_seed=int(rng.integers(2**31)))


def reasoning_trace(film: Film, answer: str) -> str:
    steps = ["The image is a frontal AP bedside chest radiograph; the trachea divides at the carina in the midline."]
    if not film.devices:
        steps.append("No tube, line, drain or cardiac device projects over the chest.")
    for d in film.devices:
        steps.append(sentence(d, film.dy))
    body = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
    return f"**Thinking Process:**\n{body}\n\n**Final Answer:** \\boxed{{{answer}}}"


def demo_sample(index: int, *, split: str = "train", seed: int = 0, image_size: int = 112) -> Sample:
    """Sample ``index`` of a split (deterministic in ``(seed, split, index)``)."""
    rng = np.random.default_rng([seed, split_code(split), index])
    film = random_film(rng)
    labels = sorted({device_label(d) for d in film.devices})
    letters = letters_of(labels)
    answer = ",".join(sorted(letters))
    question = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
    reasoning = reasoning_trace(film, answer_text(letters)) if rng.random() < REASONING_FRACTION else None
    return Sample(
        id=f"sd-{split}-{index:05d}", task=TASK_NAME, question=question, answer=answer,
        images=[render(film, image_size).image], options=list(DEVICE_OPTIONS), reasoning=reasoning, dataset=DATASET,
        meta={"question_type": "devices", "view": "AP", "devices": labels or ["none"],
              "positions": {d.kind: d.position for d in film.devices}, "report": report(film)},
    )


def demo_samples(n: int, *, split: str = "train", seed: int = 0, image_size: int = 112) -> Iterator[Sample]:
    for i in range(n):
        yield demo_sample(i, split=split, seed=seed, image_size=image_size)


def write_demo(out: str | Path, *, n: int = 48, split: str = "train", seed: int = 0, image_size: int = 112,
               shards: int = 2, overwrite: bool = False) -> dict[str, Any]:
    """Write ``n`` samples as ``shards`` shards into ``out``; returns the manifest (``pattern``: the shards' brace
    pattern relative to ``out``)."""
    # chexone's shard writer (the same one webdata.build and chexone's own demo data use).
    from webdata.writer import ShardWriter

    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if shards < 1:
        raise ValueError(f"--shards must be at least 1, got {shards}")
    args = {"n": n, "split": split, "seed": seed, "image_size": image_size, "shards": shards}
    with ShardWriter(out, prefix=f"support-devices-{split}", max_samples_per_shard=math.ceil(n / shards),
                     builder=GENERATOR, builder_version=__version__, arguments=args, overwrite=overwrite) as writer:
        for sample in demo_samples(n, split=split, seed=seed, image_size=image_size):
            writer.write(sample)
    assert writer.manifest is not None
    return writer.manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chexone_support_devices.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new, or one this command wrote "
                   "with --overwrite)")
    p.add_argument("--n", type=int, default=48, help="number of samples (default 48)")
    p.add_argument("--split", default="train", help="split name, part of the shard names and the seed (default train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112, help="pixels a side (default 112, what model=tiny reads)")
    p.add_argument("--shards", type=int, default=2, help="number of shards (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace a shard set written here before")
    a = p.parse_args(argv)
    try:
        m = write_demo(a.out, n=a.n, split=a.split, seed=a.seed, image_size=a.image_size, shards=a.shards,
                       overwrite=a.overwrite)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}".replace("pass overwrite=True", "pass --overwrite"), file=sys.stderr)
        return 2
    print(f"wrote {m['total']} {TASK_NAME} samples to {Path(a.out) / m['pattern']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
