# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The held-out pairs of `gcl-train --eval_holdout N`: split off before training and checked at once, so a bad one
is named by the row of the user's file (or, with `--skip_bad_samples`, counted and left out) before any training,
instead of stopping the before/after evaluation."""

import logging

import datasets

from .collator import BadSampleError, check_caption, load_rgb_image
from .errors import EXAMPLES_SHOWN, DataError
from .rows import ROW_INDEX_KEY

logger = logging.getLogger(__name__)


def check_holdout(held: datasets.Dataset, image_column: str = "image", caption_column: str = "caption",
                  skip_bad_samples: bool = False, max_image_pixels: int | None = None) -> datasets.Dataset:
    r"""
    Decode every held-out pair once, as the collator would.

    Args:
        held (`datasets.Dataset`): the held-out pairs.
        image_column, caption_column (`str`): their columns.
        skip_bad_samples (`bool`): leave out (count, and report in a warning) bad pairs instead of raising.
        max_image_pixels (`int`, *optional*): the collator's cap on width × height.

    Returns:
        `held`, or the rows of it that are usable. A bad pair raises `BadSampleError` naming its row in the user's
        file (`gcl_row_index`, not its position in the held-out subset) and its image; `DataError` if none is left.
    """
    good, skipped = [], []
    for position in range(len(held)):
        row = held[position]
        index = row.get(ROW_INDEX_KEY, position)
        image = row.get(image_column)
        try:
            check_caption(row.get(caption_column), index, image if isinstance(image, str) else None)
            load_rgb_image(image, index, max_pixels=max_image_pixels)
        except BadSampleError as error:
            if not skip_bad_samples:
                raise BadSampleError(f"held-out pair (eval_holdout): {error}") from None
            skipped.append(str(error))
            continue
        good.append(position)
    if not skipped:
        return held
    logger.warning("Left out %d bad held-out pair(s) (skip_bad_samples), e.g.:\n  %s", len(skipped),
                   "\n  ".join(skipped[:EXAMPLES_SHOWN]))
    if not good:
        raise DataError(f"every one of the {len(held)} held-out pairs was bad, e.g. {skipped[0]}")
    return held.select(good)


def split_holdout(dataset, holdout: int, seed: int, image_column: str | None = None, caption_column: str = "caption",
                  skip_bad_samples: bool = False, max_image_pixels: int | None = None) -> tuple:
    """Split off `holdout` pairs (shuffled with `seed`) for before/after retrieval evaluation. A stream gives its first
    `holdout` rows (in memory) and trains on the rest. Given `image_column`, the held-out pairs are checked with
    `check_holdout` (`caption_column`, `skip_bad_samples` and `max_image_pixels` as there)."""
    if holdout <= 0:
        return dataset, None
    if isinstance(dataset, datasets.IterableDataset):
        held = datasets.Dataset.from_list(list(dataset.take(holdout)))
        if len(held) < holdout:
            raise DataError(f"eval_holdout={holdout} leaves no training data (the stream has {len(held)} rows).")
        train = dataset.skip(holdout)
    else:
        if holdout >= len(dataset):
            raise DataError(f"eval_holdout={holdout} leaves no training data ({len(dataset)} pairs).")
        parts = dataset.train_test_split(test_size=holdout, seed=seed, shuffle=True)
        train, held = parts["train"], parts["test"]
    if image_column is not None:
        held = check_holdout(held, image_column, caption_column, skip_bad_samples, max_image_pixels)
    return train, held
