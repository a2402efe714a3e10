# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Image–caption training data as `datasets.Dataset`: from the Hub, a local `imagefolder`, a JSONL file, LCS-558K
(LLaVA-Pretrain's JSON, see `lcs558k.py`), or the sample bundled with the package."""

import os
from pathlib import Path

import datasets

from .errors import DataError
from .imagefolder import has_imagefolder_metadata, load_imagefolder
from .jsonl import load_jsonl_pairs
from .lcs558k import LCS558K_FILENAME, LCS558K_REPO_ID, load_lcs558k, sniff_lcs558k
from .rows import ROW_INDEX_KEY

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
BUNDLED_SAMPLE_DIR = RESOURCES / "openclipart_sample"
BUNDLED_TINY_CLIP_DIR = RESOURCES / "tiny_clip"

DATA_FORMATS = ("auto", "pairs", "lcs558k")


def _is_lcs558k(train_data, path: Path, data_format: str) -> bool:
    """Whether `load_image_caption_dataset` reads `train_data` as LCS-558K. "auto" sniffs a local `.json` file's first
    element (never the whole file), looks for the JSON file in a folder that is no imagefolder, and knows LCS-558K's
    Hub id."""
    if data_format != "auto":
        return data_format == "lcs558k"
    if path.is_file() and path.suffix == ".json":
        reason = sniff_lcs558k(path)
        if reason is not None:  # the only JSON-list format read here; pairs go in JSONL
            raise DataError(
                f"{path}: a .json file is read as LCS-558K (a JSON list of objects with `image` and `conversations`), "
                f"but {reason}. Write image–caption pairs as JSONL (a .jsonl file, one object per line)."
            )
        return True
    if path.is_dir():
        return not has_imagefolder_metadata(path) and (path / LCS558K_FILENAME).is_file()
    return not path.exists() and str(train_data).lower() == LCS558K_REPO_ID.lower()


def load_image_caption_dataset(
    train_data: str | os.PathLike | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    split: str = "train",
    dataset_config_name: str | None = None,
    streaming: bool = False,
    data_format: str = "auto",
    image_root: str | os.PathLike | None = None,
    skip_bad_rows: bool = False,
) -> datasets.Dataset:
    r"""
    Load image–caption pairs.

    Args:
        train_data (`str`, *optional*):
            - `None`: the bundled 320-pair openclipart sample;
            - a directory in `imagefolder` layout (`metadata.jsonl` with `file_name` and `caption`);
            - a `.jsonl` file of rows with an image path (relative to the file) and a caption;
            - LCS-558K: LLaVA-Pretrain's `blip_laion_cc_sbu_558k.json` (a `.json` file, a folder holding it, or the
              Hub repository `liuhaotian/LLaVA-Pretrain`), see `trainer.data.lcs558k`;
            - otherwise a Hub dataset name for `datasets.load_dataset`.
        image_column, caption_column (`str`): column names. An `imagefolder`'s `file_name` becomes `image`.
        split (`str`): the split to read.
        dataset_config_name (`str`, *optional*): the Hub dataset's configuration.
        streaming (`bool`, defaults to `False`): return a `datasets.IterableDataset` that reads rows (and images)
            lazily, for data that does not fit in memory or on disk; train it with `max_steps`.
        data_format (`str`, defaults to `"auto"`): `"pairs"` (imagefolder, JSONL or a Hub dataset of pairs),
            `"lcs558k"` (any file, folder or Hub dataset repository in LCS-558K's format), or `"auto"`: LCS-558K for
            a `.json` file whose first element has `conversations`, a folder holding `blip_laion_cc_sbu_558k.json`
            and no imagefolder metadata, or the Hub id `liuhaotian/LLaVA-Pretrain`; pairs otherwise.
        image_root (`str`, *optional*): the folder relative image paths are resolved against, for LCS-558K (default
            the JSON file's folder; required from the Hub: the extracted `images.zip`) and JSONL pairs (default the
            file's folder).
        skip_bad_rows (`bool`, defaults to `False`): local files (imagefolder `metadata.jsonl`, JSONL, LCS-558K):
            skip rows whose image path is missing, not a string or names no file (LCS-558K: not checked, the
            collator names a missing image), or whose caption is missing or not a string; they are counted and
            reported in a warning, instead of raising `DataError` naming the file and row.

    Returns:
        A `datasets.Dataset` whose image column is left undecoded (`{"bytes", "path"}` or a path string), so the
        collator decodes images lazily and can name the file of a bad one.
    """
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format={data_format!r}; expected one of {list(DATA_FORMATS)}.")
    if train_data is None:
        train_data = BUNDLED_SAMPLE_DIR
    path = Path(train_data)
    if _is_lcs558k(train_data, path, data_format):
        if split != "train" or dataset_config_name is not None:
            raise DataError(f"{train_data}: LCS-558K is one file (split 'train', no configuration); got "
                            f"split={split!r}, dataset_config_name={dataset_config_name!r}.")
        dataset = load_lcs558k(train_data, image_root, image_column=image_column, caption_column=caption_column,
                               streaming=streaming, skip_bad_rows=skip_bad_rows)
    elif image_root is not None and not path.suffix == ".jsonl":
        raise DataError(
            f"{train_data}: image_root applies to LCS-558K and JSONL pairs only (an imagefolder's file_name is "
            "relative to its folder; a Hub dataset of pairs holds its images)."
        )
    elif path.is_dir():
        dataset = load_imagefolder(path, caption_column, split=split, streaming=streaming, skip_bad_rows=skip_bad_rows)
    elif path.suffix == ".jsonl" and path.is_file():
        folder = str(image_root if image_root is not None else path.parent)  # what relative image paths start from
        dataset = load_jsonl_pairs(path, image_column, folder, caption_column, streaming=streaming,
                                   skip_bad_rows=skip_bad_rows)
    elif path.suffix == ".json" and path.is_file():  # data_format="pairs"
        raise DataError(f"{path}: image–caption pairs are read from JSONL (a .jsonl file, one object per line); "
                        "a .json list is read as LCS-558K (data_format lcs558k or auto).")
    elif path.suffix in (".jsonl", ".json", ".csv") or str(train_data).startswith((".", "/", "~")):
        # Written as a local path (a Hub id is `name` or `org/name`) but not found.
        raise DataError(f"{train_data}: no such file or directory.")
    else:
        dataset = datasets.load_dataset(str(train_data), dataset_config_name, split=split, streaming=streaming)

    columns = dataset.column_names or list(dataset.features or {})
    missing = [name for name in (image_column, caption_column) if name not in columns]
    if missing and columns:  # a stream may not know its columns before reading; the collator then names the row
        raise DataError(
            f"{train_data}: missing column(s) {missing}; the data has {columns}. "
            "Set --image_column / --caption_column."
        )
    if isinstance((dataset.features or {}).get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    # Rows carry their position in the data as loaded, so an error names the row of the user's file even after the
    # hold-out split has shuffled them (a new column, no rewrite of the image data).
    if streaming and ROW_INDEX_KEY not in columns:  # LCS-558K rows carry their position in the JSON list already
        dataset = dataset.map(lambda _, index: {ROW_INDEX_KEY: index}, with_indices=True)
    elif ROW_INDEX_KEY not in dataset.column_names:
        dataset = dataset.add_column(ROW_INDEX_KEY, list(range(len(dataset))))
    return dataset
