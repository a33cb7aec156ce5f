"""The public, stable API for plugin authors: import from here, and your plugin keeps working across chexone releases
that keep ``API_VERSION``.

A plugin declares the version it was built for as ``CHEXONE_API_VERSION = 1`` in its package (or in the module its
entry points name); chexone refuses to select a plugin built for another version and ``python -m chexone.plugins
list`` reports it. Everything not exported here (or in ``chexone.testing``) is internal and may change in any
release. Names are resolved lazily, so importing this module stays light.

========================  ==============================================================================
name                      what
========================  ==============================================================================
``API_VERSION``           the plugin API version this chexone provides
``Task``, ``PromptStyle``  the task base class and the prompt settings passed to its hooks
``MultipleChoiceTask`` …  the built-in task classes, to subclass (``OpenVQATask``, ``FindingsGenerationTask``,
                          ``GroundingTask``)
``Sample``, ``SampleError``  the sample schema, and the error a task raises for a sample it cannot use
``extract_boxed`` …       answer parsing: ``find_boxed``, ``parse_option_letters``, ``render_options``,
                          ``parse_boxes``, ``format_boxes``, ``box_iou``, ``RefBox``
``PerSampleMetric``       base class of per-sample metrics (implement ``_score(preds, targets)``)
``TASKS`` …               the registries (``REWARDS``, ``METRICS``) for registering from code
``RewardError``           raised for unusable reward values (see the reward contract)
========================  ==============================================================================

``chexone.testing`` is public too: the conformance kit (tiny samples and images, ``assert_task_conforms``,
``assert_reward_conforms``, ``assert_metric_conforms``) that ``python -m chexone.plugins check`` runs, for a
plugin's own tests. It is a module of its own, not re-exported here, so that importing this one stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from chexone.registry import API_VERSION

_EXPORTS = {
    "Task": "chexone.tasks.base", "PromptStyle": "chexone.tasks.base",
    "MultipleChoiceTask": "chexone.tasks.builtin", "OpenVQATask": "chexone.tasks.builtin",
    "FindingsGenerationTask": "chexone.tasks.builtin", "GroundingTask": "chexone.tasks.builtin",
    "Sample": "chexone.data.sample", "SampleError": "chexone.data.sample",
    "extract_boxed": "chexone.tasks.answers", "find_boxed": "chexone.tasks.answers",
    "parse_option_letters": "chexone.tasks.answers", "render_options": "chexone.tasks.answers",
    "parse_boxes": "chexone.tasks.answers", "format_boxes": "chexone.tasks.answers",
    "box_iou": "chexone.tasks.answers", "RefBox": "chexone.tasks.answers",
    "PerSampleMetric": "chexone.metrics._common",
    "TASKS": "chexone.registry", "REWARDS": "chexone.registry", "METRICS": "chexone.registry",
    "RewardError": "chexone.training.reward_set",
}

__all__ = ["API_VERSION", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"chexone.plugin_api has no {name!r}; the public API is: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
