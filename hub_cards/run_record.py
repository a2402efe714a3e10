# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""What a model card needs to know about a training run, read from its output directory.

`gcl-train` writes the model, the processor and `retrieval_holdout.json` to its output directory, and (through
`write_training_record`) the facts a card reports that the model files do not hold — base model, data, hyperparameters
that differ from the defaults, batch size — in `gcl_training.json`. `read_run` gathers everything into a `RunInfo`,
falling back to the Trainer's `trainer_state.json` when no record was written, and finds `gcl-eval` outputs saved
under `OUTPUT_DIR/eval/` (`metrics.json`, `report.md`, plots).
"""

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from trainer.atomic import atomic_write_json

TRAINING_RECORD_FILE = "gcl_training.json"
# `gcl-train --model_name_or_path tiny-clip` (trainer.backbones.TINY_CLIP): the bundled tiny CLIP, randomly initialised.
BUNDLED_RANDOM_INIT_MODEL = "tiny-clip"
HOLDOUT_FILE = "retrieval_holdout.json"
ADAPTER_SUBDIR = "adapter"
# A heatmap of the modality matrix, if the run (or the user) saved one under one of these names.
HEATMAP_FILES = ("modality_matrix.png", "retrieval_holdout.png", "heatmap.png")
# Where `gcl-eval --output_dir OUTPUT_DIR/eval[/<suite>]` leaves its outputs inside a run directory.
EVAL_SUBDIR = "eval"
EVAL_METRICS_NAME = "metrics.json"
# The gcl-eval files a push carries beside the metrics (TREC run files and embedding caches stay local).
EVAL_FILE_SUFFIXES = (".json", ".md", ".png")

logger = logging.getLogger(__name__)

# `TrainingArguments` fields that describe where and how a run was logged or saved, not how the model was trained.
_BOOKKEEPING_FIELDS = {
    "output_dir", "overwrite_output_dir", "logging_dir", "run_name", "report_to", "disable_tqdm", "resume_from_checkpoint",
    "push_to_hub", "hub_model_id", "hub_token", "hub_private_repo", "hub_strategy", "hub_always_push", "hub_revision",
    "do_train", "do_eval", "do_predict", "debug", "accelerator_config", "deepspeed", "fsdp_config", "local_rank",
}
_BOOKKEEPING_PREFIXES = ("logging_", "save_", "hub_", "dataloader_", "eval_", "ddp_", "fsdp", "torch_compile", "include_")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as JSON to `path` through a temporary file and a rename, so readers never see half a file."""
    atomic_write_json(path, data, default=str)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _is_bookkeeping(name: str) -> bool:
    return name in _BOOKKEEPING_FIELDS or name.startswith(_BOOKKEEPING_PREFIXES) or name.endswith("_token")


def non_default_hyperparameters(training_args) -> dict[str, Any]:
    """The training arguments (a `TrainingArguments` dataclass) whose values differ from their defaults.

    A value counts as changed when it differs from a freshly built instance of the same class, so fields that
    `__post_init__` resolves (`report_to`, `gradient_checkpointing`, ...) are not reported unless the user set them.
    Logging, saving and Hub bookkeeping are left out; tokens never appear.
    """
    values = {name: _jsonable(value) for name, value in training_args.to_dict().items()}
    try:
        defaults = type(training_args)(output_dir=training_args.output_dir).to_dict()
    except Exception:  # noqa: BLE001  (a class that cannot be built bare: fall back to the declared defaults)
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(training_args)
            if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
        }
    defaults = {name: _jsonable(value) for name, value in defaults.items()}
    return {
        name: value
        for name, value in values.items()
        if not _is_bookkeeping(name) and (name not in defaults or value != defaults[name])
    }


def write_training_record(
    output_dir: str | os.PathLike,
    training_args,
    base_model: str | None = None,
    dataset: str | None = None,
    train_pairs: int | None = None,
    holdout_pairs: int | None = None,
) -> dict[str, Any]:
    r"""
    Save what a model card reports about a `gcl-train` run to `OUTPUT_DIR/gcl_training.json`.

    Args:
        output_dir: the run's output directory.
        training_args: the run's `GCLTrainingArguments` (any `TrainingArguments`).
        base_model (`str`, *optional*): the `--model_name_or_path` trained from; `None` (or `tiny-clip`) means the
            bundled tiny CLIP **randomly initialised**.
        dataset (`str`, *optional*): the `--train_data`; `None` means the bundled openclipart sample.
        train_pairs, holdout_pairs (`int`, *optional*): how many pairs were trained on and held out.

    Returns the record.
    """
    world_size = max(1, int(getattr(training_args, "world_size", 1) or 1))
    if base_model == BUNDLED_RANDOM_INIT_MODEL:  # gcl-train's name for the bundled tiny CLIP: no pretrained weights
        base_model = None
    record = {
        "base_model": base_model,
        "from_scratch": base_model is None,
        "dataset": dataset,
        "train_pairs": train_pairs,
        "holdout_pairs": holdout_pairs,
        "loss": getattr(training_args, "loss", "gcl"),
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "world_size": world_size,
        "gather_across_devices": bool(getattr(training_args, "gather_across_devices", True)),
        "mini_batch_size": getattr(training_args, "mini_batch_size", None),
        "use_lora": bool(getattr(training_args, "use_lora", False)),
        "hyperparameters": non_default_hyperparameters(training_args),
    }
    write_json_atomic(Path(output_dir) / TRAINING_RECORD_FILE, record)
    return record


