"""Dashboards for runs: one metric catalog (``catalog``) behind the W&B workspace (``workspace``, the ``dashboard``
extra), the offline HTML run report (``report``) and the metric table of docs/logging.md (``docgen``).

``python -m chexone.dashboard --help`` lists the commands. Nothing heavy is imported here: training imports
``chexone.dashboard.thumbnails`` on its logging path.
"""
