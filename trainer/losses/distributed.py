# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Cross-device negatives: gather embeddings from every process *with* their gradient.

Each process keeps its own rows as anchors and scores them against the gathered candidates of all processes. The
gather's backward sums, on every process, the gradients that all processes' losses send to its rows; DDP then averages
parameter gradients over the W processes, so training equals one process on the concatenated batch whose loss is the
mean of the W local losses. (This is *not* the other scheme — gather without gradient and multiply the loss by W —
which must not be mixed with this one.)
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def distributed_world() -> tuple[int, int]:
    """`(rank, world_size)` of the default process group, `(0, 1)` outside distributed training."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """`(B, d)` on each of W processes -> `(W·B, d)`, rank-major, differentiable. Every process must pass the same
    `B` (hence `dataloader_drop_last=True`)."""
    _, world_size = distributed_world()
    if world_size == 1:
        return tensor
    try:  # torch >= 2.13: the functional collective carries autograd
        from torch.distributed._functional_collectives import all_gather_single, wait_tensor

        return wait_tensor(all_gather_single(tensor.contiguous(), 0, dist.group.WORLD))
    except ImportError:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(tensor), dim=0)


def all_gather_columns_with_grad(columns: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], int]:
    """Gather each `(B_r, d)` column from every process, differentiably, when the processes' batch sizes `B_r` may
    differ (a process whose collator skipped a bad sample has fewer rows). Returns the gathered columns
    (`(Σ B_r, d)`, rank-major) and this process's offset `Σ_{r < rank} B_r`. Rows are padded to the largest `B_r` for
    the collective and the padding is dropped again, so it never serves as a candidate."""
    rank, world_size = distributed_world()
    if world_size == 1:
        return tuple(columns), 0
    local = torch.tensor([columns[0].shape[0], *(column.shape[-1] for column in columns)], device=columns[0].device)
    shapes = [torch.zeros_like(local) for _ in range(world_size)]
    dist.all_gather(shapes, local)
    shapes = [[int(x) for x in shape] for shape in shapes]
    # Every process sees every shape, so all of them raise together rather than hang in the collective below.
    if any(shape[1:] != shapes[0][1:] for shape in shapes):
        dims = ", ".join(f"rank {r}: {shape[1:]}" for r, shape in enumerate(shapes))
        raise ValueError(f"Embedding sizes differ across processes ({dims}); every process must run the same model.")
    sizes = [shape[0] for shape in shapes]
    largest = max(sizes)
    gathered = []
    for column in columns:
        padded = F.pad(column, (0, 0, 0, largest - column.shape[0])) if column.shape[0] < largest else column
        rows = all_gather_with_grad(padded)
        gathered.append(torch.cat([rows[r * largest : r * largest + sizes[r]] for r in range(world_size)])
                        if min(sizes) < largest else rows)
    return tuple(gathered), sum(sizes[:rank])
