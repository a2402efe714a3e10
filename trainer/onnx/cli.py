# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The `gcl-export-onnx` command line."""

import argparse
import sys

from .common import (
    DEFAULT_ATOL,
    DEFAULT_OPSET,
    INSTALL_HINT,
    MANIFEST_FILE,
    MIN_OPSET,
    PROG,
    OnnxDependencyError,
    OnnxExportError,
)
from .export import export_onnx

# --- command line -----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a saved GCL model's image, text and fused encoders to ONNX (with the processor and a "
        f"{MANIFEST_FILE} manifest), verify them with onnxruntime against the PyTorch model, and publish the folder "
        f"atomically. Needs the onnx extra: {INSTALL_HINT}",
        allow_abbrev=False,
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="A saved GCL model (save_pretrained / gcl-train output).")
    parser.add_argument("--output_dir", required=True, help="The export folder to write.")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}, the exporter's native one; at least {MIN_OPSET}).")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"Largest allowed |onnx - torch| of an embedding entry (default {DEFAULT_ATOL:g}).")
    parser.add_argument("--no_verify", dest="verify", action="store_false",
                        help="Skip the onnxruntime check against the PyTorch model.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier export in --output_dir.")
    parser.add_argument("--device", choices=("cpu",), default="cpu",
                        help="Where the model is traced and the reference computed. Only cpu: the graphs carry no "
                        "device and onnxruntime verifies on CPU, where a GPU reference would only add TF32 noise.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `gcl-export-onnx`; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        manifest = export_onnx(args.model_dir, args.output_dir, opset=args.opset, atol=args.atol, verify=args.verify,
                               overwrite=args.overwrite, device=args.device)
    except (OnnxDependencyError, OnnxExportError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    print(f"{PROG}: wrote {len(manifest['files'])} files to {args.output_dir}:")
    for name in manifest["files"]:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
