"""Print the pretrained / +CL / +GCL comparison table from `gcl-eval --suite matrix` outputs.

    python docs/eval/compare.py pretrained=docs/eval/openclipart_heldout/pretrained \
        clip=docs/eval/openclipart_heldout/clip gcl=docs/eval/openclipart_heldout/gcl --metric hit@10
"""

import argparse
import json
from pathlib import Path

from trainer.evaluation.report import comparison_markdown

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=OUTPUT_DIR of a gcl-eval matrix run")
    parser.add_argument("--metric", default="hit@1")
    args = parser.parse_args()
    runs = {}
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        runs[name] = json.loads((Path(folder) / "metrics.json").read_text())
    print(comparison_markdown(runs, args.metric))
