# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`gcl-export-onnx`: export a saved GCL model's encoders to ONNX, check them with onnxruntime, and run them.

    gcl-export-onnx clip-gcl --output_dir clip-gcl-onnx              # export, verify, publish
    gcl-export-onnx clip-gcl --output_dir clip-gcl-onnx --overwrite  # replace an earlier export
    python -m trainer.export_onnx ...                                # the same without the console script

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
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeling_gcl import GCLConfig, GCLModel, GCLProcessor, GCLScoreFusion, l2_normalize, load_gcl_config

from .atomic import atomic_write_json, staged_directory
from .data import BUNDLED_SAMPLE_DIR, read_jsonl_objects

PROG = "gcl-export-onnx"
INSTALL_HINT = "pip install 'gcl-hf[onnx]'"
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


def _processed(
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


# --- the runtime ------------------------------------------------------------------------------------------------------

class GCLOnnxRetriever:
    r"""
    Embeds images, texts and fused image+text items with an export of `gcl-export-onnx`, through onnxruntime and the
    saved processor; no PyTorch model is loaded. Every embedding is L2-normalised, `(batch, projection_dim)` float32,
    in the same space as the PyTorch model's `get_image_features` / `get_text_features` / `get_fused_features`.

    Example:

    ```python
    >>> retriever = GCLOnnxRetriever.from_pretrained("clip-gcl-onnx")
    >>> queries = retriever.get_text_features(["a red bicycle"])
    >>> items = retriever.get_fused_features([image], ["a bicycle, red"])
    >>> scores = queries @ items.T
    ```
    """

    def __init__(self, directory: Path, manifest: dict, processor: GCLProcessor, sessions: dict):
        self.directory = directory
        self.manifest = manifest
        self.processor = processor
        self.sessions = sessions

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, providers: Sequence[str] | None = None, session_options=None
    ) -> "GCLOnnxRetriever":
        r"""
        Load an export.

        Args:
            directory: a `gcl-export-onnx` output folder (holding `gcl_onnx.json`).
            providers (`Sequence[str]`, *optional*): onnxruntime execution providers; default `CPUExecutionProvider`.
            session_options (`onnxruntime.SessionOptions`, *optional*): e.g. to set the number of threads.
        """
        onnxruntime = require_onnx(export=False)
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{directory} is not a {PROG} output: it has no {MANIFEST_FILE}.")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("format_version", 0) > MANIFEST_VERSION:
            raise ValueError(f"{manifest_path}: not a {MANIFEST_FORMAT} manifest of version <= {MANIFEST_VERSION}.")
        providers = list(providers or ["CPUExecutionProvider"])
        sessions = {
            role: onnxruntime.InferenceSession(
                str(directory / graph["file"]), sess_options=session_options, providers=providers
            )
            for role, graph in manifest["graphs"].items()
        }
        return cls(directory, manifest, GCLProcessor.from_pretrained(directory), sessions)

    @property
    def is_vista(self) -> bool:
        return self.manifest["backbone_type"] == "vista"

    @property
    def projection_dim(self) -> int:
        return self.manifest["projection_dim"]

    # Tensor level: what the graphs take and give, with no preprocessing.

    def run_image(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """`pixel_values` `(batch, 3, H, W)` -> `{"image_embeds", "image_features"}`, each `(batch, dim)`."""
        return self._run("image", pixel_values=np.asarray(pixel_values, np.float32))

    def run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """`input_ids`, `attention_mask` `(batch, seq)` -> `{"text_embeds", "text_features"}`, each `(batch, dim)`."""
        return self._run(
            "text", input_ids=np.asarray(input_ids, np.int64), attention_mask=np.asarray(attention_mask, np.int64)
        )

    def run_fused(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Pairs `(pixel_values[j], input_ids[j])` -> `fused_embeds` `(batch, dim)`: VISTA's fused encoder, or for score
        fusion the image and text encoders followed by the fusion graph."""
        if len(pixel_values) != len(input_ids):
            raise ValueError(f"Fusion pairs row j with row j: {len(pixel_values)} images for {len(input_ids)} texts.")
        if self.is_vista:
            return self._run("fused", pixel_values=np.asarray(pixel_values, np.float32),
                             input_ids=np.asarray(input_ids, np.int64),
                             attention_mask=np.asarray(attention_mask, np.int64))["fused_embeds"]
        image_features = self.run_image(pixel_values)["image_features"]
        text_features = self.run_text(input_ids, attention_mask)["text_features"]
        return self._run("fused", image_features=image_features, text_features=text_features)["fused_embeds"]

    def _run(self, role: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        session = self.sessions[role]
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    # Item level: images and strings through the saved processor.

    def get_image_features(self, images) -> np.ndarray:
        r"""
        Args:
            images: a `PIL.Image`, a path to an image file, or a list of them.

        Returns:
            `np.ndarray` float32 `(batch, projection_dim)`, L2-normalised.
        """
        return self.run_image(**_processed(self.processor, images=_as_images(images)))["image_embeds"]

    def get_text_features(self, texts: str | Sequence[str]) -> np.ndarray:
        """`texts` (a string or a list of them) -> float32 `(batch, projection_dim)`, L2-normalised."""
        return self.run_text(**_processed(self.processor, texts=_as_texts(texts)))["text_embeds"]

    def get_fused_features(self, images, texts: str | Sequence[str]) -> np.ndarray:
        """Fused items: image `j` with text `j` -> float32 `(batch, projection_dim)`, L2-normalised."""
        images, texts = _as_images(images), _as_texts(texts)
        if len(images) != len(texts):
            raise ValueError(f"Fusion pairs image j with text j: got {len(images)} images and {len(texts)} texts.")
        return self.run_fused(**_processed(self.processor, images=images, texts=texts))


def _as_images(images) -> list:
    from PIL import Image

    images = images if isinstance(images, (list, tuple)) else [images]
    loaded = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        loaded.append(image)
    return loaded


def _as_texts(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


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
    example = {key: torch.from_numpy(value) for key, value in _processed(processor, images, captions).items()}
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


@torch.no_grad()
def verify_export(
    model: GCLModel,
    directory: str | os.PathLike,
    atol: float = DEFAULT_ATOL,
    batch_sizes: Sequence[int] = VERIFY_BATCH_SIZES,
    log=print,
) -> dict[str, float]:
    r"""
    Compare an export with the PyTorch model on bundled-sample images and captions, with onnxruntime on CPU.

    For each batch size, distinct sample rows go through the saved processor; the ONNX image, text and fused
    embeddings (`GCLOnnxRetriever.run_*`) are compared with `model.get_image_features`, `get_text_features` and
    `get_fused_features` on the same tensors.

    Args:
        model (`GCLModel`): the model that was exported, in eval mode.
        directory: the export folder (complete, with `gcl_onnx.json`).
        atol (`float`): the largest allowed absolute difference of any entry.
        batch_sizes (`Sequence[int]`): batch sizes to check; other than the export's example batch of 2, so a size
            fixed by mistake fails.
        log: prints one line per encoder.

    Returns:
        `{"image": max_diff, "text": max_diff, "fused": max_diff}` over all batch sizes.

    Raises:
        `OnnxVerificationError` naming the encoder(s) over `atol`, or a graph that fails to run.
    """
    retriever = GCLOnnxRetriever.from_pretrained(directory)
    differences = {"image": 0.0, "text": 0.0, "fused": 0.0}
    start = EXPORT_BATCH_SIZE  # rows the export was traced with are not reused
    for batch_size in batch_sizes:
        images, captions = load_sample_pairs(range(start, start + batch_size))
        start += batch_size
        arrays = _processed(retriever.processor, images, captions)
        tensors = {key: torch.from_numpy(value) for key, value in arrays.items()}
        expected = {
            "image": model.get_image_features(tensors["pixel_values"]),
            "text": model.get_text_features(tensors["input_ids"], tensors["attention_mask"]),
            "fused": model.get_fused_features(tensors["pixel_values"], tensors["input_ids"], tensors["attention_mask"]),
        }
        try:
            actual = {
                "image": retriever.run_image(arrays["pixel_values"])["image_embeds"],
                "text": retriever.run_text(arrays["input_ids"], arrays["attention_mask"])["text_embeds"],
                "fused": retriever.run_fused(arrays["pixel_values"], arrays["input_ids"], arrays["attention_mask"]),
            }
        except Exception as error:  # noqa: BLE001  (onnxruntime's errors have no common base class)
            raise OnnxVerificationError(
                f"onnxruntime could not run the export at batch size {batch_size} "
                f"(text length {arrays['input_ids'].shape[1]}): {error}"
            ) from error
        for role, reference in expected.items():
            if actual[role].shape != tuple(reference.shape):
                raise OnnxVerificationError(
                    f"{role} embeddings at batch size {batch_size}: ONNX shape {actual[role].shape}, PyTorch "
                    f"{tuple(reference.shape)}."
                )
            differences[role] = max(differences[role], float(np.abs(actual[role] - reference.numpy()).max()))
    graphs = retriever.manifest["fused_from"]
    failed = []
    for role, difference in differences.items():
        files = "+".join(graphs) if role == "fused" else retriever.manifest["graphs"][role]["file"]
        verdict = "ok" if difference <= atol else "MISMATCH"
        log(f"{PROG}: verify {role} ({files}): max |onnx - torch| = {difference:.3g} "
            f"at batch sizes {', '.join(map(str, batch_sizes))} (atol {atol:g}) {verdict}")
        if difference > atol:
            failed.append(f"{role} {difference:.3g}")
    if failed:
        raise OnnxVerificationError(
            f"The ONNX embeddings differ from the PyTorch model's by more than atol={atol:g} ({'; '.join(failed)})."
        )
    return differences


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
    "describe_graph",
    "export_graph",
    "export_onnx",
    "check_gcl_model_dir",
    "load_gcl_model",
    "load_sample_pairs",
    "main",
    "require_onnx",
    "verify_export",
]


if __name__ == "__main__":
    sys.exit(main())
