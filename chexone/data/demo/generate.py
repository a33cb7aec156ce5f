"""Demo samples for every built-in task, built from phantom radiographs (:mod:`chexone.data.demo.phantom`).

Design for learnability by a tiny model: few question templates per task, a FIXED option order per template (so the
letter depends only on the image), exactly balanced answers per template (majority baseline 1/k), large high-contrast
findings. Sides in questions and answers are the *patient's* sides (patient's left = image right on frontal views).

Every sample is a pure function of ``(seed, split, index)``: sample ``i`` of a split is built from its own
``numpy.random.Generator``, so generation is deterministic and order-independent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from chexone.data.demo.phantom import (
    RANDOM,
    SIDES,
    Phantom,
    Rendered,
    follow_up,
    random_effusion_level,
    random_findings,
    random_nodule,
    random_phantom,
    render,
)
from chexone.data.sample import Sample
from chexone.tasks.answers import format_boxes, parse_boxes
from chexone.tasks.builtin import BUILTIN_TASKS

#: Share of each task in a split (close-ended multiple choice ~57%, close_vqa alone 40%).
TASK_WEIGHTS: dict[str, float] = {
    "close_vqa": 0.40,
    "view_classification": 0.06,
    "temporal_classification": 0.06,
    "disease_classification": 0.05,
    "open_vqa": 0.07,
    "findings_generation": 0.08,
    "impression_generation": 0.06,
    "progression_generation": 0.05,
    "phrase_grounding": 0.07,
    "abnormality_grounding": 0.10,
}
#: Share of samples that carry a reasoning trace.
REASONING_FRACTION = 0.35
#: Share of grounding samples *with a finding* that carry one. Stage 2 asks every prompt in reasoning mode and scores
#: grounding by box IoU, so the reasoning-mode grounding answer must be a box (the copy of the corners from the last
#: step is the hardest part for a tiny model: it gets more examples). A negative sample ("No nodule detected.") gets no
#: trace: the grounding reward scores it 0 whatever the answer, and negatives in reasoning mode taught the demo model
#: to answer "No ... detected." for half of the findings it was shown; negatives still train the instruction-mode
#: answer.
GROUNDING_REASONING_FRACTION = 0.6
SPLIT_CODES = {"train": 1, "val": 2, "test": 3}

YES_NO = ["Yes", "No"]
CLOSE_VQA = [  # (question type, question, options, finding key)
    ("effusion_presence", "Is there a pleural effusion?", YES_NO),
    ("effusion_side", "Which side is the pleural effusion on?", ["Left", "Right"]),
    ("cardiomegaly", "Is the heart enlarged?", YES_NO),
    ("pneumothorax", "Is there a pneumothorax?", YES_NO),
]
VIEW_OPTIONS = ["PA", "AP", "Lateral"]
TEMPORAL_OPTIONS = ["Improved", "Stable", "Worsened"]
DISEASE_OPTIONS = ["Pleural effusion", "Cardiomegaly", "Pneumothorax", "Lung nodule", "No finding"]
OPEN_MAIN = ["pleural effusion", "cardiomegaly", "pneumothorax", "nodule", "no abnormality"]
INDICATIONS = [
    "Shortness of breath.",
    "Cough and fever.",
    "Chest pain.",
    "Follow-up.",
    "Evaluate for pneumothorax.",
    "Preoperative assessment.",
]


def split_code(split: str) -> int:
    """Stable integer for a split name (known splits 1-3, others hashed deterministically)."""
    if split in SPLIT_CODES:
        return SPLIT_CODES[split]
    return 1000 + sum((i + 1) * ord(c) for i, c in enumerate(split))


def allocate(n: int, weights: dict[str, float] = TASK_WEIGHTS) -> dict[str, int]:
    """Split ``n`` over the tasks by largest remainder (deterministic, sums to ``n``)."""
    total = sum(weights.values())
    raw = {k: n * w / total for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    rest = n - sum(counts.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), list(weights).index(k)))[:rest]:
        counts[k] += 1
    return counts


# --------------------------------------------------------------------------- report text

def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _effusion_size(level: float) -> str:
    return "small" if level >= 0.64 else "moderate"


def findings_text(ph: Phantom) -> str:
    """Templated findings section, true to what is drawn."""
    if ph.view == "Lateral":
        return "Lateral view of the chest. The heart and lungs are unremarkable on this view."
    f = ph.findings
    out = ["PA view of the chest." if ph.view == "PA" else "AP portable view of the chest."]
    out.append("The heart is enlarged." if f.cardiomegaly else "The heart size is normal.")
    for n in f.nodules:
        out.append(f"There is a nodule in the {n.side} {n.zone} lung.")
    if f.pneumothorax:
        out.append(f"There is a {f.pneumothorax} pneumothorax with a visible pleural line.")
    if not f.nodules and not f.pneumothorax:
        out.append("The lungs are clear.")
    sides = f.effusion_sides
    if len(sides) == 2:
        out.append("There are bilateral pleural effusions.")
    elif sides:
        out.append(f"There is a {_effusion_size(f.effusions[sides[0]])} {sides[0]} pleural effusion.")
    else:
        out.append("No pleural effusion.")
    if not f.pneumothorax:
        out.append("No pneumothorax.")
    return " ".join(out)


def impression_text(ph: Phantom) -> str:
    if ph.view == "Lateral":
        return "No acute abnormality on the lateral view."
    f = ph.findings
    out = []
    if f.pneumothorax:
        out.append(f"{_cap(f.pneumothorax)} pneumothorax.")
    sides = f.effusion_sides
    if len(sides) == 2:
        out.append("Bilateral pleural effusions.")
    elif sides:
        out.append(f"{_cap(_effusion_size(f.effusions[sides[0]]))} {sides[0]} pleural effusion.")
    if f.cardiomegaly:
        out.append("Cardiomegaly.")
    for n in f.nodules:
        out.append(f"{_cap(n.side)} {n.zone} lung nodule.")
    return " ".join(out) or "No acute cardiopulmonary abnormality."


def report_text(ph: Phantom) -> str:
    return f"FINDINGS: {findings_text(ph)} IMPRESSION: {impression_text(ph)}"


# --------------------------------------------------------------------------- reasoning traces
#
# A trace is short and task-specific: its first step names the task and the answer shape (so a small model commits
# to the right kind of answer at the first token of its reasoning), the middle steps give the evidence the answer
# rests on, and the last step leads into the answer in the shape the rewards parse (option letters, a box on the 0-99
# grid, report text). Generic observations followed by an unrelated answer taught the demo model to answer grounding
# prompts with VQA-style text in reasoning mode. Every trace fits the demo's 160-token generation budget.

#: First step of a trace, per task: what to do and in which shape to answer. Distinct first words per task family.
TASK_STEPS: dict[str, str] = {
    "close_vqa": "Which option does the image support?",
    "view_classification": "Which view is this radiograph?",
    "temporal_classification": "Compare the prior image with the current image.",
    "disease_classification": "Which findings are present?",
    "open_vqa": "Answer in a few words.",
    "findings_generation": "Write the findings section.",
    "impression_generation": "Write the impression section.",
    "progression_generation": "Write the interval change from the prior image.",
    "phrase_grounding": "Locate the {name} as a box.",
    "abnormality_grounding": "Locate every {name} as a box.",
}


def _observation_steps(ph: Phantom) -> list[str]:
    """View, heart, lungs and pleura of one radiograph, one short step each (words the tiny tokenizer knows)."""
    if ph.view == "Lateral":
        return ["The image is a lateral view.", "The heart and lungs are unremarkable."]
    f = ph.findings
    lungs = [f"A nodule in the {n.side} {n.zone} lung." for n in f.nodules]
    if f.pneumothorax:
        lungs.append(f"A {f.pneumothorax} pneumothorax.")
    sides = f.effusion_sides
    pleura = ("A " + " and a ".join(sides) + " pleural effusion." if sides else "No pleural effusion.")
    return [f"The image is a frontal {'PA' if ph.view == 'PA' else 'AP portable'} view.",
            f"The heart is {'enlarged' if f.cardiomegaly else 'normal'}.",
            " ".join(lungs) if lungs else "The lungs are clear.", pleura]


def _evidence(ph: Phantom, kind: str, side: str | None = None) -> str:
    """What the image shows of one kind of finding ("nodule" | "effusion" | "pneumothorax" | "heart")."""
    f = ph.findings
    if kind == "nodule":
        where = [f"{n.side} {n.zone}" for n in f.nodules if side in (None, n.side)]
        return "A nodule in the " + " and the ".join(where) + " lung." if where else "No nodule is seen."
    if kind == "effusion":
        sides = [s for s in f.effusion_sides if side in (None, s)]
        return "A " + " and a ".join(sides) + " pleural effusion." if sides else "No pleural effusion is seen."
    if kind == "pneumothorax":
        return f"A {f.pneumothorax} pneumothorax." if f.pneumothorax else "No pneumothorax is seen."
    return f"The heart is {'enlarged' if f.cardiomegaly else 'normal'}."


def _box_step(name: str, boxes: list[list[int]]) -> str:
    """The located boxes in the answer's own corner notation, so the final answer copies them."""
    if not boxes:
        return f"No {name} detected."
    return f"The {name} is at " + " and ".join(f"({x1},{y1}),({x2},{y2})" for x1, y1, x2, y2 in boxes) + "."


