# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The modality matrix: retrieval across modalities on aligned image–caption pairs, plus modality-gap numbers.

Query `j` of modality q has exactly one relevant candidate: candidate `j` of modality c. Six cross-modal cells are
reported (t→i, i→t, t→it, i→it, it→t, it→i); the diagonal (i→i, ...) would be self-retrieval and is left out.
"""

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..data import ROW_INDEX_KEY, GCLCollator
from .distributed import is_main_process
from .encoding import EmbeddingCache, GCLEmbedder, encode_aligned_pairs, evaluation_mode
from .files import EvaluationDataError
from .metrics import metrics_from_positive_ranks
from .search import TIE_DESCRIPTIONS, check_ties, positive_ranks

# (query modality, candidate modality) for the six cross-modal cells, in the order they are reported.
CROSS_MODAL_CELLS = (("t", "i"), ("i", "t"), ("t", "it"), ("i", "it"), ("it", "t"), ("it", "i"))
MODALITY_PAIRS = (("i", "t"), ("i", "it"), ("t", "it"))
DEFAULT_MATRIX_METRICS = ("hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10")


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
            {image_column: rows[image_column][k], caption_column: rows[caption_column][k],
             ROW_INDEX_KEY: rows[ROW_INDEX_KEY][k] if ROW_INDEX_KEY in rows else start + k}  # the file's row
            for k in range(len(rows[caption_column]))
        ]
        batch = {key: value.to(device) for key, value in collator(features).items()}
        outputs = model(**batch)
        chunks["i"].append(outputs.image_embeds.float().cpu())
        chunks["t"].append(outputs.text_embeds.float().cpu())
        chunks["it"].append(outputs.fused_embeds.float().cpu())
    model.train(was_training)
    return {key: torch.cat(value) for key, value in chunks.items()}


def aligned_metrics(queries: torch.Tensor, candidates: torch.Tensor, metrics: Sequence[str],
                    ties: str = "pessimistic") -> dict[str, float]:
    """Metrics (in %) for queries `(n, d)` whose relevant candidate is the candidate of the same row `(n, d)`.
    `ties="pessimistic"` (default): a candidate scoring the same as the positive ranks ahead of it, so a collapsed
    model scores 0; `"optimistic"`: only strictly higher scores do."""
    ranks = positive_ranks(queries, candidates, torch.arange(queries.shape[0]), ties=ties)
    return metrics_from_positive_ranks(ranks, metrics)


def aligned_hits_at_k(queries: torch.Tensor, candidates: torch.Tensor, ks: Sequence[int],
                      ties: str = "pessimistic") -> dict[str, float]:
    """`hit@k` (in %) for queries `(n, d)` whose relevant candidate is the candidate of the same row `(n, d)`; `ties`
    as in `aligned_metrics`."""
    return aligned_metrics(queries, candidates, [f"hit@{k}" for k in ks], ties=ties)


def modality_matrix(
    embeds: dict[str, torch.Tensor], ks: Sequence[int] = (1, 5, 10), metrics: Sequence[str] | None = None,
    ties: str = "pessimistic",
) -> dict[str, dict[str, float]]:
    """The six cross-modal cells: `{"t2i": {"hit@1": ..., ...}, "i2t": ..., ...}`. `metrics` (e.g.
    `DEFAULT_MATRIX_METRICS`) replaces the default `hit@k` for `k` in `ks`; `ties` as in `aligned_metrics`."""
    metrics = list(metrics) if metrics is not None else [f"hit@{k}" for k in ks]
    return {f"{q}2{c}": aligned_metrics(embeds[q], embeds[c], metrics, ties) for q, c in CROSS_MODAL_CELLS}


def modality_gap(embeds: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    r"""
    How far apart the modalities sit, for aligned embeddings `{"i", "t", "it"}` of shape `(n, dim)`:

    - `centroid_distance`: Euclidean distance between the mean embeddings of two modalities (Liang et al.'s
      "modality gap"); 0 when the two clouds share a centre.
    - `matched_cosine`: mean cosine similarity of the two embeddings of the same pair (1 = identical).
    """
    centroids = {modality: embeds[modality].mean(dim=0) for modality in ("i", "t", "it")}
    return {
        "centroid_distance": {f"{a}-{b}": float((centroids[a] - centroids[b]).norm()) for a, b in MODALITY_PAIRS},
        "matched_cosine": {f"{a}-{b}": float((embeds[a] * embeds[b]).sum(dim=1).mean()) for a, b in MODALITY_PAIRS},
    }


def format_matrix(results: dict[str, dict[str, float]], title: str = "") -> str:
    """A plain-text table, one row per cell, one column per metric."""
    metrics = list(next(iter(results.values())))
    lines = [title] if title else []
    lines.append("cell    " + "".join(f"{m:>9}" for m in metrics))
    for cell, values in results.items():
        query, candidate = cell.split("2")
        lines.append(f"{query:>2} → {candidate:<3}" + "".join(f"{values[m]:9.1f}" for m in metrics))
    return "\n".join(lines)


class ModalityMatrixEvaluator:
    r"""
    Evaluates a model on the modality matrix of an image–caption dataset; callable as `evaluator(model, processor)`
    (or `evaluator(embedder=...)`) so a training callback can run it periodically.

    Args:
        dataset: rows with an image (path, bytes, PIL or `datasets` image dict) and a caption; a `datasets.Dataset` or
            a list of dicts.
        image_column, caption_column (`str`): the columns.
        metrics (`Sequence[str]`): per cell, defaults to `DEFAULT_MATRIX_METRICS`.
        batch_size (`int`): pairs per forward pass.
        cache_dir (`str`, *optional*): an `EmbeddingCache` directory.
        name (`str`): the prefix of logged metrics (`eval_{name}/t2i/hit@1`).
        ties (`str`): `"pessimistic"` (default) or `"optimistic"`, see `aligned_metrics`.
        distributed (`bool`): split the encoding across the processes of the default `torch.distributed` group
            (all of them must call the evaluator); rank 0 returns the results, the others `None`.
        source (`str`, *optional*): what the data is called in error messages (a file or folder).
    """

    def __init__(
        self,
        dataset,
        image_column: str = "image",
        caption_column: str = "caption",
        metrics: Sequence[str] = DEFAULT_MATRIX_METRICS,
        batch_size: int = 64,
        cache_dir: str | None = None,
        show_progress: bool = True,
        name: str = "matrix",
        ties: str = "pessimistic",
        distributed: bool = False,
        source: str | None = None,
    ):
        columns = (image_column, caption_column)
        if hasattr(dataset, "column_names"):
            present = set(dataset.column_names)
            rows = dataset[:] if present >= set(columns) else {}
        else:
            present = set.intersection(*(set(row) for row in dataset)) if len(dataset) else set(columns)
            rows = {column: [row[column] for row in dataset] for column in columns} if present >= set(columns) else {}
            if ROW_INDEX_KEY in present:
                rows[ROW_INDEX_KEY] = [row[ROW_INDEX_KEY] for row in dataset]
        prefix = f"{source}: " if source else ""
        if not present >= set(columns):
            raise EvaluationDataError(f"{prefix}missing column(s) {sorted(set(columns) - present)}; has {sorted(present)}.")
        # The data's own row numbers (gcl_row_index survives hold-out splits) name bad rows in errors.
        self.rows = list(rows[ROW_INDEX_KEY]) if ROW_INDEX_KEY in rows else None
        self.images = list(rows[image_column])
        self.captions = [
            _checked_caption(caption, self.rows[position] if self.rows else position, prefix)
            for position, caption in enumerate(rows[caption_column])
        ]
        if not self.images:
            raise EvaluationDataError(f"{prefix}ModalityMatrixEvaluator: the dataset is empty.")
        self.ties = check_ties(ties)
        self.distributed = distributed
        self.metrics = tuple(metrics)
        self.batch_size = batch_size
        self.cache = EmbeddingCache(cache_dir) if cache_dir else None
        self.show_progress = show_progress
        self.name = name
        self.last_embeddings = None

    def __call__(self, model=None, processor=None, embedder=None) -> dict | None:
        """Returns `{"results": {cell: {metric: value}}, "modality_gap": {...}, "num_pairs": n, "ties": ...}` (on rank
        0 when distributed; `None` elsewhere); the embeddings are kept in `self.last_embeddings` for plots."""
        embedder = embedder if embedder is not None else GCLEmbedder(model, processor)
        with evaluation_mode(getattr(embedder, "model", None)):
            embeds = encode_aligned_pairs(
                embedder, self.images, self.captions, self.batch_size, self.show_progress, self.cache,
                distributed=self.distributed, rows=self.rows,
            )
        self.last_embeddings = embeds
        if self.distributed and not is_main_process():
            return None
        return {
            "results": modality_matrix(embeds, metrics=self.metrics, ties=self.ties),
            "modality_gap": modality_gap(embeds),
            "num_pairs": len(self.captions),
            "ties": TIE_DESCRIPTIONS[self.ties],
        }


def _checked_caption(caption, row: int, prefix: str = "") -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise EvaluationDataError(f"{prefix}row {row}: caption {caption!r} is empty or not a string.")
    return caption.strip()
