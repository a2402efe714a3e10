# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`gcl-reproduce`: train and evaluate the GCL paper's recipes and write a table in the paper's shape.

    gcl-reproduce vista clip_sf tinyclip_sf --suite mbeir --eval_data M-BEIR/ --output_dir reproduce
    gcl-reproduce ablations --suite mbeir --eval_data M-BEIR/ --output_dir reproduce
    gcl-reproduce my_recipe.yaml --suite matrix --set max_steps=100 --set train_data=pairs/

For each backbone: evaluate the pretrained model, train every recipe of that backbone (+CL, +GCL, ablations) with
gcl-train, evaluate each result with gcl-eval, then write `table.md` and `table.json`: rows pretrained / +CL / +GCL
per backbone, a column per task and the average, and the paper's number beside ours where it has one. Finished
stages are kept (a rerun picks up where a stopped one ended); `--force` redoes them.
"""

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .atomic import atomic_write_json, atomic_write_text
from .cli import RECIPE_METADATA_KEY, argument_names

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
# Names that expand to the recipes bundled with the package.
RECIPE_SETS = {
    "vista": ["vista_cl", "vista_gcl"],
    "clip_sf": ["clip_sf_l14_cl", "clip_sf_l14_gcl"],
    "tinyclip_sf": ["tinyclip_sf_cl", "tinyclip_sf_gcl"],
    "ablations": ["vista_cl", "vista_gcl", "ablations/vista_gcl_no_it_candidates", "ablations/vista_gcl_no_i_t",
                  "ablations/vista_cl_intra"],
}
RECIPE_SETS["paper"] = RECIPE_SETS["vista"] + RECIPE_SETS["clip_sf"] + RECIPE_SETS["tinyclip_sf"]
SUITES = ("mbeir", "mmeb", "covr", "matrix")
# The paper's number that a suite's average is compared with (the recipes' `paper` / `paper_pretrained` keys).
PAPER_KEYS = {"mbeir": "mbeir_global_hit@50", "mmeb": "mmeb_t2it_hit@1", "covr": "covr_recall@1"}
# What marks a finished stage: gcl-train writes retrieval_holdout.json after the model; gcl-eval metrics.json last.
TRAINED_MARKER, EVALUATED_MARKER = "retrieval_holdout.json", "metrics.json"


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file."""


@dataclass
class Recipe:
    """One recipe file: gcl-train arguments plus its `recipe:` description."""

    path: Path
    backbone: str
    variant: str
    arguments: dict
    paper: dict = field(default_factory=dict)
    paper_pretrained: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe YAML; its `recipe:` block needs `backbone` and `variant`, and every other key must be a
    gcl-train argument."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise RecipeError(f"{path}: cannot read the recipe ({error}).") from error
    if not isinstance(content, dict) or not isinstance(content.get(RECIPE_METADATA_KEY), dict):
        raise RecipeError(f"{path}: a recipe is a mapping of gcl-train arguments with a `recipe:` block "
                          "(backbone, variant).")
    meta = content.pop(RECIPE_METADATA_KEY)
    missing = [key for key in ("backbone", "variant") if not isinstance(meta.get(key), str) or not meta[key]]
    if missing:
        raise RecipeError(f"{path}: the `recipe:` block needs {missing}.")
    unknown = sorted(set(content) - argument_names())
    if unknown:
        raise RecipeError(f"{path}: unknown gcl-train argument(s) {unknown}.")
    return Recipe(path, meta["backbone"], meta["variant"], content, dict(meta.get("paper") or {}),
                  dict(meta.get("paper_pretrained") or {}))


def resolve_recipes(names: list[str]) -> list[Recipe]:
    """Recipe set names (`vista`, `clip_sf`, `tinyclip_sf`, `ablations`, `paper`), bundled recipe names
    (`vista_gcl`, `ablations/vista_cl_intra`) or paths of YAML files; each recipe once, in the order given."""
    paths = []
    for name in names:
        if name in RECIPE_SETS:
            paths += [RECIPES_DIR / f"{stem}.yaml" for stem in RECIPE_SETS[name]]
        elif (RECIPES_DIR / f"{name}.yaml").is_file():
            paths.append(RECIPES_DIR / f"{name}.yaml")
        elif Path(name).is_file():
            paths.append(Path(name))
        else:
            raise RecipeError(f"{name}: not a recipe file, a bundled recipe ({', '.join(bundled_recipe_names())}) or a "
                              f"set ({', '.join(RECIPE_SETS)}).")
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    return [load_recipe(path) for path in unique]


def bundled_recipe_names() -> list[str]:
    return sorted(str(path.relative_to(RECIPES_DIR).with_suffix("")) for path in RECIPES_DIR.rglob("*.yaml"))