def reasoning_trace(steps: list[str], answer_text: str) -> str:
    body = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
    return f"**Thinking Process:**\n{body}\n\n**Final Answer:** \\boxed{{{answer_text}}}"


def task_trace(sample: Sample, evidence: list[str]) -> str:
    """The reasoning trace of ``sample``: its task step, the ``evidence`` steps, the lead-in to the answer."""
    answer_text = BUILTIN_TASKS[sample.task]().answer_text(sample)
    first = TASK_STEPS[sample.task].format(name=sample.meta.get("ref_name", ""))
    last = [f"Therefore the answer is: {answer_text}"] if sample.task in _MC_TASKS | {"open_vqa"} else []
    return reasoning_trace([first, *evidence, *last], answer_text)


# --------------------------------------------------------------------------- sample builder

class _Builder:
    """Context for building one sample: its rng, image size and the common fields."""

    def __init__(self, rng: np.random.Generator, sample_id: str, image_size: int):
        self.rng = rng
        self.id = sample_id
        self.size = image_size

    def frontal_view(self) -> str:
        return "PA" if self.rng.random() < 0.6 else "AP"

    def sample(
        self,
        task: str,
        question: str,
        answer: str,
        phantoms: list[Phantom],
        *,
        qtype: str,
        options: list[str] | None = None,
        meta: dict | None = None,
        steps: list[str] | None = None,
        report: str | None = None,
        rendered: list[Rendered] | None = None,
    ) -> Sample:
        rendered = rendered or [render(p, self.size) for p in phantoms]
        current = phantoms[-1]
        m = {
            "question_type": f"{task}/{qtype}",
            "view": current.view,
            "findings": current.findings.labels() if current.view != "Lateral" else {},
            "report": report or report_text(current),
            "image_size": self.size,
        }
        if len(phantoms) == 2:
            m["prior_findings"] = phantoms[0].findings.labels()
            m["prior_report"] = report_text(phantoms[0])
        m.update(meta or {})
        s = Sample(id=self.id, task=task, question=question, answer=answer, images=[r.image for r in rendered],
                   options=list(options or []), dataset="demo", meta=m)
        grounding = task in _GROUNDING_TASKS
        fraction = GROUNDING_REASONING_FRACTION if grounding else REASONING_FRACTION
        if self.rng.random() < fraction and not (grounding and not m.get("boxes")):
            s.reasoning = task_trace(s, steps if steps is not None else _observation_steps(current))
        return s


