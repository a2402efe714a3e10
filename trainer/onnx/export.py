# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Export a saved GCL model's encoders to ONNX graphs, verify them, and publish the folder atomically."""

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from modeling_gcl import (
    GCLConfig,
    GCLModel,
    GCLProcessor,
    GCLScoreFusion,
    l2_normalize,
    load_gcl_config,
)

from ..atomic import atomic_write_json, staged_directory
from .common import (
    DEFAULT_ATOL,
    DEFAULT_OPSET,
    EXPORT_BATCH_SIZE,
    EXTERNAL_DATA_BYTES,
    FUSED_ENCODER_FILE,
    FUSION_FILE,
    IMAGE_ENCODER_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    MIN_OPSET,
    PROG,
    TEXT_ENCODER_FILE,
    VERIFY_BATCH_SIZES,
    OnnxExportError,
    OnnxVerificationError,
    processor_inputs,
    load_sample_pairs,
    require_onnx,
)
from .verify import verify_export

# --- the graphs -------------------------------------------------------------------------------------------------------

class ImageEncoderGraph(nn.Module):
    """`pixel_values` `(batch, 3, H, W)` -> `image_embeds`, `image_features` `(batch, dim)`."""

    def __init__(self, model: GCLModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.get_image_features(pixel_values, normalize=False)
        return l2_normalize(features), features


class TextEncoderGraph(nn.Module):
    """`input_ids`, `attention_mask` `(batch, seq)` -> `text_embeds`, `text_features` `(batch, dim)`."""

    def __init__(self, model: GCLModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.get_text_features(input_ids, attention_mask, normalize=False)
        return l2_normalize(features), features


class ScoreFusionGraph(nn.Module):
    """Score fusion: `image_features`, `text_features` `(batch, dim)` -> `fused_embeds` `(batch, dim)`.

    Takes the model's `GCLScoreFusion` (`model.fusion`) alone: the graph holds no encoder weights.
    """

    def __init__(self, fusion: GCLScoreFusion):
        super().__init__()
        self.fusion = fusion

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.fusion(image_features, text_features))


class FusedEncoderGraph(nn.Module):
    """VISTA: `pixel_values` `(batch, 3, H, W)`, `input_ids`, `attention_mask` `(batch, seq)` -> `fused_embeds`."""

    def __init__(self, model: GCLModel):
        super().__init__()
        self.model = model

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.model.get_fused_features(pixel_values, input_ids, attention_mask)


# Symbolic axes by name. Strings (not `torch.export.Dim`s) let torch.onnx pick each axis' range from the model's own
# guards (e.g. a text no longer than the position table) instead of us restating them per backbone, and name the ONNX
# axes "batch" / "sequence". Image height and width stay fixed: the position embeddings are sized for one resolution.
_BATCH = {0: "batch"}
_TOKENS = {0: "batch", 1: "sequence"}


def _graph_plan(model: GCLModel) -> list[dict]:
    """The graphs of `model`: for each, its file, wrapper module, input/output names and symbolic axes."""
    image = {"file": IMAGE_ENCODER_FILE, "module": ImageEncoderGraph(model), "inputs": ["pixel_values"],
             "outputs": ["image_embeds", "image_features"], "dynamic_shapes": {"pixel_values": _BATCH}}
    text = {"file": TEXT_ENCODER_FILE, "module": TextEncoderGraph(model), "inputs": ["input_ids", "attention_mask"],
            "outputs": ["text_embeds", "text_features"],
            "dynamic_shapes": {"input_ids": _TOKENS, "attention_mask": _TOKENS}}
    if model.is_vista:
        fused = {"file": FUSED_ENCODER_FILE, "module": FusedEncoderGraph(model),
                 "inputs": ["pixel_values", "input_ids", "attention_mask"], "outputs": ["fused_embeds"],
                 "dynamic_shapes": {"pixel_values": _BATCH, "input_ids": _TOKENS, "attention_mask": _TOKENS}}
    else:
        fused = {"file": FUSION_FILE, "module": ScoreFusionGraph(model.fusion),
                 "inputs": ["image_features", "text_features"], "outputs": ["fused_embeds"],
                 "dynamic_shapes": {"image_features": _BATCH, "text_features": _BATCH}}
    return [image, text, fused]


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress chatter (missing torchvision ops, pytree deprecations, axis renaming notes);
    real failures still raise."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            yield
    finally:
        onnx_logger.setLevel(level)


def _parameter_bytes(module: nn.Module) -> int:
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}  # tied weights counted once
    return sum(t.numel() * t.element_size() for t in tensors.values())


