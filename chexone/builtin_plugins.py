"""Names of the built-in tasks, rewards and metrics as lazy "module:attr" references.

The registry loads these exactly like third-party entry points, and built-ins win on a name clash.
"""

BUILTIN_TASKS: dict[str, str] = {
    "close_vqa": "chexone.tasks.builtin:MultipleChoiceTask",
    "view_classification": "chexone.tasks.builtin:ViewClassificationTask",
    "temporal_classification": "chexone.tasks.builtin:TemporalClassificationTask",
    "disease_classification": "chexone.tasks.builtin:DiseaseClassificationTask",
    "open_vqa": "chexone.tasks.builtin:OpenVQATask",
    "findings_generation": "chexone.tasks.builtin:FindingsGenerationTask",
    "impression_generation": "chexone.tasks.builtin:ImpressionGenerationTask",
    "progression_generation": "chexone.tasks.builtin:ProgressionGenerationTask",
    "phrase_grounding": "chexone.tasks.builtin:GroundingTask",
    "abnormality_grounding": "chexone.tasks.builtin:AbnormalityGroundingTask",
}

BUILTIN_REWARDS: dict[str, str] = {
    "format": "chexone.rewards.builtin:format_reward",
    "vqa": "chexone.rewards.builtin:vqa_reward",
    "vqa_strict": "chexone.rewards.builtin:vqa_strict_reward",
    "grounding_iou": "chexone.rewards.builtin:grounding_iou_reward",
    "report": "chexone.rewards.builtin:report_reward",
}

BUILTIN_METRICS: dict[str, str] = {
    # report generation (docs/metrics.md)
    "bleu2": "chexone.metrics.text:BLEU2",
    "bertscore": "chexone.metrics.bertscore:BERTScore",
    "semb_score": "chexone.metrics.semb:SembScore",
    "radgraph": "chexone.metrics.radgraph:RadGraphF1",
    "radcliq": "chexone.metrics.radcliq:RadCliQ",
    "ratescore": "chexone.metrics.ratescore:RaTEScore",
    # close-ended and open questions
    "accuracy": "chexone.metrics.classification:Accuracy",
    "exact_match": "chexone.metrics.classification:ExactMatch",
    # grounding
    "iou": "chexone.metrics.grounding:GroundingIoU",
    "map": "chexone.metrics.grounding:GroundingMAP",
    # reasoning
    "factuality": "chexone.metrics.reasoning:Factuality",
    "self_consistency": "chexone.metrics.reasoning:SelfConsistency",
}
