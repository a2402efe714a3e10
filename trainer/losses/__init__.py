# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Training losses, one per file. Each is a function of embeddings (`*_loss`) returning `(loss, named_terms)`, and a
module with the common signature `(image_embeds, text_embeds, fused_embeds, temperature)`."""

from .clip import CLIPLoss, clip_loss
from .gcl import GCLLoss, gcl_loss

LOSSES = {"gcl": GCLLoss, "clip": CLIPLoss}


def build_loss(name: str, pairs=None, weights=None, exclude_other_positive: bool = False):
    """The loss module called `name` (`"gcl"` or `"clip"`); `pairs`, `weights` and `exclude_other_positive`
    configure GCL only."""
    if name == "gcl":
        return GCLLoss(pairs=pairs, weights=weights, exclude_other_positive=exclude_other_positive)
    if name == "clip":
        return CLIPLoss()
    raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(LOSSES)}.")


__all__ = ["LOSSES", "build_loss", "CLIPLoss", "clip_loss", "GCLLoss", "gcl_loss"]
