# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Each row's position in the data as loaded (`gcl_row_index`), so an error names the row of the user's file however
the rows are shuffled or split; the hold-out split for before/after evaluation."""

import datasets
from torch.utils.data import Dataset as TorchDataset

from .errors import DataError

# The collator names bad rows by this index, which the loaders and `RowIndexedDataset` add to every example.
ROW_INDEX_KEY = "gcl_row_index"


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


def split_holdout(dataset, holdout: int, seed: int) -> tuple:
    """Split off `holdout` pairs (shuffled with `seed`) for before/after retrieval evaluation. A stream gives its first
    `holdout` rows (in memory) and trains on the rest."""
    if holdout <= 0:
        return dataset, None
    if isinstance(dataset, datasets.IterableDataset):
        held = datasets.Dataset.from_list(list(dataset.take(holdout)))
        if len(held) < holdout:
            raise DataError(f"eval_holdout={holdout} leaves no training data (the stream has {len(held)} rows).")
        return dataset.skip(holdout), held
    if holdout >= len(dataset):
        raise DataError(f"eval_holdout={holdout} leaves no training data ({len(dataset)} pairs).")
    parts = dataset.train_test_split(test_size=holdout, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
