# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Training GCL retrievers with the Hugging Face stack: losses, collator, data, `GCLTrainer`, LoRA, evaluation."""

import re
import warnings
from importlib import metadata

import modeling_gcl  # noqa: F401  (registers GCL with the Auto classes)

from .version import __version__

from .backbones import load_bundled_tiny_clip, load_model_and_processor
from .data import BadSampleError, GCLCollator
from .data import DataError, load_image_caption_dataset
from .evaluation import encode_pairs, modality_matrix
from .losses import CLIPLoss, GCLLoss, build_loss, clip_loss, gcl_loss
from .lora import apply_lora, load_lora_model, merge_lora, save_lora_adapter
from .trainer import GCLTrainer, GCLTrainingArguments

class TrainerNameClashError(ImportError):
    """Another installed distribution also provides the top-level package `trainer`."""


def other_trainer_distributions() -> list[str]:
    """`"name version"` of every installed distribution other than gcl-hf that provides a top-level package named
    `trainer` (PyPI's unrelated `trainer`, coqui-ai's, comes with the TTS library). Installing both puts two packages
    in one `site-packages/trainer/` folder, each overwriting the other's files."""
    found = set()
    for distribution in metadata.distributions():
        name = distribution.metadata.get("Name") or ""
        if re.sub(r"[-_.]+", "-", name).lower() == "gcl-hf":
            continue
        top_level = distribution.read_text("top_level.txt")
        if top_level is not None:
            provides = "trainer" in top_level.split()
        else:  # no top_level.txt: look for trainer/ in its file list
            record = distribution.read_text("RECORD") or ""
            provides = record.startswith("trainer/") or "\ntrainer/" in record
        if provides:
            found.add(f"{name} {distribution.version}")
    return sorted(found)


def trainer_name_clash_message(others: list[str]) -> str:
    return (f"another installed distribution also provides the top-level package `trainer`: {', '.join(others)} "
            "(PyPI's unrelated `trainer`, a dependency of the TTS library); it and gcl-hf overwrite each other's files. "
            "Use separate virtual environments (or pip uninstall it).")


def check_trainer_name_clash() -> None:
    """Raise `TrainerNameClashError` naming the other distribution(s) that provide `trainer` (the CLIs call this)."""
    others = other_trainer_distributions()
    if others:
        raise TrainerNameClashError(trainer_name_clash_message(others))


_other_trainers = other_trainer_distributions()
if _other_trainers:
    warnings.warn(trainer_name_clash_message(_other_trainers), stacklevel=2)


__all__ = [
    "TrainerNameClashError",
    "check_trainer_name_clash",
    "__version__",
    "BadSampleError",
    "CLIPLoss",
    "DataError",
    "GCLCollator",
    "GCLLoss",
    "GCLTrainer",
    "GCLTrainingArguments",
    "apply_lora",
    "build_loss",
    "clip_loss",
    "encode_pairs",
    "gcl_loss",
    "load_bundled_tiny_clip",
    "load_image_caption_dataset",
    "load_lora_model",
    "load_model_and_processor",
    "merge_lora",
    "modality_matrix",
    "save_lora_adapter",
]
