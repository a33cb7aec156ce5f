"""``export``: the recorded answers, de-blinded, as one CSV per item type (one row per reader x item, pending ones
included), and ``summary.json`` / ``summary.md`` with time to sign, edit rates, preferences with 95% CIs, Likert
means, and agreement between readers; plus plots.

The CSV texts are exactly what was stored (line breaks as ``\\n``): the export adds columns, it never rewrites an
answer.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

from chexone.reader_study import stats
from chexone.reader_study.plan import Assignment
from chexone.reader_study.store import Answer, Store
from chexone.reader_study.study import Item, Study

COMMON = ["reader_id", "item_id", "position", "status", "first_shown_at", "signed_at", "seconds_to_sign",
          "active_seconds", "images"]
DRAFT_COLUMNS = ["draft", "final_report", "edited", "char_edit_distance", "normalised_char_edit_distance",
                 "word_edit_distance", "normalised_word_edit_distance"]
PAIRWISE_COLUMNS = ["model_position", "report1_source", "report2_source", "choice", "preferred", "preferred_report",
                    "reason", "model_report", "reference_report"]
PREFERENCES = ("model", "reference", "equal")


def iso(t: float | None) -> str:
    return "" if t is None else _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def _preferred_report(payload: dict[str, Any]) -> str:
    """model / reference / equal, whatever the reference's source label."""
    p = payload.get("preferred", "")
    return p if p in ("model", "equal") else ("reference" if p else "")


class Collected:
    """Answers and plans of the study's readers and items, looked up by (reader, item)."""

    def __init__(self, study: Study, store: Store):
        self.study = study
        self.answers: dict[tuple[str, str], Answer] = {(a.reader_id, a.item_id): a for a in store.answers()}
        self.plans: dict[str, list[Assignment]] = store.all_plans()
        self.views = store.views()
        self.refused = len(store.events("resubmit_refused"))
        self.missing_extra = ""
        known = {r.id for r in study.readers}
        items = {it.id for it in study.items}
        self.orphans = sum(1 for (r, i) in self.answers if r not in known or i not in items)

    def agreement(self, fn, *args, **kwargs) -> tuple[Any, str]:
        """An agreement statistic, or (None, why) when the ``reader-study`` extra is not installed: the rest of the
        export does not need it."""
        try:
            return fn(*args, **kwargs)
        except stats.MissingExtra as e:
            self.missing_extra = str(e)
            return None, "needs the reader-study extra: pip install 'chexone[reader-study]'"

    def position(self, reader_id: str, item_id: str) -> tuple[int | None, Assignment | None]:
        for k, a in enumerate(self.plans.get(reader_id, []), 1):
            if a.item_id == item_id:
                return k, a
        return None, None

    def signed(self, kind: str, reader_id: str | None = None) -> list[Answer]:
        """Signed answers of one type (one reader's, or all), in study order of readers and items."""
        out = []
        for r in self.study.readers:
            if reader_id is not None and r.id != reader_id:
                continue
            for it in self.study.items_of(kind):
                a = self.answers.get((r.id, it.id))
                if a is not None:
                    out.append(a)
        return out


# --------------------------------------------------------------------------------------------------------- CSVs


def _row(c: Collected, reader_id: str, item: Item) -> dict[str, Any]:
    pos, assignment = c.position(reader_id, item.id)
    a = c.answers.get((reader_id, item.id))
    shown = c.views.get((reader_id, item.id))
    row: dict[str, Any] = {
        "reader_id": reader_id, "item_id": item.id, "position": pos, "status": "signed" if a else "pending",
        "first_shown_at": iso(a.first_shown_at if a else (shown[0] if shown else None)),
        "signed_at": iso(a.signed_at) if a else "", "seconds_to_sign": a.seconds_to_sign if a else None,
        "active_seconds": a.active_seconds if a else None, "images": ";".join(item.images),
    }
    p = a.payload if a else {}
    model = c.study.model_text(item)
    reasoning, answer = model if model is not None else ("", "")
    if item.type == "draft_edit":
        row.update({"draft": p.get("draft", answer), "final_report": p.get("final")})
        for k in DRAFT_COLUMNS[2:]:
            row[k] = p.get(k)
    elif item.type == "pairwise":
        model_first = assignment.model_first if assignment else None
        if a:
            sources = [p.get("report1_source"), p.get("report2_source")]
            texts = [p.get("report1", ""), p.get("report2", "")]
            model_pos = p.get("model_position")
            model_text = texts[model_pos - 1] if model_pos in (1, 2) else answer
            ref_text = texts[2 - model_pos] if model_pos in (1, 2) else item.reference_report
        else:
            sources = (["model", item.reference_source] if model_first else [item.reference_source, "model"]) \
                if model_first is not None else [None, None]
            model_pos = None if model_first is None else (1 if model_first else 2)
            model_text, ref_text = answer, item.reference_report
        row.update({"model_position": model_pos, "report1_source": sources[0], "report2_source": sources[1],
                    "choice": p.get("choice"), "preferred": p.get("preferred"),
                    "preferred_report": _preferred_report(p) if a else None, "reason": p.get("reason"),
                    "model_report": model_text, "reference_report": ref_text})
    else:
        row.update({"question": p.get("question", item.question), "reasoning": p.get("reasoning", reasoning),
                    "answer": p.get("answer", answer)})
        ratings = p.get("ratings", {})
        for scale in c.study.likert:
            row[scale.key] = ratings.get(scale.key)
        row["comment"] = p.get("comment")
    return row


