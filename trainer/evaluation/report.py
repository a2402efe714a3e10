# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Evaluation outputs: `metrics.json` (atomic write), markdown tables, and PNG plots (matplotlib, the `plots` extra;
skipped with a message when it is missing)."""

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import atomic_write, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

MODALITY_LABELS = {"i": "image", "t": "text", "it": "image+text"}
ARROW = "→"
PLOTS_MISSING = "matplotlib is not installed (pip install matplotlib: the `plots` extra): skipping the PNG plots."


def write_json(path: str | os.PathLike, data) -> Path:
    """Write JSON atomically (see `trainer.atomic.atomic_write`)."""
    return atomic_write_json(path, data, allow_nan=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically (see `trainer.atomic.atomic_write`)."""
    return atomic_write_text(path, text)


def format_number(value, digits: int = 1) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], digits: int = 1) -> str:
    """A GitHub markdown table; floats with `digits` decimals."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(format_number(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cell_label(cell: str) -> str:
    """`"t2it"` -> `"t → it"`."""
    query, candidate = cell.split("2")
    return f"{query} {ARROW} {candidate}"


def matrix_markdown(results: dict[str, dict[str, float]]) -> str:
    metrics = list(next(iter(results.values())))
    return markdown_table(["cell", *metrics], [[cell_label(cell), *values.values()] for cell, values in results.items()])


def gap_markdown(gap: dict[str, dict[str, float]]) -> str:
    pairs = list(next(iter(gap.values())))
    rows = [[pair.replace("-", " / "), *(gap[kind][pair] for kind in gap)] for pair in pairs]
    return markdown_table(["modalities", *gap], rows, digits=3)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(PLOTS_MISSING)
        return None
    return plt


def plot_modality_heatmap(results: dict[str, dict[str, float]], metric: str, path: str | os.PathLike,
                          title: str = "") -> Path | None:
    """A 3×3 heatmap (rows: query modality, columns: candidate modality) of `metric`; the diagonal (self-retrieval)
    is blank. Returns the path, or `None` without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    order = ("i", "t", "it")
    grid = torch.full((3, 3), float("nan"))
    for cell, values in results.items():
        query, candidate = cell.split("2")
        grid[order.index(query), order.index(candidate)] = values[metric]
    figure, axes = plt.subplots(figsize=(4.6, 3.9))
    image = axes.imshow(grid.numpy(), vmin=0, vmax=100, cmap="viridis")
    for row in range(3):
        for column in range(3):
            value = grid[row, column].item()
            text = "—" if math.isnan(value) else f"{value:.1f}"
            axes.text(column, row, text, ha="center", va="center", color="white" if value < 60 else "black")
    labels = [MODALITY_LABELS[m] for m in order]
    axes.set_xticks(range(3), labels)
    axes.set_yticks(range(3), labels)
    axes.set_xlabel("candidate")
    axes.set_ylabel("query")
    axes.set_title(title or f"{metric} (%)")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png", bbox_inches="tight"))
    plt.close(figure)
    return Path(path)


def plot_embedding_pca(embeds: dict[str, torch.Tensor], path: str | os.PathLike, title: str = "",
                       max_points: int = 500) -> Path | None:
    """2-D PCA of the `i`, `t` and `it` embeddings together, one colour per modality, centroids marked: the modality
    gap at a glance. Returns the path, or `None` without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    count = min(max_points, embeds["i"].shape[0])
    stacked = torch.cat([embeds[m][:count] for m in ("i", "t", "it")]).double()
    centred = stacked - stacked.mean(dim=0)
    _, singular_values, basis = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ basis[:2].T  # (3 × count, 2)
    explained = (singular_values[:2] ** 2 / (singular_values**2).sum()).tolist()
    figure, axes = plt.subplots(figsize=(5, 4.4))
    for index, (modality, colour) in enumerate(zip(("i", "t", "it"), ("tab:blue", "tab:orange", "tab:green"))):
        points = projected[index * count : (index + 1) * count]
        axes.scatter(points[:, 0], points[:, 1], s=8, alpha=0.5, color=colour, label=MODALITY_LABELS[modality])
        centre = points.mean(dim=0)
        axes.scatter([centre[0]], [centre[1]], s=160, marker="X", color=colour, edgecolor="black")
    axes.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% var.)")
    axes.set_ylabel(f"PC2 ({100 * explained[1]:.0f}% var.)")
    axes.set_title(title or "Embeddings by modality (PCA; X = centroid)")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png", bbox_inches="tight"))
    plt.close(figure)
    return Path(path)


def plot_bars(rows: dict[str, float], path: str | os.PathLike, title: str, ylabel: str) -> Path | None:
    """A bar chart of one number per row (e.g. per-task hit@5)."""
    plt = _pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(figsize=(max(4.0, 0.55 * len(rows) + 1.5), 3.6))
    axes.bar(range(len(rows)), list(rows.values()), color="tab:blue")
    axes.set_xticks(range(len(rows)), list(rows), rotation=45, ha="right", fontsize=8)
    axes.set_ylim(0, 100)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png", bbox_inches="tight"))
    plt.close(figure)
    return Path(path)


def comparison_markdown(runs: dict[str, dict], metric: str = "hit@1") -> str:
    """Rows = models, columns = the six cross-modal cells and their average, for `metric`; then the modality gap
    (centroid distance and matched cosine of i/t/it). `runs` maps a row name to a modality-matrix `metrics.json`."""
    cells = list(next(iter(runs.values()))["results"])
    rows = []
    for name, output in runs.items():
        values = [output["results"][cell][metric] for cell in cells]
        gap = output["modality_gap"]
        rows.append([name, *values, sum(values) / len(values), *gap["centroid_distance"].values(),
                     *gap["matched_cosine"].values()])
    pairs = list(next(iter(runs.values()))["modality_gap"]["centroid_distance"])
    header = ["model", *(cell_label(cell) for cell in cells), "avg",
              *(f"dist {pair}" for pair in pairs), *(f"cos {pair}" for pair in pairs)]
    lines = markdown_table(header, rows).splitlines()
    # Retrieval numbers with one decimal, gap numbers with three.
    body = []
    for row in rows:
        retrieval = [format_number(value, 1) for value in row[1 : len(cells) + 2]]
        gap_values = [format_number(value, 3) for value in row[len(cells) + 2 :]]
        body.append("| " + " | ".join([row[0], *retrieval, *gap_values]) + " |")
    return "\n".join(lines[:2] + body)
