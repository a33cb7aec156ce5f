"""python -m webdata.build end to end, one test per source, on fixtures in the real column layouts (header lines and
rows as in the released CSVs; images synthesised). Box answers are compared with grid values computed by hand."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from chexone.data.shards import build_eval_dataset
from webdata import build as B
from webdata.synthetic import phantom, vindr_dataset, write_dicom, write_jpeg, write_png

pytest.importorskip("pydicom")


def run(argv: list[str]) -> int:
    return B.main([*argv, "--no-progress"])


def samples(out: Path) -> dict:
    return {s.id: s for s in build_eval_dataset(str(out), max_skip_fraction=0.0)}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def skipped(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]


def tar_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.glob("*.tar")))


def gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# VinDr-CXR
# ----------------------------------------------------------------------------------------------------------------------

# Kaggle/torchxrayvision layout (vinbigdata-train.csv): image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
VINDR_KAGGLE = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
aaa,Cardiomegaly,3,R8,123.4,80.0,456.7,600.0
aaa,Cardiomegaly,3,R9,130.0,90.0,470.0,610.0
aaa,Nodule/Mass,8,R10,700.0,104.0,750.0,152.0
aaa,Nodule/Mass,8,R10,200.0,504.0,260.0,560.0
bbb,No finding,14,R11,,,,
bbb,No finding,14,R7,,,,
ccc,Pleural effusion,10,R9,10.0,10.0,20.0,20.0
ddd,Aortic enlargement,0,R10,1264.0,743.0,1611.0,1019.0
eee,Lung Opacity,7,R8,,,,
"""


def test_vindr_boxes_by_hand_shared_image_dicom_privacy_and_broken_files(tmp_path):
    images = tmp_path / "train"
    arr = np.zeros((800, 1000), np.uint16)
    arr[:, 500:] = 4095  # left half 0, right half 4095
    write_dicom(images / "aaa.dicom", arr, photometric="MONOCHROME1", window=(2048, 4096),
                patient_name="DOE^JANE", patient_id="SECRET-ID-123")
    write_dicom(images / "bbb.dicom", phantom(64, 64), window=(2048, 4096))
    (images / "ccc.dicom").write_bytes(b"\x00" * 128 + b"DICM" + b"garbage" * 10)  # broken; ddd: missing
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(VINDR_KAGGLE)
    out = tmp_path / "shards" / "vindr_train"
    assert run(["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out),
                "--workers", "1"]) == 0

    got = samples(out)
    cardio = got["vindr-cxr_aaa_cardiomegaly"]
    # R8 (123.4,80,456.7,600) and R9 (130,90,470,610) overlap -> union (123.4,80,470,610) on 1000x800:
    # x1 12.34->12, y1 10->10, x2 47->47, y2 76.25->76
    assert cardio.answer == "<|ref|>cardiomegaly<|/ref|><|box|>(12,10),(47,76)<|/box|>"
    assert cardio.meta["boxes"] == [[12, 10, 47, 76]] and cardio.meta["image_size"] == [1000, 800]
    assert cardio.question == "Detect cardiomegaly in the given image." and cardio.task == "abnormality_grounding"
    # two separate nodules, sorted by x1: (200,504,260,560)->(20,63),(26,70); (700,104,750,152)->(70,13),(75,19)
    nodule = next(s for k, s in got.items() if s.meta.get("ref_name") == "nodule/mass")
    assert nodule.answer == ("<|ref|>nodule/mass<|/ref|><|box|>(20,63),(26,70)<|/box|>"
                             "<|ref|>nodule/mass<|/ref|><|box|>(70,13),(75,19)<|/box|>")
    # one negative per image among the classes that have boxes somewhere and are absent from it ("lung opacity"
    # has no box anywhere: never asked about)
    negatives = {k: s for k, s in got.items() if k.endswith("_neg")}
    assert len(negatives) == 2 and all(s.answer == f"No {s.meta['ref_name']} detected." for s in negatives.values())
    assert {s.meta["ref_name"] for k, s in negatives.items() if "_aaa_" in k} <= {"aortic enlargement",
                                                                                "pleural effusion"}
    assert {s.meta["ref_name"] for k, s in negatives.items() if "_bbb_" in k} <= {
        "aortic enlargement", "pleural effusion", "cardiomegaly", "nodule/mass"}
    assert len(got) == 4
    # images: resized to the budget, MONOCHROME1 inverted (value 0 -> white), one stored copy for aaa's 3 samples
    img = np.asarray(cardio.images[0])
    assert cardio.images[0].size == (572, 457) and img[200, 10] == 255 and img[200, 560] == 0
    m = manifest(out)
    assert m["images"] == {"loaded": 2, "stored_per_sample": 1, "stored_shared": 1}
    assert m["task_counts"] == {"abnormality_grounding": 4} and m["total"] == 4
    assert m["source"] == "vindr-cxr" and m["builder_version"] == B.BUILDER_VERSION
    assert m["arguments"]["merge"] == "union" and m["arguments"]["input"] == [str(csv_path)]
    assert m["skipped"] == {"bad_image": 1, "missing_image": 2, "no_box": 1} and m["skipped_total"] == 4
    by_reason = {(s["reason"], s["detail"].split(":")[0].rpartition("/")[2]): s for s in skipped(out)}
    assert {("bad_image", "ccc.dicom"), ("missing_image", "ddd.dicom"), ("missing_image", "eee.dicom")} < set(by_reason)
    assert next(s for s in skipped(out) if s["reason"] == "no_box")["where"].endswith("train.csv:10")
    # no DICOM metadata in the shards
    data = tar_bytes(out)
    assert b"DOE^JANE" not in data and b"SECRET-ID-123" not in data and b"DOE" not in data
    assert json.loads((out / "sizes.json").read_text()) == {"vindr_train-000000.tar": 4}


