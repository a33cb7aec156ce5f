"""``llm_judge`` inside chexone: found by name, scored by the evaluation harness, and ``python -m chexone.evaluate``
end to end with the tiny model — stopping with one line before any answer is generated when the judge is
unreachable, and re-scoring a finished run without a single request."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from chexone.plugin_api import METRICS

REPORTS = [
    ("No pleural effusion. Heart size is normal. Small left nodule.",
     "No pleural effusion. Heart size is normal. Mild pulmonary edema. Low lung volumes.", 2 / 5),
    ("Right pleural effusion. No pneumothorax.", "Left pleural effusion. No pneumothorax.", 1 / 2),
    ("No acute cardiopulmonary process.", "No acute cardiopulmonary process.", 1.0),
]


def test_found_by_name_in_the_metrics_registry():
    from chexone_llm_judge.metric import LLMJudge

    assert METRICS.get("llm_judge") is LLMJudge
    assert METRICS.origin("llm_judge").startswith("chexone-llm-judge==0.1.0 (entry point llm_judge = ")
    import chexone_llm_judge

    assert chexone_llm_judge.CHEXONE_API_VERSION == 1


def test_harness_scoring_with_reference_report_from_meta(judge):
    from chexone.evaluation.predict import Prediction
    from chexone.evaluation.scoring import score_predictions
    from chexone.plugin_api import TASKS

    def lookup(name):
        cls = TASKS.get(name)
        return cls() if isinstance(cls, type) else cls

    preds = [Prediction(id=f"p{i}", task="findings_generation", family="report", dataset="x", prompt="q",
                        reasoning=False, output=cand, final=cand, parsed=cand, reference="(not used)",
                        well_formed=True, truncated=False, meta={"report": ref})
             for i, (cand, ref, _) in enumerate(REPORTS)]
    kwargs = {"llm_judge": {"base_url": judge.url, "model": judge.model, "reference": "report", "backoff": 0.01}}
    scored = score_predictions(preds, lookup, metrics=["llm_judge"], metric_kwargs=kwargs, n_resamples=100)
    expected = [v for *_, v in REPORTS]
    assert [p.scores["llm_judge"] for p in preds] == pytest.approx(expected)
    row = scored.rows["all"]["llm_judge"]
    assert row.value == pytest.approx(sum(expected) / 3) and row.n == 3
    assert row.low is not None and row.low <= row.value <= row.high
    # update() then score() in the harness: each pair judged once
    assert judge.chat_requests == 3


def write_benchmark(tmp_path, n: int = 3):
    """A JSONL benchmark in chexone's sample schema: findings generation with reference findings."""
    Image.new("L", (112, 112), 60).save(tmp_path / "cxr.png")
    path = tmp_path / "findings.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            ref = REPORTS[i % len(REPORTS)][1]
            f.write(json.dumps({"id": f"f{i}", "task": "findings_generation", "question": "Write the findings.",
                                "answer": ref, "images": ["cxr.png"], "meta": {"report": f"FINDINGS: {ref}"}}) + "\n")
    return path


def evaluate_args(bench, out, base_url):
    return ["recipe=eval_generation", "model=tiny", "model.path=tiny", f"data.iu_xray={bench}",
            "eval.benchmarks.iu_xray.metrics=[llm_judge]", f"eval.metric_kwargs.llm_judge.base_url={base_url}",
            "eval.metric_kwargs.llm_judge.model=judge-model", "eval.metric_kwargs.llm_judge.backoff=0.01",
            "data.reasoning=never", "eval.max_new_tokens=8", "eval.batch_size=4", "eval.bootstrap_resamples=20",
            "logger=none", f"eval.out={out}"]


def test_evaluate_stops_before_generating_when_the_judge_is_unreachable(tmp_path, chexone_cache, closed_port,
                                                                        capsys):
    from chexone.evaluate import main

    out = tmp_path / "eval"
    try:
        rc = main(evaluate_args(write_benchmark(tmp_path), out, f"http://127.0.0.1:{closed_port}/v1"))
    except SystemExit as e:  # how `python -m chexone.evaluate` exits on a benchmark error
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "metric 'llm_judge'" in lines[0] and "cannot reach the judge endpoint" in lines[0]
    assert "Traceback" not in err
    assert not (out / "iu_xray" / "samples.jsonl").exists()  # nothing was generated


def test_evaluate_end_to_end_and_rescoring_makes_no_request(tmp_path, chexone_cache, judge, capsys):
    from chexone.evaluate import main

    bench, out = write_benchmark(tmp_path), tmp_path / "eval"
    assert main(evaluate_args(bench, out, judge.url)) == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "iu_xray" / "results.json").read_text())
    records = [json.loads(line) for line in (out / "iu_xray" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 3 and result["rows"]["all"]["llm_judge"]["n"] == 3
    # one request per distinct (generated findings, reference findings) pair; empty answers are scored 0 unasked
    pairs = {(r["final"].strip(), r["reference"]) for r in records if (r["final"] or "").strip()}
    asked = judge.chat_requests
    assert asked == len(pairs)
    assert all(r["scores"]["llm_judge"] is not None for r in records)
    details = result["details"]["findings_generation"]["llm_judge"]
    assert {"green", "matched_findings", "significant_errors", "significant_a", "judged"} <= set(details)
    # the same command again: the answers are resumed from samples.jsonl, the judgements from the cache
    assert main(evaluate_args(bench, out, judge.url)) == 0
    assert judge.chat_requests == asked
    again = json.loads((out / "iu_xray" / "results.json").read_text())
    assert again["rows"]["all"]["llm_judge"]["value"] == result["rows"]["all"]["llm_judge"]["value"]
