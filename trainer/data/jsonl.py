# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Image–caption pairs in a JSONL file: one `{image_column: path, caption_column: text, ...}` object per line."""

import os
from pathlib import Path

import datasets

from . import textfiles
from .errors import DataError


def read_jsonl_objects(path: str | os.PathLike):
    """Yield `(line_number, dict)` for each non-blank line of a JSONL file; invalid UTF-8, invalid JSON or a
    non-object line raises `DataError` naming the file and line."""
    return textfiles.read_jsonl_objects(path, DataError)


def resolve_image_path(image, folder: str):
    """A relative image path is taken relative to `folder`; anything else is returned as it is."""
    if isinstance(image, str) and not os.path.isabs(image):
        return os.path.join(folder, image)
    return image


def load_jsonl_pairs(path: Path, image_column: str, folder: str) -> datasets.Dataset:
    """A JSONL file of `{image_column: path, caption_column: text, ...}` rows; relative image paths are taken
    relative to `folder`."""
    rows = []
    for line_number, row in read_jsonl_objects(path):
        if image_column in row:  # a missing column is reported below, for the whole file
            row[image_column] = resolve_image_path(row[image_column], folder)
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows.")
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as error:  # pyarrow type clashes between rows
        raise DataError(f"{path}: rows do not share one schema ({error}).") from error
