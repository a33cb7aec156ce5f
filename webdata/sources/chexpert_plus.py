"""CheXpert Plus reports paired with their images: findings and impression generation, optional prior study.

Input: ``df_chexpert_plus_240401.csv`` (one row per image; columns used: path_to_image, frontal_lateral, ap_pa,
deid_patient_id, patient_report_date_order, section_clinical_history, section_history, section_findings,
section_impression, split). Images below ``--images`` at ``path_to_image`` (``train/patient00001/study1/
view1_frontal.jpg``); the release's PNGs are found too (``--image-ext auto`` tries the path, then .png, .jpg).

A study is the directory of its images. Its report sections (the same on every row of the study) give a
``findings_generation`` and an ``impression_generation`` sample, with ``section_clinical_history`` (else
``section_history``) as ``meta.indication``. ``--views``: the best frontal image (PA before AP), plus the first lateral,
or all. ``--split`` uses the CSV's split column (train / valid -> validate). ``--prior`` puts the previous study of the
patient (by patient_report_date_order) first.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from chexone.data.sample import Sample
from webdata.sources.common import (
    Skip,
    Source,
    SplitIndex,
    Unit,
    clean_text,
    ids_from_path,
    merge_ids,
    normalise_split,
    read_csv,
)
from webdata.sources.mimic_cxr import PRIOR_QUESTIONS, QUESTIONS, SECTION_OF, pick_views

COLUMNS = ["path_to_image", "frontal_lateral", "ap_pa", "deid_patient_id", "section_findings", "section_impression"]


def _view(row: dict[str, str]) -> str:
    """MIMIC-style view name from frontal_lateral / ap_pa, so the MIMIC view ranking applies."""
    if (row.get("frontal_lateral") or "").strip().lower() == "lateral":
        return "LATERAL"
    return (row.get("ap_pa") or "").strip().upper() or "AP"


def _text(value: Any) -> str:
    text = clean_text(value)
    return "" if text.lower() in ("nan", "none") else text


class CheXpertPlusSource(Source):
    name = "chexpert-plus"
    dataset = "CheXpert Plus"
    version = "1"
    description = "CheXpert Plus report CSV + images: findings/impression generation, optional prior study"
    selects_split = True

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", required=True, help="directory the CSV's path_to_image is relative to")
        p.add_argument("--image-ext", default="auto", choices=["auto", "jpg", "png"],
                       help="image file type (auto: the path as given, then png, jpg)")
        p.add_argument("--tasks", default="findings_generation,impression_generation",
                       help="comma-separated: findings_generation, impression_generation")
        p.add_argument("--views", default="frontal", choices=["frontal", "frontal+lateral", "all"])
        p.add_argument("--prior", default="none", choices=["none", "optional", "required"])

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        bad = [t for t in self.tasks if t not in QUESTIONS]
        if bad:
            raise ValueError(f"--tasks: unknown task(s) {bad}; choose from {sorted(QUESTIONS)}")

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        studies: dict[str, dict[str, Any]] = {}
        for path in self.args.input:
            for line, row in read_csv(path, require=COLUMNS):
                image = row["path_to_image"].strip()
                study = os.path.dirname(image)
                st = studies.setdefault(study, {"where": f"{path}:{line}", "images": [], "sections": {},
                                                "patient": row["deid_patient_id"].strip(), "split": "",
                                                "order": row.get("patient_report_date_order") or ""})
                st["images"].append([image, _view(row)])
                for key, col in (("findings", "section_findings"), ("impression", "section_impression"),
                                 ("indication", "section_clinical_history"), ("history", "section_history")):
                    if _text(row.get(col)) and key not in st["sections"]:
                        st["sections"][key] = _text(row.get(col))
                if row.get("split") and not st["split"]:
                    st["split"] = row["split"].strip()
        by_patient: dict[str, list[str]] = defaultdict(list)
        for study, st in studies.items():
            by_patient[st["patient"]].append(study)
        for patient in sorted(by_patient):
            order = sorted(by_patient[patient], key=lambda s: (_number(studies[s]["order"]), s))
            for k, study in enumerate(order):
                st = studies[study]
                ids = merge_ids(*(ids_from_path(p) for p, _ in st["images"]), {"subject": [patient]})
                if split is not None:
                    own = normalise_split(st["split"], st["where"]) if st["split"] else index.split_of(ids)
                    if own is None:
                        yield Skip(st["where"], "not_in_split_file", f"{study}: no split column and in no split file")
                        continue
                    if own != split:
                        continue
                prior = None
                if k > 0 and self.args.prior != "none":
                    prior = {"study": order[k - 1], "images": studies[order[k - 1]]["images"]}
                if self.args.prior == "required" and prior is None:
                    yield Skip(st["where"], "no_prior", f"{study} is the patient's first study")
                    continue
                yield Unit(f"chexpert-plus_{study.replace('/', '_')}", st["where"],
                           {"study": study, "patient": patient, "images": st["images"], "sections": st["sections"],
                            "prior": prior}, ids)

    def image_path(self, rel: str) -> str:
        base = self.under(self.args.images, rel)
        stem = os.path.splitext(base)[0]
        cands = [base, f"{stem}.png", f"{stem}.jpg"] if self.args.image_ext == "auto" else [
            f"{stem}.{self.args.image_ext}"]
        return next((c for c in cands if os.path.isfile(c)), cands[0])

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        d = unit.data
        sections = d["sections"]
        wanted = [t for t in self.tasks if sections.get(SECTION_OF[t])]
        if not wanted:
            yield Skip(unit.where, "no_section", f"{d['study']}: no {' / '.join(SECTION_OF[t] for t in self.tasks)}")
            return
        views = pick_views(d["images"], self.args.views)
        if not views:
            yield Skip(unit.where, "no_view", f"{d['study']}: no {self.args.views} image")
            return
        images = [load(self.image_path(p)).image for p, _ in views]
        meta: dict[str, Any] = {"study_id": d["study"], "subject_id": d["patient"], "views": [v for _, v in views],
                                "report": "\n".join(f"{k.upper()}: {sections[k]}" for k in ("findings", "impression")
                                                    if sections.get(k))}
        indication = sections.get("indication") or sections.get("history")
        if indication:
            meta["indication"] = indication
        questions = QUESTIONS
        prior = d.get("prior")
        if prior:
            prior_views = pick_views(prior["images"], "frontal")
            if prior_views:
                images = [load(self.image_path(prior_views[0][0])).image] + images
                meta["prior_study_id"] = prior["study"]
                questions = PRIOR_QUESTIONS
            elif self.args.prior == "required":
                yield Skip(unit.where, "no_prior", f"prior study {prior['study']} has no frontal image")
                return
        for task in wanted:
            yield Sample(id=f"{unit.uid}_{SECTION_OF[task]}", task=task, question=questions[task],
                         answer=sections[SECTION_OF[task]], images=images, dataset=self.dataset, meta=dict(meta))


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("inf")
