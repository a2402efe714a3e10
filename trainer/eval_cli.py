# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`gcl-eval`: evaluate a GCL model, or a plain CLIP checkpoint with score fusion, on a retrieval suite.

    gcl-eval --model clip-gcl --suite matrix --data pairs/ --output_dir eval/matrix
    gcl-eval --model clip-gcl --suite mbeir --data M-BEIR/ --output_dir eval/mbeir --pools local global
    gcl-eval --model clip-gcl --suite mmeb --data MMEB-eval/ --output_dir eval/mmeb
    gcl-eval --model clip-gcl --suite covr --data webvid8m-covr_test.csv --frames_dir frames/ --output_dir eval/covr

Writes `metrics.json`, `report.md` and PNG plots (with matplotlib) to `--output_dir`. Also `python -m trainer.eval_cli`.
Under `torchrun --nproc_per_node N` or `accelerate launch`, the encoding is split across the N processes and rank 0
scores and writes everything (the metrics equal a 1-process run's).
"""

import argparse
import logging
import sys
from pathlib import Path

from . import TrainerNameClashError, check_trainer_name_clash
from .backbones import load_model_and_processor
from .cli_help import OneDefaultHelpFormatter, SuggestingArgumentParser, non_negative_int, positive_int
from .data import BadSampleError, DataError, load_image_caption_dataset, split_holdout
from .evaluation import distributed as sharding
from .evaluation.covr import DEFAULT_COVR_METRICS, CoVREvaluator
from .evaluation.encoding import GCLEmbedder
from .evaluation.files import EvaluationDataError
from .evaluation.metrics import parse_metric
from .evaluation.matrix import DEFAULT_MATRIX_METRICS, ModalityMatrixEvaluator
from .evaluation.mbeir import DEFAULT_MBEIR_METRICS, MBEIREvaluator
from .evaluation.mmeb import DEFAULT_MMEB_METRICS, MMEBEvaluator
from .evaluation.report import (
    gap_markdown,
    markdown_table,
    matrix_markdown,
    plot_bars,
    plot_embedding_pca,
    plot_modality_heatmap,
    write_json,
    write_text,
)

logger = logging.getLogger("gcl-eval")
SUITES = ("matrix", "mbeir", "mmeb", "covr")


class _OneLineErrorParser(SuggestingArgumentParser):
    """A bad flag is one line naming it and the nearest real one (plus a pointer to --help), not argparse's usage
    block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="gcl-eval", description=__doc__.split("\n\n")[0],
                                 formatter_class=OneDefaultHelpFormatter, allow_abbrev=False)
    parser.add_argument("--model", default=None,
                        help="A GCL checkpoint or a CLIP-family checkpoint (directory or Hub id; wrapped with score "
                             "fusion). Default: the bundled tiny CLIP, RANDOMLY initialised with --seed.")
    parser.add_argument("--suite", choices=SUITES, default="matrix")
    parser.add_argument("--data", default=None,
                        help="matrix: image-caption pairs (imagefolder dir, JSONL or Hub name; default the bundled "
                             "sample); mbeir: the M-BEIR root; mmeb: folder of subsets; covr: the annotation CSV.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fusion", default=None, help="Fusion for a CLIP checkpoint (default sum = CLIP-SF).")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument("--cache_dir", default=None, help="Cache embeddings here (keyed by model and data).")
    parser.add_argument("--seed", type=int, default=42,
                        help="Random init of the default model, and the --holdout split (gcl-train's default seed).")
    parser.add_argument("--no_progress", action="store_true", help="Hide progress bars.")

    matrix = parser.add_argument_group("matrix")
    matrix.add_argument("--image_column", default="image")
    matrix.add_argument("--caption_column", default="caption")
    matrix.add_argument("--holdout", type=non_negative_int, default=0,
                        help="Evaluate only the N pairs gcl-train holds out with the same --seed and --eval_holdout N "
                             "(0: every pair).")
    matrix.add_argument("--max_samples", type=positive_int, default=None)
    matrix.add_argument("--heatmap_metric", type=_metric_name, default="hit@1",
                        help="One of the matrix metrics (hit@1, hit@5, hit@10, mrr@10, ndcg@10).")

    mbeir = parser.add_argument_group("mbeir")
    mbeir.add_argument("--split", default="test")
    mbeir.add_argument("--tasks", nargs="*", default=None, help="e.g. mscoco_task0 cirr_task7 (default: all).")
    mbeir.add_argument("--pools", nargs="+", default=["local", "global"], choices=["local", "global"])
    mbeir.add_argument("--instruction_index", type=non_negative_int, default=None,
                       help="Prepend prompt number N (0-based) of instructions/query_instructions.tsv (default none).")
    mbeir.add_argument("--global_pool_file", default=None)
    mbeir.add_argument("--image_root", default=None, help="mbeir/mmeb: what image paths are relative to.")
    mbeir.add_argument("--search_backend", choices=["torch", "faiss"], default="torch")
    mbeir.add_argument("--faiss_index", default="Flat", help="A FAISS index_factory string (Flat = exact).")

    mmeb = parser.add_argument_group("mmeb")
    mmeb.add_argument("--subsets", nargs="*", default=None)
    mmeb.add_argument("--instruction", default=None, help="A fixed instruction prepended to every MMEB query.")

    covr = parser.add_argument_group("covr")
    covr.add_argument("--frames_dir", default=None, help="Folder of per-video frame folders (default frames/ beside "
                                                         "the CSV).")
    covr.add_argument("--max_frames", type=positive_int, default=None)
    parser.add_argument("--ties", choices=["pessimistic", "optimistic", "official"], default="official",
                        help="How a candidate scoring the same as a relevant one is ranked: 'official' = each suite's "
                             "own convention (MMEB: its argmax over the listed candidates, the positive first; every "
                             "other suite: pessimistic, the tied candidate ranks ahead); or force one for all.")
    return parser


