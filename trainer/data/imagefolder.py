# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""A local `imagefolder`: images next to a `metadata.jsonl` (or `.csv`, `.parquet`) with `file_name` and a caption.

A `metadata.jsonl` or `metadata.csv` is read here, row by row, so that a caption of the wrong type, a dangling
`file_name` or an extra column whose type changes between rows is named by file and line (or skipped and counted)
rather than stopping `datasets`' Arrow reader with an error that names neither, and a CSV caption that looks like a
number stays text. Parquet metadata, typed by column, goes through `datasets`' `imagefolder` builder."""

import csv
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


def read_csv_records(path: Path) -> list[tuple[int, dict]]:
    """`(line_number, {column: text})` for each non-blank row of a CSV file with a header line; invalid UTF-8 or CSV,
    or a row with more or fewer fields than the header (a broken file, not a bad row), raises `DataError` naming the
    file and line."""
    reader = csv.reader(line for _, line in textfiles.read_text_lines(path, DataError))
    records = []
    try:
        header = next(reader, None)
        if header is None:
            return records
        header[0] = header[0].removeprefix("\ufeff")  # a UTF-8 byte-order mark, as spreadsheet programs write
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(fields)} field(s), but the header has {len(header)} "
                                f"({', '.join(header)}).")
            records.append((reader.line_num, dict(zip(header, fields))))
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({error}).") from None
    return records


def load_imagefolder(folder: Path, caption_column: str = "caption", split: str = "train", streaming: bool = False,
                     skip_bad_rows: bool = False):
    r"""
    Load a local imagefolder.

    Args:
        folder (`Path`): the folder holding `metadata.jsonl` (or `.csv`, whose values are all text, or `.parquet`)
            and the images.
        caption_column (`str`): the metadata's caption key.
        split (`str`): a `metadata.jsonl` / `.csv` folder is one split, `"train"`.
        streaming (`bool`): read the metadata lazily (image, caption and row index only).
        skip_bad_rows (`bool`): skip (count, and report in a warning) a row whose `file_name` is not a string or names
            no file, or whose caption is missing, not a string or empty, instead of raising `DataError` naming the
            file and line.

    Returns:
        A dataset whose `image` column is `datasets.Image(decode=False)` (`{"path", "bytes"}`), with `gcl_row_index`
        the row of the metadata file.
    """
    if not has_imagefolder_metadata(folder):
        images = sum(1 for entry in folder.iterdir() if entry.is_file()) if folder.is_dir() else 0
        raise DataError(
            f"{folder}: no metadata.jsonl, so no captions for its {images} file(s); an image folder needs a "
            'metadata.jsonl with one {"file_name": "...", "caption": "..."} line per image (or a metadata.csv / '
            ".parquet with those columns)."
        )
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    if not jsonl.exists() and not table.exists():  # Parquet: typed by column, so datasets' builder reads it
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(folder), split=split, streaming=streaming)
        except Exception as error:  # an empty or unreadable metadata file
            raise DataError(f"{folder}: datasets cannot read its imagefolder metadata "
                            f"({type(error).__name__}: {error}).") from error
    metadata = jsonl if jsonl.exists() else table
    if split != "train":
        raise DataError(f"{folder}: an imagefolder with {metadata.name} is one split, 'train'; got split={split!r}.")
    image_feature = datasets.Image(decode=False)
    if metadata == table:  # every value is text; read whole (a stream of it streams from memory)
        dataset = pairs_dataset(read_csv_records(table), str(table), "file_name", IMAGEFOLDER_IMAGE_COLUMN,
                                caption_column, str(folder), skip_bad_rows, image_feature)
        return dataset.to_iterable_dataset() if streaming else dataset
    if streaming:
        return pairs_stream(jsonl, "file_name", IMAGEFOLDER_IMAGE_COLUMN, caption_column, str(folder), skip_bad_rows,
                            image_feature)
    records = list(textfiles.read_jsonl_objects(jsonl, DataError))
    return pairs_dataset(records, str(jsonl), "file_name", IMAGEFOLDER_IMAGE_COLUMN, caption_column, str(folder),
                         skip_bad_rows, image_feature)
