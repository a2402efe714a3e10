# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Training data: readers for a local `imagefolder` (`imagefolder.py`), JSONL pairs (`jsonl.py`), LCS-558K
(`lcs558k.py`) and Hub datasets (`loading.py` picks one), the checked rows they share and each row's index
(`rows.py`), the collator that decodes images and names bad rows (`collator.py`), the held-out split (`holdout.py`),
batch samplers (`samplers.py`), line readers (`textfiles.py`) and `DataError` with the bad-row policy (`errors.py`).

The modules import one another only downwards (errors, textfiles <- rows <- collator, readers <- holdout, loading),
never in a circle; everything public is re-exported here, so `from trainer.data import X` is all a caller needs."""

from . import textfiles
from .collator import (
    SKIPPED_SAMPLES_KEY,
    BadSampleError,
    GCLCollator,
    check_caption,
    load_rgb_image,
    to_rgb,
)
from .errors import DataError
from .holdout import check_holdout, split_holdout
from .imagefolder import has_imagefolder_metadata, load_imagefolder
from .jsonl import load_jsonl_pairs, read_jsonl_objects
from .lcs558k import (
    IMAGE_TOKEN,
    LCS558K_FILENAME,
    LCS558K_REPO_ID,
    is_lcs558k_file,
    iter_lcs558k_rows,
    lcs558k_pairs,
    lcs558k_row,
    load_lcs558k,
    read_json_array_objects,
    resolve_lcs558k_file,
    sniff_lcs558k,
    strip_image_token,
)
from .loading import BUNDLED_SAMPLE_DIR, BUNDLED_TINY_CLIP_DIR, DATA_FORMATS, RESOURCES, load_image_caption_dataset
from .rows import ROW_INDEX_KEY, RowIndexedDataset, resolve_image_path
from .samplers import UniqueGroupBatchSampler

__all__ = [
    "BUNDLED_SAMPLE_DIR",
    "BUNDLED_TINY_CLIP_DIR",
    "DATA_FORMATS",
    "IMAGE_TOKEN",
    "LCS558K_FILENAME",
    "LCS558K_REPO_ID",
    "RESOURCES",
    "ROW_INDEX_KEY",
    "SKIPPED_SAMPLES_KEY",
    "BadSampleError",
    "DataError",
    "GCLCollator",
    "RowIndexedDataset",
    "UniqueGroupBatchSampler",
    "check_caption",
    "check_holdout",
    "has_imagefolder_metadata",
    "load_imagefolder",
    "is_lcs558k_file",
    "iter_lcs558k_rows",
    "lcs558k_pairs",
    "lcs558k_row",
    "load_image_caption_dataset",
    "load_jsonl_pairs",
    "load_lcs558k",
    "load_rgb_image",
    "read_json_array_objects",
    "read_jsonl_objects",
    "resolve_image_path",
    "resolve_lcs558k_file",
    "sniff_lcs558k",
    "split_holdout",
    "strip_image_token",
    "textfiles",
    "to_rgb",
]
