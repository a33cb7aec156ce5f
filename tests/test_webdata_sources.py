"""Converter building blocks: option re-lettering, box normalisation, the task vocabulary, ids and split files,
MIMIC-CXR report sections, VinDr box fusion."""

from __future__ import annotations

import gzip

import pytest

from chexone.builtin_plugins import BUILTIN_TASKS
from webdata.sources.common import (
    BUILTIN_TASK_NAMES,
    TASK_ALIASES,
    RecordError,
    SplitIndex,
    TaskMapper,
    box_outside_image,
    grid_box,
    grid_boxes,
    ids_from_path,
    normalise_box_answer,
    qa_sample,
    reletter_answer,
    reletter_text,
    split_options,
    strip_prompt,
)
from webdata.sources.mimic_cxr import parse_report, pick_views
from webdata.sources.vindr_cxr import merge_boxes, pick_negatives

# A CheXinstruct question: shuffled lower-case labels, options before a suffix line.
CHEXINSTRUCT_Q = ("Which findings are in this chest X-ray? Options:\n(q) atelectasis, edema\n(c) pneumonia\n"
                  "(x) cardiomegaly\nThere may be more than one answer.")


def test_task_vocabulary_is_the_registered_one():
    assert set(BUILTIN_TASK_NAMES) == set(BUILTIN_TASKS)
    assert set(TASK_ALIASES.values()) <= set(BUILTIN_TASKS)
    m = TaskMapper()
    assert m("Close-Ended VQA") == m("close_ended_vqa") == m("close_vqa") == "close_vqa"
    assert m("Abnormality_Grounding") == "abnormality_grounding"
    assert m("Temporal Image Classification") == "temporal_classification"
    assert m("Image Classification") == "disease_classification"
    assert m("Findings Generation with Indication") == "findings_generation"
    assert m("Named Entity Recognition") is None  # text-only CheXinstruct task: skipped
    assert TaskMapper(["Named Entity Recognition=open_vqa"])("named entity recognition") == "open_vqa"
    assert TaskMapper(unmapped="keep")("Report Evaluation") == "report_evaluation"
    with pytest.raises(ValueError, match="Report Evaluation"):
        TaskMapper(unmapped="error")("Report Evaluation", "f.json[3]")
    with pytest.raises(ValueError, match="SOURCE_NAME=task_name"):
        TaskMapper(["nonsense"])


def test_options_are_relettered_in_order_of_appearance():
    ch = split_options(CHEXINSTRUCT_Q)
    assert ch.labels == ["q", "c", "x"] and ch.options == ["atelectasis, edema", "pneumonia", "cardiomegaly"]
    assert ch.stem == "Which findings are in this chest X-ray?\nThere may be more than one answer.\nOptions:"
    assert ch.mapping == {"q": "A", "c": "B", "x": "C"} and not ch.is_identity
    assert reletter_answer("(q) atelectasis, edema", ch) == ["A"]  # the comma inside the option text is not a split
    assert reletter_answer("(x), (c)", ch) == ["B", "C"]
    assert reletter_answer("x, q", ch) == ["A", "C"]
    assert reletter_answer("Pneumonia.", ch) == ["B"]
    with pytest.raises(RecordError, match="names none of the options"):
        reletter_answer("(z) pneumothorax", ch)
    numeric = split_options("Is there an effusion?\n(2) Yes\n(1) No")
    assert numeric.mapping == {"2": "A", "1": "B"} and reletter_answer("(1) No", numeric) == ["B"]
    assert split_options("Is there an effusion? (a) yes") is None  # one inline option is not a choice list
    assert reletter_text("Step 1 ... so (c) fits.\n\\boxed{(c) pneumonia}", ch) == \
        "Step 1 ... so (B) fits.\n\\boxed{(B) pneumonia}"


def test_qa_sample_families():
    s = qa_sample(sample_id="x", task="disease_classification", question="<image>" + CHEXINSTRUCT_Q +
                  " Please reason step by step, and put your final answer within \\boxed{{}}.", answer="(x), (q)",
                  images=[], dataset="d", where="f:1", reasoning="Thinking... \\boxed{(x) cardiomegaly}")
    assert s.answer == "A,C" and s.options[2] == "cardiomegaly" and "<image>" not in s.question
    assert "reason step by step" not in s.question and s.reasoning.endswith("\\boxed{(C) cardiomegaly}")
    # multiple-choice task without option lines -> open_vqa
    s = qa_sample(sample_id="y", task="disease_classification", question="Perform disease classification",
                  answer="Edema", images=[], dataset="d", where="f:2")
    assert s.task == "open_vqa" and s.answer == "Edema" and s.meta["source_task_family"] == "multiple_choice"
    g = qa_sample(sample_id="z", task="phrase_grounding", question="Locate: small left effusion",
                  answer="<|ref|>small left effusion<|/ref|><|box|>(70,80),(100,100)<|/box|>"
                         "<|ref|>small left effusion<|/ref|><|box|>(5,60),(20,70)<|/box|>", images=[], dataset="d",
                  where="f:3")
    assert g.answer == ("<|ref|>small left effusion<|/ref|><|box|>(5,60),(20,70)<|/box|>"
                        "<|ref|>small left effusion<|/ref|><|box|>(70,80),(99,99)<|/box|>")
    assert g.meta["boxes"] == [[5, 60, 20, 70], [70, 80, 99, 99]] and g.meta["ref_name"] == "small left effusion"
    with pytest.raises(RecordError, match="f:4"):
        qa_sample(sample_id="w", task="abnormality_grounding", question="q", answer="somewhere on the left",
                  images=[], dataset="d", where="f:4")
    assert normalise_box_answer("No Pneumothorax detected")[0] == "No Pneumothorax detected."
    assert strip_prompt("Q? Please reason step by step and put your final answer within \\boxed{}.") == ("Q?", True)


