"""``python -m chexone.dashboard report RUN_DIR``: an offline, self-contained HTML report of a run, from its own files.

The report has the W&B dashboard's sections and panels (both come from ``chexone.dashboard.catalog``), drawn from
``csv/metrics.csv`` with EMA smoothing, the sampled completions in ``completions.jsonl`` with their image thumbnails
(grounding boxes drawn), and an evaluation run's ``results.json`` tables with their confidence intervals and plots.
Every image is embedded as PNG data, so ``report.html`` opens anywhere without a network; the panel PNGs are also
written to ``report/`` beside it for use elsewhere. ``python -m chexone.fit`` and ``python -m chexone.evaluate`` write
it at the end of every run (``write_report=false`` turns that off).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chexone.dashboard.catalog import PANELS, SECTIONS, SMOOTHING, Panel, lookup, owned_by, placeholder_values
from chexone.dashboard.history import History, load_history, window_means

REPORT_FILE = "report.html"
#: The panel PNGs, next to the report.
ASSET_DIR = "report"
COMPLETIONS_FILE = "completions.jsonl"
RESULTS_FILE = "results.json"
#: Prompt groups shown per logged step (each with its best and worst completion).
MAX_PROMPTS_PER_STEP = 16
#: Longer completions are cut (with a note) to keep the page readable.
MAX_COMPLETION_CHARS = 1200
#: The reward trend compares the means of the first and the last fifth of the logged steps.
TREND_FRACTION = 0.2


@dataclass
class RunFiles:
    """What a run directory holds that the report can show."""

    run_dir: Path
    history: History
    completions: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_run(run_dir: Path) -> RunFiles:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    files = RunFiles(run_dir=run_dir, history=load_history(run_dir))
    comp = run_dir / COMPLETIONS_FILE
    if comp.is_file():
        for n, line in enumerate(comp.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                files.notes.append(f"{comp}: line {n} is not JSON (a write cut short?) and is left out")
                continue
            if isinstance(row, dict) and "step" in row:
                files.completions.append(row)
    res = run_dir / RESULTS_FILE
    if res.is_file():
        data = json.loads(res.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            files.results = {k: v for k, v in data.items() if isinstance(v, dict) and "rows" in v}
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        import yaml

        loaded = yaml.safe_load(cfg.read_text(encoding="utf-8"))
        files.config = loaded if isinstance(loaded, dict) else {}
    if files.history.source is None and not files.results and (run_dir / "wandb").is_dir():
        files.notes.append("This run logged to W&B only (no csv/metrics.csv): its curves are in the W&B files under "
                           "wandb/ (upload with `wandb sync`). wandb has no public API that reads offline run files, "
                           "so they are not drawn here; fits now write csv/metrics.csv alongside W&B.")
    return files


# ------------------------------------------------------------------------------------------------ building blocks


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return _esc(value)


def series_labels(names: list[str]) -> dict[str, str]:
    """Short legend labels: the path segments all ``names`` share at the start and at the end are dropped (one
    segment is always kept), e.g. train/reward/grounding/total_mean -> grounding."""
    parts = [n.split("/") for n in names]
    if len(names) == 1:  # a pattern's name is told by its placeholder values (e.g. the one task family logged)
        entry = lookup(names[0])
        values = placeholder_values(entry, names[0]) if entry is not None and entry.is_pattern else {}
        return {names[0]: " / ".join(values.values()) if values else parts[0][-1]}
    shortest = min(len(p) for p in parts)
    head = 0
    while head < shortest - 1 and len({p[head] for p in parts}) == 1:
        head += 1
    tail = 0
    while tail < shortest - head - 1 and len({p[-1 - tail] for p in parts}) == 1:
        tail += 1
    return {n: "/".join(p[head:len(p) - tail]) for n, p in zip(names, parts)}


class _Assets:
    """Panel PNGs: kept for embedding and written to report/ (stale ones from an earlier report removed first)."""

    def __init__(self, folder: Path):
        self.folder = folder
        for old in folder.glob("*.png"):
            old.unlink()

    def add(self, name: str, data: bytes) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{name}.png").write_bytes(data)
        return _png_uri(data)


# ------------------------------------------------------------------------------------------------ sections


def _panel_names(panel: Panel, history: History) -> list[str]:
    return owned_by(panel.metrics, history.names)


def _metric_panels(section_key: str, files: RunFiles, assets: _Assets, smoothing: float) -> tuple[list[str], list[str]]:
    """(figure HTML, names with a single logged value) for the section's line/stacked panels."""
    from chexone.dashboard.figures import finite_points, line_panel_png, stacked_panel_png

    figures: list[str] = []
    single: list[str] = []
    for panel in PANELS:
        if panel.section != section_key or panel.kind == "table":
            continue
        names = _panel_names(panel, files.history)
        curves = {n: finite_points(files.history.series[n]) for n in names}
        single += [n for n, pts in curves.items() if len(pts) == 1]
        curves = {n: pts for n, pts in curves.items() if len(pts) >= 2}
        if not curves:
            continue
        labels = series_labels(list(curves))
        labelled = {labels[n]: pts for n, pts in curves.items()}
        units = {lookup(n).unit for n in curves}
        unit = units.pop() if len(units) == 1 else ""
        if panel.kind == "stacked":
            png = stacked_panel_png(panel.title, labelled, unit=unit)
        else:
            legend = len(curves) > 1 or any("{" in m for m in panel.metrics)
            png = line_panel_png(panel.title, labelled, smoothing=smoothing, unit=unit, legend=legend)
        uri = assets.add(f"{section_key}-{_slug(panel.title)}", png)
        keys = ", ".join(f"<code>{_esc(n)}</code>" for n in curves)
        figures.append(f'<figure class="panel" data-panel="{_esc(panel.title)}"><img src="{uri}" alt="'
                       f'{_esc(panel.title)}"><figcaption>{keys}</figcaption></figure>')
    return figures, single


