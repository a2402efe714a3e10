# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""What the ONNX export, its verification and its runtime share: file names, the manifest's format, defaults, errors,
the dependency check, and turning sample images and captions into the graphs' inputs.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modeling_gcl import GCLProcessor

from ..data import BUNDLED_SAMPLE_DIR, read_jsonl_objects

PROG = "gcl-export-onnx"
INSTALL_HINT = 'pip install onnx onnxruntime onnxscript (the onnx extra: pip install -e ".[onnx]" in a gcl-hf checkout)'
MANIFEST_FILE = "gcl_onnx.json"
MANIFEST_FORMAT = "gcl-onnx"
MANIFEST_VERSION = 1
IMAGE_ENCODER_FILE = "image_encoder.onnx"
TEXT_ENCODER_FILE = "text_encoder.onnx"
FUSION_FILE = "fusion.onnx"
FUSED_ENCODER_FILE = "fused_encoder.onnx"

# Opset 18 is the opset the dynamo exporter's torchlib is written in, so no version-conversion pass runs (it may fail
# and leave another opset); onnxruntime has run it since 1.14 (the `onnx` extra asks for >= 1.18). It also stays below
# opset 23, from which the exporter emits the fused `Attention` operator that older runtimes do not have.
DEFAULT_OPSET = 18
MIN_OPSET = 18
DEFAULT_ATOL = 1e-4
# The example batch the graphs are traced with; 2 because torch.export specialises dimensions of size 0 and 1. The
# verification uses other batch sizes (and other sample rows), so a batch size baked in by mistake is caught.
EXPORT_BATCH_SIZE = 2
VERIFY_BATCH_SIZES = (1, 3)
# Protobuf cannot hold a file of 2 GiB or more: larger graphs keep their weights in `<file>.data` beside them.
EXTERNAL_DATA_BYTES = 1 << 30


class OnnxDependencyError(ImportError):
    """onnx, onnxscript or onnxruntime is missing; the message says what to install."""


class OnnxExportError(RuntimeError):
    """The model cannot be exported (not a GCL model, a graph that fails to export, an unusable output folder)."""


class OnnxVerificationError(OnnxExportError):
    """The ONNX embeddings differ from the PyTorch model's by more than the tolerance."""


def require_onnx(export: bool = True):
    r"""
    Import the ONNX packages, failing with the install hint when one is missing.

    Args:
        export (`bool`, defaults to `True`): also require `onnx` and `onnxscript` (the exporter's dependencies);
            `False` needs only `onnxruntime`, enough to run an export.

    Returns:
        The `onnxruntime` module.
    """
    names = ("onnx", "onnxscript", "onnxruntime") if export else ("onnxruntime",)
    missing = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxDependencyError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed; "
            f"{'exporting to' if export else 'running'} ONNX needs them: {INSTALL_HINT}"
        )
    import onnxruntime

    return onnxruntime


# --- inputs -----------------------------------------------------------------------------------------------------------

def load_sample_pairs(
    indices: Sequence[int], sample_dir: str | os.PathLike = BUNDLED_SAMPLE_DIR
) -> tuple[list, list[str]]:
    r"""
    Images (RGB `PIL.Image`s) and captions of rows `indices` of an image–caption folder's `metadata.jsonl`
    (`file_name`, `caption`); by default the sample bundled with the package.
    """
    from PIL import Image

    sample_dir = Path(sample_dir)
    rows = [row for _, row in read_jsonl_objects(sample_dir / "metadata.jsonl")]
    images, captions = [], []
    for index in indices:
        with Image.open(sample_dir / rows[index]["file_name"]) as image:
            images.append(image.convert("RGB"))
        captions.append(rows[index]["caption"])
    return images, captions


def _text_kwargs(processor: GCLProcessor) -> dict:
    # Right-padded, truncated to the tokenizer's maximum, as the collator and the feature-extraction pipeline do.
    max_length = processor.max_text_length
    return {"padding": True, "truncation": max_length is not None, "max_length": max_length}


def processor_inputs(
    processor: GCLProcessor, images: list | None = None, texts: list[str] | None = None
) -> dict[str, np.ndarray]:
    """`pixel_values` float32 `(batch, 3, H, W)`, `input_ids` / `attention_mask` int64 `(batch, seq)`."""
    arrays = {}
    if images is not None:
        arrays["pixel_values"] = np.asarray(processor(images=images, return_tensors="np")["pixel_values"], np.float32)
    if texts is not None:
        encoded = processor(text=texts, return_tensors="np", **_text_kwargs(processor))
        arrays["input_ids"] = np.asarray(encoded["input_ids"], np.int64)
        arrays["attention_mask"] = np.asarray(encoded["attention_mask"], np.int64)
    return arrays
