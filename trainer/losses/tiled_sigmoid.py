# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Sigmoid GCL computed tile by tile, with a hand-written backward: memory linear in the batch.

Sigmoid GCL scores every cell on its own (`−log σ(−s)` for a negative, `−log σ(s)` for a positive, see
`gcl_sigmoid.py`), so no row statistic couples the tiles: the forward sums `softplus(s)` over each tile's negatives,
the backward recomputes each tile and uses `d softplus(s) / ds = σ(s)`. The positives are `B`-vectors of row-wise dot
products. The temperature's gradient comes from `Σ G∘(A·Cᵀ) = ⟨A, G·C⟩`, the bias's from `Σ G`.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .tiled import _chunks, _tile_logits


class TiledSigmoidLoss(torch.autograd.Function):
    """`(loss, terms) = TiledSigmoidLoss.apply(temperature, logit_bias, offset, pairs, tile_size, shared, *blocks)`:
    three anchor blocks (and, unless `shared`, three candidate blocks); `pairs` are `(anchor, positive)` block
    indices; `terms` holds each pair's mean `−log σ(s)` and, last, the mean over rows of the negatives' sum."""

    @staticmethod
    def forward(ctx, temperature, logit_bias, offset: int, pairs, tile_size: int, shared: bool, *blocks):
        anchors = blocks[:3]
        candidates = anchors if shared else blocks[3:]
        num_anchors, num_candidates = anchors[0].shape[0], candidates[0].shape[0]
        inv_tau, bias = 1.0 / float(temperature), float(logit_bias)
        buffer = anchors[0].new_empty(min(tile_size, num_anchors) * min(tile_size, num_candidates))
        scaled = [x * inv_tau for x in anchors]  # the rows divided by τ once, not every tile
        negatives = anchors[0].new_zeros(())
        for a in range(3):
            for j0, j1 in _chunks(num_anchors, tile_size):
                for c in range(3):
                    for k0, k1 in _chunks(num_candidates, tile_size):
                        # Same-sample cells are −inf (softplus 0): they are positives, or ignored.
                        logits = _tile_logits(buffer, scaled[a][j0:j1], candidates[c][k0:k1],
                                              offset + j0 - k0).add_(bias)
                        negatives = negatives + F.softplus(logits).sum()
        negatives = negatives / (3 * num_anchors)
        positive_logits = [
            (scaled[a] * candidates[b][offset: offset + num_anchors]).sum(-1) + bias for a, b in pairs
        ]
        terms = torch.stack([F.softplus(-s).mean() for s in positive_logits] + [negatives])
        loss = terms[:-1].sum() / 3 + negatives
        ctx.offset, ctx.pairs, ctx.tile_size, ctx.shared, ctx.inv_tau, ctx.bias = offset, pairs, tile_size, shared, \
            inv_tau, bias
        ctx.positive_logits = positive_logits
        ctx.save_for_backward(*blocks)
        ctx.mark_non_differentiable(terms)
        return loss, terms

    @staticmethod
    def backward(ctx, grad_loss, _grad_terms):
        blocks = ctx.saved_tensors
        anchors = blocks[:3]
        candidates = anchors if ctx.shared else blocks[3:]
        num_anchors, num_candidates = anchors[0].shape[0], candidates[0].shape[0]
        offset, tile_size, inv_tau = ctx.offset, ctx.tile_size, ctx.inv_tau
        anchor_grads = [torch.zeros_like(x) for x in anchors]
        candidate_grads = anchor_grads if ctx.shared else [torch.zeros_like(x) for x in candidates]
        buffer = anchors[0].new_empty(min(tile_size, num_anchors) * min(tile_size, num_candidates))
        negative_scale = grad_loss / (3 * num_anchors)
        scaled = [x * inv_tau for x in anchors]
        grad_bias = anchors[0].new_zeros(())
        for a in range(3):
            for j0, j1 in _chunks(num_anchors, tile_size):
                for c in range(3):
                    for k0, k1 in _chunks(num_candidates, tile_size):
                        logits = _tile_logits(buffer, scaled[a][j0:j1], candidates[c][k0:k1],
                                              offset + j0 - k0).add_(ctx.bias)
                        grads = logits.sigmoid_().mul_(negative_scale)
                        grad_bias = grad_bias + grads.sum()
                        anchor_grads[a][j0:j1].addmm_(grads, candidates[c][k0:k1])
                        candidate_grads[c][k0:k1].addmm_(grads.T, anchors[a][j0:j1])
        for (a, b), logits in zip(ctx.pairs, ctx.positive_logits):
            grads = -torch.sigmoid(-logits) * (grad_loss / (3 * num_anchors))  # d softplus(−s)/3 / ds, mean over B
            grad_bias = grad_bias + grads.sum()
            anchor_grads[a].addcmul_(grads[:, None], candidates[b][offset: offset + num_anchors])
            candidate_grads[b][offset: offset + num_anchors].addcmul_(grads[:, None], anchors[a])
        grad_temperature = None
        if ctx.needs_input_grad[0]:
            pairing = sum((x * g).sum() for x, g in zip(anchors, anchor_grads))
            grad_temperature = -(pairing / 2 if ctx.shared else pairing) * inv_tau * inv_tau
        for g in anchor_grads if ctx.shared else anchor_grads + candidate_grads:
            g.mul_(inv_tau)
        block_grads = anchor_grads if ctx.shared else anchor_grads + candidate_grads
        return (grad_temperature, grad_bias if ctx.needs_input_grad[1] else None, None, None, None, None,
                *block_grads)


def tiled_sigmoid_loss(
    anchors: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor],
    offset: int,
    temperature: torch.Tensor,
    logit_bias: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    tile_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid GCL of anchor blocks `(E_i, E_t, E_it)` (each `(B, d)`, float32/64) against candidate blocks (each
    `(M, d)`, pass the anchors themselves in one process), in `tile_size` tiles. `temperature` and `logit_bias` are
    0-dim tensors of the blocks' dtype. Returns `(loss, terms)` with one term per pair, then the negatives' term."""
    shared = candidates is anchors or all(c is a for c, a in zip(candidates, anchors))
    blocks = tuple(anchors) if shared else (*anchors, *candidates)
    return TiledSigmoidLoss.apply(temperature, logit_bias, offset, tuple(pairs), tile_size, shared, *blocks)
