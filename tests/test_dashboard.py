"""The metric catalog, the W&B workspace built from it (offline), the docs table, and the HTML run report on a run
directory made by hand (values chosen so every number the report shows can be computed here independently)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import socket

import pytest
from PIL import Image

from chexone.dashboard import catalog
from chexone.dashboard.catalog import (METRICS, PANELS, SECTIONS, SMOOTHING, catalog_problems, example_name,
                                       exclusive_regex, lookup, placeholder_values)
from chexone.dashboard.history import ema, read_csv_history, window_means

# ------------------------------------------------------------------------------------------------ catalog


def test_catalog_is_consistent():
    assert catalog_problems() == []


@pytest.mark.parametrize("name, entry", [
    ("train/reward/total_mean", "train/reward/total_mean"),
    ("train/reward/vqa_mean", "train/reward/{reward}_mean"),
    ("train/reward/grounding_iou_std", "train/reward/{reward}_std"),
    ("train/reward/grounding/total_mean", "train/reward/{family}/total_mean"),
    ("train/reward/multiple_choice/format_mean", "train/reward/{family}/{reward}_mean"),
    ("val/loss", "val/loss"),
    ("val/accuracy", "val/{metric}"),
    ("val/map@0.5", "val/{metric}"),
    ("val/majority_baseline_multiple_choice", "val/majority_baseline_{family}"),
    ("val/accuracy/close_vqa", "val/{metric}/{task}"),
    ("data/skipped/bad_json", "data/skipped/{reason}"),
    ("eval/rexvqa/task=close_vqa/accuracy", "eval/{benchmark}/{row}/{metric}"),
    ("train/time/generation", "train/time/generation"),
])
def test_a_logged_name_belongs_to_its_most_specific_entry(name, entry):
    assert lookup(name).name == entry


def test_unknown_names_are_not_in_the_catalog():
    for name in ("train/rewards/total_mean", "val", "train/time/new_phase", "train/reward/a/b/c_mean"):
        assert lookup(name) is None, name


def test_placeholder_values():
    entry = lookup("train/reward/open_vqa/vqa_strict_mean")
    assert placeholder_values(entry, "train/reward/open_vqa/vqa_strict_mean") == {"family": "open_vqa",
                                                                                  "reward": "vqa_strict"}


def test_panel_regexes_select_exactly_the_names_their_panels_own():
    # concrete names as runs log them, plus every catalog entry's example
    logged = ["train/reward/total_mean", "train/reward/total_std", "train/reward/vqa_mean", "train/reward/format_std",
              "train/reward/grounding/total_mean", "train/reward/grounding/grounding_iou_mean",
              "train/reward/multiple_choice/vqa_mean", "val/loss", "val/accuracy", "val/well_formed",
              "val/majority_baseline_grounding", "val/iou/phrase_grounding", "data/skipped/missing_image",
              "data/ignored/txt", "data/read"] + [example_name(m.name) for m in METRICS]
    seen = 0
    for panel in PANELS:
        if not any("{" in m for m in panel.metrics):
            continue
        rx = re.compile(exclusive_regex(panel.metrics))
        for name in logged:
            owned = lookup(name).name in panel.metrics
            assert bool(rx.fullmatch(name)) == owned, (panel.title, name)
            seen += owned
    assert seen > 10
    # what the regexes must leave to other panels, spelled out
    each_reward = re.compile(exclusive_regex(("train/reward/{reward}_mean",)))
    assert each_reward.fullmatch("train/reward/vqa_mean") and not each_reward.fullmatch("train/reward/total_mean")
    validation = re.compile(exclusive_regex(("val/{metric}", "val/well_formed", "val/majority_baseline_{family}")))
    assert validation.fullmatch("val/bleu2") and not validation.fullmatch("val/loss")


# ------------------------------------------------------------------------------------------------ W&B workspace


def test_workspace_builds_offline_with_every_key_from_the_catalog(monkeypatch):
    pytest.importorskip("wandb_workspaces", reason="the `dashboard` extra (wandb-workspaces) is not installed")
    import wandb_workspaces.reports.v2 as wr

    from chexone.dashboard.workspace import build_workspace, dashboard_definition

    def no_network(*args, **kwargs):
        raise AssertionError("building the workspace must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    ws = build_workspace("my-team", "chexone")
    assert (ws.entity, ws.project, ws.name) == ("my-team", "chexone", "chexone")
    wanted = [s for s in SECTIONS if s.in_wandb]
    assert [s.name for s in ws.sections] == [s.title for s in wanted]
    assert ws.settings.x_axis == "trainer/global_step"
    assert ws.sections[0].name == "Rewards" and ws.sections[0].pinned
    titles = {"Rewards": set(), "Policy health": set(), "Lengths": set(), "Step time and throughput": set(),
              "Data": set(), "Validation": set(), "Completions": set()}
    for section in ws.sections:
        expected = [p for p in PANELS if catalog.section(p.section).title == section.name]
        assert len(section.panels) == len(expected)
        for panel, spec in zip(section.panels, expected):
            titles.setdefault(section.name, set()).add(spec.title)
            if spec.kind == "table":
                assert isinstance(panel, wr.WeavePanelSummaryTable)
                assert lookup(panel.table_name).kind == "table"
                continue
            assert isinstance(panel, wr.LinePlot) and panel.title == spec.title
            assert panel.x == "trainer/global_step" and panel.smoothing_factor == SMOOTHING
            if panel.metric_regex:
                assert panel.metric_regex == exclusive_regex(spec.metrics) and not panel.y
            else:
                assert panel.y and all(lookup(k) is not None and not lookup(k).is_pattern for k in panel.y)
                assert list(panel.y) == list(spec.metrics)
    # the sections: rewards per family, policy health, lengths, step time, data skips, validation with
    # baselines, the completions table
    assert "Total reward per task family" in titles["Rewards"]
    assert {"KL to the reference", "Clipped token fraction", "Entropy", "Advantages", "Groups without reward spread",
            "Truncated completions"} <= titles["Policy health"]
    assert "Step time split" in titles["Step time and throughput"] and "Skipped by reason" in titles["Data"]
    assert "Validation metrics and majority baselines" in titles["Validation"]
    assert "Sampled completions" in titles["Completions"]
    definition = dashboard_definition()
    assert json.loads(json.dumps(definition)) == definition  # what --dry-run prints is plain JSON


def _main(argv, capsys):
    from chexone.dashboard.__main__ import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_wandb_command_dry_run_without_key_and_with_key(monkeypatch, tmp_path, capsys):
    pytest.importorskip("wandb_workspaces", reason="the `dashboard` extra (wandb-workspaces) is not installed")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    code, out, _ = _main(["wandb", "--entity", "e", "--project", "p", "--dry-run"], capsys)
    assert code == 0
    printed = json.loads(out)
    assert (printed["entity"], printed["project"]) == ("e", "p")
    assert [s["title"] for s in printed["sections"]][:2] == ["Rewards", "Policy health"]
    assert printed["smoothing"] == {"type": "exponential", "weight": SMOOTHING}

    code, out, err = _main(["wandb", "--entity", "e", "--project", "p"], capsys)
    assert code == 2 and "WANDB_API_KEY" in err and "--dry-run" in err

    saved = {}

    class Saved:
        url = "https://wandb.example/e/p?nw=abc"

    def fake_save(workspace, url=None):
        saved["workspace"], saved["url"] = workspace, url
        return Saved()

    import chexone.dashboard.workspace as workspace_module

    monkeypatch.setattr(workspace_module, "save_workspace", fake_save)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    code, out, _ = _main(["wandb", "--entity", "e", "--project", "p", "--url", "https://wandb.example/e/p?nw=old"],
                         capsys)
    assert code == 0 and "updated: https://wandb.example/e/p?nw=abc" in out
    assert saved["url"] == "https://wandb.example/e/p?nw=old" and saved["workspace"].entity == "e"


def test_a_wandb_login_netrc_counts_as_credentials(monkeypatch, tmp_path):
    from chexone.dashboard.__main__ import has_wandb_credentials

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not has_wandb_credentials()
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert has_wandb_credentials()


# ------------------------------------------------------------------------------------------------ docs


def test_docs_metric_table_is_current_and_lists_every_name():
    from chexone.dashboard.docgen import DOCS, render_block

    text = DOCS.read_text(encoding="utf-8")
    assert render_block() in text, "docs/logging.md is stale: run `python -m chexone.dashboard docs`"
    for m in METRICS:
        assert f"| `{m.name}`" in text, m.name


# ------------------------------------------------------------------------------------------------ history


def test_ema_is_the_debiased_exponential_average():
    # w=0.5: s1 = 0.5*1 / (1-0.5) = 1; s2 = 0.25 / 0.75; s3 = 0.125 / 0.875
    assert ema([1.0, 0.0, 0.0], 0.5) == pytest.approx([1.0, 1 / 3, 1 / 7])
    out = ema([2.0, float("nan"), 4.0], 0.5)  # NaN passes through and does not enter the average
    assert out[0] == pytest.approx(2.0) and out[1] != out[1] and out[2] == pytest.approx(2.5 / 0.75)
    assert ema([3.0, 1.0], 0.0) == [3.0, 1.0]
    with pytest.raises(ValueError):
        ema([1.0], 1.0)


def test_csv_history_takes_numbers_per_step(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/loss\n0,0,2.5,\n0,1,2.0,\n0,1,1.5,\n0,2,,0.75\n0,x,9,\n0,3,oops,\n")
    h = read_csv_history(path)
    assert h.series == {"train/loss": [(0.0, 2.5), (1.0, 1.5)], "val/loss": [(2.0, 0.75)]}
    assert h.last("train/loss") == 1.5 and h.last("missing") is None


def test_window_means():
    points = [(float(i), float(v)) for i, v in enumerate([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])]
    assert window_means(points, 0.2) == (0.5, 8.5, 2)
    assert window_means(points[:1]) is None


# ------------------------------------------------------------------------------------------------ the report

FAMILY_REWARDS = {  # step -> (multiple_choice total, grounding total or None when no grounding prompt that step)
    0: (0.5, 0.1), 1: (0.5, None), 2: (1.0, 0.3), 3: (1.5, 0.2), 4: (1.0, 0.5),
    5: (1.5, None), 6: (2.0, 0.6), 7: (1.5, 0.7), 8: (2.0, 0.9), 9: (2.0, 0.8),
}


def _png_bytes(colour=(90, 90, 90), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def make_run_dir(root):
    """A stage-2-like run directory: metrics.csv with per-family rewards, two logged completion steps with
    thumbnails (one grounding box drawn), and an evaluation results.json."""
    from chexone.dashboard.thumbnails import completion_thumbnail, save_png, thumbnail_path

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("recipe: stage2_grpo\nstage: grpo\nmodel:\n  path: tiny\n")
    (root / "csv").mkdir()
    header = ["epoch", "step", "train/reward/total_mean", "train/reward/multiple_choice/total_mean",
              "train/reward/grounding/total_mean", "train/kl", "train/time/generation", "train/time/policy",
              "val/accuracy/close_vqa", "val/accuracy/phrase_grounding", "val/well_formed"]
    with open(root / "csv" / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for step, (mc, gr) in FAMILY_REWARDS.items():
            total = (mc + gr) / 2 if gr is not None else mc
            w.writerow([0, step, total, mc, "" if gr is None else gr, 0.01 * step, 1.0 + step, 0.5, "", "", ""])
        w.writerow([0, 9, "", "", "", "", "", "", 0.75, 0.25, 0.5])
    grey = Image.new("RGB", (200, 100), (90, 90, 90))
    rows = []
    for step in (1, 10):
        rel_mc = thumbnail_path(step, 0)
        save_png(completion_thumbnail(grey), root / rel_mc)
        for i in range(2):
            rows.append({"step": step, "id": "s1", "task": "close_vqa", "question": "Is the heart <enlarged>?",
                         "answer": "A", "completion": f"step {step} answer {i} \\boxed{{A}}",
                         "total_reward": 1.0 + i, "rewards": {"format": 1.0, "vqa": float(i), "grounding_iou": None},
                         "advantage": 0.7 * (1 if i else -1), "image": rel_mc})
        rel_gr = thumbnail_path(step, 1, 0)
        save_png(completion_thumbnail(grey, reference="<|ref|>nodule<|/ref|><|box|>(10,10),(50,50)<|/box|>",
                                      prediction="<|ref|>nodule<|/ref|><|box|>(20,20),(60,60)<|/box|>"),
                 root / rel_gr)
        rows.append({"step": step, "id": "g1", "task": "phrase_grounding", "question": "Where is the nodule?",
                     "answer": "<|ref|>nodule<|/ref|><|box|>(10,10),(50,50)<|/box|>", "completion": "x" * 2000,
                     "total_reward": 0.4, "rewards": {"format": 0.0, "vqa": None, "grounding_iou": 0.4},
                     "advantage": 0.0, "image": rel_gr})
    (root / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{torn")
    (root / "demo_vqa" / "plots").mkdir(parents=True)
    (root / "demo_vqa" / "plots" / "metrics.png").write_bytes(_png_bytes())
    results = {"demo_vqa": {
        "benchmark": "demo_vqa", "title": "Demo VQA", "n": 10, "tasks": {"close_vqa": 10}, "confidence": 0.95,
        "n_resamples": 200, "higher_is_better": {"accuracy": True},
        "rows": {"all": {"accuracy": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10},
                         "majority_baseline": {"value": 0.3, "ci_low": None, "ci_high": None, "n": 10},
                         "well_formed": {"value": 0.9, "ci_low": None, "ci_high": None, "n": 10}}},
        "plots": {"metrics": "/elsewhere/demo_vqa/plots/metrics.png"}}}
    (root / "results.json").write_text(json.dumps(results))
    return root


def _data_uris(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_shows_every_section_with_hand_checked_numbers(tmp_path):
    from chexone.dashboard.report import build_report

    run = make_run_dir(tmp_path / "run")
    path = build_report(run)
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    for section in ("rewards", "policy", "speed", "validation", "completions", "evaluation"):
        assert f'<section id="{section}">' in page, section
    for absent in ("lengths", "data", "optimisation"):  # nothing logged there
        assert f'<section id="{absent}">' not in page
    # the trend table: first / last 20% of the steps that logged each curve, computed here by hand
    mc = [v[0] for v in FAMILY_REWARDS.values()]
    gr = [v[1] for v in FAMILY_REWARDS.values() if v[1] is not None]  # 8 values: windows of 2
    for name, first, last in (("train/reward/multiple_choice/total_mean", sum(mc[:2]) / 2, sum(mc[-2:]) / 2),
                              ("train/reward/grounding/total_mean", sum(gr[:2]) / 2, sum(gr[-2:]) / 2)):
        row = re.search(rf'<tr class="trend-(\w+)" data-metric="{re.escape(name)}">(.*?)</tr>', page).groups()
        assert row[0] == "up"
        assert f"<td class=num>{first:.3f}</td><td class=num>{last:.3f}</td>" in row[1]
    # one figure per panel that has curves; the stacked step-time split is a figure too
    panels = re.findall(r'<figure class="panel" data-panel="([^"]+)"', page)
    assert {"Total reward", "Total reward per task family", "KL to the reference", "Step time split"} <= set(panels)
    pngs = sorted(p.name for p in (run / "report").glob("*.png"))
    assert "rewards-total-reward-per-task-family.png" in pngs and len(pngs) == len(panels)
    # validation logged once: a pivot table task x metric
    assert re.search(r"<th>close_vqa</th><td class=num>0\.75</td>", page)
    assert re.search(r"<th>phrase_grounding</th><td class=num>0\.25</td>", page)
    # completions: the first and the last logged steps, thumbnails embedded (the very bytes on disk), text escaped
    assert 'id="completions-step-1"' in page and 'id="completions-step-10"' in page
    embedded = _data_uris(page)
    assert (run / "completions/step-000010/p1-c0.png").read_bytes() in embedded
    assert "Is the heart &lt;enlarged&gt;?" in page and "<enlarged>" not in page
    assert "(2000 characters, cut)" in page
    assert page.count('<td class="rank">best of 2</td>') == page.count('<td class="rank">worst of 2</td>') == 2
    assert "line 7 is not JSON" in page  # the torn last line is left out, and said so
    # the evaluation table with its CI, and its plot found where the evaluation wrote it
    assert "0.500 [0.400, 0.600]" in page and "accuracy ↑" in page
    assert (run / "demo_vqa/plots/metrics.png").read_bytes() in embedded
    # self-contained: every image is embedded PNG data, nothing is fetched
    assert all(data.startswith(b"\x89PNG") for data in embedded)
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_a_wandb_only_run_gets_a_note_and_an_empty_dir_says_so(tmp_path):
    from chexone.dashboard.report import build_report

    (tmp_path / "old" / "wandb" / "offline-run-1").mkdir(parents=True)
    page = build_report(tmp_path / "old").read_text()
    assert "W&amp;B only" in page and "no public API" in page
    (tmp_path / "empty").mkdir()
    assert "Nothing to show" in build_report(tmp_path / "empty").read_text()


def test_a_report_that_cannot_be_written_only_warns(tmp_path):
    from chexone.dashboard.report import write_report_safely

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.warns(RuntimeWarning, match="could not write the run report"):
        assert write_report_safely(not_a_dir) is None


def test_report_command(tmp_path, capsys):
    run = make_run_dir(tmp_path / "run")
    code, out, _ = _main(["report", str(run), "--smoothing", "0"], capsys)
    assert code == 0 and "report.html" in out and "weight 0" in (run / "report.html").read_text()
    code, _, err = _main(["report", str(tmp_path / "missing")], capsys)
    assert code == 2 and "not a directory" in err


def test_series_labels_drop_shared_segments():
    from chexone.dashboard.report import series_labels

    assert series_labels(["train/reward/grounding/total_mean", "train/reward/multiple_choice/total_mean"]) == {
        "train/reward/grounding/total_mean": "grounding", "train/reward/multiple_choice/total_mean": "multiple_choice"}
    assert series_labels(["train/clip/low_frac", "train/clip/high_frac"]) == {
        "train/clip/low_frac": "low_frac", "train/clip/high_frac": "high_frac"}
    assert series_labels(["train/reward/grounding/total_mean"]) == {"train/reward/grounding/total_mean": "grounding"}


# ------------------------------------------------------------------------------------------------ thumbnails


def test_thumbnail_draws_reference_and_predicted_boxes_where_the_grid_says():
    from chexone.dashboard.thumbnails import PRED_COLOUR, TRUE_COLOUR, completion_thumbnail, predicted_answer

    grey = (90, 90, 90)
    thumb = completion_thumbnail(Image.new("RGB", (200, 100), grey),
                                 reference="<|ref|>nodule<|/ref|><|box|>(10,10),(50,50)<|/box|>",
                                 prediction=predicted_answer("I see it. \\boxed{<|ref|>nodule<|/ref|><|box|>(20,20),"
                                                             "(60,60)<|/box|>}"))
    assert thumb.size == (160, 80)  # longest side 160, aspect kept
    # reference: x 10..50% of 160 = 16..80, y 10..50% of 80 = 8..40; prediction: x 32..96, y 16..48
    assert thumb.getpixel((16, 20)) == TRUE_COLOUR and thumb.getpixel((50, 8)) == TRUE_COLOUR
    assert thumb.getpixel((32, 30)) == PRED_COLOUR and thumb.getpixel((70, 16)) == PRED_COLOUR
    assert thumb.getpixel((24, 12)) == grey and thumb.getpixel((120, 70)) == grey
    assert predicted_answer("no box here") == "no box here"
    assert predicted_answer("\\boxed{A} then \\boxed{B}", "first") == "A"


def test_thumbnail_colours_are_the_evaluation_overlays():
    from chexone.dashboard import thumbnails
    from chexone.evaluation import plots

    assert (thumbnails.TRUE_COLOUR, thumbnails.PRED_COLOUR) == (plots.TRUE_COLOUR, plots.PRED_COLOUR)


def test_which_completions_the_report_shows():
    from chexone.dashboard.report import best_and_worst, prompt_groups, shown_steps

    rows = [{"step": s, "task": task, "id": f"{task}{s}"} for s, task in ((1, "a"), (5, "b"), (9, "b"), (10, "a"),
                                                                          (3, "c"))]
    assert shown_steps(rows) == [1, 3, 9, 10]  # first, last, and the last step of the tasks seen in neither
    group = [{"id": "x", "total_reward": v} for v in (0.5, 2.0, None, -1.0, 2.0)]
    assert prompt_groups(group + [{"id": "y", "total_reward": 1.0}]) == [group, [{"id": "y", "total_reward": 1.0}]]
    assert best_and_worst(group) == [("best of 5", group[1]), ("worst of 5", group[3])]
    same = [{"id": "x", "total_reward": 1.0}, {"id": "x", "total_reward": 1.0}]
    assert best_and_worst(same) == [("all 2 equal", same[0])]
