# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Training losses, one per file. Each is a function of embeddings (`*_loss`) returning `(loss, named_terms)`, and a
module with the common signature `(image_embeds, text_embeds, fused_embeds, temperature)`."""

from .cached import CachedLoss
from .clip import CLIPLoss, clip_loss
from .distributed import all_gather_columns_with_grad, all_gather_with_grad, distributed_world
from .gcl import GCLLoss, gcl_loss, gcl_loss_from_candidates
from .gcl_sigmoid import DEFAULT_SIGMOID_BIAS_INIT, GCLSigmoidLoss, gcl_sigmoid_loss, gcl_sigmoid_loss_from_candidates
from .tiled import AUTO_TILE_CANDIDATES, DEFAULT_TILE_SIZE, check_tile_size, softmax_contrastive_loss

LOSSES = {"gcl": GCLLoss, "clip": CLIPLoss, "gcl_sigmoid": GCLSigmoidLoss}


def build_loss(
    name: str, pairs=None, weights=None, exclude_other_positive: bool = False, gather_across_devices: bool = True,
    modalities=None, tile_size: int | None = None,
):
    """The loss module called `name` (`"gcl"`, `"clip"` or `"gcl_sigmoid"`). `pairs` configures both GCL losses;
    `weights`, `exclude_other_positive` and `modalities` the softmax GCL only. `gather_across_devices` uses every
    process's batch as candidates under torch.distributed. `tile_size` computes any of them in exact tiles of that
    side (`None`: automatic, tiled above `AUTO_TILE_CANDIDATES` columns; see `trainer/losses/tiled.py`)."""
    check_tile_size(tile_size)
    if name == "gcl":
        return GCLLoss(pairs=pairs, weights=weights, exclude_other_positive=exclude_other_positive,
                       gather_across_devices=gather_across_devices, modalities=modalities, tile_size=tile_size)
    if name == "clip":
        return CLIPLoss(gather_across_devices=gather_across_devices, tile_size=tile_size)
    if name == "gcl_sigmoid":
        unsupported = {"loss_weights": weights, "exclude_other_positive": exclude_other_positive or None,
                       "loss_modalities": None if modalities is None or list(modalities) == ["i", "t", "it"]
                       else modalities}
        given = [key for key, value in unsupported.items() if value is not None]
        if given:
            raise ValueError(f"The gcl_sigmoid loss has no {', '.join(given)} option (each cell is scored on its own).")
        return GCLSigmoidLoss(pairs=pairs, gather_across_devices=gather_across_devices, tile_size=tile_size)
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
    "DEFAULT_SIGMOID_BIAS_INIT",
    "GCLSigmoidLoss",
    "gcl_sigmoid_loss",
    "gcl_sigmoid_loss_from_candidates",
    "AUTO_TILE_CANDIDATES",
    "DEFAULT_TILE_SIZE",
    "check_tile_size",
    "softmax_contrastive_loss",
    "all_gather_columns_with_grad",
    "all_gather_with_grad",
    "distributed_world",
]
