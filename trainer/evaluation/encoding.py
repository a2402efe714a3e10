# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Batched encoding of retrieval items of any modality, with an on-disk embedding cache.

An item is text only (`t`), image only (`i`) or both (`it`, fused with the model's fusion). An item's image may also
be a tuple of frames (a video): its image embedding is the mean of the frames' embeddings, and its fused embedding
fuses the mean of the frames' unnormalised projections with the text (so a one-frame video is exactly the image).

The model side is an *embedder*: three methods returning unnormalised features plus a fingerprint. `GCLEmbedder`
wraps a `GCLModel` and its processor; tests use a stub whose vectors are chosen by hand.
"""

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch
from tqdm.auto import tqdm

from modeling_gcl.modeling_gcl import l2_normalize

from ..data import BadSampleError, load_rgb_image
from . import distributed as sharding

logger = logging.getLogger(__name__)

MODALITIES = ("i", "t", "it")


@dataclass(frozen=True)
class RetrievalItem:
    """A query or candidate. `image`: a path (resolved), bytes, a `datasets` image dict, a PIL image, or a tuple of
    frame paths; `source` names where it came from (`file:line`) for error messages."""

    text: str | None = None
    image: object = None
    source: str | None = None

    @property
    def modality(self) -> str:
        if self.image is not None and self.text is not None:
            return "it"
        if self.image is not None:
            return "i"
        if self.text is not None:
            return "t"
        raise ValueError(f"{self.source or 'an item'}: has neither text nor image.")

    @property
    def frames(self) -> tuple:
        """The item's images as a tuple (one entry for a still image)."""
        if self.image is None:
            return ()
        return tuple(self.image) if isinstance(self.image, (tuple, list)) else (self.image,)


class GCLEmbedder:
    r"""
    Unnormalised image, text and fused features of a [`GCLModel`] (or a peft model wrapping one).

    Args:
        model: the model; put in eval mode while encoding (see `evaluation_mode`).
        processor ([`GCLProcessor`]): its processor.
        device: where to run (default: the model's device).
        max_length (`int`, *optional*): truncate texts to this many tokens (default: the tokenizer's maximum).
    """

    def __init__(self, model, processor, device: torch.device | str | None = None, max_length: int | None = None):
        self.model = model
        self.processor = processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.max_length = max_length or getattr(processor, "max_text_length", None)
        self._fingerprint = None

    def image_features(self, images: Sequence) -> torch.Tensor:
        """Images (paths, bytes, PIL, ...) -> `(batch, dim)`. A missing or unreadable file raises, naming it."""
        pixels = self.processor.image_processor([load_rgb_image(image) for image in images], return_tensors="pt")
        return self.model.get_image_features(pixels["pixel_values"].to(self.device), normalize=False).float()

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> `(batch, dim)`."""
        tokens = self.processor.tokenizer(
            list(texts), padding=True, truncation=self.max_length is not None, max_length=self.max_length,
            return_tensors="pt",
        )
        return self.model.get_text_features(
            tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device), normalize=False
        ).float()

    def fuse(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """The model's fused pooling of `(batch, dim)` image and text features (unnormalised)."""
        return self.model.fusion(image_features, text_features).float()

    @property
    def token_fusion(self) -> bool:
        """True for models that fuse inside the encoder (VISTA: image tokens in the text encoder), where a fused item
        needs its own forward pass (`fused_features`) instead of `fuse` on two vectors."""
        return getattr(getattr(self.model, "config", None), "fusion", None) == "tokens"

    def fused_features(self, images: Sequence, texts: Sequence[str]) -> torch.Tensor:
        """Pairs `(images[j], texts[j])` -> `(batch, dim)` fused embeddings in one forward pass (`get_fused_features`)."""
        pixels = self.processor.image_processor([load_rgb_image(image) for image in images], return_tensors="pt")
        tokens = self.processor.tokenizer(
            list(texts), padding=True, truncation=self.max_length is not None, max_length=self.max_length,
            return_tensors="pt",
        )
        return self.model.get_fused_features(
            pixels["pixel_values"].to(self.device), tokens["input_ids"].to(self.device),
            tokens["attention_mask"].to(self.device),
        ).float()

    @property
    def fingerprint(self) -> str:
        """Changes whenever the weights, the fusion or the preprocessing change (hashes every parameter)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            config = getattr(self.model, "config", None)
            digest.update(config.to_json_string().encode() if hasattr(config, "to_json_string") else b"")
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            digest.update(json.dumps(self.processor.image_processor.to_dict(), sort_keys=True, default=str).encode())
            digest.update(f"{type(self.processor.tokenizer).__name__}:{len(self.processor.tokenizer)}".encode())
            digest.update(f"max_length={self.max_length}".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


class LookupEmbedder:
    r"""
    An embedder of precomputed vectors: features are looked up by image path and by text, and fused by `fuse_fn`
    (default: the sum, as CLIP-SF). Evaluates embeddings computed elsewhere, and gives tests rankings known by hand.

    Args:
        image_vectors (`dict[str, torch.Tensor]`): image path (relative to `image_root` when given) -> `(dim,)`.
        text_vectors (`dict[str, torch.Tensor]`): text -> `(dim,)`.
        image_root (`str`, *optional*): paths are looked up relative to it.
        fuse_fn (*optional*): `(image_features (batch, dim), text_features (batch, dim)) -> (batch, dim)`.

    An image or text missing from the tables raises `KeyError` naming it: nothing is embedded by default.
    """

    def __init__(self, image_vectors: dict, text_vectors: dict, image_root: str | os.PathLike | None = None,
                 fuse_fn=None):
        self.image_vectors = {key: torch.as_tensor(value, dtype=torch.float32) for key, value in image_vectors.items()}
        self.text_vectors = {key: torch.as_tensor(value, dtype=torch.float32) for key, value in text_vectors.items()}
        self.image_root = image_root
        self.fuse_fn = fuse_fn
        self.model = None
        self.calls = {"image": 0, "text": 0}  # how many items were embedded (tests check the cache with it)

    def _image_key(self, image) -> str:
        path = str(image)
        return os.path.relpath(path, self.image_root) if self.image_root is not None else path

    def image_features(self, images: Sequence) -> torch.Tensor:
        self.calls["image"] += len(images)
        keys = [self._image_key(image) for image in images]
        missing = [key for key in keys if key not in self.image_vectors]
        if missing:
            raise KeyError(f"LookupEmbedder: no vector for image(s) {missing}.")
        return torch.stack([self.image_vectors[key] for key in keys])

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls["text"] += len(texts)
        missing = [text for text in texts if text not in self.text_vectors]
        if missing:
            raise KeyError(f"LookupEmbedder: no vector for text(s) {missing}.")
        return torch.stack([self.text_vectors[text] for text in texts])

    def fuse(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.fuse_fn(image_features, text_features) if self.fuse_fn else image_features + text_features

    @property
    def fingerprint(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for table in (self.image_vectors, self.text_vectors):
            for key in sorted(table):
                digest.update(key.encode())
                digest.update(table[key].numpy().tobytes())
        return digest.hexdigest()


@contextmanager
def evaluation_mode(model):
    """Eval mode and no autograd while encoding; restores the training mode after."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if hasattr(model, "train"):
            model.train(was_training)


def _image_fingerprint(image) -> str:
    """A cheap identity of an image reference: path + size + mtime, or a hash of its bytes."""
    if isinstance(image, (tuple, list)):
        return "[" + ",".join(_image_fingerprint(frame) for frame in image) + "]"
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            return hashlib.blake2b(image["bytes"], digest_size=16).hexdigest()
        image = image.get("path")
    if isinstance(image, (bytes, bytearray)):
        return hashlib.blake2b(image, digest_size=16).hexdigest()
    if isinstance(image, PIL.Image.Image):
        return hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    path = str(image)
    try:
        stat = os.stat(path)
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        return path


def items_fingerprint(items: Sequence[RetrievalItem]) -> str:
    """A hash of the items' texts and images (by path, size and modification time)."""
    digest = hashlib.blake2b(digest_size=16)
    for item in items:
        digest.update(json.dumps([item.text, _image_fingerprint(item.image) if item.image is not None else None]).encode())
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings on disk, one `.pt` file per (model fingerprint, data fingerprint, kind). Files are written to a
    temporary name and moved into place with `os.replace`, so a crash never leaves a half-written cache entry."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, model_fingerprint: str, data_fingerprint: str, kind: str) -> Path:
        key = hashlib.blake2b(f"{model_fingerprint}|{data_fingerprint}|{kind}".encode(), digest_size=20).hexdigest()
        return self.directory / f"{kind}-{key}.pt"

    def load(self, path: Path, expected_shape: tuple[int | None, ...] | None = None) -> torch.Tensor | None:
        """The cached tensor, or `None` when there is none, or when the entry is damaged (truncated, not a tensor, or
        not of `expected_shape`, where `None` matches any size): it is then deleted, with a warning, and recomputed."""
        if not path.is_file():
            return None
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            problem = None
            if not isinstance(cached, torch.Tensor) or not cached.is_floating_point():
                problem = f"holds a {type(cached).__name__}, not a float tensor"
            elif expected_shape is not None and (
                cached.dim() != len(expected_shape)
                or any(want is not None and have != want for have, want in zip(cached.shape, expected_shape))
            ):
                problem = f"has shape {tuple(cached.shape)}, expected {expected_shape}"
            elif not bool(torch.isfinite(cached).all()):
                problem = "holds NaN or infinite values"
        except Exception as error:  # a truncated zip, bytes that are no torch file, a pickle that weights_only refuses
            problem = f"cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        if problem is not None:
            logger.warning("Embedding cache entry %s %s: recomputing it.", path, problem)
            try:
                path.unlink()
            except OSError:
                pass
            return None
        logger.info("Embedding cache hit: %s", path)
        return cached

    def save(self, path: Path, embeddings: torch.Tensor) -> None:
        from ..atomic import atomic_write

        atomic_write(path, lambda temporary: torch.save(embeddings.contiguous(), temporary))


def _embed_batch(embedder, batch: Sequence[RetrievalItem]) -> torch.Tensor:
    """Embed a batch of items of mixed modalities: `(len(batch), dim)`, L2-normalised, in the input order."""
    with_image = [row for row, item in enumerate(batch) if item.image is not None]
    with_text = [row for row, item in enumerate(batch) if item.text is not None]
    image_features = {}
    if with_image:
        frames = [frame for row in with_image for frame in batch[row].frames]
        per_frame = embedder.image_features(frames)  # (total_frames, dim)
        offset = 0
        for row in with_image:
            count = len(batch[row].frames)
            block = per_frame[offset : offset + count]
            offset += count
            # The image embedding of a video is the mean of its frames' embeddings; the fused one pools the mean of
            # the unnormalised frame projections, so one frame gives exactly the model's embeddings.
            image_features[row] = (l2_normalize(block).mean(dim=0), block.mean(dim=0))
    text_features = dict(zip(with_text, embedder.text_features([batch[row].text for row in with_text]))) if with_text else {}
    outputs = [None] * len(batch)
    fused_rows = [row for row in with_image if row in text_features]
    if fused_rows and getattr(embedder, "token_fusion", False):
        # One fused pass per (frame, text); a fused video is the mean of its frames' fused embeddings.
        pairs = [(frame, batch[row].text) for row in fused_rows for frame in batch[row].frames]
        per_pair = l2_normalize(embedder.fused_features([f for f, _ in pairs], [t for _, t in pairs]))
        counts = [len(batch[row].frames) for row in fused_rows]
        outputs_fused = {row: block.mean(dim=0) for row, block in zip(fused_rows, per_pair.split(counts))}
    elif fused_rows:
        fused = embedder.fuse(
            torch.stack([image_features[row][1] for row in fused_rows]),
            torch.stack([text_features[row] for row in fused_rows]),
        )
        outputs_fused = dict(zip(fused_rows, fused))
    for row, item in enumerate(batch):
        modality = item.modality
        if modality == "it":
            outputs[row] = outputs_fused[row]
        elif modality == "i":
            outputs[row] = image_features[row][0]
        else:
            outputs[row] = text_features[row]
    return l2_normalize(torch.stack(outputs).float().cpu())


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return batch_size


def _cached(cache: EmbeddingCache | None, path, expected_shape, distributed: bool) -> torch.Tensor | None:
    """A cache hit only if every process has one (so all of them skip, or all join the encoding's collectives)."""
    cached = cache.load(path, expected_shape) if cache is not None else None
    if distributed and not sharding.agree(cached is not None):
        return None
    return cached


def _save_cache(cache: EmbeddingCache | None, path, embeddings: torch.Tensor) -> None:
    if cache is not None and sharding.is_main_process():
        cache.save(path, embeddings)


def encode_items(
    embedder,
    items: Sequence[RetrievalItem],
    batch_size: int = 64,
    description: str = "Encoding",
    show_progress: bool = True,
    cache: EmbeddingCache | None = None,
    distributed: bool = False,
) -> torch.Tensor:
    r"""
    Embed `items` of any modality in batches.

    Args:
        embedder: a `GCLEmbedder` (or anything with `image_features`, `text_features`, `fuse` and `fingerprint`).
        items (`Sequence[RetrievalItem]`): what to embed.
        batch_size (`int`): items per forward pass.
        cache ([`EmbeddingCache`], *optional*): reuse embeddings of the same model and data from disk (a damaged
            entry is recomputed).
        distributed (`bool`): split the batches across the processes of the default `torch.distributed` group
            (every process must call this with the same items) and all-gather the result (see `distributed.py`).

    Returns:
        `torch.Tensor` of shape `(len(items), dim)`, L2-normalised float32 on the CPU (on every process).
    """
    if not items:
        raise ValueError(f"{description}: nothing to encode (empty list of items).")
    _check_batch_size(batch_size)
    cache_path = cache.path(embedder.fingerprint, items_fingerprint(items), "items") if cache is not None else None
    cached = _cached(cache, cache_path, (len(items), None), distributed)
    if cached is not None:
        return cached
    starts = sharding.my_batches(len(items), batch_size) if distributed else range(0, len(items), batch_size)
    show_progress = show_progress and sharding.is_main_process()
    chunks, failure = [], None
    try:
        for start in tqdm(starts, desc=description, disable=not show_progress, leave=False):
            batch = items[start : start + batch_size]
            try:
                chunks.append(_embed_batch(embedder, batch))
            except BadSampleError as error:  # name the data rows as well as the image file
                sources = [item.source for item in batch if item.source]
                where = f" (items {sources[0]} .. {sources[-1]})" if sources else ""
                raise BadSampleError(f"{description}{where}: {error}") from None
    except Exception as error:
        failure = error
    if distributed:
        sharding.raise_if_any_failed(failure)
        embeddings = sharding.gather_batches(torch.cat(chunks) if chunks else None, len(items), batch_size)
    elif failure is not None:
        raise failure
    else:
        embeddings = torch.cat(chunks)
    _save_cache(cache, cache_path, embeddings)
    return embeddings


def _pinpoint_bad_image(images: Sequence, start: int, rows: Sequence | None, error: BadSampleError) -> str:
    """The message of the first image of a failed batch that does not load, naming its row (the data's own row
    number when `rows` gives it, else the position)."""
    for offset, image in enumerate(images):
        row = rows[start + offset] if rows is not None else start + offset
        try:
            load_rgb_image(image, row=row)
        except BadSampleError as named:
            return str(named)
    return str(error)


def encode_aligned_pairs(
    embedder,
    images: Sequence,
    captions: Sequence[str],
    batch_size: int = 64,
    show_progress: bool = True,
    cache: EmbeddingCache | None = None,
    distributed: bool = False,
    rows: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Embed image–caption pairs as `i`, `t` and `it` with one image pass and one text pass per batch; returns
    `{"i", "t", "it"}`, each `(num_pairs, dim)` L2-normalised on the CPU. `distributed` splits the batches across
    processes as in `encode_items`; `rows` (the data's row numbers) name a bad image's row in the error."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions.")
    if not len(images):
        raise ValueError("encode_aligned_pairs: no pairs to encode.")
    _check_batch_size(batch_size)
    cache_path = None
    if cache is not None:
        items = [RetrievalItem(text=caption, image=image) for image, caption in zip(images, captions)]
        cache_path = cache.path(embedder.fingerprint, items_fingerprint(items), "pairs")
    cached = _cached(cache, cache_path, (len(MODALITIES), len(images), None), distributed)
    if cached is not None:
        return dict(zip(MODALITIES, cached.unbind(0)))
    starts = sharding.my_batches(len(images), batch_size) if distributed else range(0, len(images), batch_size)
    show_progress = show_progress and sharding.is_main_process()
    chunks, failure = {modality: [] for modality in MODALITIES}, None
    try:
        for start in tqdm(starts, desc="Encoding pairs", disable=not show_progress, leave=False):
            batch_images = images[start : start + batch_size]
            try:
                image_features = embedder.image_features(batch_images)
            except BadSampleError as error:
                raise BadSampleError(_pinpoint_bad_image(batch_images, start, rows, error)) from None
            text_features = embedder.text_features(captions[start : start + batch_size])
            chunks["i"].append(l2_normalize(image_features).cpu())
            chunks["t"].append(l2_normalize(text_features).cpu())
            if getattr(embedder, "token_fusion", False):  # VISTA: a third pass, image tokens inside the text encoder
                fused = embedder.fused_features(batch_images, captions[start : start + batch_size])
            else:
                fused = embedder.fuse(image_features, text_features)
            chunks["it"].append(l2_normalize(fused).cpu())
    except Exception as error:
        failure = error
    if distributed:
        sharding.raise_if_any_failed(failure)
        local = torch.stack([torch.cat(chunks[m]).float() for m in MODALITIES]) if chunks["i"] else None
        stacked = sharding.gather_batches(local, len(images), batch_size, item_dim=1)
    elif failure is not None:
        raise failure
    else:
        stacked = torch.stack([torch.cat(chunks[m]).float() for m in MODALITIES])
    _save_cache(cache, cache_path, stacked)
    return dict(zip(MODALITIES, stacked.unbind(0)))
