# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""A local `imagefolder`: images next to a `metadata.jsonl` (or `.csv`, `.parquet`) with `file_name` and a caption.

A `metadata.jsonl` is read here, row by row, so that a caption of the wrong type, a dangling `file_name` or an extra
column whose type changes between rows is named by file and line (or skipped and counted) rather than stopping
`datasets`' Arrow reader with an error that names neither; CSV and Parquet metadata, already typed by column, go
through `datasets`' `imagefolder` builder."""

from pathlib import Path

import datasets

from . import textfiles
from .errors import DataError
from .rows import pairs_dataset, pairs_stream

METADATA_FILENAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
# datasets' imagefolder names the image column `image`, from `file_name`.
IMAGEFOLDER_IMAGE_COLUMN = "image"


def has_imagefolder_metadata(folder: Path) -> bool:
    return any((folder / name).exists() for name in METADATA_FILENAMES)


def load_imagefolder(folder: Path, caption_column: str = "caption", split: str = "train", streaming: bool = False,
                     skip_bad_rows: bool = False):
    r"""
    Load a local imagefolder.

    Args:
        folder (`Path`): the folder holding `metadata.jsonl` (or `.csv` / `.parquet`) and the images.
        caption_column (`str`): the metadata's caption key.
        split (`str`): a `metadata.jsonl` folder is one split, `"train"`.
        streaming (`bool`): read the metadata lazily (image, caption and row index only).
        skip_bad_rows (`bool`): skip (count, and report in a warning) a row whose `file_name` is not a string or names
            no file, or whose caption is not a string, instead of raising `DataError` naming the file and line.

    Returns:
        A dataset whose `image` column is `datasets.Image(decode=False)` (`{"path", "bytes"}`), with `gcl_row_index`
        the row of `metadata.jsonl`.
    """
    metadata = folder / "metadata.jsonl"
    if not has_imagefolder_metadata(folder):
        images = sum(1 for entry in folder.iterdir() if entry.is_file()) if folder.is_dir() else 0
        raise DataError(
            f"{folder}: no metadata.jsonl, so no captions for its {images} file(s); an image folder needs a "
            'metadata.jsonl with one {"file_name": "...", "caption": "..."} line per image (or a metadata.csv / '
            ".parquet with those columns)."
        )
    if not metadata.exists():  # CSV or Parquet metadata: typed by column, so datasets' builder reads it
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(folder), split=split, streaming=streaming)
        except Exception as error:  # an empty, ragged or unreadable metadata file
            raise DataError(f"{folder}: datasets cannot read its imagefolder metadata "
                            f"({type(error).__name__}: {error}).") from error
    if split != "train":
        raise DataError(f"{folder}: an imagefolder with metadata.jsonl is one split, 'train'; got split={split!r}.")
    image_feature = datasets.Image(decode=False)
    if streaming:
        return pairs_stream(metadata, "file_name", IMAGEFOLDER_IMAGE_COLUMN, caption_column, str(folder),
                            skip_bad_rows, image_feature)
    records = list(textfiles.read_jsonl_objects(metadata, DataError))
    return pairs_dataset(records, str(metadata), "file_name", IMAGEFOLDER_IMAGE_COLUMN, caption_column, str(folder),
                         skip_bad_rows, image_feature)
