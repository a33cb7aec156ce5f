"""python -m webdata.build on broken input and unusable --out directories: an unreadable input file stops the build
with one message naming file and line, a box outside its image is skipped and counted, and an --out that is a
file or holds someone else's files is refused; in every refused case nothing is created or overwritten."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from webdata import build as B
from webdata.synthetic import write_png

HEADER = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
GOOD = HEADER + "img1,R1,Cardiomegaly,10,10,30,30\nimg2,R2,No finding,,,,\n"


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of the real command-line entry."""
    code = B.main([*argv, "--no-progress", "--workers", "1"])
    return code, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` (hidden ones too) with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def vindr(tmp_path: Path, csv_text: str | bytes, name: str = "ann.csv") -> tuple[Path, Path]:
    """A VinDr-style CSV plus a directory with img1.png (50 wide, 40 high)."""
    images = tmp_path / "images"
    write_png(images / "img1.png", np.full((40, 50), 100, np.uint8))
    csv_path = tmp_path / name
    data = csv_text.encode() if isinstance(csv_text, str) else csv_text
    if name.endswith(".gz"):
        data = gzip.compress(data)
    csv_path.write_bytes(data)
    return csv_path, images


# ----------------------------------------------------------------------------------------------------------------------
# Unreadable input files: one message naming file and line, exit status 2, nothing written
# ----------------------------------------------------------------------------------------------------------------------

CSV_CASES = {
    "unterminated quote": (
        HEADER + 'img1,R1,Cardiomegaly,10,10,30,30\nimg2,R2,"No finding,,,,\nimg3,R1,Nodule,1,1,5,5\n',
        "ann.csv line 3: unterminated quoted field: a quote opened in this row is never closed (the field runs "
        "to the end of the file, line 4) (csv: unexpected end of data)"),
    "text after a closing quote": (
        HEADER + 'img1,R1,"Cardio"megaly,10,10,30,30\n',
        "ann.csv line 2: text after the closing quote of a quoted field (a quote inside a field is written \"\") "
        "(csv: ',' expected after '\"')"),
    "unquoted comma shifts the columns": (
        HEADER + "img1,R1,Cardiomegaly,10,10,30,30\nimg2,R2,Nodule, mass,1,1,5,5\n",
        "ann.csv line 3: 8 fields, but the header (line 1) has 7; a value holding a comma must be quoted"),
    "row with too few fields": (
        HEADER + "img1,R1,Cardiomegaly,10,10,30\n",
        "ann.csv line 2: 6 fields, but the header (line 1) has 7; a value holding a comma must be quoted"),
    "bytes that are not UTF-8": (
        (HEADER + "img1,R1,Cardiomegaly,10,10,30,30\nimg1,R2,Cardiom").encode() + b"\xe9galy,1,1,5,5\n",
        "ann.csv line 3: not UTF-8 text (byte 0xe9 at byte 16 of the line); convert the file to UTF-8"),
    "missing column": (
        "image_id,rad_id,class_name,x_min,y_min,x_max\nimg1,R1,Cardiomegaly,10,10,30\n",
        "ann.csv line 1: missing column(s) ['y_max']; the header has ['image_id', 'rad_id', 'class_name', "
        "'x_min', 'y_min', 'x_max']"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_broken_csv_stops_with_file_and_line_and_creates_nothing(tmp_path, capsys, case):
    text, expected = CSV_CASES[case]
    csv_path, images = vindr(tmp_path, text)
    out = tmp_path / "shards" / "vindr"  # neither directory exists yet
    code, err = run(["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out)], capsys)
    assert code == B.EXIT_USAGE == 2
    assert err.strip().splitlines()[-1] == f"error: {tmp_path}/{expected}"
    assert "Traceback" not in err
    assert not (tmp_path / "shards").exists()


def test_truncated_gzip_csv_is_reported_with_its_line(tmp_path, capsys):
    csv_path, images = vindr(tmp_path, GOOD * 200, "ann.csv.gz")
    csv_path.write_bytes(csv_path.read_bytes()[:-12])  # cut off the gzip trailer (CRC and length)
    out = tmp_path / "out"
    code, err = run(["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {csv_path} line ") and "the compressed file is corrupt or truncated" in last
    assert not out.exists()


def test_broken_csv_leaves_an_existing_shard_set_untouched_even_with_overwrite(tmp_path, capsys):
    csv_path, images = vindr(tmp_path, GOOD)
    out = tmp_path / "vindr"
    argv = ["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out)]
    assert run(argv, capsys)[0] == 0
    before = snapshot(out)
    assert "vindr-000000.tar" in before and "manifest.json" in before
    csv_path.write_text(GOOD + 'img3,R1,"Nodule,1,1,5,5\n')
    code, err = run([*argv, "--overwrite"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: {csv_path} line 4: unterminated quoted field: a quote opened in this row is never closed (the "
        "field runs to the end of the file, line 4) (csv: unexpected end of data)")
    assert snapshot(out) == before  # the old shards, manifest and skipped.jsonl, byte for byte; no .parts left


def test_broken_split_file_and_nih_box_list_name_their_line(tmp_path, capsys):
    csv_path, images = vindr(tmp_path, GOOD)
    split = tmp_path / "annotations_test.csv"
    split.write_text('image_id,rad_id\nimg9,R1\n"img8,R2\n')
    out = tmp_path / "empty"
    out.mkdir()
    code, err = run(["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out), "--split",
                     "train", "--split-file", f"test={split}"], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: {split} line 3: unterminated quoted field: a quote opened in this row is never closed (the field "
        "runs to the end of the file, line 3) (csv: unexpected end of data)")
    assert list(out.iterdir()) == []  # the existing empty directory stays empty

    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Mass,1,2,3,4,,,\n"
                    "00000002_000.png,Nodule,5,6,7\n")
    code, err = run(["nih-boxes", "--input", str(bbox), "--images", str(images), "--out", str(out)], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: {bbox} line 3: 5 values, expected 6 (image, label, x, y, w, h)")
    assert list(out.iterdir()) == []


def test_jsonl_with_bytes_that_are_not_utf8(tmp_path, capsys):
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_bytes(b'{"unique_id": "a"}\n{"unique_id": "b\xff"}\n')
    out = tmp_path / "out"
    code, err = run(["chexone", "--input", str(jsonl), "--out", str(out)], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: {jsonl} line 2: not UTF-8 text (byte 0xff at byte 17 of the line); convert the file to UTF-8")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------------
# Boxes outside the image: the sample is skipped and counted as box_outside_image, with its row
# ----------------------------------------------------------------------------------------------------------------------


def test_vindr_box_outside_the_image_is_skipped_and_counted(tmp_path, capsys):
    images = tmp_path / "images"
    for name in ("img1", "img2"):
        write_png(images / f"{name}.png", np.full((40, 50), 100, np.uint8))  # 50 wide, 40 high
    csv_path = tmp_path / "ann.csv"
    csv_path.write_text(HEADER +
                        "img1,R1,Cardiomegaly,10,10,30,30\n"       # line 2: inside ...
                        "img1,R2,Cardiomegaly,12,11,60,30\n"       # line 3: ... but R2's box ends at x 60 > 50
                        "img1,R1,Nodule/Mass,0,0,50,40\n"          # line 4: exactly the image: inside
                        "img2,R1,Pleural effusion,-2,5,20,25\n"    # line 5: negative x
                        "img2,R1,Aortic enlargement,5,5,20,25\n"   # line 6: inside
                        "img2,R1,Atelectasis,5,5,5,25\n")          # line 7: empty box
    out = tmp_path / "vindr"
    code, err = run(["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out),
                     "--negatives", "0"], capsys)
    assert code == 0
    assert f"skipped 3: box_outside_image=2, bad_box=1 (each with its file/row: {out}/skipped.jsonl)" in err
    m = json.loads((out / "manifest.json").read_text())
    assert m["skipped"] == {"bad_box": 1, "box_outside_image": 2} and m["skipped_total"] == 3
    assert m["task_counts"] == {"abnormality_grounding": 2}
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped == [
        {"where": f"{csv_path}:7", "reason": "bad_box", "detail": "empty box [5.0, 5.0, 5.0, 25.0]"},
        {"where": f"{csv_path}:3", "reason": "box_outside_image",
         "detail": "img1 cardiomegaly: box (12,11)-(60,30) is outside the 50x40 image"},
        {"where": f"{csv_path}:5", "reason": "box_outside_image",
         "detail": "img2 pleural effusion: box (-2,5)-(20,25) is outside the 50x40 image"},
    ]
    from chexone.data.shards import build_eval_dataset

    got = {s.id: s.answer for s in build_eval_dataset(str(out), max_skip_fraction=0.0)}
    # (0,0,50,40) -> 0,0,100,100 -> clamped to 99 ; (5,5,20,25) -> 10, 12.5 -> 12 (half to even), 40, 62.5 -> 62
    assert got == {"vindr-cxr_img1_nodule/mass": "<|ref|>nodule/mass<|/ref|><|box|>(0,0),(99,99)<|/box|>",
                   "vindr-cxr_img2_aortic-enlargement":
                       "<|ref|>aortic enlargement<|/ref|><|box|>(10,12),(40,62)<|/box|>"}


def test_nih_and_ms_cxr_boxes_outside_the_image(tmp_path, capsys):
    images = tmp_path / "nih"
    write_png(images / "images_001" / "images" / "00000001_000.png", np.zeros((100, 100), np.uint8))
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000001_000.png,Mass,90,10,20,5,,,\n"       # x + w = 110 > 100
                    "00000001_000.png,Nodule,10,10,20,30,,,\n")
    out = tmp_path / "nih_out"
    assert run(["nih-boxes", "--input", str(bbox), "--images", str(images), "--out", str(out)], capsys)[0] == 0
    assert json.loads((out / "manifest.json").read_text())["skipped"] == {"box_outside_image": 1}
    assert [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()] == [
        {"where": f"{bbox}:2", "reason": "box_outside_image",
         "detail": "00000001_000.png mass: box (90,10)-(110,15) is outside the 100x100 image"}]
    assert json.loads((out / "sizes.json").read_text()) == {"nih_out-000000.tar": 1}

    root = tmp_path / "mimic-cxr-jpg"
    write_png(root / "files/p15/p15000001/s50000001/dcmA.png", np.full((50, 100), 90, np.uint8))
    mscxr = tmp_path / "MS_CXR.csv"
    path = "files/p15/p15000001/s50000001/dcmA.dcm"
    mscxr.write_text("dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
                     f"dcmA,Pneumonia,right opacity,{path},10,10,20,20,200,100\n"
                     f"dcmA,Pneumonia,right opacity,{path},100,50,20,60,200,100\n"  # y + h = 110 > 100
                     f"dcmA,Pleural effusion,left effusion,{path},150,20,40,30,200,100\n")
    out = tmp_path / "mscxr"
    assert run(["ms-cxr", "--input", str(mscxr), "--images", str(root), "--out", str(out)], capsys)[0] == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["skipped"] == {"box_outside_image": 1} and m["total"] == 1
    assert [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()] == [
        {"where": f"{mscxr}:3", "reason": "box_outside_image",
         "detail": "dcmA 'right opacity': box (100,50)-(120,110) is outside the 200x100 image"}]
    from chexone.data.shards import build_eval_dataset

    (sample,) = build_eval_dataset(str(out), max_skip_fraction=0.0)
    # (150,20,190,50) on 200x100: 75, 20, 95, 50
    assert sample.answer == "<|ref|>left effusion<|/ref|><|box|>(75,20),(95,50)<|/box|>"


# ----------------------------------------------------------------------------------------------------------------------
# --out: a file, a foreign directory; --overwrite replaces only what the builder wrote
# ----------------------------------------------------------------------------------------------------------------------


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    csv_path, images = vindr(tmp_path, GOOD)
    target = tmp_path / "target"
    target.write_text("keep me")
    before = snapshot(tmp_path)
    for out, message in ((target, f"--out {target} is a file, not a directory; choose a new or empty directory"),
                         (target / "sub", f"--out {target / 'sub'}: {target} is a file, not a directory")):
        for extra in ([], ["--overwrite"]):
            code, err = run(["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out),
                             *extra], capsys)
            assert code == 2 and err.strip().splitlines() == [f"error: {message}"]
    assert snapshot(tmp_path) == before


def test_foreign_directory_is_refused_even_with_overwrite(tmp_path, capsys):
    csv_path, images = vindr(tmp_path, GOOD)
    out = tmp_path / "mine"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo.txt").write_text("x")
    (out / "mine-000000.tar").write_bytes(b"not ours?")
    (out / "results.csv").write_text("a,b\n")
    (out / "sizes.json").write_text("{}")
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        code, err = run(["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out), *extra],
                        capsys)
        assert code == 2 and err.strip().splitlines() == [
            f"error: --out {out} is not empty and was not made by webdata.build (it holds notes, results.csv); "
            "choose a new or empty directory (--overwrite only replaces a shard set this builder wrote)"]
        assert snapshot(out) == before

    other = tmp_path / "demo"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"builder": "webdata.demo", "shards": ["demo-000000.tar"]}))
    code, err = run(["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(other),
                     "--overwrite"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: --out {other} holds a manifest.json not written by webdata.build (another shard set?); choose a "
        "new or empty directory"]
    assert [p.name for p in other.iterdir()] == ["manifest.json"]


def test_overwrite_replaces_only_the_builders_files(tmp_path, capsys):
    csv_path, images = vindr(tmp_path, GOOD)
    out = tmp_path / "vindr"
    base = ["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out)]
    assert run([*base, "--prefix", "old"], capsys)[0] == 0
    (out / "README.md").write_text("my notes")           # a user's file next to a finished shard set
    (out / "old-final.tar").write_bytes(b"user archive")  # not a shard name
    # the same arguments: nothing to do, the user's files are no obstacle
    code, err = run([*base, "--prefix", "old"], capsys)
    assert code == 0 and "already built with these arguments (1 samples); nothing to do" in err
    # other arguments need --overwrite; it removes the old shards (named in the old manifest), nothing else
    code, err = run([*base, "--prefix", "new"], capsys)
    assert code == 2 and "pass --overwrite to replace it" in err
    assert run([*base, "--prefix", "new", "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "manifest.json", "new-000000.tar", "old-final.tar",
                                                     "sizes.json", "skipped.jsonl"]
    assert (out / "README.md").read_text() == "my notes" and (out / "old-final.tar").read_bytes() == b"user archive"


def test_unfinished_build_still_resumes(tmp_path, capsys, monkeypatch):
    csv_path, images = vindr(tmp_path, GOOD)
    out = tmp_path / "vindr"
    argv = ["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out)]

    def crash(*a, **k):
        raise KeyboardInterrupt

    real = B.run_partition
    monkeypatch.setattr(B, "run_partition", crash)
    code, err = run(argv, capsys)
    assert code == 130 and (out / ".parts" / "plan.json").is_file() and not (out / ".parts.new").exists()
    monkeypatch.setattr(B, "run_partition", real)
    code, err = run(argv, capsys)
    assert code == 0 and f"resuming the build in {out}" in err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "sizes.json", "skipped.jsonl",
                                                     "vindr-000000.tar"]