def parse_overrides(pairs: list[str]) -> dict:
    """`["max_steps=3", "loss_pairs=[i2t, t2i]"]` -> `{"max_steps": 3, "loss_pairs": ["i2t", "t2i"]}` (YAML values)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"gcl-reproduce: --set takes KEY=VALUE, got {pair!r}.")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return overrides


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gcl-reproduce", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("recipes", nargs="+",
                        help=f"Recipe sets ({', '.join(RECIPE_SETS)}), bundled recipes, or YAML files.")
    parser.add_argument("--suite", choices=SUITES, default="mbeir", help="gcl-eval suite of the table.")
    parser.add_argument("--eval_data", default=None,
                        help="gcl-eval --data (M-BEIR root, MMEB folder, CoVR CSV, pairs).")
    parser.add_argument("--eval_args", default="", help='More gcl-eval flags, e.g. "--pools global --batch_size 256".')
    parser.add_argument("--output_dir", default="gcl-reproduce")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a gcl-train argument of every recipe (repeatable), e.g. "
                             "--set image_root=images.")
    parser.add_argument("--launcher", default=None,
                        help='Run training as `LAUNCHER -m trainer.cli ...`, e.g. "torchrun --nproc_per_node 8" or '
                             '"accelerate launch --num_processes 8". Default: in this process.')
    parser.add_argument("--skip_pretrained", action="store_true", help="No pretrained row.")
    parser.add_argument("--force", action="store_true", help="Redo finished training and evaluation.")
    return parser


RUN_SETTINGS_FILE = "recipe.yaml"  # the merged arguments a stage trained with, beside its model/ and eval/
EVAL_SETTINGS_FILE = "eval_settings.json"  # what a stage's eval/ was computed from


def merged_arguments(recipe: Recipe, overrides: dict, model_dir: Path) -> dict:
    """The recipe's gcl-train arguments with `--set` overrides applied; an override to null/empty removes the key,
    so gcl-train's default applies (e.g. `--set image_root=` for data whose paths are absolute)."""
    arguments = {**recipe.arguments, **overrides}
    arguments = {key: value for key, value in arguments.items() if value is not None}
    arguments["output_dir"] = str(model_dir)
    return arguments


def _read_settings(path: Path):
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) if path.suffix == ".yaml" else json.load(handle)


def _train(recipe: Recipe, arguments: dict, run_dir: Path, launcher: str | None, resume: bool) -> None:
    """Train from the merged arguments, written first to `run_dir/recipe.yaml` (the stage's record)."""
    settings = run_dir / RUN_SETTINGS_FILE
    model_dir = Path(arguments["output_dir"])
    if not resume and model_dir.exists():
        # Other settings, or --force: nothing of the old run (checkpoints, the finished marker) may leak into the new
        # one, and nothing saved is deleted before the new run succeeds: the old folder is kept as model.previous.
        previous = run_dir / "model.previous"
        shutil.rmtree(previous, ignore_errors=True)
        model_dir.rename(previous)
        print(f"gcl-reproduce: the earlier {model_dir} is now {previous}.", flush=True)
    content = {RECIPE_METADATA_KEY: {"backbone": recipe.backbone, "variant": recipe.variant,
                                     "from": str(recipe.path)}, **arguments}
    atomic_write_text(settings, yaml.safe_dump(content, sort_keys=False))
    argv = [str(settings)]
    if resume and any(model_dir.glob("checkpoint-*")):  # a stopped run: go on from its newest complete checkpoint
        argv += ["--resume_from_checkpoint", "last"]
    print(f"gcl-reproduce: training {recipe.name} -> {model_dir}", flush=True)
    if launcher:
        command = [*shlex.split(launcher), "-m", "trainer.cli", *argv]
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0:
            raise SystemExit(f"gcl-reproduce: training {recipe.name} failed ({shlex.join(command)} exited "
                             f"{completed.returncode}); finished stages are kept, rerun to continue.")
    else:
        from .cli import run as train

        train(argv)


def _evaluate_stage(model: str, eval_dir: Path, args, stale: bool) -> dict:
    """gcl-eval of `model` into `eval_dir`, unless an earlier run evaluated the same model with the same settings."""
    from .eval_cli import run as evaluate

    argv = ["--model", str(model), "--suite", args.suite, "--output_dir", str(eval_dir)]
    if args.eval_data is not None:
        argv += ["--data", args.eval_data]
    argv += shlex.split(args.eval_args)
    settings_path = eval_dir.parent / EVAL_SETTINGS_FILE
    metrics_path = eval_dir / EVALUATED_MARKER
    if not (stale or args.force) and metrics_path.exists() and _read_settings(settings_path) == {"argv": argv}:
        print(f"gcl-reproduce: {eval_dir} is finished; kept (--force redoes it).", flush=True)
        return _read_settings(metrics_path)
    settings_path.unlink(missing_ok=True)  # written again only once the new metrics are
    print(f"gcl-reproduce: evaluating {model} -> {eval_dir}", flush=True)
    metrics = evaluate(argv)
    atomic_write_json(settings_path, {"argv": argv})
    return metrics