def _metric_name(value: str) -> str:
    try:
        parse_metric(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _describe_model(args, model) -> dict:
    return {"path": args.model or f"bundled tiny CLIP, random init (seed {args.seed})",
            "fusion": model.config.fusion,
            "randomly_initialised": args.model is None}


def run_matrix(args, model, processor, output_dir: Path) -> tuple[dict, str]:
    dataset = load_image_caption_dataset(args.data, args.image_column, args.caption_column)
    if args.holdout:
        _, dataset = split_holdout(dataset, args.holdout, args.seed)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    if args.heatmap_metric not in DEFAULT_MATRIX_METRICS:
        raise SystemExit(f"gcl-eval: --heatmap_metric {args.heatmap_metric} is not one of the matrix metrics "
                         f"{list(DEFAULT_MATRIX_METRICS)}.")
    evaluator = ModalityMatrixEvaluator(dataset, args.image_column, args.caption_column, DEFAULT_MATRIX_METRICS,
                                        args.batch_size, args.cache_dir, not args.no_progress,
                                        ties=_ties(args, "matrix"), distributed=args.distributed,
                                        source=args.data or "the bundled sample")
    output = evaluator(embedder=GCLEmbedder(model, processor))
    if output is None:  # a process other than rank 0: it only helped encode
        return None, None
    heatmap = plot_modality_heatmap(output["results"], args.heatmap_metric, output_dir / "modality_matrix.png",
                                    f"{args.heatmap_metric} (%), query → candidate")
    pca = plot_embedding_pca(evaluator.last_embeddings, output_dir / "embedding_pca.png")
    sections = [
        f"Pairs: {output['num_pairs']} ({args.data or 'bundled openclipart sample'}"
        + (f", the {args.holdout} held out by gcl-train with seed {args.seed}" if args.holdout else "") + "). "
        f"Ties: {output['ties']}.",
        "### Cross-modal retrieval (%)", matrix_markdown(output["results"]),
        "### Modality gap", gap_markdown(output["modality_gap"]),
        "`centroid_distance`: distance between the modalities' mean embeddings; `matched_cosine`: mean cosine of the "
        "two embeddings of the same pair.",
    ]
    sections += _image_lines([heatmap, pca])
    output["dataset"] = {"name": Path(args.data).name if args.data else "openclipart_sample", "type": "image-caption",
                         "split": f"holdout-{args.holdout}-seed-{args.seed}" if args.holdout else "all"}
    return output, "\n\n".join(sections)


def run_mbeir(args, model, processor, output_dir: Path) -> tuple[dict, str]:
    options = {"index_factory": args.faiss_index} if args.search_backend == "faiss" else {}
    evaluator = MBEIREvaluator(args.data, args.split, args.tasks, args.pools, args.instruction_index,
                               global_pool_file=args.global_pool_file, image_root=args.image_root,
                               metrics=DEFAULT_MBEIR_METRICS, batch_size=args.batch_size, cache_dir=args.cache_dir,
                               show_progress=not args.no_progress, search_backend=args.search_backend,
                               search_options=options, ties=_ties(args, "mbeir"), distributed=args.distributed)
    output = evaluator(embedder=GCLEmbedder(model, processor), run_dir=output_dir / "runs")
    if output is None:
        return None, None
    header, rows = ["task", "queries", "k"], []
    if "local" in args.pools:
        header.append("local hit@k (UniIR)")
    if "global" in args.pools:
        header.append("global hit@50 (GCL paper)")
    for row in output["summary"]:
        rows.append([row["label"], row["num_queries"], row["uniir_k"],
                     *([row["local_uniir"]] if "local" in args.pools else []),
                     *([row["global_hit@50"]] if "global" in args.pools else [])])
    rows.append(["**average**", sum(r["num_queries"] for r in output["summary"]), "",
                 *(output["average"][key] for key in ("local_uniir", "global_hit@50") if key in output["average"])])
    plots = []
    for pool, key in (("local", "local_uniir"), ("global", "global_hit@50")):
        if pool in args.pools:
            plots.append(plot_bars({r["label"]: r[key] for r in output["summary"]}, output_dir / f"mbeir_{pool}.png",
                                   f"M-BEIR {pool} pool", "hit@k (%)" if pool == "local" else "hit@50 (%)"))
    instruction = ("none" if args.instruction_index is None else f"prompt {args.instruction_index} of the TSV")
    sections = [f"M-BEIR `{args.split}` at {args.data}; instructions: {instruction}. k = 5, or 10 for Fashion200K and "
                "FashionIQ (UniIR's protocol). TREC run files in `runs/`. All metrics per task and pool are in "
                f"metrics.json. Ties: {output['ties']}.", markdown_table(header, rows)]
    sections += _image_lines(plots)
    output["dataset"] = {"name": "M-BEIR", "type": "TIGER-Lab/M-BEIR", "split": args.split}
    return output, "\n\n".join(sections)


def run_mmeb(args, model, processor, output_dir: Path) -> tuple[dict, str]:
    evaluator = MMEBEvaluator(args.data, args.subsets, args.image_root, args.instruction, DEFAULT_MMEB_METRICS,
                              args.batch_size, args.cache_dir, not args.no_progress, ties=_ties(args, "mmeb"),
                              distributed=args.distributed)
    output = evaluator(embedder=GCLEmbedder(model, processor))
    if output is None:
        return None, None
    metrics = list(DEFAULT_MMEB_METRICS)
    rows = [[r["subset"], r["modalities"], r["num_queries"], r["list_length"], *(r[m] for m in metrics)]
            for r in output["summary"]]
    rows.append(["**average**", "", "", "", *(output["average"][m] for m in metrics)])
    plot = plot_bars({r["subset"]: r["hit@1"] for r in output["summary"]}, output_dir / "mmeb_hit1.png",
                     "MMEB retrieval", "hit@1 (%)")
    sections = [f"MMEB retrieval subsets at {args.data} (each query ranks its own candidate list, the positive first). "
                f"Ties: {output['ties']}.",
                markdown_table(["subset", "modalities", "queries", "candidates", *metrics], rows), *_image_lines([plot])]
    output["dataset"] = {"name": "MMEB", "type": "TIGER-Lab/MMEB-eval", "split": "test"}
    return output, "\n\n".join(sections)


def run_covr(args, model, processor, output_dir: Path) -> tuple[dict, str]:
    evaluator = CoVREvaluator(args.data, args.frames_dir, args.max_frames, DEFAULT_COVR_METRICS, args.batch_size,
                              args.cache_dir, not args.no_progress, ties=_ties(args, "covr"),
                              distributed=args.distributed)
    output = evaluator(embedder=GCLEmbedder(model, processor))
    if output is None:
        return None, None
    values = output["results"]["covr"]
    plot = plot_bars({m.replace("recall", "R"): v for m, v in values.items()}, output_dir / "covr_recall.png",
                     "CoVR", "recall (%)")
    sections = [f"CoVR annotations {args.data}: {output['num_queries']} queries, {output['num_targets']} target videos. "
                "Query = fusion(mean source-frame projection, edit text); a video = mean of its frame embeddings. "
                f"Ties: {output['ties']}.",
                markdown_table([m.replace("recall", "R") for m in values], [list(values.values())]), *_image_lines([plot])]
    output["dataset"] = {"name": "WebVid-CoVR", "type": "webvid-covr", "split": Path(args.data).stem}
    return output, "\n\n".join(sections)


def _image_lines(paths) -> list[str]:
    shown = [f"![{path.stem}]({path.name})" for path in paths if path is not None]
    return shown or ["(no plots: matplotlib is not installed; `pip install matplotlib`)"]


RUNNERS = {"matrix": run_matrix, "mbeir": run_mbeir, "mmeb": run_mmeb, "covr": run_covr}
OFFICIAL_TIES = {"matrix": "pessimistic", "mbeir": "pessimistic", "covr": "pessimistic", "mmeb": "first_listed"}
# Mistakes in the data or the arguments: reported in one line, without a traceback.
USER_ERRORS = (EvaluationDataError, DataError, BadSampleError)


def _ties(args, suite: str) -> str:
    return OFFICIAL_TIES[suite] if args.ties == "official" else args.ties


def _load_model(args):
    try:
        return load_model_and_processor(args.model, fusion=args.fusion, seed=args.seed)
    except (ValueError, OSError) as error:  # no such directory, offline Hub id, not a supported model, ...
        raise SystemExit(f"gcl-eval: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__


def run(argv: list[str] | None = None) -> dict | None:
    """Run `gcl-eval` with `argv`; returns what it wrote to metrics.json (`None` on processes other than rank 0 of a
    multi-process run, which write nothing)."""
    args = build_parser().parse_args(argv)
    if args.suite != "matrix" and args.data is None:
        raise SystemExit(f"gcl-eval: --suite {args.suite} needs --data.")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = sharding.local_device(args.device)
    sharding.init_from_launcher(device)  # under torchrun / accelerate launch; a no-op in one process
    args.distributed = sharding.world()[1] > 1
    main_process = sharding.is_main_process()
    if args.model is None and main_process:
        print(f"gcl-eval: no --model, so this evaluates the bundled tiny CLIP RANDOMLY initialised with seed "
              f"{args.seed} (no pretrained weights offline).", flush=True)
    model, processor = _load_model(args)
    try:
        model.to(device).eval()
    except (RuntimeError, ValueError) as error:  # e.g. --device cuda on a machine without one
        raise SystemExit(f"gcl-eval: cannot use --device {device}: {_one_line(error)}") from None
    output_dir = Path(args.output_dir)
    if main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    output, body = RUNNERS[args.suite](args, model, processor, output_dir)
    if output is None:
        return None
    output = {"suite": args.suite, "task": "Multimodal retrieval", "model": _describe_model(args, model),
              "processes": sharding.world()[1], **output}
    write_json(output_dir / "metrics.json", output)
    model_line = output["model"]["path"] + f" (fusion `{output['model']['fusion']}`)"
    report = f"# gcl-eval: {args.suite}\n\nModel: {model_line}\n\n{body}\n"
    write_text(output_dir / "report.md", report)
    print(report, flush=True)
    print(f"gcl-eval: wrote {output_dir / 'metrics.json'} and {output_dir / 'report.md'}", flush=True)
    return output


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `gcl-eval`: data and argument mistakes end in a one-line `gcl-eval: ...` message and exit
    status 1, without a traceback (only rank 0 of a multi-process run prints it)."""
    try:
        check_trainer_name_clash()  # another distribution's `trainer` package would have overwritten files of this one
        run(sys.argv[1:] if argv is None else argv)
        sharding.destroy()
    except (*USER_ERRORS, TrainerNameClashError) as error:
        if sharding.launcher_rank() == 0:
            print(f"gcl-eval: {_one_line(error)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except SystemExit as stop:
        if isinstance(stop.code, str) and sharding.launcher_rank() != 0:
            raise SystemExit(1) from None  # the same message would print once per process
        raise


if __name__ == "__main__":
    main()
