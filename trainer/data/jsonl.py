# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Image–caption pairs in a JSONL file: one `{image_column: path, caption_column: text, ...}` object per line.

Each line is checked as it is read (an image path string naming a file, a string caption), so a bad one is named by
file and line or, with `skip_bad_rows`, counted and skipped; an extra column whose type changes between lines is kept
as JSON text instead of stopping the Arrow conversion."""

import os
from pathlib import Path

import datasets

from . import textfiles
from .errors import DataError
from .rows import pairs_dataset, pairs_stream


def read_jsonl_objects(path: str | os.PathLike):
    """Yield `(line_number, dict)` for each non-blank line of a JSONL file; invalid UTF-8, invalid JSON or a
    non-object line raises `DataError` naming the file and line."""
    return textfiles.read_jsonl_objects(path, DataError)


def load_jsonl_pairs(path: Path, image_column: str, folder: str, caption_column: str = "caption",
                     streaming: bool = False, skip_bad_rows: bool = False):
    r"""
    Load a JSONL file of image–caption pairs.

    Args:
        path (`Path`): the file.
        image_column (`str`): the key of the image path; a relative path is taken relative to `folder`.
        folder (`str`): what relative image paths start from.
        caption_column (`str`): the key of the caption.
        streaming (`bool`): read the file lazily (image, caption and row index only).
        skip_bad_rows (`bool`): skip (count, and report in a warning) a line whose image is not a path string or
            names no file, or whose caption is missing, not a string or empty, instead of raising `DataError` naming
            the file and line.

    Returns:
        A `datasets.Dataset` (or `IterableDataset`) with string columns `image_column` (the resolved path) and
        `caption_column`, the file's other keys (map-style only) and `gcl_row_index` (the pair's position in the file).
    """
    if streaming:
        return pairs_stream(path, image_column, image_column, caption_column, folder, skip_bad_rows,
                            datasets.Value("string"))
    return pairs_dataset(list(read_jsonl_objects(path)), str(path), image_column, image_column, caption_column, folder,
                         skip_bad_rows, datasets.Value("string"))
