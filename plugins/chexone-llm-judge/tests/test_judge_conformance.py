"""chexone's conformance kit (chexone.testing) on ``llm_judge``, against the stand-in judge server."""

from __future__ import annotations

from chexone.testing import assert_metric_conforms


def test_metric_conforms_on_reports(judge):
    kwargs = {"base_url": judge.url, "model": judge.model, "backoff": 0.01}
    assert_metric_conforms("llm_judge", task="findings_generation", kwargs=kwargs)
    assert_metric_conforms("llm_judge", task="findings_generation", kwargs={**kwargs, "reference": "report"})
    preds = ["No pleural effusion. Small left nodule.", "", "Left pleural effusion."]
    refs = ["No pleural effusion. Mild edema.", "No pneumothorax.", "Right pleural effusion."]
    assert_metric_conforms("llm_judge", preds, refs, kwargs=kwargs)
    assert judge.chat_requests > 0