def columns_for(study: Study, kind: str) -> list[str]:
    if kind == "draft_edit":
        return COMMON + DRAFT_COLUMNS
    if kind == "pairwise":
        return COMMON + PAIRWISE_COLUMNS
    return COMMON + ["question", "reasoning", "answer"] + [s.key for s in study.likert] + ["comment"]


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: _cell(row.get(k)) for k in columns})


# ------------------------------------------------------------------------------------------------------ summary


def _time_summary(c: Collected, answers: list[Answer]) -> dict[str, Any]:
    readers = [r.id for r in c.study.readers]
    return {
        "overall": stats.describe([a.seconds_to_sign for a in answers]),
        "by_reader": {r: stats.describe([a.seconds_to_sign for a in answers if a.reader_id == r]) for r in readers},
        "active_seconds": stats.describe([a.active_seconds for a in answers]),
    }


def _edit_summary(answers: list[Answer]) -> dict[str, Any]:
    n = len(answers)
    k = sum(1 for a in answers if a.payload.get("edited"))
    lo, hi = stats.wilson_ci(k, n)
    return {"n": n, "edited": k, "edit_rate": k / n if n else None, "edit_rate_ci_low": lo, "edit_rate_ci_high": hi,
            "normalised_char_edit_distance": stats.describe([a.payload.get("normalised_char_edit_distance")
                                                             for a in answers]),
            "normalised_word_edit_distance": stats.describe([a.payload.get("normalised_word_edit_distance")
                                                             for a in answers])}


def _pairs(c: Collected, kind: str) -> list[tuple[str, str, list[str]]]:
    """(reader a, reader b, ids of the items both signed) for every pair of the study's readers."""
    out = []
    for ra, rb in combinations([r.id for r in c.study.readers], 2):
        common = [it.id for it in c.study.items_of(kind) if (ra, it.id) in c.answers and (rb, it.id) in c.answers]
        out.append((ra, rb, common))
    return out


def _pairwise_summary(c: Collected) -> dict[str, Any]:
    answers = c.signed("pairwise")
    prefs = lambda xs: [_preferred_report(a.payload) for a in xs]  # noqa: E731
    agreement = []
    for ra, rb, common in _pairs(c, "pairwise"):
        la = [_preferred_report(c.answers[(ra, i)].payload) for i in common]
        lb = [_preferred_report(c.answers[(rb, i)].payload) for i in common]
        kappa, note = c.agreement(stats.cohen_kappa, la, lb, labels=list(PREFERENCES)) if common \
            else (None, "no common items")
        agreement.append({"reader_a": ra, "reader_b": rb, "n": len(common),
                          "percent_agreement": stats.percent_agreement(la, lb), "kappa": kappa, "note": note})
    return {
        "overall": stats.proportions(prefs(answers), PREFERENCES),
        "by_reader": {r.id: stats.proportions(prefs(c.signed("pairwise", r.id)), PREFERENCES)
                      for r in c.study.readers},
        "agreement": agreement,
    }


