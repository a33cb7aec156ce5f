"""``python -m chexone.bench.worker SPEC.json RESULT.json`` — one framework's run of one workload, in its own process.

``compare`` starts one of these per run, so each framework gets a fresh interpreter (nothing imported, allocated or
warmed up by the other) and its own peak-memory high-water mark. The spec names the framework, the workload, the
model directory and an output directory; the result is a ``RunResult`` as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path


def run(spec: dict) -> dict:
    import torch

    from chexone.bench.measure import device_name, peak_memory, versions
    from chexone.bench.workload import Workload
    from chexone.runtime import available_cores

    w = Workload.from_dict(spec["workload"])
    torch.set_num_threads(w.threads or available_cores())
    torch.manual_seed(w.seed)
    framework, variant = spec["framework"], spec.get("variant", "")
    if framework == "chexone":
        from chexone.bench import run_chexone as side
    elif framework == "trl":
        from chexone.bench import run_trl as side
    else:
        raise ValueError(f"framework={framework!r}; choose chexone | trl")
    if w.bench == "grpo":
        result = side.run_grpo(w, spec["model_dir"], spec["output_dir"])
    elif framework == "chexone" and variant:
        result = side.run_sft(w, spec["model_dir"], spec["output_dir"], packing=variant == "packed")
    else:
        result = side.run_sft(w, spec["model_dir"], spec["output_dir"])
    result.variant = variant
    result.peak_memory_bytes, result.memory_kind = peak_memory(w.device)
    result.device_name = device_name(w.device)
    result.versions = versions()
    return result.to_dict()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m chexone.bench.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")  # the parent shows this process's output only when it fails
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    Path(argv[1]).write_text(json.dumps(run(spec)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