@dataclass
class EvaluationOutput:
    """One `gcl-eval` output directory inside a run: its `metrics.json` (parsed, a JSON object) and the files to publish
    with it (`metrics.json`, `report.md`, PNG plots)."""

    directory: Path
    metrics: dict[str, Any]
    files: list[Path]

    @property
    def images(self) -> list[Path]:
        return [path for path in self.files if path.suffix == ".png"]


def find_evaluations(output_dir: Path) -> list[EvaluationOutput]:
    """`gcl-eval` outputs under `output_dir/eval/` (`eval/metrics.json` or `eval/<name>/metrics.json`), sorted by path.

    Read defensively: the evaluation is another tool's output, so a file that is not a JSON object is skipped with a
    warning rather than failing the card.
    """
    root = output_dir / EVAL_SUBDIR
    if not root.is_dir():
        return []
    found = []
    for metrics_file in sorted([root / EVAL_METRICS_NAME, *root.glob(f"*/{EVAL_METRICS_NAME}")]):
        if not metrics_file.is_file():
            continue
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            logger.warning("Skipping %s for the model card: %s", metrics_file, error)
            continue
        if not isinstance(metrics, dict):
            logger.warning("Skipping %s for the model card: not a JSON object.", metrics_file)
            continue
        files = sorted(p for p in metrics_file.parent.iterdir() if p.is_file() and p.suffix in EVAL_FILE_SUFFIXES)
        found.append(EvaluationOutput(directory=metrics_file.parent, metrics=metrics, files=files))
    return found


@dataclass
class RunInfo:
    """Everything about a run that a model card reports. Missing facts stay `None` and the card says so."""

    output_dir: Path
    config: dict[str, Any]
    record: dict[str, Any] | None = None
    holdout: dict[str, Any] | None = None
    heatmap: Path | None = None
    has_merged_model: bool = False
    has_adapter: bool = False
    trainer_state: dict[str, Any] = field(default_factory=dict)
    evaluations: list[EvaluationOutput] = field(default_factory=list)

    @property
    def loss(self) -> str:
        """`gcl` or `clip`."""
        for source in (self.record, self.holdout):
            if source and source.get("loss"):
                return source["loss"]
        return "gcl"

    @property
    def per_device_batch_size(self) -> int | None:
        if self.record:
            return self.record.get("per_device_train_batch_size")
        return self.trainer_state.get("train_batch_size")

    @property
    def max_steps(self) -> int | None:
        hyperparameters = (self.record or {}).get("hyperparameters", {})
        return hyperparameters.get("max_steps") or self.trainer_state.get("global_step")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _latest_trainer_state(output_dir: Path) -> dict[str, Any]:
    """`trainer_state.json` of the newest `checkpoint-*`, without its log history; `{}` when there is none."""
    checkpoints = [p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    for checkpoint in sorted(checkpoints, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        state = _read_json(checkpoint / "trainer_state.json")
        if state is not None:
            state.pop("log_history", None)
            return state
    return {}


def read_run(output_dir: str | os.PathLike) -> RunInfo:
    """Read a `gcl-train` output directory (merged/full model in the root, LoRA adapter in `adapter/`)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir} is not a directory.")
    has_merged = (output_dir / "config.json").is_file()
    adapter_dir = output_dir / ADAPTER_SUBDIR
    has_adapter = (adapter_dir / "adapter_config.json").is_file()
    if not has_merged and not has_adapter:
        raise FileNotFoundError(
            f"{output_dir} holds neither a saved model (config.json) nor a LoRA adapter (adapter/adapter_config.json); "
            "is it a gcl-train output directory?"
        )
    config = _read_json(output_dir / "config.json") or {}
    heatmap = next((output_dir / name for name in HEATMAP_FILES if (output_dir / name).is_file()), None)
    return RunInfo(
        output_dir=output_dir,
        config=config,
        record=_read_json(output_dir / TRAINING_RECORD_FILE),
        holdout=_read_json(output_dir / HOLDOUT_FILE),
        heatmap=heatmap,
        has_merged_model=has_merged,
        has_adapter=has_adapter,
        trainer_state=_latest_trainer_state(output_dir),
        evaluations=find_evaluations(output_dir),
    )