def export_graph(
    module: nn.Module,
    example_inputs: dict[str, torch.Tensor],
    path: str | os.PathLike,
    output_names: Sequence[str],
    dynamic_shapes: dict[str, dict[int, str]],
    opset: int = DEFAULT_OPSET,
) -> Path:
    r"""
    Export one module to an ONNX file with torch.onnx's dynamo exporter.

    The dynamo exporter (`torch.export` + onnxscript), not the TorchScript tracer: tracing runs the model once and
    records Python-level decisions as constants (transformers' mask code skips the padding mask when the example batch
    has no padding, and warns that the trace "might not generalize"), whereas `torch.export` either keeps a dynamic
    axis symbolic or fails loudly. It is also torch's default and the TorchScript exporter is deprecated.

    Args:
        module (`nn.Module`): in eval mode; its `forward` takes the inputs by the names of `example_inputs`.
        example_inputs (`dict[str, torch.Tensor]`): example tensors in `forward`'s order (batch of 2 or more).
        path: the `.onnx` file to write; the weights go into `<path>.data` when the module's parameters exceed 1 GiB
            (counted over the whole module, so a graph that uses only part of a large model may get one needlessly).
        output_names (`Sequence[str]`): names of `forward`'s outputs in the graph.
        dynamic_shapes (`dict[str, dict[int, str]]`): per input, its symbolic axes by name (`{0: "batch"}`).
        opset (`int`, defaults to 18): the ONNX opset.
    """
    path = Path(path)
    module = module.eval()
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            tuple(example_inputs.values()),
            None,
            input_names=list(example_inputs),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            optimize=True,  # constant folding and dead-node removal: smaller, cleaner graphs for any runtime
            verbose=False,
        )
        program.save(str(path), external_data=_parameter_bytes(module) > EXTERNAL_DATA_BYTES)
    return path


def describe_graph(path: str | os.PathLike) -> dict:
    """The opset, inputs and outputs of an ONNX file, as written: `{"opset": 18, "inputs": {"pixel_values": {"dtype":
    "float32", "shape": ["batch", 3, 224, 224]}}, "outputs": {...}}` (symbolic axes by name)."""
    import onnx

    graph_model = onnx.load(str(path), load_external_data=False)

    def values(entries) -> dict:
        described = {}
        for value in entries:
            tensor = value.type.tensor_type
            described[value.name] = {
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": [dim.dim_param or dim.dim_value for dim in tensor.shape.dim],
            }
        return described

    opset = next(entry.version for entry in graph_model.opset_import if entry.domain in ("", "ai.onnx"))
    return {"opset": opset, "inputs": values(graph_model.graph.input), "outputs": values(graph_model.graph.output)}


def _check_symbolic_axes(file: str, described: dict, dynamic_shapes: dict[str, dict[int, str]]) -> None:
    """Fail when an axis meant to be dynamic came out with a fixed size (the graph would reject other batch sizes)."""
    for name, axes in dynamic_shapes.items():
        shape = described["inputs"][name]["shape"]
        for axis, axis_name in axes.items():
            if not isinstance(shape[axis], str):
                raise OnnxExportError(
                    f"{file}: axis {axis} ({axis_name}) of input {name!r} was exported with the fixed size "
                    f"{shape[axis]}."
                )