def table_columns(suite: str, metrics: dict) -> dict[str, float]:
    """The table's columns of one gcl-eval result: per task/subset/cell, then `average`."""
    if suite == "mbeir":
        key = "global_hit@50" if "global_hit@50" in metrics.get("average", {}) else "local_uniir"
        columns = {row["label"]: row[key] for row in metrics["summary"] if key in row}
        columns["average"] = metrics["average"][key]
    elif suite == "mmeb":
        columns = {row["subset"]: row["hit@1"] for row in metrics["summary"]}
        columns["average"] = metrics["average"]["hit@1"]
    elif suite == "covr":
        columns = {key.replace("recall", "R"): value for key, value in metrics["results"]["covr"].items()}
    else:  # matrix: hit@10 per cross-modal cell
        columns = {cell: values["hit@10"] for cell, values in metrics["results"].items()}
        columns["average"] = sum(columns.values()) / len(columns)
    return columns


TABLE_METRIC = {"mbeir": "M-BEIR hit@50 (global pool; hit@k local when no global)", "mmeb": "MMEB hit@1",
                "covr": "CoVR recall@k", "matrix": "modality matrix hit@10"}


def format_table(rows: list[dict], suite: str) -> str:
    """Markdown: backbone | model | one column per task | average | paper."""
    columns = list(dict.fromkeys(column for row in rows for column in row["columns"]))
    paper_key = PAPER_KEYS.get(suite)
    header = ["backbone", "model", *columns] + ([f"paper ({paper_key})"] if paper_key else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["backbone"], row["variant"]]
        cells += [f"{row['columns'][c]:.2f}" if c in row["columns"] else "" for c in columns]
        if paper_key:
            value = row.get("paper", {}).get(paper_key)
            cells.append("" if value is None else f"{value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    """Run `gcl-reproduce`; returns what it writes to table.json."""
    args = build_parser().parse_args(argv)
    if args.suite != "matrix" and args.eval_data is None:
        raise SystemExit(f"gcl-reproduce: --suite {args.suite} needs --eval_data.")
    try:
        recipes = resolve_recipes(args.recipes)
    except RecipeError as error:
        raise SystemExit(f"gcl-reproduce: {error}") from error
    overrides = parse_overrides(args.overrides)
    output_dir = Path(args.output_dir)
    backbones: dict[str, list[Recipe]] = {}
    for recipe in recipes:
        backbones.setdefault(recipe.backbone, []).append(recipe)

    rows = []
    stand_in = overrides.get("model_name_or_path")
    for backbone, group in backbones.items():
        backbone_dir = output_dir / _slug(backbone)
        # The table must not pass a stand-in model off as the recipe's backbone.
        label = backbone if stand_in is None else f"{backbone} recipe on {Path(str(stand_in)).name}"
        if not args.skip_pretrained:
            models = {overrides.get("model_name_or_path", r.arguments.get("model_name_or_path")) for r in group}
            if len(models) != 1:
                raise SystemExit(f"gcl-reproduce: the {backbone} recipes start from different models "
                                 f"{sorted(map(str, models))}; "
                                 "give them different backbones or use --skip_pretrained.")
            model = models.pop()
            if model is None:
                raise SystemExit(f"gcl-reproduce: the {backbone} recipes name no model_name_or_path.")
            eval_dir = backbone_dir / "pretrained" / "eval"
            metrics = _evaluate_stage(model, eval_dir, args, stale=False)
            paper = next((r.paper_pretrained for r in group if r.paper_pretrained), {})
            rows.append({"backbone": label, "variant": "pretrained", "model": str(model), "paper": paper,
                         "columns": table_columns(args.suite, metrics)})
        for recipe in group:
            run_dir = backbone_dir / recipe.name
            model_dir = run_dir / "model"
            arguments = merged_arguments(recipe, overrides, model_dir)
            recorded = _read_settings(run_dir / RUN_SETTINGS_FILE)
            same = recorded is not None and {k: v for k, v in recorded.items() if k != RECIPE_METADATA_KEY} == arguments
            trained = same and (model_dir / TRAINED_MARKER).exists()
            if args.force or not trained:
                _train(recipe, arguments, run_dir, args.launcher, resume=same and not args.force)
            else:
                print(f"gcl-reproduce: {model_dir} is trained with these settings; kept (--force retrains).",
                      flush=True)
            metrics = _evaluate_stage(str(model_dir), run_dir / "eval", args, stale=args.force or not trained)
            rows.append({"backbone": label, "variant": recipe.variant, "recipe": str(recipe.path),
                         "model": str(model_dir), "paper": recipe.paper,
                         "columns": table_columns(args.suite, metrics)})

    table = format_table(rows, args.suite)
    settings = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"
    report = (f"# gcl-reproduce: {TABLE_METRIC[args.suite]} (%)\n\n"
              f"Evaluation data: {args.eval_data or 'bundled sample'}"
              f"; overrides of the recipes: {settings}.\n\n{table}\n")
    result = {"suite": args.suite, "eval_data": args.eval_data, "overrides": overrides, "rows": rows}
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / "table.json", result)
    atomic_write_text(output_dir / "table.md", report)
    print(report, flush=True)
    print(f"gcl-reproduce: wrote {output_dir / 'table.md'} and {output_dir / 'table.json'}", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `gcl-reproduce`."""
    run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
