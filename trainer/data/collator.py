# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Turn image–caption rows into GCL model inputs, with errors that name the bad row and file."""

import io
import os
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch

from .rows import ROW_INDEX_KEY

# A batch key holding the messages of the samples skipped in it (with `skip_bad_samples=True`). It travels with the
# batch, so counts survive dataloader worker processes; `GCLTrainer.compute_loss` pops it.
SKIPPED_SAMPLES_KEY = "gcl_skipped_samples"


class BadSampleError(ValueError):
    """A training sample that cannot be used; the message names its row and file."""


def _describe(row, source) -> str:
    where = f"row {row}" if row is not None else "a row"
    return f"{where} ({source})" if source else where


def _open_image(value, row, image_root: str | None) -> tuple[PIL.Image.Image, str | None]:
    """Open (lazily) an image given as a PIL image, a path, bytes or a `datasets` `{"bytes", "path"}` dict."""
    if isinstance(value, PIL.Image.Image):
        return value, getattr(value, "filename", None) or None
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return PIL.Image.open(io.BytesIO(value["bytes"])), value.get("path") or "bytes"
        if not value.get("path"):
            raise BadSampleError(f"{_describe(row, None)}: image has neither bytes nor path.")
        value = value["path"]
    if isinstance(value, (bytes, bytearray)):
        return PIL.Image.open(io.BytesIO(value)), "bytes"
    if isinstance(value, (str, os.PathLike)):
        path = str(value)
        if image_root and not os.path.isabs(path):
            path = os.path.join(image_root, path)
        return PIL.Image.open(path), path
    raise BadSampleError(f"{_describe(row, None)}: image is a {type(value).__name__}, expected an image.")


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL mode to 8-bit RGB: transparency is composited on white (clip art is mostly transparent, and a
    plain `convert("RGB")` would turn its background black), 16/32-bit grey is rescaled rather than clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return PIL.Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_rgb_image(value, row=None, image_root: str | None = None, max_pixels: int | None = None) -> PIL.Image.Image:
    """Decode an image given as a PIL image, a path, raw bytes or a `datasets` `{"bytes", "path"}` dict, and convert
    it to RGB. Raises `BadSampleError` naming the row and the file.

    `max_pixels` caps width × height, checked from the header before decoding, so a decompression bomb (a small file
    that decodes to gigabytes) is refused cheaply; `None` keeps Pillow's own limit (`PIL.Image.MAX_IMAGE_PIXELS`).
    """
    source = _source_of(value)
    try:
        image, source = _open_image(value, row, image_root)
        if max_pixels is None:  # Pillow itself only warns up to twice its limit
            max_pixels = PIL.Image.MAX_IMAGE_PIXELS
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise BadSampleError(
                f"{_describe(row, source)}: image is {image.width}×{image.height} = {image.width * image.height:,} "
                f"pixels, over the cap of {max_pixels:,} (max_image_pixels); a decompression bomb or a huge scan."
            )
        image.load()  # decode now: a truncated or corrupt file fails here, not deep inside the processor
        if image.width < 1 or image.height < 1:
            raise BadSampleError(f"{_describe(row, source)}: image has no pixels ({image.width}×{image.height}).")
        return to_rgb(image)
    except BadSampleError:
        raise
    except FileNotFoundError:
        raise BadSampleError(f"{_describe(row, source)}: image file not found.") from None
    except IsADirectoryError:
        raise BadSampleError(f"{_describe(row, source)}: image path is a folder.") from None
    except PIL.Image.DecompressionBombError as error:
        raise BadSampleError(f"{_describe(row, source)}: refused as a decompression bomb ({error}).") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError) as error:
        raise BadSampleError(f"{_describe(row, source)}: cannot read image ({type(error).__name__}: {error}).") from None


def check_caption(value, row=None, source=None) -> str:
    """Return the caption stripped, or raise `BadSampleError` for an empty or non-string one."""
    if value is None:
        raise BadSampleError(f"{_describe(row, source)}: caption is missing (None).")
    if not isinstance(value, str):
        raise BadSampleError(f"{_describe(row, source)}: caption is a {type(value).__name__}, expected a string.")
    caption = value.strip()
    if not caption:
        raise BadSampleError(f"{_describe(row, source)}: caption is empty.")
    return caption


def _source_of(value) -> str | None:
    if isinstance(value, dict):
        return value.get("path")
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return None


@dataclass
class GCLCollator:
    r"""
    Collates image–caption rows into `pixel_values`, `input_ids` and `attention_mask`.

    Args:
        processor ([`GCLProcessor`]): the model's processor.
        image_column, caption_column (`str`): the columns to read. Images may be PIL images, paths, bytes or
            `datasets` image dicts; they are decoded here, lazily.
        max_length (`int`, *optional*): truncate captions to this many tokens (default: the tokenizer's maximum).
        skip_bad_samples (`bool`, defaults to `False`): skip a bad sample (unreadable, corrupt or missing image;
            empty or non-string caption) instead of raising, and report it under `gcl_skipped_samples`.
        image_root (`str`, *optional*): folder that relative image paths are resolved against.
        max_image_pixels (`int`, *optional*): refuse (or, with `skip_bad_samples`, skip) images whose width × height
            exceeds this, checked before decoding; default Pillow's limit of about 89 million pixels.
    Captions longer than the text model takes are truncated.
    """

    processor: object
    image_column: str = "image"
    caption_column: str = "caption"
    max_length: int | None = None
    skip_bad_samples: bool = False
    image_root: str | None = None
    max_image_pixels: int | None = None
    return_skipped: bool = field(default=True, repr=False)

    def __call__(self, features: list[dict]) -> dict:
        images, captions, skipped = [], [], []
        for feature in features:
            row = feature.get(ROW_INDEX_KEY)
            try:
                if self.image_column not in feature or self.caption_column not in feature:
                    raise BadSampleError(
                        f"{_describe(row, None)}: missing column {self.image_column!r} or {self.caption_column!r}; "
                        f"the row has {sorted(k for k in feature if k != ROW_INDEX_KEY)}."
                    )
                image_value = feature[self.image_column]
                caption = check_caption(feature[self.caption_column], row, _source_of(image_value))
                image = load_rgb_image(image_value, row, self.image_root, self.max_image_pixels)
            except BadSampleError as error:
                if not self.skip_bad_samples:
                    raise
                skipped.append(str(error))
                continue
            images.append(image)
            captions.append(caption)
        if not images:
            raise BadSampleError(f"every sample of a batch of {len(features)} was bad: {skipped[:3]} ...")

        max_length = self.max_length or getattr(self.processor, "max_text_length", None)
        text_kwargs = dict(padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt")
        image_processor = getattr(self.processor, "image_processor", None)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if image_processor is not None and tokenizer is not None:
            # The two halves called directly: the same tensors as `processor(images=..., text=...)` without its
            # per-call merging of keyword defaults, which cost ~20% of the collator's time (benchmarks/bench_input_pipeline.py).
            pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
            encoded = tokenizer(captions, **text_kwargs)
        else:
            encoded = self.processor(images=images, text=captions, **text_kwargs)
            pixel_values = encoded["pixel_values"]
        batch = {
            "pixel_values": pixel_values,
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"].to(torch.long),
        }
        if self.skip_bad_samples and self.return_skipped:
            batch[SKIPPED_SAMPLES_KEY] = skipped
        return batch