def _likert_summary(c: Collected) -> dict[str, Any]:
    answers = c.signed("reasoning_rating")
    readers = [r.id for r in c.study.readers]
    out: dict[str, Any] = {}
    for scale in c.study.likert:
        def values(xs: list[Answer]) -> list[int]:
            return [a.payload["ratings"][scale.key] for a in xs if scale.key in a.payload.get("ratings", {})]

        all_values = values(answers)
        kappas = []
        for ra, rb, common in _pairs(c, "reasoning_rating"):
            la = [c.answers[(ra, i)].payload["ratings"].get(scale.key) for i in common]
            lb = [c.answers[(rb, i)].payload["ratings"].get(scale.key) for i in common]
            kappa, note = c.agreement(stats.cohen_kappa, la, lb, labels=scale.values, weights="quadratic") if common \
                else (None, "no common items")
            kappas.append({"reader_a": ra, "reader_b": rb, "n": len(common),
                           "percent_agreement": stats.percent_agreement(la, lb), "weighted_kappa": kappa,
                           "note": note})
        complete = [it.id for it in c.study.items_of("reasoning_rating")
                    if all((r, it.id) in c.answers for r in readers)]
        table = [[c.answers[(r, i)].payload["ratings"][scale.key] for r in readers] for i in complete]
        icc, icc_note = c.agreement(stats.icc, table) if len(readers) > 1 else (None, "needs 2 or more readers")
        out[scale.key] = {
            "label": scale.label, "min": scale.min, "max": scale.max,
            "overall": stats.describe(all_values),
            "distribution": {str(v): all_values.count(v) for v in scale.values},
            "by_reader": {r: stats.describe(values(c.signed("reasoning_rating", r))) for r in readers},
            "weighted_kappa": kappas, "icc": icc, "icc_items": len(complete), "icc_note": icc_note,
        }
    return out


def summarise(study: Study, c: Collected) -> dict[str, Any]:
    readers = [r.id for r in study.readers]
    all_signed = [a for kind in study.types for a in c.signed(kind)]
    summary: dict[str, Any] = {
        "study": study.name,
        "generated_at": iso(_dt.datetime.now(_dt.timezone.utc).timestamp()),
        "readers": readers,
        "items": {kind: len(study.items_of(kind)) for kind in study.types},
        "completion": {r: {"signed": sum(1 for a in all_signed if a.reader_id == r), "total": len(study.items)}
                       for r in readers},
        "time_to_sign": {"all_types": _time_summary(c, all_signed),
                         **{kind: _time_summary(c, c.signed(kind)) for kind in study.types}},
        "refused_resubmissions": c.refused,
        "notes": [],
        "answers_outside_study": c.orphans,
    }
    if "draft_edit" in study.types:
        summary["draft_edit"] = {"overall": _edit_summary(c.signed("draft_edit")),
                                 "by_reader": {r: _edit_summary(c.signed("draft_edit", r)) for r in readers}}
    if "pairwise" in study.types:
        summary["pairwise"] = _pairwise_summary(c)
    if "reasoning_rating" in study.types:
        summary["reasoning_rating"] = _likert_summary(c)
    if c.missing_extra:
        summary["notes"].append(c.missing_extra)
    return summary


# ------------------------------------------------------------------------------------------------- summary.md


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(d: dict[str, Any]) -> str:
    if d.get("p") is None:
        return "–"
    return f"{100 * d['p']:.1f}% ({d['k']}/{d['n']}; 95% CI {100 * d['ci_low']:.1f}–{100 * d['ci_high']:.1f}%)"


