# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Batch samplers for contrastive training."""

from collections import deque
from collections.abc import Hashable, Iterator, Sequence

import torch
from torch.utils.data import Sampler

from .errors import DataError


class UniqueGroupBatchSampler(Sampler[list[int]]):
    r"""
    Shuffled batches in which no two rows share a group id.

    A contrastive batch treats every other row as a negative, so two captions of one image (COCO has five) or one
    caption of two images would be a false negative. Give the image id (or caption id) as the group: each batch then
    holds at most one row per group. Rows that would repeat a group in the batch being filled are deferred to the next
    batches, so every row is used once per epoch (bar the last incomplete batch with `drop_last=True`).

    Args:
        group_ids (`Sequence[Hashable]`): the group of each row of the dataset.
        batch_size (`int`): rows per batch.
        drop_last (`bool`, defaults to `True`): drop the last batch when it is incomplete.
        seed (`int`, defaults to 0): the shuffle of epoch `e` uses seed `seed + e`.
    """

    def __init__(self, group_ids: Sequence[Hashable], batch_size: int, drop_last: bool = True, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.group_ids = list(group_ids)
        for row, group in enumerate(self.group_ids):  # a None or unhashable id would fail deep inside, or merge rows
            try:
                hash(group)
            except TypeError:
                raise DataError(f"training row {row}: the group id {group!r:.60} is a {type(group).__name__}, which "
                                "cannot be compared as a group; use strings or numbers.") from None
            if group is None:
                raise DataError(f"training row {row}: no group id (None); every row needs one to keep groups apart.")
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        distinct = len(set(self.group_ids))
        if distinct < batch_size:
            raise ValueError(f"only {distinct} distinct groups: a batch of {batch_size} cannot hold unique ones.")
        self._batches: list[list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._batches = epoch, None

    def _make_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        pending = deque(torch.randperm(len(self.group_ids), generator=generator).tolist())
        batches = []
        while pending:
            batch, groups, deferred = [], set(), []
            while pending and len(batch) < self.batch_size:
                index = pending.popleft()
                if self.group_ids[index] in groups:
                    deferred.append(index)  # its group is already in this batch: first in line for the next one
                else:
                    batch.append(index)
                    groups.add(self.group_ids[index])
            pending.extendleft(reversed(deferred))
            # A batch is short only when the rows left are all of groups already in it, i.e. at the end of the epoch
            # (there can be several short ones when one group holds many of the last rows); drop_last drops them all.
            if len(batch) == self.batch_size or not self.drop_last:
                batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if self._batches is None:
            self._batches = self._make_batches()
        batches, self._batches = self._batches, None
        self.epoch += 1  # Trainer may not call set_epoch on a custom batch sampler; advance the shuffle anyway
        yield from batches

    def __len__(self) -> int:
        if self._batches is None:
            self._batches = self._make_batches()
        return len(self._batches)
