# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Sigmoid GCL: GCL's 3N × 3N cells scored with SigLIP's pairwise sigmoid loss instead of a softmax.

Every cell is its own binary problem: with `s = e_a^j · e_m^k / τ + b` (learnable τ and bias b),

    L = 1/(3N) · Σ_rows [ Σ_{positive cells} −log σ(s) + Σ_{negative cells} −log σ(−s) ]

where row (a, j) is an anchor, its positives are the same sample's other modalities (2 per row, as in GCL), every
other sample of every modality is a negative, and the anchor's own cell is left out. No row-wise normalisation, so
no softmax over the batch: SigLIP showed this scales to large batches and is robust at small ones. The bias starts
very negative (SigLIP: −10) because negatives outnumber positives 3N − 3 to 2.

Named terms for logging: `loss_{a2b}` = mean over anchors of −log σ(s) at the b-positive, and `loss_negatives` =
mean over rows of the sum over negatives; `L = Σ_pairs loss_{a2b} / 3 + loss_negatives`.

    @inproceedings{zhai2023siglip,
      title     = {Sigmoid Loss for Language Image Pre-Training},
      author    = {Zhai, Xiaohua and Mustafa, Basil and Kolesnikov, Alexander and Beyer, Lucas},
      booktitle = {ICCV},
      year      = {2023}
    }
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modeling_gcl.configuration_gcl import MODALITIES, split_pair

from .gcl import _at_least_float32, _resolve_pairs, _temperature_as_tensor, anchors_and_candidates
from .tiled import check_tile_size, resolve_tile_size
from .tiled_sigmoid import tiled_sigmoid_loss

# SigLIP's initial bias; a pretrained CLIP keeps its own logit scale (≈ 100) as the initial 1/τ.
DEFAULT_SIGMOID_BIAS_INIT = -10.0


