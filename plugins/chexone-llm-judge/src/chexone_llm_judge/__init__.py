"""chexone-llm-judge: score generated radiology reports with an LLM judge, as a chexone metric.

Adds the metric ``llm_judge`` (entry point in pyproject.toml; nothing is imported until a recipe selects it): a
GREEN-style score computed from the judge's structured answer — matched findings versus clinically significant
errors — through any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, TGI, SGLang, llama.cpp's server, a
hosted API), with an on-disk cache, retries with exponential backoff and a per-request timeout. Standard library only
for HTTP. See :mod:`chexone_llm_judge.metric`.
"""

__version__ = "0.1.0"

#: The chexone plugin API this package was written for (chexone.plugin_api.API_VERSION).
CHEXONE_API_VERSION = 1
