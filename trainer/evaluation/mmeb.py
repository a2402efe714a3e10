# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""MMEB retrieval (VLM2Vec, Jiang et al. 2024): each query ranks its own candidate list, the positive first.

Reads the released layout of `TIGER-Lab/MMEB-eval`: one folder per subset holding parquet shards (or a
`{subset}.jsonl`), rows with `qry_text`, `qry_img_path` (may be empty), `tgt_text` and `tgt_img_path` (two lists of
the same length, ~1,000 entries, the positive first), and optionally `instruction`. Image paths are relative to
`image_root` (default: the data folder). VLM2Vec's image placeholders (`<|image_1|>`) are removed from the texts, since
a dual encoder takes the image separately. Metric: hit@1 (MMEB's "Precision@1"), plus hit@5 and mrr@10.
"""

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from .distributed import is_main_process
from .encoding import EmbeddingCache, GCLEmbedder, RetrievalItem, encode_items, evaluation_mode
from .files import EvaluationDataError, read_jsonl, resolve_image
from .metrics import metrics_from_positive_ranks
from .search import TIE_DESCRIPTIONS, TIES, check_ties, listwise_positive_ranks

DEFAULT_MMEB_METRICS = ("hit@1", "hit@5", "mrr@10")
_IMAGE_TOKEN = re.compile(r"<\|image_\d+\|>|<image>")


def clean_text(value, where: str | None = None, field: str = "text") -> str | None:
    """Drop image placeholder tokens and surrounding space; empty -> `None`. A value that is not a string (a number,
    a list, ...) raises, naming `where` and `field`, instead of being embedded as its Python repr."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise EvaluationDataError(f"{where or 'MMEB row'}: {field} is a {type(value).__name__}, expected a string or null.")
    text = _IMAGE_TOKEN.sub(" ", value)
    text = " ".join(text.split())
    return text or None


def subset_files(root: Path, subset: str) -> list[Path]:
    """The parquet shards of `root/subset/`, or `root/subset.jsonl`, or `root/subset/*.jsonl`."""
    folder = root / subset
    files = sorted(folder.glob("*.parquet")) + sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files and (root / f"{subset}.jsonl").is_file():
        files = [root / f"{subset}.jsonl"]
    if not files:
        raise EvaluationDataError(f"{root}: no data for subset {subset!r} (expected {subset}/*.parquet or {subset}.jsonl).")
    return files


def discover_subsets(root: Path) -> list[str]:
    """Subset names: folders holding parquet/jsonl files, and top-level `*.jsonl` files."""
    names = {p.name for p in root.iterdir() if p.is_dir() and (any(p.glob("*.parquet")) or any(p.glob("*.jsonl")))}
    names |= {p.stem for p in root.glob("*.jsonl")}
    if not names:
        raise EvaluationDataError(f"{root}: no MMEB subsets (folders of parquet files or *.jsonl files).")
    return sorted(names)


def _read_rows(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as error:  # a truncated or foreign file: pyarrow's own error names neither file nor cause
            raise EvaluationDataError(f"{path}: not a readable parquet file ({type(error).__name__}: {error}).") from None
        for row_number, row in enumerate(rows, start=1):
            yield f"{path}:row {row_number}", row
    else:
        for line, row in read_jsonl(path):
            yield f"{path}:{line}", row


class MMEBSubset:
    """One subset: query items, distinct candidate items, and per query the indices of its candidate list."""

    def __init__(self, name: str, files: Sequence[Path], image_root: Path, instruction: str | None, check_images: bool):
        self.name = name
        self.queries: list[RetrievalItem] = []
        self.candidates: list[RetrievalItem] = []
        lists, candidate_index = [], {}
        for path in files:
            for where, row in _read_rows(path):
                self.queries.append(self._query(row, where, image_root, instruction, check_images))
                texts, images = row.get("tgt_text"), row.get("tgt_img_path")
                if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images) or not texts:
                    raise EvaluationDataError(f"{where}: tgt_text and tgt_img_path must be non-empty lists of the same "
                                              "length (the candidate list, positive first).")
                entries = []
                for position, (text, image) in enumerate(zip(texts, images)):
                    item = RetrievalItem(text=clean_text(text, f"{where} candidate {position}", "tgt_text"),
                                         image=resolve_image(image, image_root, f"{where} candidate {position}", check_images))
                    if item.text is None and item.image is None:
                        raise EvaluationDataError(f"{where}: candidate {position} has neither text nor image.")
                    key = (item.text, item.image)
                    if key not in candidate_index:
                        candidate_index[key] = len(self.candidates)
                        self.candidates.append(RetrievalItem(item.text, item.image, f"{where} candidate {position}"))
                    entries.append(candidate_index[key])
                lists.append(entries)
        if not self.queries:
            raise EvaluationDataError(f"{files[0]}: subset {name!r} has no rows.")
        width = max(len(entries) for entries in lists)
        # Short lists are padded (with their own positive); `list_lengths` marks the padding, which never ranks.
        self.candidate_lists = torch.tensor([entries + [entries[0]] * (width - len(entries)) for entries in lists])
        self.list_lengths = torch.tensor([len(entries) for entries in lists])

    @staticmethod
    def _query(row: dict, where: str, image_root: Path, instruction: str | None, check_images: bool) -> RetrievalItem:
        if "qry_text" not in row and "qry_img_path" not in row:
            raise EvaluationDataError(f"{where}: missing qry_text / qry_img_path; the row has {sorted(row)}.")
        text = clean_text(row.get("qry_text"), where, "qry_text")
        prefix = instruction if instruction is not None else clean_text(row.get("instruction"), where, "instruction")
        if prefix:
            text = f"{prefix} {text}" if text else prefix
        image = resolve_image(row.get("qry_img_path"), image_root, f"{where} query", check_images)
        if text is None and image is None:
            raise EvaluationDataError(f"{where}: the query has neither text nor image.")
        return RetrievalItem(text=text, image=image, source=where)

    @property
    def modalities(self) -> str:
        """e.g. `"t→i"`, or `"t→i,it"` when the candidates mix modalities."""
        query = sorted({item.modality for item in self.queries})
        candidate = sorted({item.modality for item in self.candidates})
        return f"{','.join(query)}→{','.join(candidate)}"


class MMEBEvaluator:
    r"""
    MMEB retrieval subsets.

    Args:
        root (`str`): folder of subsets (`{subset}/*.parquet` or `{subset}.jsonl`).
        subsets (`Sequence[str]`, *optional*): default: every subset found.
        image_root (`str`, *optional*): what image paths are relative to (default `root`).
        instruction (`str`, *optional*): a fixed instruction prepended to every query text (default: the row's own
            `instruction` field if it has one, else none).
        ties (`str`): `"first_listed"` (default, MMEB's official scorer: `argmax` over the query's candidate list,
            whose first entry is the positive, so an equal score does not rank above it), or `"pessimistic"`.
        metrics, batch_size, cache_dir, show_progress, check_images, distributed: as in [`MBEIREvaluator`].
    """

    def __init__(self, root: str | os.PathLike, subsets: Sequence[str] | None = None,
                 image_root: str | os.PathLike | None = None, instruction: str | None = None,
                 metrics: Sequence[str] = DEFAULT_MMEB_METRICS, batch_size: int = 64,
                 cache_dir: str | os.PathLike | None = None, show_progress: bool = True, check_images: bool = True,
                 name: str = "mmeb", ties: str = "first_listed", distributed: bool = False):
        self.ties = check_ties(ties, TIES)
        self.distributed = distributed
        self.root = Path(root)
        if not self.root.is_dir():
            raise EvaluationDataError(f"{self.root}: no such folder.")
        image_root = Path(image_root) if image_root else self.root
        names = list(subsets) if subsets else discover_subsets(self.root)
        self.subsets = [MMEBSubset(n, subset_files(self.root, n), image_root, instruction, check_images) for n in names]
        self.metrics = tuple(metrics)
        self.batch_size, self.show_progress, self.name = batch_size, show_progress, name
        self.cache = EmbeddingCache(cache_dir) if cache_dir else None

    def __call__(self, model=None, processor=None, embedder=None) -> dict:
        """Returns `{"results": {subset: {metric: value}}, "summary": [...], "average": {metric: value}, "ties"}`
        (`None` on ranks other than 0 when distributed)."""
        embedder = embedder if embedder is not None else GCLEmbedder(model, processor)
        results, summary = {}, []
        with evaluation_mode(getattr(embedder, "model", None)):
            for subset in self.subsets:
                queries = encode_items(embedder, subset.queries, self.batch_size, f"Encoding {subset.name} queries",
                                       self.show_progress, self.cache, distributed=self.distributed)
                candidates = encode_items(embedder, subset.candidates, self.batch_size,
                                          f"Encoding {subset.name} candidates", self.show_progress, self.cache,
                                          distributed=self.distributed)
                if self.distributed and not is_main_process():
                    continue
                ranks = listwise_positive_ranks(queries, candidates, subset.candidate_lists, ties=self.ties,
                                                list_lengths=subset.list_lengths)
                results[subset.name] = metrics_from_positive_ranks(ranks, self.metrics)
                summary.append({"subset": subset.name, "modalities": subset.modalities,
                                "num_queries": len(subset.queries), "list_length": subset.candidate_lists.shape[1],
                                **results[subset.name]})
        if self.distributed and not is_main_process():
            return None
        average = {metric: sum(r[metric] for r in results.values()) / len(results) for metric in self.metrics}
        return {"results": results, "summary": summary, "average": average, "ties": TIE_DESCRIPTIONS[self.ties]}