def gcl_sigmoid_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    fused_embeds: torch.Tensor,
    temperature: float | torch.Tensor,
    logit_bias: float | torch.Tensor,
    pairs: Sequence[str] | None = None,
    gather_across_devices: bool = False,
    tile_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""
    The sigmoid GCL loss of one batch of pairs.

    Args:
        image_embeds, text_embeds, fused_embeds (`torch.Tensor` of shape `(N, dim)`):
            L2-normalised embeddings; row `j` of each belongs to pair `j`.
        temperature (`float` or scalar `torch.Tensor`): τ (a tensor keeps its gradient).
        logit_bias (`float` or scalar `torch.Tensor`): the bias `b` added to every scaled similarity.
        pairs (`Sequence[str]`, *optional*):
            The positive pairs counted (all six by default). The cells of a pair left out are ignored, neither
            positive nor negative: they hold the same content in another modality.
        gather_across_devices (`bool`, defaults to `False`):
            Under `torch.distributed`, the local anchors are scored against every process's items (gathered with
            gradient), as `gcl_loss` does.
        tile_size (`int`, *optional*): compute the cells in tiles (exact; memory linear in N, see
            `trainer/losses/tiled_sigmoid.py`). Default: untiled up to 16,384 columns, tiles of 4,096 above.

    Returns:
        `(loss, terms)`: the scalar loss (float32, or float64 for float64 inputs) and the detached named terms.
    """
    anchors, candidates, offset = anchors_and_candidates(
        image_embeds, text_embeds, fused_embeds, gather_across_devices, "gcl_sigmoid_loss"
    )
    return gcl_sigmoid_loss_from_candidates(anchors, candidates, offset, temperature, logit_bias, pairs=pairs,
                                            tile_size=tile_size)


def gcl_sigmoid_loss_from_candidates(
    anchors: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor],
    offset: int,
    temperature: float | torch.Tensor,
    logit_bias: float | torch.Tensor,
    pairs: Sequence[str] | None = None,
    tile_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""
    Sigmoid GCL of local anchors `(E_i, E_t, E_it)`, each `(B, dim)`, against candidates `(C_i, C_t, C_it)`, each
    `(M, dim)` with `C_m[offset + j] = E_m[j]`. The logits `[E_i; E_t; E_it] · [C_i; C_t; C_it]ᵀ / τ + b` are
    `3B × 3M`.
    """
    pairs, _ = _resolve_pairs(pairs, None)
    num_anchors, num_candidates = anchors[0].shape[0], candidates[0].shape[0]
    device = anchors[0].device
    tile_size = resolve_tile_size(tile_size, 3 * num_candidates)
    if tile_size is not None:
        shared = candidates is anchors or all(c is a for c, a in zip(candidates, anchors))
        with torch.autocast(device_type=device.type, enabled=False):
            anchors = [_at_least_float32(x) for x in anchors]
            candidates = anchors if shared else [_at_least_float32(x) for x in candidates]
            pair_blocks = [tuple(MODALITIES.index(m) for m in split_pair(name)) for name in pairs]
            loss, terms = tiled_sigmoid_loss(
                anchors, candidates, offset, _temperature_as_tensor(temperature, anchors[0]),
                _temperature_as_tensor(logit_bias, anchors[0]), pair_blocks, tile_size,
            )
        return loss, {**{f"loss_{name}": term for name, term in zip(pairs, terms)}, "loss_negatives": terms[-1]}
    with torch.autocast(device_type=device.type, enabled=False):  # float32 logits, as in gcl_loss
        anchor_matrix = _at_least_float32(torch.cat(list(anchors)))  # (3B, dim)
        candidate_matrix = _at_least_float32(torch.cat(list(candidates)))  # (3M, dim)
        logits = anchor_matrix @ candidate_matrix.T / _temperature_as_tensor(temperature, anchor_matrix)
        logits = logits + _temperature_as_tensor(logit_bias, anchor_matrix)

        sample = torch.arange(num_anchors, device=device)

        def columns(modality: int) -> torch.Tensor:  # the column of sample j of `modality`, for every local j
            return modality * num_candidates + offset + sample

        # −log σ(−s) on every cell, then the cells that are not negatives are zeroed: the anchor itself, and each
        # row's same-sample cells in the other modalities (counted as positives, or ignored for a pair left out).
        negative_losses = F.softplus(logits)  # −log σ(−s)
        not_negative = torch.zeros_like(logits, dtype=torch.bool)
        for a in range(3):
            for b in range(3):
                not_negative[a * num_anchors + sample, columns(b)] = True
        loss_negatives = negative_losses.masked_fill(not_negative, 0.0).sum(dim=1).mean()

        terms = {}
        for name in pairs:
            anchor, positive = split_pair(name)
            a, b = MODALITIES.index(anchor), MODALITIES.index(positive)
            positive_logits = logits[a * num_anchors + sample, columns(b)]
            terms[f"loss_{name}"] = F.softplus(-positive_logits).mean()  # −log σ(s)
        loss = sum(terms.values()) / 3 + loss_negatives
        terms["loss_negatives"] = loss_negatives
    return loss, {key: value.detach() for key, value in terms.items()}


class GCLSigmoidLoss(nn.Module):
    """The sigmoid GCL loss as a module: `GCLSigmoidLoss(pairs)(image, text, fused, temperature, logit_bias=b)`.

    The bias is a parameter of the model (`GCLModel.logit_bias`, created from `config.sigmoid_bias_init`), so it is
    saved, resumed and published with the weights, like SigLIP's."""

    name = "gcl_sigmoid"
    uses_logit_bias = True

    def __init__(self, pairs: Sequence[str] | None = None, gather_across_devices: bool = True,
                 tile_size: int | None = None):
        super().__init__()
        self.pairs, _ = _resolve_pairs(pairs, None)
        self.gather_across_devices = gather_across_devices
        self.tile_size = check_tile_size(tile_size)

    def forward(self, image_embeds, text_embeds, fused_embeds, temperature, logit_bias=None):
        if logit_bias is None:
            raise ValueError(
                "gcl_sigmoid needs the model's learnable logit bias: build the model with "
                "GCLConfig(sigmoid_bias_init=-10.0) or call model.add_logit_bias() (gcl-train does this for "
                "--loss gcl_sigmoid)."
            )
        return gcl_sigmoid_loss(
            image_embeds, text_embeds, fused_embeds, temperature, logit_bias,
            pairs=self.pairs, gather_across_devices=self.gather_across_devices, tile_size=self.tile_size,
        )

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, gather_across_devices={self.gather_across_devices}, tile_size={self.tile_size}"
