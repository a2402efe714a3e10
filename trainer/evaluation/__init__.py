# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Retrieval evaluation: metrics, blocked search, encoding with a cache, and the suites — the modality matrix,
M-BEIR, MMEB and CoVR — plus a Trainer callback and reports. `gcl-eval` (`trainer/eval_cli.py`) runs them."""

import os

from .encoding import (
    EmbeddingCache,
    GCLEmbedder,
    LookupEmbedder,
    RetrievalItem,
    encode_aligned_pairs,
    encode_items,
)
from .files import EvaluationDataError
from .matrix import (
    CROSS_MODAL_CELLS,
    DEFAULT_MATRIX_METRICS,
    ModalityMatrixEvaluator,
    aligned_hits_at_k,
    aligned_metrics,
    encode_pairs,
    format_matrix,
    modality_gap,
    modality_matrix,
)
from .metrics import metrics_from_positive_ranks, metrics_from_rankings, parse_metric, ranking_metrics
from .search import FaissIndex, exact_top_k, positive_ranks, search_top_k

# The `evaluate` metric module (a folder shipped with the package): `evaluate.load(GCL_RETRIEVAL_METRIC_PATH)`.
GCL_RETRIEVAL_METRIC_PATH = os.path.join(os.path.dirname(__file__), "metric_module", "gcl_retrieval")

__all__ = [
    "CROSS_MODAL_CELLS",
    "DEFAULT_MATRIX_METRICS",
    "EmbeddingCache",
    "EvaluationDataError",
    "FaissIndex",
    "GCLEmbedder",
    "GCL_RETRIEVAL_METRIC_PATH",
    "LookupEmbedder",
    "ModalityMatrixEvaluator",
    "RetrievalItem",
    "aligned_hits_at_k",
    "aligned_metrics",
    "encode_aligned_pairs",
    "encode_items",
    "encode_pairs",
    "exact_top_k",
    "format_matrix",
    "metrics_from_positive_ranks",
    "metrics_from_rankings",
    "modality_gap",
    "modality_matrix",
    "parse_metric",
    "positive_ranks",
    "ranking_metrics",
    "search_top_k",
]
