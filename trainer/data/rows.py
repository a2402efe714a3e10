# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Rows of image–caption pairs read from a local file (an imagefolder's `metadata.jsonl`, JSONL pairs): each row is
checked once as it is read (image path, caption type, image file), so a bad one is named by file and line, or counted
and skipped; each row keeps its position in the file (`gcl_row_index`), so later errors name the row of the user's
file however the rows are shuffled or split."""

import json
import logging
import os
from collections.abc import Iterable, Iterator

import datasets
from torch.utils.data import Dataset as TorchDataset

from . import textfiles
from .errors import BadRows, DataError

logger = logging.getLogger(__name__)

# The collator names bad rows by this index, which the loaders and `RowIndexedDataset` add to every example.
ROW_INDEX_KEY = "gcl_row_index"
# How much of a bad value an error message shows.
_VALUE_CHARS = 60


class RowIndexedDataset(TorchDataset):
    """A map-style dataset whose examples also carry their row index (`gcl_row_index`), so a bad sample can be
    named in an error message however the sampler shuffles."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {ROW_INDEX_KEY: index, **self.dataset[index]}  # a row's own (original) index wins

    def __getattr__(self, name):  # column_names, features, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 3] + "..."


def resolve_image_path(image, folder: str):
    """A relative image path is taken relative to `folder`; anything else is returned as it is."""
    if isinstance(image, str) and not os.path.isabs(image):
        return os.path.join(folder, image)
    return image


def check_fields(record: dict, where: str, image_key: str, caption_column: str, folder: str) -> str:
    """The image path of one row (resolved against `folder`), after checking that it is a non-empty string and that
    the caption is a string; anything else raises `DataError` starting with `where` (the file and line)."""
    image = record.get(image_key)
    if not isinstance(image, str) or not image:
        raise DataError(f"{where}: needs a non-empty string `{image_key}` (the image's path), got {_shown(image)}.")
    if caption_column not in record:
        raise DataError(f"{where}: has no `{caption_column}`.")
    caption = record[caption_column]
    if not isinstance(caption, str):
        kind = "null" if caption is None else f"a {type(caption).__name__} ({_shown(caption)})"
        raise DataError(f"{where}: `{caption_column}` is {kind}, expected a string.")
    if not caption.strip():
        raise DataError(f"{where}: `{caption_column}` is empty.")
    return resolve_image_path(image, folder)


def check_image_file(path: str, where: str, image_key: str) -> None:
    """Raise `DataError` starting with `where` unless `path` is a file (the collator decodes it later)."""
    if not os.path.isfile(path):
        problem = "is a folder, not an image file" if os.path.isdir(path) else "does not exist"
        raise DataError(f"{where}: image {path} {problem} (a dangling `{image_key}`).")


def checked_pairs(records: Iterable[tuple[int, dict]], source: str, image_key: str, caption_column: str,
                  folder: str, bad_rows: BadRows, fields_first: bool = True) -> Iterator[tuple[int, dict, str]]:
    """`(line_number, record)` -> `(row_index, record, image_path)` for the usable rows; `row_index` is the record's
    position in the file (bad rows keep theirs), and `bad_rows` raises or counts the others. `fields_first` checks
    every row's fields before any image file (a malformed file is named before a missing image; a stream checks
    each row as it comes)."""

    def where(line_number):
        return f"{source}:{line_number}"

    def with_fields(rows):
        for index, (line_number, record) in enumerate(rows):
            try:
                yield index, line_number, record, check_fields(record, where(line_number), image_key, caption_column,
                                                               folder)
            except DataError as error:
                bad_rows.add(error)

    typed = with_fields(records)
    for index, line_number, record, path in list(typed) if fields_first else typed:
        try:
            check_image_file(path, where(line_number), image_key)
        except DataError as error:
            bad_rows.add(error)
            continue
        yield index, record, path


def _extra_column(name: str, values: list, source: str) -> tuple[list, object]:
    """An extra column's values and feature as Arrow can hold them: as they are when every row's value fits one type,
    otherwise as JSON text (training does not read it, so a column whose type changes between rows must not stop
    loading; distinct values stay distinct)."""
    try:
        return values, datasets.Dataset.from_dict({name: values}).features[name]
    except Exception:  # pyarrow type clashes: number vs string, list vs object, ...
        kinds = "/".join(sorted({type(value).__name__ for value in values if value is not None}))
        logger.warning("%s: column `%s` (%s values) does not fit one Arrow type; kept as JSON text.", source, name, kinds)
        return [None if value is None else json.dumps(value, ensure_ascii=False) for value in values], \
            datasets.Value("string")


