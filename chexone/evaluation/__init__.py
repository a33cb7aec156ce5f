"""Benchmark evaluation: batched decoding of held-out samples, scoring with registered metrics, results with
bootstrap confidence intervals, tables, plots and paired comparisons of two runs.

One code path serves ``python -m chexone.evaluate`` and the validation loop of ``python -m chexone.fit``:
:class:`~chexone.evaluation.predict.Predictor` turns samples into :class:`~chexone.evaluation.predict.Prediction`
records and :func:`~chexone.evaluation.scoring.score_predictions` scores them (docs/evaluation.md).
"""
