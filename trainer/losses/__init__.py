# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Training losses, one per file. Each is a function of embeddings (`*_loss`) returning `(loss, named_terms)`, and a
module with the common signature `(image_embeds, text_embeds, fused_embeds, temperature)`."""

from .cached import CachedLoss
from .clip import CLIPLoss, clip_loss
from .distributed import all_gather_with_grad, distributed_world
from .gcl import GCLLoss, gcl_loss, gcl_loss_from_candidates

LOSSES = {"gcl": GCLLoss, "clip": CLIPLoss}


def build_loss(
    name: str, pairs=None, weights=None, exclude_other_positive: bool = False, gather_across_devices: bool = True
):
    """The loss module called `name` (`"gcl"` or `"clip"`); `pairs`, `weights` and `exclude_other_positive`
    configure GCL only. `gather_across_devices` uses every process's batch as candidates under torch.distributed."""
    if name == "gcl":
        return GCLLoss(pairs=pairs, weights=weights, exclude_other_positive=exclude_other_positive,
                       gather_across_devices=gather_across_devices)
    if name == "clip":
        return CLIPLoss(gather_across_devices=gather_across_devices)
    raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(LOSSES)}.")


__all__ = [
    "LOSSES",
    "CachedLoss",
    "build_loss",
    "CLIPLoss",
    "clip_loss",
    "GCLLoss",
    "gcl_loss",
    "gcl_loss_from_candidates",
    "all_gather_with_grad",
    "distributed_world",
]
