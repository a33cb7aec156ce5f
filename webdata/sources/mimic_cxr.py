"""MIMIC-CXR reports paired with their images: findings and impression generation, optional prior study.

Inputs (PhysioNet layouts; ``--input ROOT`` is the directory holding them, each can be moved with its own option):

* ``ROOT/mimic-cxr-2.0.0-metadata.csv[.gz]`` (``--metadata``): dicom_id, subject_id, study_id, ViewPosition,
  StudyDate, StudyTime, ... — which images belong to which study, their views, and the study order per patient;
* ``ROOT/mimic-cxr-2.0.0-split.csv[.gz]`` (``--split-file``, found automatically): dicom_id, study_id, subject_id,
  split (train / validate / test) — ``--split`` selects the studies of one split;
* reports ``files/pXX/pSUBJECT/sSTUDY.txt`` under ``--reports`` (default ROOT; ``mimic-cxr-reports/files/...`` is
  found too);
* images ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.{jpg,dcm,png}`` under ``--images`` (default ROOT): MIMIC-CXR-JPG
  JPEGs or MIMIC-CXR DICOMs (``--image-ext auto`` tries jpg, then dcm, then png).

Each study with a FINDINGS (resp. IMPRESSION) section gives a ``findings_generation`` (``impression_generation``)
sample whose answer is that section; the INDICATION (or HISTORY / REASON FOR EXAM / CLINICAL INFORMATION) section
goes to ``meta.indication`` (the task prepends it to the question) and the whole findings + impression text to
``meta.report`` (used by ``webdata.reason`` and the factuality metric). ``--views`` picks the images: the best frontal
one (PA before AP), the best frontal and the best lateral, or all. ``--prior optional|required`` puts the patient's
previous study's best frontal image first (studies ordered by StudyDate, StudyTime).
"""

from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from chexone.data.sample import Sample
from webdata.sources.common import RecordError, Skip, Source, SplitIndex, Unit, clean_text, read_csv

#: Image ranking within a study (CheXinstruct's order): frontal views first, PA before AP.
VIEW_RANK = ["PA", "AP", "LATERAL", "LL", "AP AXIAL", "AP LLD", "AP RLD", "PA RLD", "PA LLD", "LAO", "RAO", "LPO",
             "XTABLE LATERAL", "SWIMMERS", ""]
FRONTAL = {"PA", "AP", "AP AXIAL", "AP LLD", "AP RLD", "PA RLD", "PA LLD"}
LATERAL = {"LATERAL", "LL", "XTABLE LATERAL"}

#: Section headers -> our section names (first match wins for each section).
SECTION_NAMES = {
    "INDICATION": "indication", "INDICATIONS": "indication", "CLINICAL INDICATION": "indication",
    "HISTORY": "indication", "CLINICAL HISTORY": "indication", "REASON FOR EXAM": "indication",
    "REASON FOR EXAMINATION": "indication", "CLINICAL INFORMATION": "indication",
    "FINDINGS": "findings", "FINDING": "findings", "FINDINGS AND IMPRESSION": "findings",
    "IMPRESSION": "impression", "IMPRESSIONS": "impression", "CONCLUSION": "impression", "CONCLUSIONS": "impression",
    "COMPARISON": "comparison", "COMPARISONS": "comparison", "TECHNIQUE": "technique", "EXAMINATION": "examination",
}
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z &/()'-]{1,60}?)[ \t]*:", re.M)

QUESTIONS = {
    "findings_generation": "Write the findings section of the radiology report for this chest X-ray.",
    "impression_generation": "Write the impression section of the radiology report for this chest X-ray.",
}
PRIOR_QUESTIONS = {
    "findings_generation": "The first image is from the prior study and the following image(s) from the current "
                           "study. Write the findings section of the radiology report for the current study.",
    "impression_generation": "The first image is from the prior study and the following image(s) from the current "
                             "study. Write the impression section of the radiology report for the current study.",
}
SECTION_OF = {"findings_generation": "findings", "impression_generation": "impression"}


def parse_report(text: str) -> dict[str, str]:
    """Sections of a MIMIC-CXR free-text report: {"indication", "findings", "impression", "comparison", ...}.

    A section is an upper-case header at the start of a line followed by a colon (``FINDINGS:``), up to the next
    header; whitespace is collapsed. Unknown headers (``WET READ``, ``NOTIFICATION``, ...) end the previous section
    and are kept under their lower-cased name.
    """
    sections: dict[str, str] = {}
    heads = list(_HEADER.finditer(text))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        header = " ".join(m.group(1).split())
        name = SECTION_NAMES.get(header, header.lower())
        body = clean_text(text[m.end():end])
        if body and name not in sections:
            sections[name] = body
    return sections


