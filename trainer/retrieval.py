# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""`GCLRetriever`: search a corpus that `gcl-embed` wrote, with text, image or image+text (fused) queries.

    retriever = GCLRetriever.load("corpus/")                  # loads the model recorded in the manifest
    retriever.search("a red apple", k=5)                       # text query
    retriever.search(PIL.Image.open("q.jpg"))                  # image query (a PIL image, a Path, bytes)
    retriever.search((Path("q.jpg"), "the same but blue"))     # fused query: (image, text)

A plain `str` is always a text; pass images as `pathlib.Path`, PIL images, bytes or `{"bytes", "path"}` dicts.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch

from .backbones import load_model_and_processor
from .embed import INDEX_NAME, MANIFEST_NAME, EmbedError, read_shard
from .evaluation.encoding import GCLEmbedder, RetrievalItem, _embed_batch, evaluation_mode
from .evaluation.search import exact_top_k


@dataclass(frozen=True)
class SearchResult:
    """One hit: the corpus id, the cosine similarity, and the row of the embedded data it came from."""

    id: str
    score: float
    row: int


def query_item(query) -> RetrievalItem:
    """A query as a `RetrievalItem`: `str` -> text; `(image, text)` or `{"image", "text"}` -> fused; a PIL image,
    `os.PathLike`, bytes or `{"bytes", "path"}` dict -> image."""
    if isinstance(query, RetrievalItem):
        return query
    if isinstance(query, str):
        if not query.strip():
            raise ValueError("GCLRetriever: an empty text query.")
        return RetrievalItem(text=query)
    if isinstance(query, tuple) and len(query) == 2:
        image, text = query
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"GCLRetriever: a fused query is (image, text); got a text of {text!r}.")
        return RetrievalItem(text=text, image=_image(image))
    if isinstance(query, dict) and ("text" in query or "image" in query) and "bytes" not in query:
        return RetrievalItem(text=query.get("text"), image=_image(query["image"]) if query.get("image") is not None
                             else None)
    return RetrievalItem(image=_image(query))


def _image(value):
    if isinstance(value, (PIL.Image.Image, bytes, bytearray, dict)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"GCLRetriever: cannot use a {type(value).__name__} as an image (give a PIL image, a Path, bytes "
                    "or a {'bytes', 'path'} dict; a str is a text query).")


class GCLRetriever:
    r"""
    Nearest-neighbour search over a `gcl-embed` folder.

    Args:
        embeddings (`torch.Tensor` of shape `(num_items, dim)`): L2-normalised corpus embeddings.
        ids (`list[str]`), rows (`list[int]`): per embedding, its id and its row in the embedded data.
        embedder ([`GCLEmbedder`], *optional*): encodes queries (needed by `search`, not by `search_embeddings`).
        index (*optional*): a FAISS index over `embeddings` (used instead of the exact blocked search).
        manifest (`dict`): the folder's manifest.
    """

    def __init__(self, embeddings: torch.Tensor, ids: list[str], rows: list[int], embedder=None, index=None,
                 manifest: dict | None = None):
        if embeddings.shape[0] != len(ids) or len(ids) != len(rows):
            raise ValueError(f"{embeddings.shape[0]} embeddings, {len(ids)} ids, {len(rows)} rows.")
        self.embeddings, self.ids, self.rows = embeddings, ids, rows
        self.embedder, self.index, self.manifest = embedder, index, manifest or {}

    @classmethod
    def load(cls, output_dir: str | os.PathLike, model=None, processor=None, device: str | None = None,
             use_faiss: bool = True, check_model: bool = True) -> "GCLRetriever":
        """Read the shards (and `index.faiss` when present and `use_faiss`) of a complete `gcl-embed` folder. Without
        `model`, loads the model the manifest records; a given model must be the one that embedded the corpus (same
        weights and preprocessing) unless `check_model=False`."""
        output_dir = Path(output_dir)
        manifest_path = output_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            raise EmbedError(f"{output_dir}: no {MANIFEST_NAME}; not a gcl-embed folder.")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise EmbedError(f"{manifest_path}: damaged manifest ({error}).") from None
        if not manifest.get("complete"):
            raise EmbedError(f"{output_dir}: the embedding run is not finished ({len(manifest.get('complete_shards', []))}"
                             f" of {manifest.get('num_shards')} shards); run the same gcl-embed command again.")
        parts, ids, rows = [], [], []
        for name in manifest["shards"]:
            embeddings, shard_ids, shard_rows, metadata = read_shard(output_dir / name)
            if metadata.get("job") != manifest["job"]:
                raise EmbedError(f"{output_dir / name}: belongs to another gcl-embed job than {manifest_path}.")
            if embeddings.shape[0]:
                parts.append(embeddings)
            ids += shard_ids
            rows += shard_rows
        embeddings = torch.cat(parts).float()
        if model is None:
            source = manifest["model"]["name_or_path"]
            if source is None:
                raise EmbedError(f"{manifest_path}: no model recorded; pass model= and processor=.")
            model, processor = load_model_and_processor(source, fusion=manifest["model"].get("fusion"))
        elif processor is None:
            raise ValueError("GCLRetriever.load: a model needs its processor (processor=).")
        if device is not None:
            model.to(device)
        embedder = GCLEmbedder(model.eval(), processor)
        if check_model and embedder.fingerprint != manifest["model"]["fingerprint"]:
            raise EmbedError(f"{output_dir}: the model differs from the one that embedded this corpus (other weights "
                             "or preprocessing); its queries would not match. Pass check_model=False to force it.")
        index = None
        if use_faiss and manifest.get("faiss_index") and (output_dir / INDEX_NAME).is_file():
            import faiss

            index = faiss.read_index(str(output_dir / INDEX_NAME))
            if index.ntotal != embeddings.shape[0]:
                raise EmbedError(f"{output_dir / INDEX_NAME}: {index.ntotal} vectors but {embeddings.shape[0]} "
                                 "embeddings; rebuild it (gcl-embed --overwrite --faiss_index ...).")
        return cls(embeddings, ids, rows, embedder, index, manifest)

    def encode(self, queries: list) -> torch.Tensor:
        """Queries (see `query_item`) -> `(len(queries), dim)` L2-normalised embeddings."""
        if self.embedder is None:
            raise ValueError("GCLRetriever has no model to encode queries; use search_embeddings.")
        items = [query_item(query) for query in queries]
        with evaluation_mode(self.embedder.model):
            return _embed_batch(self.embedder, items)

    def search_embeddings(self, query_embeddings: torch.Tensor, k: int = 10) -> list[list[SearchResult]]:
        """Top-k of `(num_queries, dim)` query embeddings, best first."""
        if self.index is not None:
            scores, indices = self.index.search(query_embeddings.float().contiguous().numpy(),
                                                min(k, self.embeddings.shape[0]))
            scores, indices = torch.from_numpy(scores), torch.from_numpy(indices)
        else:
            scores, indices = exact_top_k(query_embeddings.float(), self.embeddings, k)
        return [[SearchResult(self.ids[j], float(score), self.rows[j]) for score, j in zip(row_scores, row_indices)
                 if j >= 0] for row_scores, row_indices in zip(scores.tolist(), indices.tolist())]

    def search(self, query, k: int = 10) -> list[SearchResult]:
        """The `k` nearest corpus items to one text, image or `(image, text)` query, best first."""
        return self.search_embeddings(self.encode([query]), k)[0]

    def search_batch(self, queries: list, k: int = 10) -> list[list[SearchResult]]:
        """`search` for several queries at once (one forward pass)."""
        return self.search_embeddings(self.encode(list(queries)), k)