def pairs_dataset(records: list[tuple[int, dict]], source: str, image_key: str, image_column: str,
                  caption_column: str, folder: str, skip_bad_rows: bool, image_feature) -> datasets.Dataset:
    r"""
    A map-style dataset from the records of a local file.

    Args:
        records (`list[tuple[int, dict]]`): `(line_number, record)` of every record of the file, in order.
        source (`str`): the file, for messages.
        image_key (`str`): the record's key for the image path (`file_name` in an imagefolder).
        image_column, caption_column (`str`): the dataset's image column and the caption key / column.
        folder (`str`): what relative image paths start from.
        skip_bad_rows (`bool`): skip (count, and report in a warning) bad rows instead of raising `DataError`.
        image_feature: `datasets.Image(decode=False)` (the value becomes `{"path", "bytes"}`) or `Value("string")`.

    Returns:
        A dataset with `image_column`, `caption_column`, every other key of the records (a column whose type changes
        between rows as JSON text) and `gcl_row_index`. No records, or none left after skipping, raise `DataError`.
    """
    if not records:
        raise DataError(f"{source}: no rows.")
    keys = list(dict.fromkeys(key for _, record in records for key in record))
    missing = [name for name in (image_key, caption_column) if name not in keys]
    if missing:  # a column absent from every row is a naming problem, reported for the whole file
        raise DataError(f"{source}: missing column(s) {missing}; the data has {keys}. "
                        "Set --image_column / --caption_column.")
    bad_rows = BadRows(source, skip_bad_rows, logger)
    good = list(checked_pairs(records, source, image_key, caption_column, folder, bad_rows))
    bad_rows.report()
    if not good:
        raise DataError(f"{source}: no rows left after skipping bad rows.")
    as_image = isinstance(image_feature, datasets.Image)
    columns = {
        image_column: [{"path": path, "bytes": None} if as_image else path for _, _, path in good],
        caption_column: [record[caption_column] for _, record, _ in good],
    }
    features = {image_column: image_feature, caption_column: datasets.Value("string")}
    for name in keys:
        if name not in (image_key, image_column, caption_column, ROW_INDEX_KEY):
            columns[name], features[name] = _extra_column(name, [record.get(name) for _, record, _ in good], source)
    columns[ROW_INDEX_KEY] = [index for index, _, _ in good]
    features[ROW_INDEX_KEY] = datasets.Value("int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _stream_pairs(path: str, source: str, image_key: str, image_column: str, caption_column: str, folder: str,
                  skip_bad_rows: bool, as_image: bool) -> Iterator[dict]:
    # A module-level generator, so the stream pickles into dataloader workers.
    bad_rows = BadRows(source, skip_bad_rows, logger)
    records = textfiles.read_jsonl_objects(path, DataError)
    for index, record, image in checked_pairs(records, source, image_key, caption_column, folder, bad_rows,
                                              fields_first=False):
        yield {image_column: {"path": image, "bytes": None} if as_image else image,
               caption_column: record[caption_column], ROW_INDEX_KEY: index}
    bad_rows.report()


def pairs_stream(path: str, image_key: str, image_column: str, caption_column: str, folder: str,
                 skip_bad_rows: bool, image_feature) -> datasets.IterableDataset:
    """The rows of `pairs_dataset` (image, caption and row index only), read lazily from a JSONL file."""
    features = datasets.Features({image_column: image_feature, caption_column: datasets.Value("string"),
                                  ROW_INDEX_KEY: datasets.Value("int64")})
    kwargs = dict(path=str(path), source=str(path), image_key=image_key, image_column=image_column,
                  caption_column=caption_column, folder=folder, skip_bad_rows=skip_bad_rows,
                  as_image=isinstance(image_feature, datasets.Image))
    return datasets.IterableDataset.from_generator(_stream_pairs, features=features, gen_kwargs=kwargs)
