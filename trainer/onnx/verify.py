# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Check an export against the PyTorch model it came from, with onnxruntime on bundled-sample images and captions."""

import os
from collections.abc import Sequence

import numpy as np
import torch

from modeling_gcl import GCLModel

from .common import (
    DEFAULT_ATOL,
    EXPORT_BATCH_SIZE,
    PROG,
    VERIFY_BATCH_SIZES,
    OnnxVerificationError,
    processor_inputs,
    load_sample_pairs,
)
from .runtime import GCLOnnxRetriever


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
        arrays = processor_inputs(retriever.processor, images, captions)
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