def report_text(sections: dict[str, str]) -> str:
    parts = []
    if sections.get("findings"):
        parts.append(f"FINDINGS: {sections['findings']}")
    if sections.get("impression"):
        parts.append(f"IMPRESSION: {sections['impression']}")
    return "\n".join(parts)


def _rank(view: str) -> int:
    return VIEW_RANK.index(view) if view in VIEW_RANK else len(VIEW_RANK)


def pick_views(dicoms: list[list[str]], mode: str) -> list[list[str]]:
    """[[dicom_id, view], ...] ranked -> the images ``--views`` asks for."""
    ranked = sorted(dicoms, key=lambda d: (_rank(d[1]), d[0]))
    frontal = [d for d in ranked if d[1] in FRONTAL]
    if mode == "all":
        return ranked
    out = frontal[:1]
    if mode == "frontal+lateral":
        out += [d for d in ranked if d[1] in LATERAL][:1]
    return out


class MIMICCXRSource(Source):
    name = "mimic-cxr"
    dataset = "MIMIC-CXR"
    version = "1"
    description = "MIMIC-CXR(-JPG) reports + images: findings/impression generation, optional prior study"
    selects_split = True

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--metadata", default="", help="mimic-cxr-2.0.0-metadata.csv[.gz] (default: in --input)")
        p.add_argument("--reports", default="",
                       help="directory holding files/pXX/pSUBJECT/sSTUDY.txt (default: --input)")
        p.add_argument("--images", default="", help="directory holding files/pXX/pSUBJECT/sSTUDY/*.jpg|dcm "
                                                    "(default: --input)")
        p.add_argument("--image-ext", default="auto", choices=["auto", "jpg", "dcm", "png"],
                       help="image file type (auto: jpg, then dcm, then png)")
        p.add_argument("--tasks", default="findings_generation,impression_generation",
                       help="comma-separated: findings_generation, impression_generation")
        p.add_argument("--views", default="frontal", choices=["frontal", "frontal+lateral", "all"],
                       help="images per study (default: the best frontal one)")
        p.add_argument("--prior", default="none", choices=["none", "optional", "required"],
                       help="put the previous study's frontal image first (required: skip studies without one)")

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        if len(args.input) != 1 or not os.path.isdir(args.input[0]):
            raise ValueError(f"--input must be the one MIMIC-CXR(-JPG) root directory, got {args.input}")
        self.root = args.input[0]
        self.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        bad = [t for t in self.tasks if t not in QUESTIONS]
        if bad:
            raise ValueError(f"--tasks: unknown task(s) {bad}; choose from {sorted(QUESTIONS)}")

    def _find(self, *names: str) -> str:
        for name in names:
            for cand in (name, name + ".gz"):
                p = os.path.join(self.root, cand)
                if os.path.isfile(p):
                    return p
        return ""

    def default_split_files(self) -> list[str]:
        found = self._find("mimic-cxr-2.0.0-split.csv")
        return [found] if found else []

    def plan(self, split: str | None, index: SplitIndex) -> Iterator[Unit | Skip]:
        meta_path = self.args.metadata or self._find("mimic-cxr-2.0.0-metadata.csv")
        if not meta_path:
            raise FileNotFoundError(f"{self.root}: no mimic-cxr-2.0.0-metadata.csv[.gz]; pass --metadata")
        if split is not None and not index:
            raise ValueError(f"--split {split} needs the official split file: pass --split-file "
                             "mimic-cxr-2.0.0-split.csv.gz (or put it in --input)")
        studies: dict[str, dict[str, Any]] = {}
        for line, row in read_csv(meta_path, require=["dicom_id", "subject_id", "study_id", "ViewPosition"]):
            sid, subj = row["study_id"].strip(), row["subject_id"].strip()
            if not sid.isdigit() or not subj.isdigit():
                yield Skip(f"{meta_path}:{line}", "bad_record", f"study_id {sid!r} / subject_id {subj!r} not numeric")
                continue
            st = studies.setdefault(sid, {"subject": subj, "when": "", "dicoms": [], "line": line})
            when = f"{row.get('StudyDate', '')}{(row.get('StudyTime') or '').zfill(13)}"
            if not st["when"] or when < st["when"]:
                st["when"] = when
            st["dicoms"].append([row["dicom_id"].strip(), (row.get("ViewPosition") or "").strip().upper()])
        by_subject: dict[str, list[str]] = defaultdict(list)
        for sid, st in studies.items():
            by_subject[st["subject"]].append(sid)
        for subj in sorted(by_subject):
            order = sorted(by_subject[subj], key=lambda s: (studies[s]["when"], s))
            for k, sid in enumerate(order):
                st = studies[sid]
                ids = {"study": [sid], "subject": [subj], "image": [d[0] for d in st["dicoms"]]}
                if split is not None:
                    official = index.split_of(ids)
                    if official is None:
                        yield Skip(f"{meta_path}:{st['line']}", "not_in_split_file",
                                   f"study s{sid} is in no split file")
                        continue
                    if official != split:
                        continue
                prior = None
                if k > 0:
                    p = studies[order[k - 1]]
                    prior = {"study": order[k - 1], "dicoms": p["dicoms"]}
                    ids["image"] = ids["image"] + [d[0] for d in p["dicoms"]]
                    ids["study"] = ids["study"] + [order[k - 1]]
                if self.args.prior == "required" and prior is None:
                    yield Skip(f"{meta_path}:{st['line']}", "no_prior", f"study s{sid} is the patient's first")
                    continue
                yield Unit(f"mimic-cxr_s{sid}", f"study s{sid} ({meta_path}:{st['line']})",
                           {"subject": subj, "study": sid, "dicoms": st["dicoms"],
                            "prior": prior if self.args.prior != "none" else None}, ids)

    # ------------------------------------------------------------------ conversion
    def report_path(self, subj: str, sid: str) -> str:
        base = self.args.reports or self.root
        rel = os.path.join("files", f"p{subj[:2]}", f"p{subj}", f"s{sid}.txt")
        for cand in (os.path.join(base, rel), os.path.join(base, "mimic-cxr-reports", rel)):
            if os.path.isfile(cand):
                return cand
        raise RecordError(f"report {os.path.join(base, rel)} not found", "missing_report")

    def image_path(self, subj: str, sid: str, dicom_id: str) -> str:
        base = os.path.join(self.args.images or self.root, "files", f"p{subj[:2]}", f"p{subj}", f"s{sid}", dicom_id)
        exts = ["jpg", "dcm", "png"] if self.args.image_ext == "auto" else [self.args.image_ext]
        for ext in exts:
            if os.path.isfile(f"{base}.{ext}"):
                return f"{base}.{ext}"
        return f"{base}.{exts[0]}"  # the loader reports it as missing, with this path

    def convert(self, unit: Unit, load: Any) -> Iterator[Sample | Skip]:
        d = unit.data
        subj, sid = d["subject"], d["study"]
        path = self.report_path(subj, sid)
        with open(path, encoding="utf-8", errors="replace") as f:
            sections = parse_report(f.read())
        views = pick_views(d["dicoms"], self.args.views)
        if not views:
            yield Skip(unit.where, "no_view", f"no {self.args.views} image among {[v for _, v in d['dicoms']]}")
            return
        wanted = [t for t in self.tasks if sections.get(SECTION_OF[t])]
        if not wanted:
            yield Skip(path, "no_section", f"report has no {' / '.join(SECTION_OF[t] for t in self.tasks)} section "
                                           f"(sections: {sorted(sections)})")
            return
        images = [load(self.image_path(subj, sid, dicom)).image for dicom, _ in views]
        meta: dict[str, Any] = {"study_id": sid, "subject_id": subj, "dicom_ids": [x for x, _ in views],
                                "views": [v for _, v in views], "report": report_text(sections)}
        if sections.get("indication"):
            meta["indication"] = sections["indication"]
        if sections.get("comparison"):
            meta["comparison"] = sections["comparison"]
        questions = QUESTIONS
        prior = d.get("prior")
        if prior:
            prior_views = pick_views(prior["dicoms"], "frontal")
            if prior_views:
                images = [load(self.image_path(subj, prior["study"], prior_views[0][0])).image] + images
                meta["prior_study_id"] = prior["study"]
                meta["prior_dicom_id"] = prior_views[0][0]
                questions = PRIOR_QUESTIONS
            elif self.args.prior == "required":
                yield Skip(unit.where, "no_prior", f"prior study s{prior['study']} has no frontal image")
                return
        for task in wanted:
            yield Sample(id=f"{unit.uid}_{SECTION_OF[task]}", task=task, question=questions[task],
                         answer=sections[SECTION_OF[task]], images=images, dataset=self.dataset, meta=dict(meta))
