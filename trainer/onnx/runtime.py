# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`GCLOnnxRetriever`: embed images, texts and fused items with a `gcl-export-onnx` folder through onnxruntime."""

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modeling_gcl import GCLProcessor

from .common import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    PROG,
    processor_inputs,
    require_onnx,
)

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
        return self.run_image(**processor_inputs(self.processor, images=_as_images(images)))["image_embeds"]

    def get_text_features(self, texts: str | Sequence[str]) -> np.ndarray:
        """`texts` (a string or a list of them) -> float32 `(batch, projection_dim)`, L2-normalised."""
        return self.run_text(**processor_inputs(self.processor, texts=_as_texts(texts)))["text_embeds"]

    def get_fused_features(self, images, texts: str | Sequence[str]) -> np.ndarray:
        """Fused items: image `j` with text `j` -> float32 `(batch, projection_dim)`, L2-normalised."""
        images, texts = _as_images(images), _as_texts(texts)
        if len(images) != len(texts):
            raise ValueError(f"Fusion pairs image j with text j: got {len(images)} images and {len(texts)} texts.")
        return self.run_fused(**processor_inputs(self.processor, images=images, texts=texts))


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
