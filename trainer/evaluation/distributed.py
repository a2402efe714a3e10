# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Encoding split across processes (`torchrun` / `accelerate launch`): each process embeds every `world_size`-th
batch, the embeddings are all-gathered and put back in order, and only rank 0 scores and writes.

Batches are the same as in one process (batch `b` holds items `b·batch_size ...`), so every embedding is computed
from the same inputs in the same batch as a 1-process run and the merged result is bit-identical to it.

Nothing here starts implicitly: an evaluator shards only when asked to (`distributed=True`), so a Trainer callback
that evaluates on rank 0 alone never waits for a collective that the other ranks do not join.
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """`(rank, world_size)` of the default process group, `(0, 1)` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def launcher_rank() -> int:
    """This process's rank as the launcher set it (`RANK`), valid also before or after the group exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def launched_distributed() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_launcher(device: str | None = None, timeout_s: float = 1800) -> bool:
    """Join the launcher's process group (gloo on CPU, nccl on CUDA) if this process is one of several and no group
    exists yet; returns True when this call created the group (the caller then destroys it)."""
    if not launched_distributed() or not dist.is_available() or dist.is_initialized():
        return False
    backend = "nccl" if (device or "").startswith("cuda") and dist.is_nccl_available() else "gloo"
    if backend == "nccl":  # object collectives use the current device: each process its own GPU
        torch.cuda.set_device(torch.device(device) if ":" in device else int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def local_device(device: str | None) -> str:
    """The device this process encodes on: `--device` as given, else `cuda:LOCAL_RANK` with CUDA, else the CPU."""
    if device:
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def agree(flag: bool) -> bool:
    """True only if every process passes True (e.g. a cache hit on every rank), so all take the same branch."""
    _, size = world()
    if size == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.long, device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def raise_if_any_failed(error: BaseException | None) -> None:
    """Exchange every process's error (or None) so that all raise together instead of leaving the others waiting in
    the next collective: the failing process re-raises its own error, the others raise the same kind of error with
    its message."""
    _, size = world()
    if size == 1:
        if error is not None:
            raise error
        return
    messages = [None] * size
    dist.all_gather_object(messages, None if error is None else (type(error), str(error)))
    if error is not None:
        raise error
    for failed_rank, failure in enumerate(messages):
        if failure is not None:
            kind, message = failure
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                kind = RuntimeError
            try:
                raised = kind(message)
            except Exception:  # an exception type whose constructor wants more than a message
                raised = RuntimeError(message)
            raise raised from None


def my_batches(num_items: int, batch_size: int) -> list[int]:
    """The starts of the batches this process encodes (every `world_size`-th, from its rank)."""
    rank, size = world()
    return list(range(rank * batch_size, num_items, size * batch_size))


def gather_batches(local: torch.Tensor | None, num_items: int, batch_size: int, item_dim: int = 0) -> torch.Tensor:
    r"""
    Merge what each process encoded with `my_batches` into the full result, on every process.

    Args:
        local (`torch.Tensor`, *optional*): this process's batches concatenated along `item_dim`, in its batch order
            (`None` if it had no batch); every other dimension is the same on all processes.
        num_items (`int`), batch_size (`int`): the layout every process used.
        item_dim (`int`): the dimension that indexes items (1 for stacked `(3, items, dim)` pair embeddings).

    Returns:
        `torch.Tensor` with `num_items` along `item_dim`, in item order (CPU).
    """
    _, size = world()
    if size == 1:
        return local
    device = collective_device()
    # Everyone learns the shape and dtype of the non-item dimensions (a process without batches has none of its own).
    infos = [None] * size
    dist.all_gather_object(infos, None if local is None else (list(local.shape), local.dtype))
    full_shape, dtype = next(info for info in infos if info is not None)
    counts = [sum(min(batch_size, num_items - start) for start in range(r * batch_size, num_items, size * batch_size))
              for r in range(size)]
    full_shape[item_dim] = max(counts)
    buffer = torch.zeros(full_shape, dtype=dtype, device=device)
    if local is not None:
        buffer.narrow(item_dim, 0, local.shape[item_dim]).copy_(local.to(device=device, dtype=dtype))
    gathered = [torch.empty_like(buffer) for _ in range(size)]
    dist.all_gather(gathered, buffer)
    # Put the batches back in item order: batch b came from rank b % size, as its (b // size)-th batch.
    pieces = []
    offsets = [0] * size
    for batch_number, start in enumerate(range(0, num_items, batch_size)):
        owner = batch_number % size
        length = min(batch_size, num_items - start)
        pieces.append(gathered[owner].narrow(item_dim, offsets[owner], length))
        offsets[owner] += length
    return torch.cat(pieces, dim=item_dim).cpu()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
