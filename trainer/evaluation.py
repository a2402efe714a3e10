# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Retrieval across modalities on aligned image–caption pairs: the six cross-modal cells of the modality matrix.

Query `j` of modality q has exactly one relevant candidate: candidate `j` of modality c. `hit@k` is 1 when it is in
the top k (what UniIR / M-BEIR call "Recall@k").
"""

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .collator import GCLCollator

# (query modality, candidate modality) for the six cross-modal cells, in the order they are reported.
CROSS_MODAL_CELLS = (("t", "i"), ("i", "t"), ("t", "it"), ("i", "it"), ("it", "t"), ("it", "i"))


@torch.no_grad()
def encode_pairs(
    model,
    processor,
    dataset,
    image_column: str = "image",
    caption_column: str = "caption",
    batch_size: int = 64,
    device: torch.device | str | None = None,
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Embed every pair of `dataset` as image (`i`), text (`t`) and fused (`it`); returns `{"i", "t", "it"}` of shape
    `(len(dataset), dim)`, L2-normalised, on the CPU. A bad sample raises (evaluation never drops data silently)."""
    collator = GCLCollator(processor, image_column=image_column, caption_column=caption_column)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = {"i": [], "t": [], "it": []}
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="Encoding pairs", disable=not show_progress, leave=False):
        rows = dataset[start : start + batch_size]
        features = [
            {image_column: rows[image_column][k], caption_column: rows[caption_column][k], "gcl_row_index": start + k}
            for k in range(len(rows[caption_column]))
        ]
        batch = {key: value.to(device) for key, value in collator(features).items()}
        outputs = model(**batch)
        chunks["i"].append(outputs.image_embeds.float().cpu())
        chunks["t"].append(outputs.text_embeds.float().cpu())
        chunks["it"].append(outputs.fused_embeds.float().cpu())
    model.train(was_training)
    return {key: torch.cat(value) for key, value in chunks.items()}


def aligned_hits_at_k(queries: torch.Tensor, candidates: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """`hit@k` (in %) for queries `(n, d)` whose relevant candidate is the candidate of the same row `(n, d)`.
    Ties are broken in the query's favour (only strictly higher scores rank above the positive)."""
    scores = queries @ candidates.T
    positive = scores.diagonal().unsqueeze(1)
    rank = (scores > positive).sum(dim=1)  # 0 = the positive is first
    return {f"hit@{k}": 100.0 * (rank < k).float().mean().item() for k in ks}


def modality_matrix(embeds: dict[str, torch.Tensor], ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """The six cross-modal cells: `{"t2i": {"hit@1": ..., ...}, "i2t": ..., ...}`."""
    return {f"{q}2{c}": aligned_hits_at_k(embeds[q], embeds[c], ks) for q, c in CROSS_MODAL_CELLS}


def format_matrix(results: dict[str, dict[str, float]], title: str = "") -> str:
    """A plain-text table, one row per cell, one column per metric."""
    metrics = list(next(iter(results.values())))
    lines = [title] if title else []
    lines.append("cell    " + "".join(f"{m:>9}" for m in metrics))
    for cell, values in results.items():
        query, candidate = cell.split("2")
        lines.append(f"{query:>2} → {candidate:<3}" + "".join(f"{values[m]:9.1f}" for m in metrics))
    return "\n".join(lines)
