"""The reader study of the CheXOne paper as a small local web app (``python -m chexone.reader_study``).

Radiologists edit model draft reports (timed), compare two reports blinded, and rate model reasoning on Likert
scales; answers go to SQLite and ``export`` turns them into CSVs, summary statistics with agreement between readers,
and plots. See docs/reader_study.md.

Modules: ``study`` (the study YAML and its validation), ``plan`` (each reader's randomised, blinded order), ``auth``
(access codes), ``store`` (SQLite persistence), ``images`` (serving images from the study's root only), ``app`` (the
WSGI app), ``server`` (binding and running it), ``drafts`` (model drafts from an OpenAI-compatible server),
``edits`` (edit distances), ``stats`` (summary and agreement statistics), ``export`` (CSVs and summaries), ``plots``
and ``example`` (a ready-to-run study).
"""
