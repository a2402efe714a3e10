# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Generalized Contrastive Learning loss (Lee et al., NeurIPS 2025, arXiv:2509.25638, Eq. 2).

For N image–caption pairs with L2-normalised embeddings e_i^j (image), e_t^j (text) and e_it^j (fused):

    L = −1/(6N) · Σ_j Σ_{(a,b)∈P} log [ exp(e_a^j·e_b^j / τ) / Σ_{m∈{i,t,it}} Σ_k exp(e_a^j·e_m^k / τ) ]

with P the six ordered pairs of different modalities and the anchor itself (m = a, k = j) left out of the
denominator. In matrix form: stack E = [E_i; E_t; E_it] (3N × d), S = E·Eᵀ/τ with the diagonal masked, row-wise
log-softmax, and the mean of −log p over the 6N positive cells (same sample, other modality).

    @inproceedings{lee2025gcl,
      title     = {Generalized Contrastive Learning for Universal Multimodal Retrieval},
      author    = {Lee, Jungsoo and Cho, Janghoon and Park, Hyojin and Hayat, Munawar and Hwang, Kyuwoong and
                   Porikli, Fatih and Choi, Sungha},
      booktitle = {Advances in Neural Information Processing Systems},
      year      = {2025}
    }
"""

from collections.abc import Sequence

import torch
from torch import nn

from modeling_gcl.configuration_gcl import ALL_LOSS_PAIRS, MODALITIES, check_loss_modalities, split_pair

from .distributed import all_gather_columns_with_grad
from .tiled import check_tile_size, resolve_tile_size, softmax_contrastive_loss


def _at_least_float32(embeds: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32; keep float32 and float64 as they are."""
    return embeds.to(torch.promote_types(embeds.dtype, torch.float32))


def _temperature_as_tensor(temperature: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(temperature, torch.Tensor):
        return temperature.to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(temperature), device=like.device, dtype=like.dtype)


def _resolve_pairs(
    pairs: Sequence[str] | None, weights: Sequence[float] | None
) -> tuple[list[str], list[float]]:
    pairs = list(ALL_LOSS_PAIRS) if pairs is None else list(pairs)
    if not pairs:
        raise ValueError("gcl_loss: `pairs` is empty.")
    for name in pairs:
        split_pair(name)
    weights = [1.0] * len(pairs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(pairs):
        raise ValueError(f"gcl_loss: {len(weights)} weights for {len(pairs)} pairs.")
    if sum(weights) <= 0:
        raise ValueError(f"gcl_loss: the weights must sum to a positive number, got {weights}.")
    return pairs, weights


def anchors_and_candidates(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    fused_embeds: torch.Tensor,
    gather_across_devices: bool,
    loss_name: str,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], int]:
    """`(anchors, candidates, offset)` for a loss over the three columns: the local `(E_i, E_t, E_it)` as anchors, and
    as candidates the same columns, or under torch.distributed with `gather_across_devices` every process's columns
    (gathered with gradient; batch sizes may differ between processes), this process's rows starting at `offset`."""
    num_pairs = image_embeds.shape[0]
    if not (text_embeds.shape[0] == fused_embeds.shape[0] == num_pairs):
        raise ValueError(
            f"{loss_name}: batch sizes differ: image {image_embeds.shape[0]}, text {text_embeds.shape[0]}, "
            f"fused {fused_embeds.shape[0]}."
        )
    anchors = (image_embeds, text_embeds, fused_embeds)
    if not gather_across_devices:
        return anchors, anchors, 0
    candidates, offset = all_gather_columns_with_grad(anchors)
    return anchors, candidates, offset


