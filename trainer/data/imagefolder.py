# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""A local `imagefolder`: images next to a `metadata.jsonl` (or `.csv`, `.parquet`) with `file_name` and a caption."""

from pathlib import Path

from . import textfiles
from .errors import DataError

METADATA_FILENAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def has_imagefolder_metadata(folder: Path) -> bool:
    return any((folder / name).exists() for name in METADATA_FILENAMES)


def check_imagefolder_metadata(folder: Path) -> None:
    """Read an imagefolder's `metadata.jsonl` once, so a bad line is named here (file and line) instead of surfacing
    as an opaque Arrow/JSON error inside `datasets`."""
    metadata = folder / "metadata.jsonl"
    if not metadata.exists():
        return
    for line_number, row in textfiles.read_jsonl_objects(metadata, DataError):
        if not isinstance(row.get("file_name"), str) or not row["file_name"]:
            raise DataError(f"{metadata}:{line_number}: needs a non-empty string `file_name`, got {row.get('file_name')!r}.")
