# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Training GCL retrievers with the Hugging Face stack: losses, collator, data, `GCLTrainer`, LoRA, evaluation."""

import modeling_gcl  # noqa: F401  (registers GCL with the Auto classes)

from .version import __version__

from .backbones import load_bundled_tiny_clip, load_model_and_processor
from .data import BadSampleError, GCLCollator
from .data import DataError, load_image_caption_dataset
from .evaluation import encode_pairs, modality_matrix
from .losses import CLIPLoss, GCLLoss, build_loss, clip_loss, gcl_loss
from .lora import apply_lora, load_lora_model, merge_lora, save_lora_adapter
from .trainer import GCLTrainer, GCLTrainingArguments

__all__ = [
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
