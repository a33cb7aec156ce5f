"""Speed measurements whose results go to docs/benchmarks.md (``python -m chexone.bench``).

* ``rollout`` / ``sft`` (``internal``): chexone against itself (shared prefill vs HF generate, SFT step time).
* ``compare`` (``compare``): chexone against TRL on an identical workload, each framework in its own process.
"""