# PhysioNet layout (annotations_train.csv / annotations_test.csv): image_id,rad_id,class_name,x_min,...
VINDR_PHYSIONET = """image_id,rad_id,class_name,x_min,y_min,x_max,y_max
img1,R2,Cardiomegaly,10,10,30,30
img2,R3,No finding,,,,
img3,R2,Pleural effusion,5,5,20,25
"""


def test_vindr_physionet_layout_and_leak_refusal(tmp_path, capsys):
    images = tmp_path / "images"
    for name in ("img1", "img2", "img3"):
        write_png(images / f"{name}.png", np.full((40, 50), 100, np.uint8))
    csv_path = tmp_path / "annotations_train.csv"
    csv_path.write_text(VINDR_PHYSIONET)
    test_csv = tmp_path / "annotations_test.csv"
    test_csv.write_text("image_id,rad_id,class_name,x_min,y_min,x_max,y_max\nimg3,R1,Pleural effusion,5,5,20,25\n")
    out = tmp_path / "vindr"
    argv = ["vindr-cxr", "--input", str(csv_path), "--images", str(images), "--out", str(out), "--split", "train",
            "--split-file", f"test={test_csv}", "--negatives", "0"]
    assert run(argv) == B.EXIT_LEAK
    err = capsys.readouterr().err
    assert "refusing to build split 'train'" in err and "image img3 is in the official test split" in err
    assert not list(out.glob("*.tar")) and not (out / "manifest.json").exists()
    overlaps = [json.loads(x) for x in (out / "overlaps.jsonl").read_text().splitlines()]
    assert overlaps == [{"uid": "vindr-cxr_img3", "where": f"{csv_path}:4",
                         "ids": [{"kind": "image", "id": "img3", "official_split": "test"}]}]

    assert run([*argv, "--on-overlap", "drop"]) == 0
    got = samples(out)
    assert sorted(got) == ["vindr-cxr_img1_cardiomegaly"]
    # 40x50 image: (10,10,30,30) -> x 20,60 ; y 25,75
    assert got["vindr-cxr_img1_cardiomegaly"].answer == "<|ref|>cardiomegaly<|/ref|><|box|>(20,25),(60,75)<|/box|>"
    m = manifest(out)
    assert m["skipped"] == {"split_overlap": 1}
    assert m["split_check"]["overlaps"] == 1 and m["split_check"]["unlisted_units"] == 2


# ----------------------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# ----------------------------------------------------------------------------------------------------------------------

# The first lines of BBox_List_2017.csv as released (note the header's dangling commas) and of Data_Entry_2017_v2020.
NIH_BBOX = """Image Index,Finding Label,Bbox [x,y,w,h],,,
00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661
00014716_007.png,Atelectasis,686.101694915254,131.543498411017,185.491525423729,313.491525423729
00013118_008.png,Infiltrate,100.0,120.0,300.0,50.0
00014716_007.png,Mass,100.0,120.0,0.0,50.0
"""
NIH_ENTRY = """Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,\
OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]
00013118_008.png,Atelectasis|Infiltration,8,13118,50,M,PA,2992,2991,0.143,0.143
00014716_007.png,Atelectasis,7,14716,60,F,AP,2500,2048,0.168,0.168
"""


