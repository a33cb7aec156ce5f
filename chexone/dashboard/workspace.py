"""The W&B workspace: the catalog's sections and panels as a ``wandb_workspaces`` Workspace (the ``dashboard`` extra).

``dashboard_definition`` is the plain, JSON-able form (what ``--dry-run`` prints); ``build_workspace`` turns it into
the Workspace object, which validates every field offline. Only ``save_workspace`` talks to W&B.

Line panels plot against ``trainer/global_step`` with the report's EMA smoothing; a panel whose catalog entries are
patterns (per reward, per task family, per skip reason) selects its metrics with an anchored regex that excludes the
names other entries own, so each logged name lands in exactly one panel.
"""

from __future__ import annotations

from typing import Any

from chexone.dashboard.catalog import PANELS, SECTIONS, SMOOTHING, WANDB_STEP, METRICS, exclusive_regex

#: The workspace's name in the W&B project.
DEFAULT_NAME = "chexone"
#: Sections opened when the workspace loads.
OPEN_SECTIONS = ("rewards", "policy", "optimisation", "validation", "completions")
#: Sections shown first.
PINNED_SECTIONS = ("rewards",)


class MissingExtraError(RuntimeError):
    """wandb-workspaces is not installed."""


def dashboard_definition() -> dict[str, Any]:
    """Sections -> panels -> the metric keys (or key regex, or table name) each panel shows, from the catalog."""
    kinds = {m.name: m.kind for m in METRICS}
    sections = []
    for sec in SECTIONS:
        if not sec.in_wandb:
            continue
        panels = []
        for p in PANELS:
            if p.section != sec.key:
                continue
            entry: dict[str, Any] = {"title": p.title, "kind": p.kind, "metrics": list(p.metrics)}
            if p.kind == "table":
                (name,) = p.metrics
                if kinds[name] != "table":
                    raise ValueError(f"panel {p.title!r}: {name!r} is not a W&B table in the catalog")
                entry["table"] = name
            elif any("{" in m for m in p.metrics):
                entry["regex"] = exclusive_regex(p.metrics)
            else:
                entry["keys"] = list(p.metrics)
            panels.append(entry)
        if panels:
            sections.append({"key": sec.key, "title": sec.title, "description": sec.description,
                             "open": sec.key in OPEN_SECTIONS, "pinned": sec.key in PINNED_SECTIONS,
                             "panels": panels})
    return {"x_axis": WANDB_STEP, "smoothing": {"type": "exponential", "weight": SMOOTHING},
            "sections": sections}


def _modules():
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as e:
        raise MissingExtraError("the W&B workspace needs the `dashboard` extra: pip install -c constraints.txt "
                                "-e \".[dashboard]\" (wandb-workspaces)") from e
    return ws, wr


def build_workspace(entity: str, project: str, name: str = DEFAULT_NAME, definition: dict[str, Any] | None = None):
    """The Workspace object for ``entity``/``project`` (nothing is sent: see ``save_workspace``)."""
    ws, wr = _modules()
    definition = definition or dashboard_definition()
    sections = []
    for sec in definition["sections"]:
        panels = []
        for p in sec["panels"]:
            if p["kind"] == "table":
                panels.append(wr.WeavePanelSummaryTable(table_name=p["table"], layout=wr.Layout(w=24, h=12)))
                continue
            common = {"title": p["title"], "x": definition["x_axis"], "smoothing_type": "exponential",
                      "smoothing_factor": definition["smoothing"]["weight"], "smoothing_show_original": True}
            if p["kind"] == "stacked":
                common["plot_type"] = "stacked-area"
            if "regex" in p:
                panels.append(wr.LinePlot(metric_regex=p["regex"], **common))
            else:
                panels.append(wr.LinePlot(y=list(p["keys"]), **common))
        sections.append(ws.Section(name=sec["title"], panels=panels, is_open=sec["open"], pinned=sec["pinned"]))
    settings = ws.WorkspaceSettings(x_axis=definition["x_axis"])
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections, settings=settings)


def save_workspace(workspace, url: str | None = None):
    """Create the workspace in W&B, or, given the ``url`` of one saved before, replace its sections and settings
    (the same view, updated). Needs W&B credentials and network."""
    ws, _ = _modules()
    if url:
        existing = ws.Workspace.from_url(url)
        existing.sections = workspace.sections
        existing.settings = workspace.settings
        existing.name = workspace.name
        return existing.save()
    return workspace.save()


__all__ = ["DEFAULT_NAME", "MissingExtraError", "build_workspace", "dashboard_definition", "save_workspace"]