def _values_table(names: list[str], history: History) -> str:
    """Single values as a table; names of two-placeholder entries (e.g. val/{metric}/{task}) as a pivot."""
    if not names:
        return ""
    plain, pivots = [], {}
    for n in names:
        entry = lookup(n)
        holders = entry.placeholders if entry else []
        if entry is not None and len(holders) == 2:
            v = placeholder_values(entry, n)
            pivots.setdefault(entry.name, {}).setdefault(v[holders[1]], {})[v[holders[0]]] = history.last(n)
        else:
            plain.append(n)
    out = []
    if plain:
        out.append('<table class="values"><tr><th>metric</th><th>value</th><th>step</th><th>meaning</th></tr>')
        for n in plain:
            step = history.series[n][-1][0]
            entry = lookup(n)
            out.append(f"<tr><td><code>{_esc(n)}</code></td><td class=num>{_num(history.last(n))}</td>"
                       f"<td class=num>{int(step)}</td><td>{_esc(entry.description if entry else '')}</td></tr>")
        out.append("</table>")
    for pattern, rows in pivots.items():
        cols = sorted({c for r in rows.values() for c in r})
        out.append(f'<table class="values pivot"><caption><code>{_esc(pattern)}</code></caption><tr><th></th>'
                   + "".join(f"<th>{_esc(c)}</th>" for c in cols) + "</tr>")
        for row in sorted(rows):
            out.append(f"<tr><th>{_esc(row)}</th>" + "".join(f"<td class=num>{_num(rows[row].get(c))}</td>"
                                                             for c in cols) + "</tr>")
        out.append("</table>")
    return "\n".join(out)


def _reward_trend(history: History) -> str:
    """The mean of each reward curve over the first and the last fifth of the logged steps: does it rise?"""
    wanted = ("train/reward/total_mean", "train/reward/{family}/total_mean", "train/reward/{reward}_mean")
    names = [n for entry in wanted for n in owned_by((entry,), history.names)]
    rows = []
    for n in names:
        means = window_means(history.series[n], TREND_FRACTION)
        if means is None:
            continue
        first, last, k = means
        change = last - first
        trend = "up" if change > 0 else "down" if change < 0 else "flat"
        rows.append(f'<tr class="trend-{trend}" data-metric="{_esc(n)}"><td><code>{_esc(n)}</code></td>'
                    f"<td class=num>{first:.3f}</td><td class=num>{last:.3f}</td>"
                    f"<td class=num>{change:+.3f} {'▲' if change > 0 else '▼' if change < 0 else '='}</td>"
                    f"<td class=num>{len(history.series[n])}</td></tr>")
    if not rows:
        return ""
    return ('<table class="values trend" id="reward-trend"><caption>Mean reward over the first vs the last '
            f"{TREND_FRACTION:.0%} of the steps that logged it</caption><tr><th>reward</th><th>first</th>"
            "<th>last</th><th>change</th><th>steps</th></tr>" + "".join(rows) + "</table>")