def test_nih_boxes_by_hand_negatives_and_test_list(tmp_path, capsys):
    images = tmp_path / "nih"
    write_png(images / "images_002" / "images" / "00013118_008.png", np.zeros((1024, 1024), np.uint8))
    write_png(images / "images_003" / "images" / "00014716_007.png", np.zeros((1024, 1024), np.uint8))
    bbox = gz(tmp_path / "BBox_List_2017.csv.gz", NIH_BBOX)
    entry = tmp_path / "Data_Entry_2017_v2020.csv"
    entry.write_text(NIH_ENTRY)
    out = tmp_path / "nih_out"
    argv = ["nih-boxes", "--input", str(bbox), "--images", str(images), "--labels", str(entry), "--out", str(out)]
    assert run(argv) == 0
    got = samples(out)
    # x 225.08/1024*100 = 21.98 -> 22 ; y 547.02/10.24 = 53.42 -> 53 ; x2 311.86/10.24 = 30.46 -> 30 ;
    # y2 626.21/10.24 = 61.15 -> 61
    assert got["nih_00013118_008_atelectasis"].answer == "<|ref|>atelectasis<|/ref|><|box|>(22,53),(30,61)<|/box|>"
    # 686.10/10.24 = 67.00 -> 67 ; 131.54/10.24 = 12.85 -> 13 ; 871.59/10.24 = 85.12 -> 85 ; 445.03/10.24 = 43.46 -> 43
    assert got["nih_00014716_007_atelectasis"].answer == "<|ref|>atelectasis<|/ref|><|box|>(67,13),(85,43)<|/box|>"
    # (100,120,w300,h50): 9.77->10, 11.72->12, 39.06->39, 16.60->17
    assert got["nih_00013118_008_infiltrate"].answer == "<|ref|>infiltrate<|/ref|><|box|>(10,12),(39,17)<|/box|>"
    # negatives from Data_Entry: 00013118_008 has Atelectasis|Infiltration -> no box class is absent -> no negative;
    # 00014716_007 lacks Infiltration ("Infiltrate" in the box list) -> "No infiltrate detected."
    negs = sorted(k for k in got if k.endswith("_neg"))
    assert negs == ["nih_00014716_007_infiltrate_neg"]
    assert got[negs[0]].answer == "No infiltrate detected."
    assert manifest(out)["skipped"] == {"bad_box": 1}  # the zero-width Mass box
    assert skipped(out)[0]["where"].endswith("BBox_List_2017.csv.gz:5")
    # every boxed NIH image is in the official test list: a train build is refused, a test build is fine
    test_list = tmp_path / "test_list.txt"
    test_list.write_text("00013118_008.png\n00014716_007.png\n")
    out2 = tmp_path / "nih_train"
    assert run([*argv[:-1], str(out2), "--split", "train", "--split-file", f"test={test_list}"]) == B.EXIT_LEAK
    assert "2 unit(s) belong to another official split" in capsys.readouterr().err
    out3 = tmp_path / "nih_test"
    assert run([*argv[:-1], str(out3), "--split", "test", "--split-file", f"test={test_list}"]) == 0
    assert len(samples(out3)) == 4


# ----------------------------------------------------------------------------------------------------------------------
# MS-CXR
# ----------------------------------------------------------------------------------------------------------------------

MSCXR = """dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height
dcmA,Pneumonia,right lower lobe opacity,files/p15/p15000001/s50000001/dcmA.dcm,100,300,500,600,2544,3056
dcmA,Pneumonia,right lower lobe opacity,files/p15/p15000001/s50000001/dcmA.dcm,1500,1000,400,400,2544,3056
dcmA,Pleural effusion,small left effusion,files/p15/p15000001/s50000001/dcmA.dcm,1800,2500,300,200,2544,3056
dcmB,Pneumothorax,apical pneumothorax,files/p15/p15000002/s50000002/dcmB.dcm,10,10,100,100,2000,2000
"""


