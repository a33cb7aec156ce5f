"""The generated demo data: labels true to the pixels, deterministic bytes, valid chexone shards."""

from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from chexone.plugin_api import Sample, TASKS

from chexone_support_devices.demo import demo_sample, main, random_film
from chexone_support_devices.labels import parse_devices
from chexone_support_devices.phantom import (CARINA_Y, DIAPHRAGM_Y, POSITIONS, THORACIC_INLET_Y, Film, make_device,
                                             render)

SIZE = 112


def extent(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x_min, y_min, x_max, y_max) of a mask, normalised."""
    ys, xs = np.nonzero(mask)
    return xs.min() / SIZE, ys.min() / SIZE, (xs.max() + 1) / SIZE, (ys.max() + 1) / SIZE


@pytest.mark.parametrize("seed", range(6))
def test_every_position_is_true_to_the_pixels(seed):
    rng = np.random.default_rng(seed)
    for kind, positions in POSITIONS.items():
        for position in positions:
            dev = make_device(kind, position, rng)
            mask = render(Film(devices=(dev,)), SIZE).masks[kind]
            x0, y0, x1, y1 = extent(mask)
            if kind == "ett":
                if position == "ok":
                    assert CARINA_Y - 0.14 < y1 < CARINA_Y - 0.05, (position, y1)
                elif position == "high":
                    assert y1 < THORACIC_INLET_Y, y1
                else:
                    assert y1 > CARINA_Y + 0.05 and x0 < 0.5 - 0.06  # right main bronchus: below carina, image left
            elif kind == "ngt":
                if position == "ok":
                    assert y1 > DIAPHRAGM_Y + 0.04 and x1 > 0.6  # stomach: below the diaphragm, image right
                elif position == "oesophagus":
                    assert y1 < DIAPHRAGM_Y - 0.1 and x0 > 0.5
                else:
                    assert y1 > CARINA_Y + 0.15 and x0 < 0.5 - 0.1
            elif kind == "cvc":
                tip_x, tip_y = dev.tip
                if position == "ok":
                    assert 0.38 < tip_y < 0.48 and y1 < 0.5
                elif position == "neck":
                    assert y0 < 0.08 and y1 < 0.32
                else:
                    assert y1 > 0.58
            elif kind == "chest_tube":
                # patient left = image right
                assert (x1 > 0.9) if position == "left" else (x0 < 0.1)
                assert y0 < 0.27
            else:
                assert x1 > 0.8 and y1 > 0.6  # generator under the left clavicle, lead down to the heart


def test_samples_are_deterministic_and_labels_match_the_film():
    a, b = demo_sample(7, split="test", seed=3), demo_sample(7, split="test", seed=3)
    assert a.answer == b.answer and a.images[0].tobytes() == b.images[0].tobytes()
    assert demo_sample(7, split="train", seed=3).id != a.id
    task = TASKS.get("lines_tubes")()
    seen = set()
    for i in range(60):
        s = demo_sample(i)
        rng = np.random.default_rng([0, 1, i])
        film = random_film(rng)
        assert s.meta["positions"] == {d.kind: d.position for d in film.devices}
        letters = parse_devices(s.answer)
        seen |= letters
        assert ("I" in letters) == (not film.devices)
        assert task.answer_text(s)  # every generated sample is valid for the task
        if s.reasoning:
            assert s.reasoning.endswith(f"\\boxed{{{task.answer_text(s)}}}")
        assert s.images[0].size == (SIZE, SIZE) and s.images[0].mode == "L"
    assert seen == set("ABCDEFGHI")  # every option occurs in 60 samples


def test_cli_writes_a_deterministic_valid_shard_set(tmp_path, capsys):
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["--out", str(out), "--n", "10", "--split", "val", "--seed", "1"]) == 0
        shards = sorted(out.glob("support-devices-val-*.tar"))
        assert [p.name for p in shards] == ["support-devices-val-000000.tar", "support-devices-val-000001.tar"]
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in shards])
        assert json.loads((out / "sizes.json").read_text()) == {p.name: 5 for p in shards}
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["task_counts"] == {"lines_tubes": 10} and manifest["total"] == 10
    assert digests[0] == digests[1]
    assert "wrote 10 lines_tubes samples to" in capsys.readouterr().out
    # the members read back into chexone samples
    with tarfile.open(tmp_path / "a" / "support-devices-val-000000.tar") as tar:
        names = tar.getnames()
        assert names[:2] == ["sd-val-00000.json", "sd-val-00000.img0.png"]
        record = json.loads(tar.extractfile(names[0]).read())
        image = Image.open(tar.extractfile(names[1]))
        sample = Sample.from_json(record, [image], source=names[0])
    assert sample.task == "lines_tubes" and sample.meta["report"].startswith("AP portable view")
    # an existing set is refused without --overwrite, with one line
    assert main(["--out", str(tmp_path / "a"), "--n", "10", "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "already holds a shard set" in err and "pass --overwrite" in err
    assert main(["--out", str(tmp_path / "a"), "--n", "4", "--split", "val", "--overwrite"]) == 0
