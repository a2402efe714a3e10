# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`gcl-export-onnx`: export a saved GCL model's encoders to ONNX, check them with onnxruntime, and run them.

    gcl-export-onnx clip-gcl --output_dir clip-gcl-onnx              # export, verify, publish
    gcl-export-onnx clip-gcl --output_dir clip-gcl-onnx --overwrite  # replace an earlier export
    python -m trainer.onnx ...                                       # the same without the console script

A CLIP-family model (score fusion) becomes three graphs: `image_encoder.onnx` (`pixel_values` -> `image_embeds`,
`image_features`), `text_encoder.onnx` (`input_ids`, `attention_mask` -> `text_embeds`, `text_features`) and
`fusion.onnx` (`image_features`, `text_features` -> `fused_embeds`, the config's fusion mode), so a fused item costs the
two encoder passes plus a tiny graph. A VISTA model fuses inside its text encoder, so it gets `image_encoder.onnx`,
`text_encoder.onnx` and `fused_encoder.onnx` (`pixel_values`, `input_ids`, `attention_mask` -> `fused_embeds`). Every
`*_embeds` output is L2-normalised; `*_features` are the raw projections the fusion pools.

Beside the graphs go the processor (tokenizer and image processor) and `gcl_onnx.json`, a manifest of the files, their
inputs and outputs, the fusion mode, backbone type, opset, source model and embedding size. Before anything is
published, onnxruntime (CPU) embeds images and captions of the bundled sample at two batch sizes and the result must
match the PyTorch model within `--atol`; the folder is built under a hidden staging name and renamed into place only
then, so an interrupted or failed export never leaves a half-written output. `GCLOnnxRetriever` runs an export.

The code is split along those lines: `export.py` (graphs, export, publish), `verify.py` (the onnxruntime check),
`runtime.py` (`GCLOnnxRetriever`), `common.py` (names, errors, inputs) and `cli.py` (the command line).
"""

from .cli import build_parser, main
from .common import (
    DEFAULT_ATOL,
    DEFAULT_OPSET,
    MANIFEST_FILE,
    OnnxDependencyError,
    OnnxExportError,
    OnnxVerificationError,
    load_sample_pairs,
    require_onnx,
)
from .export import (
    FusedEncoderGraph,
    ImageEncoderGraph,
    ScoreFusionGraph,
    TextEncoderGraph,
    check_gcl_model_dir,
    describe_graph,
    export_graph,
    export_onnx,
    load_gcl_model,
)
from .runtime import GCLOnnxRetriever
from .verify import verify_export

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_OPSET",
    "MANIFEST_FILE",
    "FusedEncoderGraph",
    "GCLOnnxRetriever",
    "ImageEncoderGraph",
    "OnnxDependencyError",
    "OnnxExportError",
    "OnnxVerificationError",
    "ScoreFusionGraph",
    "TextEncoderGraph",
    "build_parser",
    "check_gcl_model_dir",
    "describe_graph",
    "export_graph",
    "export_onnx",
    "load_gcl_model",
    "load_sample_pairs",
    "main",
    "require_onnx",
    "verify_export",
]