def test_ms_cxr_phrases_by_hand_and_split_selection(tmp_path):
    root = tmp_path / "mimic-cxr-jpg"
    write_jpeg(root / "files/p15/p15000001/s50000001/dcmA.jpg", np.full((305, 254), 90, np.uint8))
    write_jpeg(root / "files/p15/p15000002/s50000002/dcmB.jpg", np.full((200, 200), 90, np.uint8))
    csv_path = tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv"
    csv_path.write_text(MSCXR)
    split = gz(tmp_path / "mimic-cxr-2.0.0-split.csv.gz",
               "dicom_id,study_id,subject_id,split\ndcmA,50000001,15000001,train\ndcmB,50000002,15000002,test\n")
    out = tmp_path / "mscxr"
    assert run(["ms-cxr", "--input", str(csv_path), "--images", str(root), "--out", str(out), "--split", "train",
                "--split-file", str(split)]) == 0
    got = samples(out)
    assert sorted(got) == ["ms-cxr_dcmA_0", "ms-cxr_dcmA_1"]  # dcmB is a test study: not selected
    # boxes are normalised by the CSV's image size (2544 x 3056), not the JPEG's:
    # (100,300,600,900): 3.93->4, 9.82->10, 23.58->24, 29.45->29 ; (1500,1000,1900,1400): 58.96->59, 32.72->33,
    # 74.69->75, 45.81->46
    assert got["ms-cxr_dcmA_0"].answer == ("<|ref|>right lower lobe opacity<|/ref|><|box|>(4,10),(24,29)<|/box|>"
                                           "<|ref|>right lower lobe opacity<|/ref|><|box|>(59,33),(75,46)<|/box|>")
    assert got["ms-cxr_dcmA_0"].task == "phrase_grounding"
    assert got["ms-cxr_dcmA_0"].question == "Locate the following phrase in the given image: right lower lobe opacity"
    assert got["ms-cxr_dcmA_1"].meta["category"] == "Pleural effusion"
    assert manifest(out)["images"]["stored_shared"] == 1  # dcmA once for its two phrases


# ----------------------------------------------------------------------------------------------------------------------
# MIMIC-CXR
# ----------------------------------------------------------------------------------------------------------------------

MIMIC_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
                "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                "PatientOrientationCodeSequence_CodeMeaning\n")
REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___M with cough.

 COMPARISON:  {comparison}

 FINDINGS:

 {findings}

 IMPRESSION:

 {impression}