def _image_uri(run_dir: Path, rel: str | None) -> str | None:
    if not rel:
        return None
    path = (run_dir / rel).resolve()
    try:
        path.relative_to(run_dir.resolve())  # a row never points the report outside the run directory
    except ValueError:
        return None
    return _png_uri(path.read_bytes()) if path.is_file() else None


def shown_steps(rows: list[dict[str, Any]]) -> list[int]:
    """The logged steps the report shows: the first, the last, and for each task seen in neither, the last step that
    sampled it (so every task's completions, grounding boxes included, appear)."""
    steps = sorted({r["step"] for r in rows})
    chosen = {steps[0], steps[-1]}
    covered = {r.get("task") for r in rows if r["step"] in chosen}
    for task in sorted({str(r.get("task")) for r in rows} - {str(c) for c in covered}):
        chosen.add(max(r["step"] for r in rows if str(r.get("task")) == task))
    return sorted(chosen)


def prompt_groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A step's rows as its prompt groups (consecutive rows of one sample id), in logged order."""
    groups: list[list[dict[str, Any]]] = []
    for r in rows:
        if groups and groups[-1][0].get("id") == r.get("id"):
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def best_and_worst(group: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The group's highest- and lowest-reward completions (first one on ties), labelled; one row when all agree."""
    scored = [r for r in group if r.get("total_reward") is not None] or group
    key = [(r.get("total_reward") or 0.0) for r in scored]
    best, worst = scored[key.index(max(key))], scored[key.index(min(key))]
    n = len(group)
    if best is worst or max(key) == min(key):
        return [(f"all {n} equal" if n > 1 else "", best)]
    return [(f"best of {n}", best), (f"worst of {n}", worst)]


def _completions(files: RunFiles) -> str:
    rows = files.completions
    if not rows:
        return ""
    steps = sorted({r["step"] for r in rows})
    shown = shown_steps(rows)
    out = [f"<p>{len(rows)} completions logged at {len(steps)} step(s) in <code>{COMPLETIONS_FILE}</code>. Shown: "
           "the first and the last logged steps, and the last step of each task seen in neither; per prompt, its "
           "best and worst completion by total reward. Boxes: reference green, prediction red.</p>"]
    for step in shown:
        at = [r for r in rows if r["step"] == step]
        totals = [r["total_reward"] for r in at if r.get("total_reward") is not None]
        mean = f"; mean total reward {sum(totals) / len(totals):.3f} over {len(at)} completions" if totals else ""
        out.append(f'<h3 id="completions-step-{_esc(step)}">Step {_esc(step)}{mean}</h3>')
        out.append('<table class="completions"><tr><th>image</th><th>task</th><th>question / reference</th>'
                   "<th></th><th>completion</th><th>total</th><th>rewards</th><th>advantage</th></tr>")
        for group in prompt_groups(at)[:MAX_PROMPTS_PER_STEP]:
            picked = best_and_worst(group)
            span = len(picked)
            shared_image = len({r.get("image") for _, r in picked}) == 1
            for j, (label, r) in enumerate(picked):
                cells = []
                if j == 0 or not shared_image:
                    uri = _image_uri(files.run_dir, r.get("image"))
                    img = f'<img class="thumb" src="{uri}" alt="{_esc(r.get("id", ""))}">' if uri else "–"
                    cells.append(f'<td rowspan="{span if shared_image else 1}">{img}</td>')
                if j == 0:
                    cells.append(f'<td rowspan="{span}">{_esc(r.get("task", ""))}</td>')
                    cells.append(f'<td rowspan="{span}" class="text">{_esc(r.get("question", ""))}'
                                 f'<div class="ref">reference: {_esc(r.get("answer", ""))}</div></td>')
                text = str(r.get("completion", ""))
                cut = f'<div class="note">({len(text)} characters, cut)</div>' if len(text) > MAX_COMPLETION_CHARS \
                    else ""
                rewards = ", ".join(f"{_esc(n)} {v:.2f}" for n, v in (r.get("rewards") or {}).items()
                                    if v is not None)  # a reward that does not apply to the task is left out
                total = r.get("total_reward")
                cells += [f'<td class="rank">{_esc(label)}</td>',
                          f'<td class="text completion"><div class="scroll">{_esc(text[:MAX_COMPLETION_CHARS])}'
                          f"</div>{cut}</td>",
                          f"<td class=num>{'–' if total is None else f'{total:.2f}'}</td>",
                          f"<td>{rewards}</td>", f"<td class=num>{_num(r.get('advantage'), 3)}</td>"]
                out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
    return "\n".join(out)


def _evaluation(files: RunFiles) -> str:
    from chexone.evaluation.report import fmt, metric_columns

    out = []
    for name, r in files.results.items():
        cols = metric_columns([r])
        ci = (f"{r.get('confidence', 0.95):.0%} bootstrap CI from {r['n_resamples']} resamples"
              if r.get("n_resamples") else "no CI (eval.bootstrap_resamples=0)")
        tasks = ", ".join(f"{t} {n}" for t, n in (r.get("tasks") or {}).items())
        out.append(f'<h3 id="eval-{_esc(_slug(name))}">{_esc(r.get("title") or name)}</h3>'
                   f"<p>{_esc(r.get('n', '?'))} samples ({_esc(tasks)}); value [{_esc(ci)}].</p>")
        higher = r.get("higher_is_better", {})
        head = "".join(f"<th>{_esc(c)}{' ↑' if higher.get(c) is True else ' ↓' if higher.get(c) is False else ''}"
                       "</th>" for c in cols)
        out.append(f'<table class="values eval" data-benchmark="{_esc(name)}"><tr><th>row</th><th>n</th>{head}</tr>')
        for row, metrics in r["rows"].items():
            n = (metrics.get("well_formed") or {}).get("n", "")
            out.append(f"<tr><th>{_esc(row)}</th><td class=num>{_esc(n)}</td>"
                       + "".join(f"<td class=num>{_esc(fmt(metrics.get(c)))}</td>" for c in cols) + "</tr>")
        out.append("</table>")
        for kind, path in (r.get("plots") or {}).items():
            p = Path(path)
            if not p.is_file():  # the run directory was moved: the plot is where the evaluation wrote it
                p = files.run_dir / name / "plots" / p.name
            if p.is_file():
                out.append(f'<figure class="eval-plot"><img src="{_png_uri(p.read_bytes())}" alt="{_esc(name)} '
                           f'{_esc(kind)}"><figcaption>{_esc(name)}: {_esc(kind)}</figcaption></figure>')
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ the page

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 0 20px 40px; color: #1d2330; background: #fff; }
h1 { font-size: 1.5em; margin: 18px 0 4px; } h2 { border-bottom: 2px solid #dde3ee; padding-bottom: 4px; }
.meta { color: #4a5468; font-size: 0.9em; } .desc { color: #4a5468; margin-top: -6px; }
nav { position: sticky; top: 0; background: #f5f7fb; padding: 6px 10px; border-bottom: 1px solid #dde3ee;
      font-size: 0.9em; z-index: 1; } nav a { margin-right: 12px; text-decoration: none; color: #2457a6; }
.panels { display: flex; flex-wrap: wrap; gap: 10px; }
figure.panel { margin: 0; border: 1px solid #e3e8f0; border-radius: 6px; padding: 4px; width: 480px; }
figure.panel img { width: 480px; height: auto; display: block; }
figcaption { font-size: 0.72em; color: #5b6478; padding: 2px 4px; word-break: break-all; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.86em; }
th, td { border: 1px solid #dde3ee; padding: 3px 7px; vertical-align: top; text-align: left; }
th { background: #f5f7fb; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
caption { text-align: left; font-weight: 600; padding: 2px 0; }
tr.trend-up td:nth-child(4) { color: #167a3a; font-weight: 600; } tr.trend-down td:nth-child(4) { color: #b3261e; }
img.thumb { width: 112px; height: auto; display: block; image-rendering: auto; }
td.text { max-width: 330px; white-space: pre-wrap; word-break: break-word; }
td.completion { max-width: 460px; font-family: ui-monospace, monospace; font-size: 0.92em; }
td.completion .scroll { max-height: 15em; overflow-y: auto; }
.ref { color: #167a3a; margin-top: 4px; }
td.rank { color: #5b6478; font-size: 0.85em; white-space: nowrap; } .note { color: #8a6d00; font-size: 0.85em; }
.eval-plot img { max-width: 100%; } .notes { background: #fff8e1; border: 1px solid #f0d98c; padding: 6px 10px; }
code { font-size: 0.92em; }
"""


def render_html(files: RunFiles, assets: _Assets, *, smoothing: float) -> str:
    cfg = files.config
    title = f"chexone run report: {files.run_dir.name}"
    steps = {x for pts in files.history.series.values() for x, _ in pts}
    meta = [f"run <code>{_esc(files.run_dir)}</code>"]
    for label, value in (("recipe", cfg.get("recipe")), ("stage", cfg.get("stage")),
                         ("model", (cfg.get("model") or {}).get("path"))):
        if value:
            meta.append(f"{label} <b>{_esc(value)}</b>")
    if steps:
        meta.append(f"<b>{len(steps)}</b> logged steps ({int(min(steps))}-{int(max(steps))})")
    meta.append(f"curves: raw (faint) and EMA-smoothed, weight {smoothing:g}")
    meta.append(f"written {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
    sources = []
    if files.history.source is not None:
        sources.append(f"<code>{_esc(files.history.source.relative_to(files.run_dir))}</code> "
                       f"({len(files.history.names)} metrics)")
    if files.completions:
        sources.append(f"<code>{COMPLETIONS_FILE}</code> ({len(files.completions)} rows)")
    if files.results:
        sources.append(f"<code>{RESULTS_FILE}</code> ({len(files.results)} benchmark(s))")

    body: list[str] = []
    nav: list[str] = []
    for sec in SECTIONS:
        if sec.key == "axes":
            continue
        parts: list[str] = []
        if sec.key == "rewards":
            parts.append(_reward_trend(files.history))
        figures, single = _metric_panels(sec.key, files, assets, smoothing)
        if figures:
            parts.append('<div class="panels">' + "\n".join(figures) + "</div>")
        parts.append(_values_table(single, files.history))
        if sec.key == "completions":
            parts.append(_completions(files))
        if sec.key == "evaluation":
            parts.append(_evaluation(files))
        parts = [p for p in parts if p]
        if not parts:
            continue
        nav.append(f'<a href="#{sec.key}">{_esc(sec.title)}</a>')
        body.append(f'<section id="{sec.key}"><h2>{_esc(sec.title)}</h2><p class="desc">{_esc(sec.description)}</p>'
                    + "\n".join(parts) + "</section>")
    notes = list(files.notes)
    if not body:
        notes.append(f"Nothing to show: {files.run_dir} has no csv/metrics.csv, {COMPLETIONS_FILE} or "
                     f"{RESULTS_FILE}.")
    notes_html = ('<div class="notes">' + "".join(f"<p>{_esc(n)}</p>" for n in notes) + "</div>") if notes else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{_esc(title)}</h1>\n<p class=\"meta\">{' · '.join(meta)}</p>\n"
            f"<p class=\"meta\">from {', '.join(sources) if sources else 'no logs'}; metric names: docs/logging.md"
            "</p>\n"
            f"<nav>{''.join(nav)}</nav>\n{notes_html}\n" + "\n".join(body) + "\n</body></html>\n")


def build_report(run_dir: str | Path, *, smoothing: float = SMOOTHING) -> Path:
    """Write ``RUN_DIR/report.html`` (and the panel PNGs in ``RUN_DIR/report/``); returns the HTML path."""
    files = read_run(Path(run_dir))
    assets = _Assets(files.run_dir / ASSET_DIR)
    page = render_html(files, assets, smoothing=smoothing)
    out = files.run_dir / REPORT_FILE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def write_report_safely(run_dir: str | Path, *, smoothing: float = SMOOTHING) -> Path | None:
    """``build_report`` for the end of a fit or evaluation: a failure is a warning naming the cause, never a failed
    run (the run's own results are already written)."""
    try:
        return build_report(run_dir, smoothing=smoothing)
    except Exception as e:  # noqa: BLE001 - the report is a by-product; the run succeeded
        message = (f"could not write the run report for {run_dir}: {type(e).__name__}: {e} (the run's results are "
                   f"unaffected; retry with `python -m chexone.dashboard report {run_dir}`)")
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return None


__all__ = ["ASSET_DIR", "REPORT_FILE", "RunFiles", "build_report", "read_run", "render_html", "series_labels",
           "write_report_safely"]
