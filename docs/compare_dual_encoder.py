"""Pretrained / +CL / +GCL / +sigmoid GCL of the default dual encoder (EfficientNet-Lite0 + all-MiniLM-L6-v2, image
tower locked) on the bundled sample's held-out pairs, over several seeds: mean and spread of each cell, and the
modality gap. Every run is `gcl-train` with the default model and settings, only `--loss` and `--seed` changing.

    python docs/compare_dual_encoder.py --seeds 0 1 --output_dir runs/dual_encoder            # ~4 x 2 runs
    python docs/compare_dual_encoder.py --seeds 0 1 --max_steps 20 --output_dir runs/quick   # a cheaper check

Prints a markdown table per metric (`--metrics`), `mean ± half-range over seeds`, then the modality gap (centroid
distance and matched cosine of i/t/it, mean over seeds). The results are also written to OUTPUT_DIR/summary.json.
"""

import argparse
import json
import os
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.backbones import DEFAULT_DUAL_ENCODER, load_model_and_processor  # noqa: E402
from trainer.cli import run  # noqa: E402
from trainer.data import load_image_caption_dataset, split_holdout  # noqa: E402
from trainer.evaluation import encode_pairs, modality_matrix  # noqa: E402
from trainer.evaluation.matrix import modality_gap  # noqa: E402

LOSSES = {"+CL (--loss clip)": "clip", "+GCL (--loss gcl)": "gcl", "+GCL sigmoid (--loss gcl_sigmoid)": "gcl_sigmoid"}
CELLS = ("t2i", "i2t", "t2it", "i2it", "it2t", "it2i")


def evaluate(model, processor, holdout) -> dict:
    embeds = encode_pairs(model.eval(), processor, holdout, "image", "caption", batch_size=64, show_progress=False)
    return {"results": modality_matrix(embeds), "modality_gap": modality_gap(embeds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max_steps", type=int, default=None, help="Default: gcl-train's default for this model.")
    parser.add_argument("--eval_holdout", type=int, default=64)
    parser.add_argument("--metrics", nargs="+", default=["hit@1", "hit@5"])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES.values()), choices=list(LOSSES.values()))
    parser.add_argument("--no_pretrained", action="store_true", help="Skip the pretrained row (another process has it).")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--merge", nargs="+", default=None,
                        help="Only print the tables of these summary.json files together (runs made per seed).")
    args = parser.parse_args()
    if args.merge:
        runs = {}
        for path in args.merge:
            for row, evaluations in json.loads(Path(path).read_text())["runs"].items():
                runs.setdefault(row, []).extend(evaluations)
        print_tables(runs, args.metrics)
        return
    os.environ.pop("GCL_TRAIN_DEFAULT_MODEL", None)
    out = Path(args.output_dir)
    runs: dict[str, list[dict]] = {} if args.no_pretrained else {"pretrained (new projections)": []}
    dataset = load_image_caption_dataset()
    for seed in args.seeds:
        _, holdout = split_holdout(dataset, args.eval_holdout, seed)
        if not args.no_pretrained:
            model, processor = load_model_and_processor(DEFAULT_DUAL_ENCODER, seed=seed)
            runs["pretrained (new projections)"].append(evaluate(model, processor, holdout))
        for row, loss in LOSSES.items():
            if loss not in args.losses:
                continue
            folder = out / f"{loss}_seed{seed}"
            argv = ["--loss", loss, "--seed", str(seed), "--output_dir", str(folder), "--eval_holdout",
                    str(args.eval_holdout), "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]
            if args.max_steps is not None:
                argv += ["--max_steps", str(args.max_steps)]
            print(f"== {row}, seed {seed}: gcl-train {' '.join(argv)}", flush=True)
            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            result = run(argv)
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
            print(f"== {row}, seed {seed}: {cpu:.0f} CPU-seconds for the whole gcl-train run, train_runtime "
                  f"{result['train']['train_runtime']:.0f} s wall", flush=True)
            model, processor = load_model_and_processor(str(folder))
            runs.setdefault(row, []).append({**evaluate(model, processor, holdout), "cpu_seconds": cpu})
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "max_steps": args.max_steps,
                                                         "runs": runs}, indent=2))
    print(f"\nHeld-out pairs: {args.eval_holdout} per seed; seeds {args.seeds}.")
    print_tables(runs, args.metrics)


def print_tables(runs: dict, metrics) -> None:
    """Markdown tables: per metric, each cell's mean ± half-range over seeds; then the modality gap."""
    print("mean ± half-range over seeds\n")
    for metric in metrics:
        print(f"{metric} (%):\n")
        print("| model | " + " | ".join(c.replace("2", "→") for c in CELLS) + " | avg |")
        print("|---" * (len(CELLS) + 2) + "|")
        for row, evaluations in runs.items():
            cells = []
            for cell in (*CELLS, "avg"):
                values = [sum(e["results"][c][metric] for c in CELLS) / len(CELLS) if cell == "avg"
                          else e["results"][cell][metric] for e in evaluations]
                spread = (max(values) - min(values)) / 2
                cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
            print(f"| {row} | " + " | ".join(cells) + " |")
        print()
    pairs = list(next(iter(runs.values()))[0]["modality_gap"]["centroid_distance"])
    print("Modality gap (mean over seeds): centroid distance / matched cosine\n")
    print("| model | " + " | ".join(f"dist {p}" for p in pairs) + " | " + " | ".join(f"cos {p}" for p in pairs) + " |")
    print("|---" * (2 * len(pairs) + 1) + "|")
    for row, evaluations in runs.items():
        values = [statistics.mean(e["modality_gap"][kind][p] for e in evaluations)
                  for kind in ("centroid_distance", "matched_cosine") for p in pairs]
        print(f"| {row} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    main()
