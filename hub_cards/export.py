# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Prepare the directory that is pushed to the Hub: exactly the files of the model repository.

A full (or LoRA-merged) model is re-saved through `GCLModel.save_pretrained`, so a CLIP backbone is published as a
native CLIP checkpoint (CLIP's config with a `gcl` section, CLIP's weight names, `gcl_weights.safetensors` for an
attention fusion or sigmoid bias) and other backbones in the GCL layout, whichever layout the run saved. The repository
gets safetensors weights, the processor, the remote code, `auto_map` entries for `AutoConfig`, `AutoModel`, `AutoModelForZeroShotImageClassification`
and `AutoProcessor`, and the `feature-extraction` custom pipeline in `config.json`. The remote code is whatever
transformers' `custom_object_save` copies for the classes marked with `register_for_auto_class` — each class's module
and, recursively, every sibling module it imports relatively — plus `pipeline_gcl.py` and its relative imports; a new
file in `modeling_gcl/` travels as soon as the model code imports it. `verify_remote_code` then checks the export is
self-contained. A LoRA adapter is exported as peft's files, the extra trainables and the processor. Both get the model
card as `README.md` and the run's records (training record, held-out retrieval, evaluation outputs), with every local
path in them replaced by its folder name (`redact.py`).
"""

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers.dynamic_module_utils import custom_object_save, get_imports, get_relative_imports

from modeling_gcl import GCL_PIPELINE_TASK, GCL_WEIGHTS_NAME, GCLFeatureExtractionPipeline, GCLModel, GCLProcessor

from trainer.atomic import staged_directory

from .card import HOLDOUT_HEATMAP_METRIC, render_model_card
from .redact import LocalPathRedactor, redact_name_or_path
from .run_record import ADAPTER_SUBDIR, HOLDOUT_FILE, TRAINING_RECORD_FILE, RunInfo, read_run

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
HOLDOUT_HEATMAP_FILE = "retrieval_holdout.png"
EVAL_METRICS_FILE = "evaluation_metrics.json"
# The library's top-level packages: remote code importing one of them (outside a try/except) would fail to load on a
# machine without the library.
LIBRARY_PACKAGES = ("modeling_gcl", "trainer", "hub_cards")
EXTRA_TRAINABLES_FILE = "gcl_extra_trainables.safetensors"  # as trainer.lora writes it
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What a push in one mode removes from the repository, so a repository switched between a merged model and an adapter
# never holds both (transformers' pipeline would take the stale adapter_config.json for the model). Files the push
# uploads are never deleted (`upload_folder` drops deletions of uploaded paths), so "*.py" removes only stale code.
STALE_FILES = {
    # A model re-pushed without an attention fusion or sigmoid bias must not keep the previous push's GCL weights.
    "model": [*ADAPTER_FILES, EXTRA_TRAINABLES_FILE, GCL_WEIGHTS_NAME],
    "adapter": ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors", "*.py",
                GCL_WEIGHTS_NAME],
}
LORA_MODES = ("adapter", "merged")

# `config.json`'s `custom_pipelines` entry: `pipeline("feature-extraction", model=repo, trust_remote_code=True)` then
# runs `pipeline_gcl.GCLFeatureExtractionPipeline` (transformers' own feature-extraction pipeline cannot run GCL).
CUSTOM_PIPELINES = {
    GCL_PIPELINE_TASK: {
        "impl": f"pipeline_gcl.{GCLFeatureExtractionPipeline.__name__}",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
}
ZERO_SHOT_AUTO_CLASS = "AutoModelForZeroShotImageClassification"


@dataclass
class Export:
    """A prepared export: its directory, what it holds (`"model"` or `"adapter"`) and its files."""

    path: Path
    kind: str

    @property
    def files(self) -> list[str]:
        """Every file under `path`, relative, sorted (what an upload of the folder sends)."""
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())

    @property
    def stale_files(self) -> list[str]:
        """Patterns of repository files of the other kind, deleted by the push."""
        return STALE_FILES[self.kind]


def resolve_lora_mode(run: RunInfo, lora: str | None) -> str:
    """What to export: `"model"` (a full or merged model) or `"adapter"`.

    `lora=None` exports the model in the output directory, or the adapter when the run saved only an adapter
    (`--merge_lora false`).
    """
    if lora is not None and lora not in LORA_MODES:
        raise ValueError(f"lora must be one of {', '.join(LORA_MODES)}, got {lora!r}.")
    if lora == "adapter" or (lora is None and not run.has_merged_model):
        if not run.has_adapter:
            raise FileNotFoundError(f"{run.output_dir / ADAPTER_SUBDIR} holds no LoRA adapter (adapter_config.json).")
        return "adapter"
    if not run.has_merged_model:
        raise FileNotFoundError(
            f"{run.output_dir} holds no merged model (config.json); the run saved only its adapter: use lora='adapter'."
        )
    return "model"


class RemoteCodeError(RuntimeError):
    """An export whose remote code would not load on a machine without the library."""


def _code_modules(repo_dir: Path) -> set[str]:
    """The modules (`"modeling_gcl"`, ...) that the repository's configs name in `auto_map` and `custom_pipelines`."""
    references = []
    for name in ("config.json", "processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        path = repo_dir / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        for value in (config.get("auto_map") or {}).values():
            references += [value] if isinstance(value, str) else [v for v in value if v]
        references += [task["impl"] for task in (config.get("custom_pipelines") or {}).values() if "impl" in task]
    # "module.Class", or "repo--module.Class" for code that lives in another repository (not ours to check).
    return {reference.rsplit(".", 1)[0] for reference in references if "--" not in reference}


def verify_remote_code(repo_dir: str | os.PathLike) -> list[str]:
    r"""
    Check that the code files of a model repository directory load without the library, as transformers will load
    them with `trust_remote_code=True`: every module named in `auto_map` / `custom_pipelines` is present, so is every
    module it imports relatively (recursively), and none imports the library's own packages.

    Returns the code files needed, sorted. Raises `RemoteCodeError` naming what is missing.
    """
    repo_dir = Path(repo_dir)
    needed, problems = set(), []
    for module in sorted(_code_modules(repo_dir)):
        if not (repo_dir / f"{module}.py").is_file():
            problems.append(f"{module}.py (named in auto_map/custom_pipelines) is missing")
            continue
        # Walk the relative imports as transformers will when it loads the module (`get_relative_imports`).
        pending = [f"{module}.py"]
        while pending:
            name = pending.pop()
            if name in needed:
                continue
            needed.add(name)
            for imported in get_relative_imports(repo_dir / name):
                file = f"{imported}.py"
                if not (repo_dir / file).is_file():
                    problems.append(f"{file} (imported by {name}) is missing")
                elif file not in needed:
                    pending.append(file)
    for name in sorted(needed):
        imported = [module for module in get_imports(repo_dir / name) if module.split(".")[0] in LIBRARY_PACKAGES]
        if imported:
            problems.append(f"{name} imports {', '.join(imported)}, which a machine without gcl-hf lacks")
    if problems:
        raise RemoteCodeError(f"The remote code in {repo_dir} would not load without the library: {'; '.join(problems)}.")
    return sorted(needed)


def _add_hub_entry_points(model) -> None:
    """The `config.json` entries beyond what `register_for_auto_class` writes: the zero-shot auto class (the model
    returns CLIP-style `logits_per_image`) and the custom pipeline. `save_pretrained` adds `AutoConfig` and `AutoModel`
    itself, after this, so the zero-shot entry names the class the `AutoModel` entry will name."""
    if getattr(type(model), "_auto_class", None) is None:
        raise RemoteCodeError(
            f"{type(model).__name__} is not registered for remote code (register_for_auto_class): an export of it would "
            "not load without the library."
        )
    auto_map = dict(getattr(model.config, "auto_map", None) or {})
    auto_map[ZERO_SHOT_AUTO_CLASS] = f"{type(model).__module__.rsplit('.', 1)[-1]}.{type(model).__name__}"
    model.config.auto_map = auto_map
    model.config.custom_pipelines = CUSTOM_PIPELINES


def _export_model(run: RunInfo, destination: Path) -> None:
    # Either layout (a CLIP backbone's native CLIP checkpoint, or model_type "gcl"); the re-save writes the current
    # layout. Weights only from safetensors: a pickled checkpoint is refused, never loaded.
    model = GCLModel.from_pretrained(run.output_dir, use_safetensors=True)
    processor = GCLProcessor.from_pretrained(run.output_dir)
    _add_hub_entry_points(model)
    model.save_pretrained(destination)  # safetensors + the config's and model's modules (with relative imports)
    processor.save_pretrained(destination)  # + the processor's module + its auto_map
    custom_object_save(GCLFeatureExtractionPipeline, destination)  # + pipeline_gcl.py (with relative imports)
    _redact_saved_configs(destination)
    verify_remote_code(destination)


def _redact_saved_configs(destination: Path) -> None:
    """Sub-configs keep the local folder they were loaded from (`_name_or_path`, e.g. a VISTA text encoder's)."""
    for name in ("config.json", "processor_config.json", "tokenizer_config.json", "preprocessor_config.json",
                 "adapter_config.json"):
        if (destination / name).is_file():
            redact_name_or_path(destination / name)


def _export_adapter(run: RunInfo, destination: Path) -> None:
    adapter_dir = run.output_dir / ADAPTER_SUBDIR
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_model.safetensors (only safetensors are exported).")
    for name in (*ADAPTER_FILES, EXTRA_TRAINABLES_FILE):
        if (adapter_dir / name).is_file():
            shutil.copyfile(adapter_dir / name, destination / name)
    processor_source = adapter_dir if (adapter_dir / "processor_config.json").is_file() else run.output_dir
    GCLProcessor.from_pretrained(processor_source).save_pretrained(destination)
    _redact_saved_configs(destination)
    verify_remote_code(destination)


def _copy_run_records(run: RunInfo, destination: Path, eval_metrics: str | os.PathLike | None) -> None:
    """Copy the run's records, with every local path in them (data, output and model directories, the home
    directory) replaced by its folder name: nothing published carries a local path."""
    redactor = LocalPathRedactor([run.output_dir, run.output_dir.resolve()])
    for record in (run.record, run.holdout, *(evaluation.metrics for evaluation in run.evaluations)):
        redactor.collect(record)  # so the same paths inside report.md are replaced too
    copied = []
    for name in (TRAINING_RECORD_FILE, HOLDOUT_FILE):
        if (run.output_dir / name).is_file():
            shutil.copyfile(run.output_dir / name, destination / name)
            copied.append(destination / name)
    if run.heatmap is not None:
        shutil.copyfile(run.heatmap, destination / run.heatmap.name)
    # gcl-eval outputs kept in the run directory (eval/<suite>/metrics.json, report.md, plots), at the same relative
    # paths, so the card's links to their plots resolve on the Hub.
    for evaluation in run.evaluations:
        for source in evaluation.files:
            target = destination / source.relative_to(run.output_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied.append(target)
    if eval_metrics is not None:
        shutil.copyfile(eval_metrics, destination / EVAL_METRICS_FILE)
        copied.append(destination / EVAL_METRICS_FILE)
    for path in copied:
        redactor.redact_file(path)


def _draw_holdout_heatmap(run: RunInfo, destination: Path) -> str | None:
    """Draw the held-out modality matrix after training as `retrieval_holdout.png` in the export (never in the run
    directory) with the evaluation package's plot, when matplotlib is installed. Returns its repository path, or
    `None` when there is nothing to draw or no way to draw it (the card then shows the table alone)."""
    after = (run.holdout or {}).get("after") or {}
    if not after or not all(isinstance(v, dict) and HOLDOUT_HEATMAP_METRIC in v for v in after.values()):
        return None
    try:
        from trainer.evaluation.report import plot_modality_heatmap

        path = plot_modality_heatmap(after, HOLDOUT_HEATMAP_METRIC, destination / HOLDOUT_HEATMAP_FILE,
                                     f"held out, after training: {HOLDOUT_HEATMAP_METRIC} (%)")
    except Exception as error:  # noqa: BLE001  (an optional picture: never fail an export for it)
        logger.warning("No held-out heatmap in the export: %s", error)
        (destination / HOLDOUT_HEATMAP_FILE).unlink(missing_ok=True)
        return None
    return HOLDOUT_HEATMAP_FILE if path is not None else None


def prepare_export_dir(
    output_dir: str | os.PathLike,
    export_dir: str | os.PathLike,
    repo_id: str,
    *,
    lora: str | None = None,
    overwrite: bool = False,
    eval_metrics: str | os.PathLike | None = None,
    **card_options,
) -> Export:
    r"""
    Write to `export_dir` exactly the files a push of `output_dir` uploads, and nothing else.

    Args:
        output_dir: a `gcl-train` output directory; it is only read.
        export_dir: where the export goes; built in a temporary sibling and renamed into place, so it is either
            complete or absent.
        repo_id: `org/name`, for the card's usage code.
        lora: `"adapter"` or `"merged"` for LoRA runs (default: the merged model when saved, else the adapter).
        overwrite: replace an existing `export_dir`.
        eval_metrics: an evaluation `metrics.json` for the card (copied as `evaluation_metrics.json`).
        card_options: passed on to [`render_model_card`] (`base_model`, `datasets`, `license`, `pipeline_tag`, ...).
    """
    run = read_run(output_dir)
    kind = resolve_lora_mode(run, lora)
    export_dir = Path(export_dir)
    if export_dir.exists() and not overwrite:
        raise FileExistsError(f"{export_dir} exists; pass overwrite=True to replace it.")
    with staged_directory(export_dir) as staging:
        if kind == "adapter":
            _export_adapter(run, staging)
        else:
            _export_model(run, staging)
        _copy_run_records(run, staging, eval_metrics)
        heatmap = None if run.heatmap is not None else _draw_holdout_heatmap(run, staging)
        card = render_model_card(run, repo_id, lora="adapter" if kind == "adapter" else None,
                                 eval_metrics=eval_metrics, heatmap=heatmap, repo_dir=staging, **card_options)
        card.save(staging / CARD_FILE)
    return Export(path=export_dir, kind=kind)
