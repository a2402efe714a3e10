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