def test_grid_boxes_by_hand():
    # 1000 x 800 image: x 123.4 -> 12.34 -> 12 ; y 80 -> 10 ; x 456.7 -> 45.67 -> 46 ; y 600 -> 75
    assert grid_box([123.4, 80, 456.7, 600], 1000, 800) == [12, 10, 46, 75]
    assert grid_box([990, 790, 1000, 800], 1000, 800) == [99, 99, 99, 99]  # 100 is clamped to 99
    assert grid_box([456.7, 600, 123.4, 80], 1000, 800) == [12, 10, 46, 75]  # corners ordered
    assert grid_boxes([[700, 104, 750, 152], [200, 504, 260, 560]], 1000, 800) == [[20, 63, 26, 70],
                                                                                 [70, 13, 75, 19]]
    with pytest.raises(RecordError):
        grid_box([1, 2, 3, 4], 0, 10)


def test_boxes_outside_the_image():
    # pixel boxes: the image's edges are inside, anything beyond them (or negative, or empty) is not
    assert box_outside_image([0, 0, 50, 40], 50, 40) == ""
    assert box_outside_image([10, 10, 50.5, 30], 50, 40) == "box (10,10)-(50.5,30) is outside the 50x40 image"
    assert box_outside_image([-1, 0, 20, 20], 50, 40) == "box (-1,0)-(20,20) is outside the 50x40 image"
    assert box_outside_image([0, 30, 20, 41], 50, 40) == "box (0,30)-(20,41) is outside the 50x40 image"
    # grid answers (chexone / chexinstruct): 100 is CheXinstruct's rounding of 99.5 and clamped; above is outside
    assert normalise_box_answer("<|ref|>effusion<|/ref|><|box|>(70,80),(100,100)<|/box|>")[1] == [[70, 80, 99, 99]]
    for box in ("(70,80),(120,90)", "(-3,80),(20,90)"):
        with pytest.raises(RecordError, match="f:5: box .* of 'effusion' is outside the image") as e:
            normalise_box_answer(f"<|ref|>effusion<|/ref|><|box|>{box}<|/box|>", "f:5")
        assert e.value.reason == "box_outside_image"


def test_vindr_box_fusion_and_negatives():
    a, b, far = [100, 100, 200, 200], [110, 105, 210, 220], [500, 500, 600, 600]
    assert merge_boxes([a, b, far], "union", 0.1) == [[100, 100, 210, 220], [500, 500, 600, 600]]
    assert merge_boxes([a, b, far], "mean", 0.1) == [[105, 102.5, 205, 210], [500, 500, 600, 600]]
    assert merge_boxes([a, a, far], "none", 0.1) == [a, far]
    negs = pick_negatives("img1", ["a", "b", "c", "d"], 2)
    assert len(negs) == 2 and negs == pick_negatives("img1", ["a", "b", "c", "d"], 2)


def test_ids_and_split_index(tmp_path):
    assert ids_from_path("mimic-cxr-jpg/files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg") == {
        "image": ["02aa804e-bde0afdd"], "subject": ["10000032"], "study": ["50414267"]}
    assert ids_from_path("CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg")["study"] == \
        ["patient00001/study1"]
    split_csv = tmp_path / "mimic-cxr-2.0.0-split.csv.gz"
    with gzip.open(split_csv, "wt") as f:
        f.write("dicom_id,study_id,subject_id,split\nd1,50414267,10000032,train\nd2,53189527,10000032,train\n"
                "d3,50000001,10000099,validate\nd4,59999999,10000777,test\n")
    test_list = tmp_path / "test_list.txt"
    test_list.write_text("00000003_000.png\n00000003_001.png\n")
    index = SplitIndex()
    index.add(str(split_csv))
    index.add(f"test={test_list}")
    assert index.split_of({"study": ["s50414267"]}) == "train"
    assert index.split_of({"subject": ["p10000777"]}) == "test"
    assert index.split_of({"image": ["00000003_001"]}) == "test"
    assert index.split_of({"image": ["unknown"]}) is None
    assert index.lookup({"study": ["50000001"], "image": ["d4"]}) == [("study", "50000001", "validate"),
                                                                     ("image", "d4", "test")]
    bad = tmp_path / "bad.csv"
    bad.write_text("dicom_id,fold\nx,1\n")
    with pytest.raises(ValueError, match="split"):
        SplitIndex().add(str(bad))


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_mimic_report_sections_and_views():
    s = parse_report(REPORT)
    assert s["indication"] == "___F with new onset ascites // eval for infection"
    assert s["findings"].startswith("There is no focal consolidation") and s["findings"].endswith("is normal.")
    assert s["impression"] == "No acute cardiopulmonary process."
    assert s["comparison"] == "None." and s["examination"] == "CHEST (PA AND LAT)"
    dicoms = [["l1", "LATERAL"], ["ap1", "AP"], ["pa1", "PA"]]
    assert pick_views(dicoms, "frontal") == [["pa1", "PA"]]
    assert pick_views(dicoms, "frontal+lateral") == [["pa1", "PA"], ["l1", "LATERAL"]]
    assert [d[0] for d in pick_views(dicoms, "all")] == ["pa1", "ap1", "l1"]
    assert pick_views([["l1", "LATERAL"]], "frontal") == []
