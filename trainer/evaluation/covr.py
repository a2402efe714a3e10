# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""CoVR (composed video retrieval, WebVid-CoVR, Ventura et al. 2024).

Reads the annotation CSV (`pth1` source video, `pth2` target video, `edit` modification text, `txt1`/`txt2`
captions; other columns ignored) and, per video, a folder `frames_dir/{pth}/` of frame images (extracted beforehand,
e.g. with ffmpeg; sorted by file name; `max_frames` evenly spaced ones are used).

As in CoVR's own evaluation (`remove_self_similarity=True` there), a query's source video is not a candidate for
that query when it is also one of the target videos.

Query = the model's fusion of the source video and the edit text: the fused pooling of the mean of the source
frames' unnormalised image projections with the text projection (one frame = the model's fused embedding). Candidates =
the distinct target videos of the file; a video's embedding is the mean of its frames' image embeddings. Each query
has one relevant candidate, so recall@k = hit@k ("R@k" in CoVR's tables).
"""

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .distributed import is_main_process
from .encoding import EmbeddingCache, GCLEmbedder, RetrievalItem, encode_items, evaluation_mode
from .files import EvaluationDataError, read_text
from .metrics import metrics_from_positive_ranks
from .search import TIE_DESCRIPTIONS, ahead_mask, check_ties

DEFAULT_COVR_METRICS = ("recall@1", "recall@5", "recall@10", "recall@50")
REQUIRED_COLUMNS = ("pth1", "pth2", "edit")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def video_frames(frames_dir: Path, video: str, max_frames: int | None, where: str) -> tuple[str, ...]:
    """The frame files of `video`, evenly subsampled to at most `max_frames`."""
    folder = frames_dir / video
    if not folder.is_dir():
        raise EvaluationDataError(f"{where}: no frame folder {folder} for video {video!r}.")
    frames = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not frames:
        raise EvaluationDataError(f"{where}: frame folder {folder} has no images ({', '.join(FRAME_SUFFIXES)}).")
    if max_frames is not None and len(frames) > max_frames:
        step = len(frames) / max_frames
        frames = [frames[int(step * i + step / 2)] for i in range(max_frames)]  # centres of equal segments
    return tuple(frames)


class CoVREvaluator:
    r"""
    Args:
        annotation_file (`str`): the CoVR CSV.
        frames_dir (`str`, *optional*): folder of per-video frame folders (default: `frames/` beside the CSV).
        max_frames (`int`, *optional*): frames per video (default: all).
        remove_self_similarity (`bool`, defaults to `True`): leave each query's own source video out of its ranking.
        ties (`str`): `"pessimistic"` (default: a target scoring the same as the right one ranks ahead of it) or
            `"optimistic"`. CoVR's own code takes a top-k sort, whose order among equal scores is unspecified.
        metrics, batch_size, cache_dir, show_progress, distributed: as in [`MBEIREvaluator`].
    """

    def __init__(self, annotation_file: str | os.PathLike, frames_dir: str | os.PathLike | None = None,
                 max_frames: int | None = None, metrics: Sequence[str] = DEFAULT_COVR_METRICS, batch_size: int = 32,
                 cache_dir: str | os.PathLike | None = None, show_progress: bool = True, name: str = "covr",
                 remove_self_similarity: bool = True, ties: str = "pessimistic", distributed: bool = False):
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                       or max_frames < 1):
            raise ValueError(f"max_frames must be a positive integer or None, got {max_frames!r}.")
        self.ties = check_ties(ties)
        self.distributed = distributed
        self.remove_self_similarity = remove_self_similarity
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise EvaluationDataError(f"{self.annotation_file}: no such annotation file.")
        self.frames_dir = Path(frames_dir) if frames_dir else self.annotation_file.parent / "frames"
        self.max_frames = max_frames
        self.metrics = tuple(metrics)
        self.batch_size, self.show_progress, self.name = batch_size, show_progress, name
        self.cache = EmbeddingCache(cache_dir) if cache_dir else None
        self.queries, self.targets, self.positives, self.source_targets = self._read()

    def _read(self) -> tuple[list[RetrievalItem], list[RetrievalItem], torch.Tensor, torch.Tensor]:
        queries, targets, target_index, positives, sources = [], [], {}, [], []
        reader = csv.DictReader(io.StringIO(read_text(self.annotation_file), newline=""))
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise EvaluationDataError(f"{self.annotation_file}: missing column(s) {missing}; has {reader.fieldnames}.")
        for row in reader:
            where = f"{self.annotation_file}:{reader.line_num}"  # the file's line (a quoted field may span lines)
            edit = (row["edit"] or "").strip()
            if not edit:
                raise EvaluationDataError(f"{where}: empty edit text.")
            source, target = (row["pth1"] or "").strip(), (row["pth2"] or "").strip()
            if not source or not target:
                raise EvaluationDataError(f"{where}: empty pth1 or pth2.")
            frames = video_frames(self.frames_dir, source, self.max_frames, where)
            queries.append(RetrievalItem(text=edit, image=frames, source=where))
            if target not in target_index:
                target_index[target] = len(targets)
                targets.append(RetrievalItem(image=video_frames(self.frames_dir, target, self.max_frames, where),
                                             source=where))
            positives.append(target_index[target])
            sources.append(source)
        if not queries:
            raise EvaluationDataError(f"{self.annotation_file}: no annotation rows.")
        # Index of each query's source video among the targets, or -1 (its own target is never removed).
        source_targets = [target_index.get(source, -1) for source in sources]
        source_targets = [-1 if index == positive else index for index, positive in zip(source_targets, positives)]
        return queries, targets, torch.tensor(positives), torch.tensor(source_targets)

    def __call__(self, model=None, processor=None, embedder=None) -> dict:
        """Returns `{"results": {"covr": {"recall@1": ...}}, "num_queries", "num_targets", "ties"}` (`None` on ranks
        other than 0 when distributed)."""
        embedder = embedder if embedder is not None else GCLEmbedder(model, processor)
        with evaluation_mode(getattr(embedder, "model", None)):
            queries = encode_items(embedder, self.queries, self.batch_size, "Encoding CoVR queries", self.show_progress,
                                   self.cache, distributed=self.distributed)
            targets = encode_items(embedder, self.targets, self.batch_size, "Encoding CoVR target videos",
                                   self.show_progress, self.cache, distributed=self.distributed)
        if self.distributed and not is_main_process():
            return None
        excluded = self.source_targets if self.remove_self_similarity else torch.full_like(self.source_targets, -1)
        ranks = positive_ranks_excluding(queries, targets, self.positives, excluded, ties=self.ties)
        return {"results": {"covr": metrics_from_positive_ranks(ranks, self.metrics)},
                "num_queries": len(self.queries), "num_targets": len(self.targets),
                "ties": TIE_DESCRIPTIONS[self.ties]}


def positive_ranks_excluding(queries: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor,
                             excluded: torch.Tensor, query_chunk_size: int = 1024,
                             ties: str = "pessimistic") -> torch.Tensor:
    r"""
    0-based rank of each query's positive (the other candidates scoring higher, or the same under
    `ties="pessimistic"`), with at most one candidate per query left out.

    Args:
        queries (`torch.Tensor` of shape `(num_queries, dim)`), candidates (`torch.Tensor` of shape `(num_targets, dim)`)
        positives (`torch.LongTensor` of shape `(num_queries,)`): each query's target.
        excluded (`torch.LongTensor` of shape `(num_queries,)`): a candidate to ignore per query, or -1 for none.

    Returns:
        `torch.LongTensor` of shape `(num_queries,)`. Memory: one `(query_chunk_size, num_targets)` block at a time.
    """
    ranks = []
    for start in range(0, queries.shape[0], query_chunk_size):
        scores = queries[start : start + query_chunk_size] @ candidates.T  # (q, num_targets)
        rows = torch.arange(scores.shape[0])
        positive_scores = scores[rows, positives[start : start + query_chunk_size]].unsqueeze(1)
        skip = excluded[start : start + query_chunk_size]
        has_skip = skip >= 0
        scores[rows[has_skip], skip[has_skip]] = float("-inf")
        ahead = ahead_mask(scores, positive_scores, ties)
        ahead[rows, positives[start : start + query_chunk_size]] = False  # the positive itself
        ranks.append(ahead.sum(dim=1))
    return torch.cat(ranks)