_MC_TASKS = {"close_vqa", "view_classification", "temporal_classification", "disease_classification"}
_GROUNDING_TASKS = {"phrase_grounding", "abnormality_grounding"}
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def make_close_vqa(b: _Builder, k: int) -> Sample:
    qtype, question, options = CLOSE_VQA[k % len(CLOSE_VQA)]
    choice = (k // len(CLOSE_VQA)) % len(options)
    rng, view = b.rng, b.frontal_view()
    if qtype == "effusion_presence":
        ph = random_phantom(rng, view, effusion=True if choice == 0 else None)
    elif qtype == "effusion_side":
        ph = random_phantom(rng, view, effusion=options[choice].lower())
    elif qtype == "cardiomegaly":
        ph = random_phantom(rng, view, cardiomegaly=choice == 0)
    else:  # pneumothorax
        ph = random_phantom(rng, view, pneumothorax=True if choice == 0 else None)
    return b.sample("close_vqa", question, _LETTERS[choice], [ph], qtype=qtype, options=options,
                    meta={"label": options[choice].lower()})


def make_view_classification(b: _Builder, k: int) -> Sample:
    choice = k % 3
    ph = random_phantom(b.rng, VIEW_OPTIONS[choice])
    return b.sample("view_classification", "Which view is this chest radiograph?", _LETTERS[choice], [ph],
                    qtype="view", options=VIEW_OPTIONS, meta={"label": VIEW_OPTIONS[choice]})


def _change_pair(b: _Builder, finding: str, change: str) -> tuple[Phantom, Phantom, str]:
    """Prior and current phantoms of one patient where ``finding`` ("pleural effusion" | "nodule") underwent
    ``change`` (increase | decrease | stable | new | resolved). Returns (prior, current, side)."""
    rng, view = b.rng, b.frontal_view()
    side = SIDES[int(rng.integers(2))]
    base = random_findings(rng, view, pneumothorax=None,
                           effusion=None if finding == "pleural effusion" else RANDOM,
                           nodules=0 if finding == "nodule" else RANDOM)
    if finding == "nodule":
        proto = random_nodule(rng, side)
        small, large = float(rng.uniform(0.045, 0.052)), float(rng.uniform(0.08, 0.09))
        mid = float(rng.uniform(0.058, 0.075))
        sizes = {"increase": (small, large), "decrease": (large, small), "stable": (mid, mid),
                 "new": (None, mid), "resolved": (mid, None)}[change]

        def with_(r):
            return replace(base, nodules=() if r is None else (replace(proto, r=r),))
    else:
        small, large = random_effusion_level(rng, "small"), random_effusion_level(rng, "large")
        mid = float(rng.uniform(0.60, 0.66))
        sizes = {"increase": (small, large), "decrease": (large, small), "stable": (mid, mid),
                 "new": (None, mid), "resolved": (mid, None)}[change]

        def with_(level):
            return replace(base, effusions={} if level is None else {side: level})
    prior = random_phantom(rng, view, findings=with_(sizes[0]))
    current = follow_up(rng, prior, with_(sizes[1]))
    return prior, current, side


def _pair_steps(prior: Phantom, current: Phantom, finding: str, side: str, change: str) -> list[str]:
    def describe(ph: Phantom) -> str:
        f = ph.findings
        if finding == "nodule":
            n = [x for x in f.nodules if x.side == side]
            return f"a {side} lung nodule of radius about {n[0].r * 100:.0f}% of the image" if n else \
                f"no {side} lung nodule"
        if side in f.effusions:
            return f"a {_effusion_size(f.effusions[side])} {side} pleural effusion"
        return f"no {side} pleural effusion"

    verdict = {"increase": "larger", "decrease": "smaller", "stable": "unchanged in size",
               "new": "newly present", "resolved": "no longer visible"}[change]
    return [f"The prior image shows {describe(prior)}.", f"The current image shows {describe(current)}.",
            f"The {finding} is {verdict}."]


def make_temporal_classification(b: _Builder, k: int) -> Sample:
    finding = ("pleural effusion", "nodule")[k % 2]
    choice = (k // 2) % 3
    change = ("decrease", "stable", "increase")[choice]
    prior, current, side = _change_pair(b, finding, change)
    question = (f"Compared with the prior study (first image), how has the {finding} changed on the current study "
                "(second image)?")
    return b.sample("temporal_classification", question, _LETTERS[choice], [prior, current], qtype="change",
                    options=TEMPORAL_OPTIONS,
                    meta={"label": TEMPORAL_OPTIONS[choice].lower(), "finding": finding, "side": side,
                          "change": change},
                    steps=_pair_steps(prior, current, finding, side, change))


def make_disease_classification(b: _Builder, k: int) -> Sample:
    bits = k % 16
    eff, cardio, ptx, nod = (bool(bits & 1), bool(bits & 2), bool(bits & 4), bool(bits & 8))
    ph = random_phantom(b.rng, b.frontal_view(), effusion=True if eff else None, cardiomegaly=cardio,
                        pneumothorax=True if ptx else None, nodules=int(nod))
    letters = [_LETTERS[i] for i, on in enumerate((eff, cardio, ptx, nod)) if on] or ["E"]
    question = "Which of the following findings are present in this chest X-ray? Select all that apply."
    return b.sample("disease_classification", question, ",".join(letters), [ph], qtype="multilabel",
                    options=DISEASE_OPTIONS, meta={"label": [DISEASE_OPTIONS[ord(x) - 65].lower() for x in letters]})


def make_open_vqa(b: _Builder, k: int) -> Sample:
    rng, view = b.rng, b.frontal_view()
    if k % 2 == 0:
        answer = OPEN_MAIN[(k // 2) % len(OPEN_MAIN)]
        ph = random_phantom(rng, view, effusion=True if answer == "pleural effusion" else None,
                            cardiomegaly=answer == "cardiomegaly",
                            pneumothorax=True if answer == "pneumothorax" else None, nodules=int(answer == "nodule"))
        question, qtype = "What is the main abnormality in this chest X-ray? Answer in a few words.", "main_finding"
    else:
        answer = SIDES[(k // 2) % 2]
        ph = random_phantom(rng, view, nodules=[answer], pneumothorax=None)
        question, qtype = "On which side of the patient is the lung nodule?", "nodule_side"
    return b.sample("open_vqa", question, answer, [ph], qtype=qtype, meta={"label": answer})


def make_findings_generation(b: _Builder, k: int, *, impression: bool = False) -> Sample:
    rng = b.rng
    ph = random_phantom(rng, b.frontal_view(), p=0.35)
    meta = {}
    if rng.random() < 0.5:
        meta["indication"] = INDICATIONS[int(rng.integers(len(INDICATIONS)))]
    if impression:
        return b.sample("impression_generation", "Write the impression section of the radiology report for this "
                        "chest X-ray.", impression_text(ph), [ph], qtype="impression", meta=meta)
    return b.sample("findings_generation", "Write the findings section of the radiology report for this chest X-ray.",
                    findings_text(ph), [ph], qtype="findings", meta=meta)


def make_progression_generation(b: _Builder, k: int) -> Sample:
    finding = ("pleural effusion", "nodule")[k % 2]
    change = ("increase", "decrease", "stable", "new", "resolved")[(k // 2) % 5]
    prior, current, side = _change_pair(b, finding, change)
    zone = next((n.zone for ph in (current, prior) for n in ph.findings.nodules if n.side == side), "")
    thing = f"{side} pleural effusion" if finding == "pleural effusion" else f"{side} {zone} lung nodule"
    answer = {"increase": f"Interval increase in the size of the {thing}.",
              "decrease": f"Interval decrease in the size of the {thing}.",
              "stable": f"Stable {thing}.",
              "new": f"New {thing}.",
              "resolved": f"Interval resolution of the {thing}."}[change]
    answer += " Enlarged heart, unchanged." if current.findings.cardiomegaly else " Heart size is unchanged."
    question = ("Compare the current chest X-ray (second image) with the prior study (first image) and describe the "
                "interval change.")
    return b.sample("progression_generation", question, answer, [prior, current], qtype="progression",
                    meta={"finding": finding, "side": side, "change": change},
                    steps=_pair_steps(prior, current, finding, side, change),
                    report=f"{report_text(current)} COMPARISON: {answer}")


def _grounding_steps(ph: Phantom, kind: str, answer: str, name: str, side: str | None = None) -> list[str]:
    """Evidence for a grounding answer: what the image shows of the finding, then its boxes as the answer writes
    them (read back from ``answer`` itself, so the two cannot disagree)."""
    boxes = [list(b.coords) for b in parse_boxes(answer)]
    return [_evidence(ph, kind, side), _box_step(name, boxes)]


def make_phrase_grounding(b: _Builder, k: int) -> Sample:
    rng, view = b.rng, b.frontal_view()
    kind = k % 4
    side = SIDES[(k // 4) % 2]
    if kind == 0:
        ph = random_phantom(rng, view, effusion=side)
        phrase, key, finding = f"{side} pleural effusion", f"effusion:{side}", "effusion"
    elif kind == 1:
        ph = random_phantom(rng, view, nodules=[side], pneumothorax=None)
        phrase, key, finding = f"{side} lung nodule", "nodule:0", "nodule"
    elif kind == 2:
        ph = random_phantom(rng, view, pneumothorax=side, effusion=None, nodules=0)
        phrase, key, finding = f"{side} pneumothorax", "pneumothorax", "pneumothorax"
    else:
        ph = random_phantom(rng, view, cardiomegaly=True)
        phrase, key, finding = "enlarged cardiac silhouette", "heart", "heart"
    r = render(ph, b.size)
    boxes = [r.box(key)]
    answer = format_boxes(phrase, boxes)
    return b.sample("phrase_grounding", f"Please locate the following phrase in the image: {phrase}.",
                    answer, [ph], qtype="phrase", rendered=[r], meta={"boxes": boxes, "ref_name": phrase},
                    steps=_grounding_steps(ph, finding, answer, phrase, side if finding != "heart" else None))


def make_abnormality_grounding(b: _Builder, k: int) -> Sample:
    rng, view = b.rng, b.frontal_view()
    name = ("nodule", "pleural effusion", "pneumothorax")[k % 3]
    if name == "nodule":
        count = (k // 3) % 3
        ph = random_phantom(rng, view, nodules=count, pneumothorax=None if count == 2 else RANDOM)
        prefix = "nodule"
    elif name == "pleural effusion":
        count = (k // 3) % 3
        ph = random_phantom(rng, view, effusion=(None, True, "both")[count],
                            pneumothorax=None if count == 2 else RANDOM)
        prefix = "effusion"
    else:
        count = (k // 3) % 2
        ph = random_phantom(rng, view, pneumothorax=True if count else None, nodules=0 if count else RANDOM)
        prefix = "pneumothorax"
    r = render(ph, b.size)
    boxes = sorted(r.boxes(prefix))
    if len(boxes) != count:  # a finding too small to draw would break the label; never expected
        raise AssertionError(f"{b.id}: expected {count} {name} boxes, drew {len(boxes)}")
    answer = format_boxes(name, boxes)
    return b.sample("abnormality_grounding", f"Locate all regions of {name} in this chest X-ray.",
                    answer, [ph], qtype=name.replace(" ", "_"), rendered=[r], meta={"boxes": boxes, "ref_name": name},
                    steps=_grounding_steps(ph, prefix, answer, name))


MAKERS: dict[str, Callable[[_Builder, int], Sample]] = {
    "close_vqa": make_close_vqa,
    "view_classification": make_view_classification,
    "temporal_classification": make_temporal_classification,
    "disease_classification": make_disease_classification,
    "open_vqa": make_open_vqa,
    "findings_generation": make_findings_generation,
    "impression_generation": lambda b, k: make_findings_generation(b, k, impression=True),
    "progression_generation": make_progression_generation,
    "phrase_grounding": make_phrase_grounding,
    "abnormality_grounding": make_abnormality_grounding,
}


def sample_plan(split: str, n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(task, index within task) for each position of the split, in a seeded shuffled order."""
    plan = [(task, k) for task, c in allocate(n).items() for k in range(c)]
    order = np.random.default_rng([seed, split_code(split), 0]).permutation(len(plan))
    return [plan[i] for i in order]


def make_sample(split: str, index: int, task: str, k: int, *, seed: int = 0, image_size: int = 112) -> Sample:
    rng = np.random.default_rng([seed, split_code(split), 1, index])
    return MAKERS[task](_Builder(rng, f"demo-{split}-{index:06d}", image_size), k)


def demo_samples(split: str, n: int, *, seed: int = 0, image_size: int = 112) -> Iterator[Sample]:
    """The ``n`` demo samples of ``split`` ("train" | "val" | "test" | "rl" | any name), deterministic in ``seed``."""
    if split == RL_SPLIT:
        yield from rl_pool_samples(n, seed=seed, image_size=image_size)
        return
    for index, (task, k) in enumerate(sample_plan(split, n, seed)):
        yield make_sample(split, index, task, k, seed=seed, image_size=image_size)


#: The stage-2 demo's prompt pool. A few dozen prompts that a short CPU run sees several times each: the policy can
#: then learn them within 120 steps, and the per-step reward means are not dominated by which prompts a step happened
#: to draw. Unlike the other splits it is not drawn by ``TASK_WEIGHTS``: the task families with a stage-2 reward come
#: in turns (multiple choice, report, grounding), the tasks of a family in turns within it.
RL_SPLIT = "rl"
RL_POOL_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("close_vqa", "view_classification", "temporal_classification", "disease_classification"),
    ("findings_generation", "impression_generation", "progression_generation"),
    ("phrase_grounding", "abnormality_grounding"),
)


def rl_pool_samples(n: int, *, seed: int = 0, image_size: int = 112) -> Iterator[Sample]:
    """The ``n`` samples of the "rl" split: families and tasks in turns (``RL_POOL_FAMILIES``), and only grounding
    prompts with a finding to box, since the grounding reward scores a prompt without one 0 whatever the answer (no
    learning signal; CheXOne's low-variance filter would drop it too)."""
    next_k: dict[str, int] = {}
    for index in range(n):
        family = RL_POOL_FAMILIES[index % len(RL_POOL_FAMILIES)]
        task = family[(index // len(RL_POOL_FAMILIES)) % len(family)]
        while True:
            k = next_k.get(task, 0)
            next_k[task] = k + 1
            sample = make_sample(RL_SPLIT, index, task, k, seed=seed, image_size=image_size)
            if task not in _GROUNDING_TASKS or sample.meta.get("boxes"):
                yield sample
                break
