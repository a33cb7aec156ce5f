"""``python -m webdata``: the data commands.

    python -m webdata.build SOURCE ...    real datasets -> shards (chexone, chexinstruct, jsonl, mimic-cxr,
                                          chexpert-plus, vindr-cxr, nih-boxes, ms-cxr, plugin sources); see
                                          docs/data.md
    python -m webdata.reason ...          CheXReason-style reasoning traces from an OpenAI-compatible endpoint
    python -m webdata.demo ...            the synthetic demo shard sets
    python -m webdata.synthetic ...       synthetic files in the real datasets' layouts (tests, benchmarks)
"""

import sys

if __name__ == "__main__":
    print(__doc__.strip())
    sys.exit(0 if len(sys.argv) == 1 or sys.argv[1] in ("-h", "--help") else 2)