"""


def _mimic_fixture(root: Path) -> None:
    root.mkdir(parents=True)
    rows = [  # dicom, subject, study, view, date, time
        ("d1pa", "10000032", "50000001", "PA", "21800101", "101010.000"),
        ("d2pa", "10000032", "50000002", "PA", "21810505", "090000"),
        ("d2lat", "10000032", "50000002", "LATERAL", "21810505", "090000"),
        ("d3pa", "10000099", "59999999", "PA", "21800101", "080000"),
        ("d4ap", "10000500", "50000500", "AP", "21800101", "080000"),
        ("d5ap", "10000600", "50000600", "AP", "21800101", "080000"),
    ]
    gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_HEADER + "".join(
        f"{d},{s},{st},CHEST (PA AND LAT),{v},3056,2544,{date},{time},CHEST (PA AND LAT),postero-anterior,Erect\n"
        for d, s, st, v, date, time in rows))
    gz(root / "mimic-cxr-2.0.0-split.csv.gz", "dicom_id,study_id,subject_id,split\n" + "".join(
        f"{d},{st},{s},{'test' if s == '10000099' else 'train'}\n" for d, s, st, *_ in rows))
    for d, s, st, *_ in rows:
        write_jpeg(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg",
                   np.full((60, 50), int(d[1]) * 40, np.uint8))
    reports = {
        ("10000032", "50000001"): REPORT.format(comparison="None.", findings="Lungs are clear.",
                                                impression="No acute process."),
        ("10000032", "50000002"): REPORT.format(comparison="___", findings="New right basilar opacity.",
                                                impression="Right lower lobe pneumonia."),
        ("10000099", "59999999"): REPORT.format(comparison="None.", findings="Test study.", impression="Test."),
        ("10000500", "50000500"): " WET READ: ___ 5:14 PM\n NOTIFICATION: called to Dr. ___.\n",
    }  # 50000600 has no report file
    for (s, st), text in reports.items():
        p = root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}.txt"
        p.write_text(text)


def test_mimic_sections_prior_split_and_skips(tmp_path, capsys):
    root = tmp_path / "mimic"
    _mimic_fixture(root)
    out = tmp_path / "mimic_train"
    assert run(["mimic-cxr", "--input", str(root), "--out", str(out), "--split", "train", "--prior", "optional",
                "--views", "frontal+lateral"]) == 0
    got = samples(out)
    assert sorted(got) == ["mimic-cxr_s50000001_findings", "mimic-cxr_s50000001_impression",
                           "mimic-cxr_s50000002_findings", "mimic-cxr_s50000002_impression"]
    first, second = got["mimic-cxr_s50000001_findings"], got["mimic-cxr_s50000002_impression"]
    assert first.answer == "Lungs are clear." and first.meta["indication"] == "___M with cough."
    assert first.question.startswith("Write the findings section") and len(first.images) == 1
    assert "prior_study_id" not in first.meta
    # the second study: prior PA first (pixel value 1*40), then its own PA (2*40) and lateral (2*40)
    assert second.answer == "Right lower lobe pneumonia." and second.meta["prior_study_id"] == "50000001"
    assert [int(np.asarray(im).mean()) for im in second.images] == [40, 80, 80]
    assert second.meta["views"] == ["PA", "LATERAL"] and second.question.startswith("The first image is from the prior")
    assert second.meta["report"] == "FINDINGS: New right basilar opacity.\nIMPRESSION: Right lower lobe pneumonia."
    m = manifest(out)
    assert m["skipped"] == {"missing_report": 1, "no_section": 1}
    assert m["split_check"]["overlaps"] == 0 and m["split"] == "train"
    assert m["images"]["stored_shared"] == 3 and m["images"]["stored_per_sample"] == 0
    where = {s["reason"]: s["where"] for s in skipped(out)}
    assert where["no_section"].endswith("s50000500.txt") and "50000600" in where["missing_report"]
    # the test split holds only the test subject
    out2 = tmp_path / "mimic_test"
    assert run(["mimic-cxr", "--input", str(root), "--out", str(out2), "--split", "test"]) == 0
    assert sorted(samples(out2)) == ["mimic-cxr_s59999999_findings", "mimic-cxr_s59999999_impression"]
    # --split without a split file is an error, not a silent unchecked build
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    assert run(["mimic-cxr", "--input", str(root), "--out", str(tmp_path / "x"), "--split", "train"]) == B.EXIT_USAGE
    assert "needs the official split file" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# CheXOne release JSON and CheXinstruct
# ----------------------------------------------------------------------------------------------------------------------

SUFFIX = " Please reason step by step, and put your final answer within \\boxed{{}}."


def test_chexone_release_records(tmp_path, capsys):
    root = tmp_path / "data"
    img = "mimic-cxr-jpg/files/p10/p10000032/s50414267/02aa804e.jpg"
    test_img = "mimic-cxr-jpg/files/p19/p19999999/s59999999/ffff.jpg"
    for rel in (img, test_img):
        write_jpeg(root / rel, np.full((30, 40), 120, np.uint8))
    records = [
        {"unique_id": "[Close-Ended VQA] [ReXVQA] [1]", "images": [img], "task_name": "Close-Ended VQA",
         "messages": [{"role": "user", "content": "<image>Is there a pleural effusion? Options:\n(A) Yes\n(B) No"
                       + SUFFIX},
                      {"role": "assistant", "content": "**Thinking Process:** 1. The costophrenic angles are sharp."
                       "\n**Final Answer:** \\boxed{(B) No}"}],
         "solution": "(B) No"},
        {"unique_id": "[Abnormality_Grounding] [VinDr-CXR] [2]", "images": [img],
         "messages": [{"from": "human", "value": "Detect cardiomegaly in the given image."},
                      {"from": "gpt", "value": "<|ref|>cardiomegaly<|/ref|><|box|>(30,40),(70,100)<|/box|>"}]},
        {"unique_id": "[Findings Generation] [MIMIC-CXR] [3]", "images": [{"path": img}], "task_name":
         "Findings Generation", "messages": [{"role": "user", "content": [{"type": "text", "text":
                                              "Write the findings."}]}, {"role": "assistant", "content": "Clear."}],
         "solution": "Lungs are clear."},
        {"unique_id": "[Report Evaluation] [ReXVal] [4]", "images": [img], "task_name": "Report Evaluation",
         "messages": [{"role": "user", "content": "Rate."}, {"role": "assistant", "content": "3"}]},
        {"unique_id": "[View Classification] [MIMIC-CXR] [5]", "images": [test_img], "task_name": "View Classification",
         "messages": [{"role": "user", "content": "Which view?\n(A) PA\n(B) AP\n(C) Lateral"},
                      {"role": "assistant", "content": "(A) PA"}], "solution": "(A) PA"},
    ]
    path = tmp_path / "chexone_train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records[:4]) + "\n{not json\n" + json.dumps(records[4]) + "\n")
    split = gz(tmp_path / "split.csv.gz", "dicom_id,study_id,subject_id,split\n02aa804e,50414267,10000032,train\n"
                                           "ffff,59999999,19999999,test\n")
    out = tmp_path / "chexone"
    argv = ["chexone", "--input", str(path), "--image-root", str(root), "--out", str(out), "--split", "train",
            "--split-file", str(split)]
    assert run(argv) == B.EXIT_LEAK
    assert "study 59999999 is in the official test split" in capsys.readouterr().err
    assert run([*argv, "--on-overlap", "drop"]) == 0
    got = samples(out)
    assert sorted(got) == ["[Abnormality_Grounding] [VinDr-CXR] [2]", "[Close-Ended VQA] [ReXVQA] [1]",
                           "[Findings Generation] [MIMIC-CXR] [3]"]
    vqa = got["[Close-Ended VQA] [ReXVQA] [1]"]
    assert (vqa.task, vqa.answer, vqa.options) == ("close_vqa", "B", ["Yes", "No"])
    assert vqa.question == "Is there a pleural effusion?\nOptions:" and vqa.dataset == "ReXVQA"
    assert vqa.reasoning.endswith("\\boxed{(B) No}")
    box = got["[Abnormality_Grounding] [VinDr-CXR] [2]"]
    assert (box.task, box.answer) == ("abnormality_grounding",
                                      "<|ref|>cardiomegaly<|/ref|><|box|>(30,40),(70,99)<|/box|>")
    assert got["[Findings Generation] [MIMIC-CXR] [3]"].answer == "Lungs are clear."
    m = manifest(out)
    assert m["skipped"] == {"bad_json": 1, "split_overlap": 1, "unmapped_task": 1}
    assert m["images"] == {"loaded": 1, "stored_per_sample": 0, "stored_shared": 1}  # 4 records, one image, once
    assert any(s["where"] == f"{path}:5" for s in skipped(out))


def test_chexinstruct_records(tmp_path):
    root = tmp_path / "imgs"
    write_png(root / "chestxray14/00000001_000.png", np.full((32, 32), 50, np.uint8))
    write_png(root / "vindr/x1.png", np.full((32, 32), 60, np.uint8))
    records = [
        {"unique_id": "[Image Classification] [ChestXray14] [0]", "study_id": "[chestxray14] [1]",
         "data_source": "ChestXray14", "task_name": "Image Classification",
         "image_path": "chestxray14/00000001_000.png", "region": None, "text": None, "target_text": None,
         "qa_pair": [{"q": "Given the CXR, identify any diseases. Options:\n(7) Effusion\n(19) Cardiomegaly\n(3) Mass"
                          "\nThere may be more than one answer.", "a": "(19) Cardiomegaly, (3) Mass"},
                     {"q": "Perform disease classification", "a": "Cardiomegaly"},
                     {"q": "Which?\n(a) x\n(b) y", "a": "(z)"}]},
        {"unique_id": "[Abnormality Grounding] [VinDr-CXR] [x1]", "study_id": "[vindr-cxr] [x1]",
         "data_source": "VinDr-CXR", "task_name": "Abnormality Grounding", "image_path": ["vindr/x1.png"],
         "qa_pair": [{"q": "Detect nodule/mass in the given image.",
                      "a": "<|ref|>Nodule/Mass<|/ref|><|box|>(60,10),(100,30)<|/box|>"}]},
        {"unique_id": "[Named Entity Recognition] [RadGraph] [9]", "study_id": "[radgraph] [9]",
         "data_source": "RadGraph", "task_name": "Named Entity Recognition", "image_path": None,
         "qa_pair": [{"q": "Extract entities.", "a": "..."}]},
    ]
    path = tmp_path / "chexinstruct.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "ci"
    assert run(["chexinstruct", "--input", str(path), "--image-root", str(root), "--out", str(out)]) == 0
    got = samples(out)
    cls = got["[Image Classification] [ChestXray14] [0] #0"]
    assert (cls.task, cls.answer) == ("disease_classification", "B,C")  # (19) -> (B), (3) -> (C)
    assert cls.options == ["Effusion", "Cardiomegaly", "Mass"]
    assert cls.question == "Given the CXR, identify any diseases.\nThere may be more than one answer.\nOptions:"
    assert got["[Image Classification] [ChestXray14] [0] #1"].task == "open_vqa"
    assert got["[Abnormality Grounding] [VinDr-CXR] [x1]"].answer == \
        "<|ref|>Nodule/Mass<|/ref|><|box|>(60,10),(99,30)<|/box|>"
    m = manifest(out)
    assert m["skipped"] == {"answer_not_an_option": 1, "no_image": 1} and m["total"] == 3
    assert m["task_counts"] == {"abnormality_grounding": 1, "disease_classification": 1, "open_vqa": 1}
    assert m["images"]["stored_shared"] == 1  # the NIH image for its two pairs


# ----------------------------------------------------------------------------------------------------------------------
# Resumability, parallel workers, reruns
# ----------------------------------------------------------------------------------------------------------------------


def test_resume_after_crash_parallel_and_rerun(tmp_path, monkeypatch):
    csv_path = vindr_dataset(tmp_path / "src", images=10, size=(120, 150), seed=1)
    base = ["vindr-cxr", "--input", str(csv_path), "--images", str(tmp_path / "src" / "train"),
            "--partition-size", "2", "--shard-size", "4", "--prefix", "v"]

    def args(out: Path, *extra: str):
        return B.parse_args([*base, "--out", str(out), "--no-progress", *extra])

    B.build(args(tmp_path / "serial", "--workers", "1"), log=lambda m: None)
    reference = tar_bytes(tmp_path / "serial")
    assert manifest(tmp_path / "serial")["units"] == {"planned": 10, "converted": 10}

    # two worker processes: the same bytes
    B.build(args(tmp_path / "parallel", "--workers", "2"), log=lambda m: None)
    assert tar_bytes(tmp_path / "parallel") == reference

    # a crash in the third partition leaves two finished partitions; the rerun converts only the other three
    real = B.run_partition
    calls: list[str] = []

    def crashing(a, part_dir, report=None):
        calls.append(Path(part_dir).name)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(a, part_dir, report)

    monkeypatch.setattr(B, "run_partition", crashing)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        B.build(args(out, "--workers", "1"), log=lambda m: None)
    assert sorted(p.parent.name for p in (out / ".parts").glob("*/DONE.json")) == ["p00000", "p00001"]
    assert not (out / "manifest.json").exists()
    calls.clear()
    monkeypatch.setattr(B, "run_partition", lambda a, d, r=None: calls.append(Path(d).name) or real(a, d, r))
    logs: list[str] = []
    B.build(args(out, "--workers", "1"), log=logs.append)
    assert calls == ["p00002", "p00003", "p00004"] and any("resuming" in m for m in logs)
    assert tar_bytes(out) == reference and not (out / ".parts").exists()

    # a finished build is not redone; other arguments need --overwrite
    calls.clear()
    B.build(args(out, "--workers", "1"), log=logs.append)
    assert calls == [] and "nothing to do" in logs[-1]
    monkeypatch.undo()
    with pytest.raises(B.BuildError, match="--overwrite"):
        B.build(args(out, "--max-pixels", "1000"), log=lambda m: None)
    B.build(args(out, "--max-pixels", "1000", "--overwrite"), log=lambda m: None)
    first = next(iter(samples(out).values()))
    assert first.images[0].width * first.images[0].height <= 1000


def test_shards_hold_only_json_and_png_members(tmp_path):
    csv_path = vindr_dataset(tmp_path / "src", images=3, size=(60, 80), seed=2)
    out = tmp_path / "o"
    assert run(["vindr-cxr", "--input", str(csv_path), "--images", str(tmp_path / "src" / "train"), "--out",
                str(out), "--workers", "1"]) == 0
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                assert m.name.endswith((".json", ".png")) and m.mtime == 0
                if m.name.endswith(".png"):
                    from PIL import Image

                    assert Image.open(io.BytesIO(tf.extractfile(m).read())).mode == "L"


# ----------------------------------------------------------------------------------------------------------------------
# The real annotation files shipped in torchxrayvision's wheel (no images): the planners read all of them
# ----------------------------------------------------------------------------------------------------------------------


def _txrv_data() -> Path | None:
    import importlib.util
    import os

    if os.environ.get("CHEXONE_TXRV_DATA"):
        return Path(os.environ["CHEXONE_TXRV_DATA"])
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@pytest.mark.skipif(_txrv_data() is None, reason="torchxrayvision (or CHEXONE_TXRV_DATA) not available")
def test_planners_read_the_real_nih_and_vinbigdata_csvs(tmp_path):
    import csv

    from webdata.sources.common import SplitIndex, Unit
    from webdata.sources.nih_boxes import NIHBoxesSource
    from webdata.sources.vindr_cxr import VinDrCXRSource

    data = _txrv_data()
    nih_csv = data / "BBox_List_2017.csv.gz"
    args = B.parse_args(["nih-boxes", "--input", str(nih_csv), "--images", str(tmp_path), "--out", str(tmp_path)])
    units = [u for u in NIHBoxesSource(args).plan(None, SplitIndex()) if isinstance(u, Unit)]
    with gzip.open(nih_csv, "rt") as f:
        rows = list(csv.reader(f))[1:]
    assert len(units) == len({r[0] for r in rows}) == 880
    assert sum(len(b) for u in units for b in u.data["findings"].values()) == len(rows) == 984

    vin_csv = data / "vinbigdata-train.csv.gz"
    args = B.parse_args(["vindr-cxr", "--input", str(vin_csv), "--images", str(tmp_path), "--out", str(tmp_path),
                         "--merge", "none"])
    items = list(VinDrCXRSource(args).plan(None, SplitIndex()))
    units = [u for u in items if isinstance(u, Unit)]
    with gzip.open(vin_csv, "rt") as f:
        rows = list(csv.DictReader(f))
    assert len(units) == len({r["image_id"] for r in rows})
    boxed = {(r["image_id"], r["class_name"].lower(), *(float(r[c]) for c in ("x_min", "y_min", "x_max", "y_max")))
             for r in rows if r["x_min"]}
    assert sum(len(b) for u in units for b in u.data["findings"].values()) == len(boxed)
    assert {u.data["image_id"] for u in units if not u.data["findings"]} == (
        {r["image_id"] for r in rows} - {r["image_id"] for r in rows if r["x_min"]})


# ----------------------------------------------------------------------------------------------------------------------
# CheXpert Plus
# ----------------------------------------------------------------------------------------------------------------------

CHEXPERT_PLUS_HEADER = (",path_to_image,path_to_dcm,frontal_lateral,ap_pa,deid_patient_id,patient_report_date_order,"
                        "report,section_narrative,section_clinical_history,section_history,section_comparison,"
                        "section_technique,section_procedure_comments,section_findings,section_impression,"
                        "section_end_of_impression,section_summary,section_accession_number,age,sex,race,ethnicity,"
                        "interpreter_needed,insurance_type,recent_bmi,deceased,split\n")


def test_chexpert_plus_reports(tmp_path):
    import csv as csv_mod

    rows = [  # path, frontal/lateral, ap/pa, patient, order, history, findings, impression, split
        ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP", "PAT1", "1", "Fever.", "Lungs clear.",
         "No acute disease.", "train"),
        ("train/patient00001/study2/view1_frontal.jpg", "Frontal", "PA", "PAT1", "2", "", "Left effusion.",
         "Small left effusion.", "train"),
        ("train/patient00001/study2/view2_lateral.jpg", "Lateral", "", "PAT1", "2", "", "Left effusion.",
         "Small left effusion.", "train"),
        ("valid/patient00002/study1/view1_frontal.jpg", "Frontal", "AP", "PAT2", "1", "", "Valid findings.",
         "Valid impression.", "valid"),
    ]
    images = tmp_path / "PNG"
    for i, (path, *_rest) in enumerate(rows):  # the PNG release: same paths, .png
        write_png(images / path.replace(".jpg", ".png"), np.full((20, 16), 30 * (i + 1), np.uint8))
    csv_path = tmp_path / "df_chexpert_plus_240401.csv"
    with open(csv_path, "w", newline="") as f:
        f.write(CHEXPERT_PLUS_HEADER)
        w = csv_mod.writer(f)
        for i, (path, fl, appa, pat, order, hist, fnd, imp, split) in enumerate(rows):
            w.writerow([i, path, path.replace(".jpg", ".dcm"), fl, appa, pat, order, "FULL REPORT", "", hist, "", "",
                        "", "", fnd, imp, "", "", "ACC", 60, "Male", "White", "Non-Hispanic", "", "", "", "", split])
    out = tmp_path / "cxp"
    assert run(["chexpert-plus", "--input", str(csv_path), "--images", str(images), "--out", str(out), "--split",
                "train", "--prior", "optional"]) == 0
    got = samples(out)
    assert sorted(got) == ["chexpert-plus_train_patient00001_study1_findings",
                           "chexpert-plus_train_patient00001_study1_impression",
                           "chexpert-plus_train_patient00001_study2_findings",
                           "chexpert-plus_train_patient00001_study2_impression"]
    first = got["chexpert-plus_train_patient00001_study1_findings"]
    assert first.answer == "Lungs clear." and first.meta["indication"] == "Fever." and len(first.images) == 1
    second = got["chexpert-plus_train_patient00001_study2_impression"]
    assert second.meta["prior_study_id"] == "train/patient00001/study1"
    assert [int(np.asarray(im).mean()) for im in second.images] == [30, 60]  # prior frontal, then the PA
    assert manifest(out)["split_check"]["split"] == "train"