def gcl_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    fused_embeds: torch.Tensor,
    temperature: float | torch.Tensor,
    pairs: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    exclude_other_positive: bool = False,
    gather_across_devices: bool = False,
    modalities: Sequence[str] | None = None,
    tile_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""
    The GCL loss of one batch of pairs.

    Args:
        image_embeds, text_embeds, fused_embeds (`torch.Tensor` of shape `(N, dim)`):
            L2-normalised embeddings; row `j` of each belongs to pair `j`.
        temperature (`float` or scalar `torch.Tensor`):
            τ. A tensor (e.g. `1 / logit_scale.exp()`) keeps its gradient.
        pairs (`Sequence[str]`, *optional*):
            The positive pairs counted, from `i2t, i2it, t2i, t2it, it2i, it2t` (all six by default). The
            denominator always spans all 3N − 1 other items.
        weights (`Sequence[float]`, *optional*):
            One weight per pair; the loss is `Σ w_p · term_p / Σ w_p`, which is Eq. 2 when all six weigh 1.
        exclude_other_positive (`bool`, *optional*, defaults to `False`):
            Drop the anchor's other positive (the third modality of the same sample) from each term's denominator.
            Eq. 2 keeps it.
        gather_across_devices (`bool`, *optional*, defaults to `False`):
            Under `torch.distributed`, score the local anchors against the candidates of all W processes
            (3·W·N − 1 negatives and positives per anchor; memory `3N × 3WN`, linear in W). A no-op in one process.
        modalities (`Sequence[str]`, *optional*):
            The modalities the softmax spans (all of `i, t, it` by default). `("i", "t")` with pairs `i2t, t2i` is
            the 2N × 2N image–text matrix with the anchor masked: CL plus intra-modality separation (an ablation).
        tile_size (`int`, *optional*):
            Compute the logits in tiles of `tile_size × tile_size` (the exact loss and gradients with memory linear in
            N; see `trainer/losses/tiled.py`). Default: untiled up to `AUTO_TILE_CANDIDATES` (16,384) columns, tiles
            of `DEFAULT_TILE_SIZE` (4,096) above.

    Returns:
        `(loss, terms)`: the scalar loss (float32, or float64 for float64 inputs) and `{"loss_i2t": ..., ...}`, each
        term the mean over the N local anchors of −log p at its positive (detached).
    """
    anchors, candidates, offset = anchors_and_candidates(
        image_embeds, text_embeds, fused_embeds, gather_across_devices, "gcl_loss"
    )
    return gcl_loss_from_candidates(
        anchors, candidates, offset, temperature, pairs=pairs, weights=weights,
        exclude_other_positive=exclude_other_positive, modalities=modalities, tile_size=tile_size,
    )


def gcl_loss_from_candidates(
    anchors: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor],
    offset: int,
    temperature: float | torch.Tensor,
    pairs: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    exclude_other_positive: bool = False,
    modalities: Sequence[str] | None = None,
    tile_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""
    GCL of local anchors against a (possibly larger) candidate set that contains them.

    Args:
        anchors: `(E_i, E_t, E_it)`, each `(B, dim)`: the anchors of this process.
        candidates: `(C_i, C_t, C_it)`, each `(M, dim)`, with `C_m[offset + j] = E_m[j]` (M = W·B when gathered).
        offset (`int`): where this process's rows start in the candidates (`rank · B`).

    The logits are `[E_i; E_t; E_it] · [C_i; C_t; C_it]ᵀ / τ` (3B × 3M). Row `(a, j)` masks its own column
    `a·M + offset + j`; its positive for pair `a2b` is column `b·M + offset + j`. With `modalities`, only those
    blocks are stacked (`a`, `b` then index the kept modalities). The loss is computed by the exact kernel of
    `trainer/losses/tiled.py` (hand-written backward; tiled with `tile_size`).
    """
    pairs, weights = _resolve_pairs(pairs, weights)
    modalities = check_loss_modalities(MODALITIES if modalities is None else modalities, pairs)
    kept = [MODALITIES.index(m) for m in modalities]
    shared = candidates is anchors or all(c is a for c, a in zip(candidates, anchors))
    num_blocks = len(kept)
    # Logits and softmax in float32 even under bf16/fp16 autocast: τ = 0.01–0.05 overflows half precision.
    with torch.autocast(device_type=anchors[0].device.type, enabled=False):
        anchors = [_at_least_float32(anchors[m]) for m in kept]
        candidates = anchors if shared else [_at_least_float32(candidates[m]) for m in kept]
        pair_blocks = []
        for name, weight in zip(pairs, weights):
            anchor, positive = split_pair(name)
            pair_blocks.append((modalities.index(anchor), modalities.index(positive), weight))
        loss, terms = softmax_contrastive_loss(
            anchors, candidates, offset, _temperature_as_tensor(temperature, anchors[0]),
            spans=[range(num_blocks)] * num_blocks, pairs=pair_blocks, exclude_other_positive=exclude_other_positive,
            tile_size=resolve_tile_size(tile_size, num_blocks * candidates[0].shape[0]),
        )
    return loss, {f"loss_{name}": term for name, term in zip(pairs, terms)}


class GCLLoss(nn.Module):
    """The GCL loss as a module configured once: `GCLLoss(pairs, weights)(image, text, fused, temperature)`."""

    name = "gcl"

    def __init__(
        self,
        pairs: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        exclude_other_positive: bool = False,
        gather_across_devices: bool = True,
        modalities: Sequence[str] | None = None,
        tile_size: int | None = None,
    ):
        super().__init__()
        self.pairs, self.weights = _resolve_pairs(pairs, weights)
        self.tile_size = check_tile_size(tile_size)
        self.modalities = check_loss_modalities(MODALITIES if modalities is None else modalities, self.pairs)
        self.exclude_other_positive = exclude_other_positive
        self.gather_across_devices = gather_across_devices

    def forward(self, image_embeds, text_embeds, fused_embeds, temperature):
        return gcl_loss(
            image_embeds,
            text_embeds,
            fused_embeds,
            temperature,
            pairs=self.pairs,
            weights=self.weights,
            exclude_other_positive=self.exclude_other_positive,
            gather_across_devices=self.gather_across_devices,
            modalities=self.modalities,
            tile_size=self.tile_size,
        )

    def extra_repr(self) -> str:
        return (
            f"pairs={self.pairs}, weights={self.weights}, modalities={self.modalities}, "
            f"exclude_other_positive={self.exclude_other_positive}, "
            f"gather_across_devices={self.gather_across_devices}, tile_size={self.tile_size}"
        )