# --- load, export, verify, publish ------------------------------------------------------------------------------------

def check_gcl_model_dir(model_dir: str | os.PathLike) -> GCLConfig:
    """The config of the saved GCL model in `model_dir`; a clear error names the path when it is not one. Reads only
    `config.json`, so a wrong path fails at once, before any weights or exporter are loaded."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model directory.")
    if not (model_dir / "config.json").is_file():
        raise OnnxExportError(
            f"{model_dir} is not a saved GCL model: it has no config.json (a gcl-train output that saved only a LoRA "
            "adapter must be merged first)."
        )
    try:
        config = load_gcl_config(model_dir)  # either layout: a CLIP config.json with a `gcl` section, or "gcl"
    except (OSError, ValueError, KeyError) as error:
        raise OnnxExportError(
            f"{model_dir} is not a saved GCL model: its config.json does not load ({error})."
        ) from error
    if config is None:
        model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
        raise OnnxExportError(
            f"{model_dir} is not a GCL model (model_type {model_type!r} with no `gcl` section); wrap a CLIP backbone "
            "with GCLModel.from_backbone and save it, or export a gcl-train output."
        )
    return config


def load_gcl_model(model_dir: str | os.PathLike) -> tuple[GCLModel, GCLProcessor]:
    """A saved GCL model in float32 eval mode and its processor; a clear error names the path when it is not one."""
    check_gcl_model_dir(model_dir)
    # float32 on CPU: what onnxruntime's CPU provider runs and the 1e-4 check assumes; SDPA attention exports as plain
    # MatMul/Softmax at opset 18 and loads on any device, unlike a saved flash-attention setting.
    model = GCLModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    try:
        processor = GCLProcessor.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise OnnxExportError(
            f"{model_dir} holds no usable processor (tokenizer + image processor): {error}"
        ) from error
    return model, processor


def _check_output_dir(output_dir: Path, model_dir: Path, overwrite: bool) -> None:
    """An existing output folder is replaced only with `overwrite`, only when it is an earlier export (so a typo can
    not wipe an unrelated folder), and never when the model being exported is inside it."""
    resolved = output_dir.resolve()
    if model_dir.resolve() == resolved or resolved in model_dir.resolve().parents:
        raise OnnxExportError(f"--output_dir {output_dir} would replace the model being exported ({model_dir}).")
    if not output_dir.exists() or (output_dir.is_dir() and not any(output_dir.iterdir())):
        return  # nothing to lose
    if not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it.")
    if not (output_dir / MANIFEST_FILE).is_file():
        raise OnnxExportError(
            f"{output_dir} exists and is not a {PROG} output (no {MANIFEST_FILE}); refusing to replace it."
        )


def export_onnx(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    verify: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
    log=print,
) -> dict:
    r"""
    Export the encoders of the GCL model in `model_dir` to ONNX in `output_dir`, with its processor and `gcl_onnx.json`.

    Args:
        model_dir: a saved GCL model (`save_pretrained` folder or `gcl-train` output) with its processor.
        output_dir: the export folder; built beside it under a hidden staging name and renamed into place once
            complete (and verified), so it is either the whole new export or untouched.
        opset (`int`, defaults to 18): ONNX opset, at least 18.
        atol (`float`, defaults to 1e-4): the largest allowed `|onnx - torch|` of any embedding entry.
        verify (`bool`, defaults to `True`): check the graphs with onnxruntime against the PyTorch model on the
            bundled sample at batch sizes 1 and 3; a mismatch raises `OnnxVerificationError` and publishes nothing.
        overwrite (`bool`, defaults to `False`): replace an existing earlier export.
        device (`str`, defaults to `"cpu"`): where the model is traced and the reference embeddings computed; only
            `"cpu"` (the graphs carry no device, and onnxruntime verifies on CPU).
        log: prints progress (`print`; `lambda *_: None` for silence).

    Returns:
        The manifest written as `gcl_onnx.json`; with `verify`, `manifest["verification"]["max_abs_diff"]` maps
        `image`, `text`, `fused` to the largest difference seen.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if device != "cpu":
        raise ValueError(f"device {device!r} is not supported: the export traces and verifies on 'cpu'.")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: the dynamo exporter writes opset {MIN_OPSET} or newer.")
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol}.")
    # Wrong paths first (they need no ONNX package, and are the likeliest mistakes), then the dependencies.
    check_gcl_model_dir(model_dir)
    _check_output_dir(output_dir, model_dir, overwrite)
    require_onnx(export=True)
    model, processor = load_gcl_model(model_dir)

    images, captions = load_sample_pairs(range(EXPORT_BATCH_SIZE))
    example = {key: torch.from_numpy(value) for key, value in processor_inputs(processor, images, captions).items()}
    with torch.no_grad():
        example["image_features"] = model.get_image_features(example["pixel_values"], normalize=False)
        example["text_features"] = model.get_text_features(
            example["input_ids"], example["attention_mask"], normalize=False
        )

    graphs = {}
    with staged_directory(output_dir) as staging:
        for role, plan in zip(("image", "text", "fused"), _graph_plan(model)):
            start = time.perf_counter()
            path = staging / plan["file"]
            try:
                export_graph(plan["module"], {name: example[name] for name in plan["inputs"]}, path, plan["outputs"],
                             plan["dynamic_shapes"], opset=opset)
            except Exception as error:  # noqa: BLE001  (name the graph; the exporter's own error is chained)
                raise OnnxExportError(f"Exporting {plan['file']} failed: {type(error).__name__}: {error}") from error
            described = describe_graph(path)
            _check_symbolic_axes(plan["file"], described, plan["dynamic_shapes"])
            if described["opset"] != opset:  # the exporter may convert versions; the manifest must not claim one
                raise OnnxExportError(f"{plan['file']} was written at opset {described['opset']}, not {opset}.")
            external = path.with_name(path.name + ".data")
            graphs[role] = {"file": plan["file"], "external_data": external.name if external.is_file() else None,
                            "inputs": described["inputs"], "outputs": described["outputs"]}
            size = sum(p.stat().st_size for p in (path, external) if p.is_file())
            log(f"{PROG}: exported {plan['file']} ({size / 2**20:.1f} MiB, opset {described['opset']}) "
                f"in {time.perf_counter() - start:.1f} s")
        processor.save_pretrained(staging)
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "source": str(model_dir.resolve()),
            "backbone_type": model.config.backbone_type,
            "fusion": model.config.fusion,
            "projection_dim": model.config.projection_dim,
            "opset": opset,
            "dtype": "float32",
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            # How a fused item is computed: one graph (VISTA) or the two encoders' features through the fusion graph.
            "fused_from": (
                [FUSED_ENCODER_FILE] if model.is_vista else [IMAGE_ENCODER_FILE, TEXT_ENCODER_FILE, FUSION_FILE]
            ),
            "graphs": graphs,
            "verification": None,
        }
        manifest["files"] = sorted([*(p.name for p in staging.iterdir() if p.is_file()), MANIFEST_FILE])
        atomic_write_json(staging / MANIFEST_FILE, manifest)
        if verify:
            try:
                differences = verify_export(model, staging, atol=atol, log=log)
            except OnnxVerificationError as error:
                kept = "left as it was" if output_dir.exists() else "not created"
                raise OnnxVerificationError(f"{error} Nothing was published: {output_dir} is {kept}.") from error
            manifest["verification"] = {
                "runtime": "onnxruntime CPUExecutionProvider",
                "data": "bundled openclipart sample",
                "batch_sizes": list(VERIFY_BATCH_SIZES),
                "atol": atol,
                "max_abs_diff": differences,
            }
            atomic_write_json(staging / MANIFEST_FILE, manifest)
        else:
            log(f"{PROG}: --no_verify: the graphs were not checked against the PyTorch model.")
    return manifest