def summary_markdown(s: dict[str, Any]) -> str:
    lines = [f"# Reader study: {s['study']}", "", f"Generated {s['generated_at']}. Readers: {', '.join(s['readers'])}."
             f" Items: " + ", ".join(f"{n} {k}" for k, n in s["items"].items()) + ".", "",
             "| reader | signed | of |", "|---|---|---|"]
    lines += [f"| {r} | {v['signed']} | {v['total']} |" for r, v in s["completion"].items()]
    lines += ["", "## Time to sign (seconds, first display to signing)", "",
              "| type | reader | n | mean | median | IQR (Q1–Q3) |", "|---|---|---|---|---|---|"]
    for kind, t in s["time_to_sign"].items():
        for who, d in [("all", t["overall"]), *t["by_reader"].items()]:
            iqr = f"{_f(d['iqr'], 1)} ({_f(d['q1'], 1)}–{_f(d['q3'], 1)})" if d["n"] else "–"
            lines.append(f"| {kind.replace('_', ' ')} | {who} | {d['n']} | {_f(d['mean'], 1)} | "
                         f"{_f(d['median'], 1)} | {iqr} |")
    if "draft_edit" in s:
        lines += ["", "## Draft editing", "",
                  "| reader | n | edited | edit rate (95% CI) | mean normalised char edit distance | "
                  "mean normalised word edit distance |", "|---|---|---|---|---|---|"]
        d = s["draft_edit"]
        for who, e in [("all", d["overall"]), *d["by_reader"].items()]:
            rate = f"{_f(e['edit_rate'])} ({_f(e['edit_rate_ci_low'])}–{_f(e['edit_rate_ci_high'])})" \
                if e["n"] else "–"
            lines.append(f"| {who} | {e['n']} | {e['edited']} | {rate} | "
                         f"{_f(e['normalised_char_edit_distance']['mean'], 3)} | "
                         f"{_f(e['normalised_word_edit_distance']['mean'], 3)} |")
    if "pairwise" in s:
        p = s["pairwise"]
        lines += ["", "## Pairwise preference (blinded; 95% Wilson CI)", "",
                  "| reader | model preferred | reference preferred | equal |", "|---|---|---|---|"]
        for who, d in [("all", p["overall"]), *p["by_reader"].items()]:
            lines.append(f"| {who} | {_pct(d['model'])} | {_pct(d['reference'])} | {_pct(d['equal'])} |")
        lines += ["", "Agreement between readers (Cohen's kappa on model / reference / equal):", "",
                  "| readers | common items | % agreement | kappa |", "|---|---|---|---|"]
        for a in p["agreement"]:
            kappa = _f(a["kappa"]) if a["kappa"] is not None else f"– ({a['note']})"
            lines.append(f"| {a['reader_a']} vs {a['reader_b']} | {a['n']} | "
                         f"{_f(None if a['percent_agreement'] is None else 100 * a['percent_agreement'], 1)} | "
                         f"{kappa} |")
    if "reasoning_rating" in s:
        lines += ["", "## Reasoning ratings", ""]
        for key, d in s["reasoning_rating"].items():
            o = d["overall"]
            lines += [f"### {key}: {d['label']} ({d['min']}–{d['max']})", "",
                      f"Mean {_f(o['mean'])} (SD {_f(o['sd'])}, median {_f(o['median'])}, n {o['n']}); "
                      f"distribution: " + ", ".join(f"{v}: {n}" for v, n in d["distribution"].items()) + ".", "",
                      "| reader | n | mean | SD |", "|---|---|---|---|"]
            lines += [f"| {r} | {b['n']} | {_f(b['mean'])} | {_f(b['sd'])} |" for r, b in d["by_reader"].items()]
            lines += ["", "| readers | common items | quadratic weighted kappa |", "|---|---|---|"]
            for a in d["weighted_kappa"]:
                kappa = _f(a["weighted_kappa"]) if a["weighted_kappa"] is not None else f"– ({a['note']})"
                lines.append(f"| {a['reader_a']} vs {a['reader_b']} | {a['n']} | {kappa} |")
            if d["icc"]:
                lines += ["", f"ICC over the {d['icc_items']} items every reader rated:", "",
                          "| form | ICC | 95% CI |", "|---|---|---|"]
                lines += [f"| {form} | {_f(v['value'])} | {_f(v['ci_low'])} to {_f(v['ci_high'])} |"
                          for form, v in d["icc"].items()]
            else:
                lines += ["", f"ICC: – ({d['icc_note']})"]
            lines.append("")
    lines += [f"Note: {n}" for n in s["notes"]]
    lines += ["", f"Refused re-submissions of signed items: {s['refused_resubmissions']}. "
              f"Answers for readers or items no longer in the study (not exported): {s['answers_outside_study']}.", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- export


def export(study: Study, store: Store, out: Path, *, plots: bool = True) -> list[Path]:
    """Write the CSVs, summaries and plots into ``out`` (created); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    c = Collected(study, store)
    files: list[Path] = []
    for kind in study.types:
        rows = [_row(c, r.id, it) for r in study.readers for it in study.items_of(kind)]
        path = out / f"{kind}.csv"
        write_csv(path, columns_for(study, kind), rows)
        files.append(path)
    summary = summarise(study, c)
    for note in summary["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    files += [out / "summary.json", out / "summary.md"]
    if plots:
        from chexone.reader_study.plots import write_plots

        files += write_plots(study, c, out / "plots")
    return files
