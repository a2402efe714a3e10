# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Exact softmax contrastive losses (GCL, CLIP) computed tile by tile, with a hand-written backward.

The logits of a contrastive loss are `A · Cᵀ / τ`: the stacked anchor blocks (one per modality, each `B × d`) against
the stacked candidate blocks (each `M × d`). Autograd through `log_softmax` holds that matrix several times over (the
logits, the log-probabilities, one full-size zero-filled gradient per positive lookup). Here a custom
`torch.autograd.Function` computes, per row, the log-sum-exp over the row's *negatives* online, tile by tile (Inf-CL,
Cheng et al., 2024), and the row's few same-sample logits (its positives, and the anchor itself, which is masked) as
`B`-vectors. Each term's denominator is then `log(exp(LSE_neg) + Σ exp(s_same))` over the same-sample cells that term
counts, so `exclude_other_positive` costs nothing. The backward recomputes each tile and forms
`softmax − target` on the fly; the temperature's gradient comes from the identity `Σ G∘S = ⟨A, G·C⟩ / τ`, in the same
pass. Peak memory is `O((B + M)·d + tile²)` instead of `O(B·M)`.

Without a tile size the same code runs with one tile per block pair and keeps the tiles from the forward (the
exponentials, rescaled in place into `softmax − target` in the backward): one `3B × 3M` buffer and no recomputation,
the lean untiled path.

    @article{cheng2024infcl,
      title   = {Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss},
      author  = {Cheng, Zesen and Zhang, Hang and Li, Kehan and Leng, Sicong and Hu, Zhiqiang and Wu, Fei and
                 Zhao, Deli and Li, Xin and Bing, Lidong},
      journal = {arXiv:2410.17243},
      year    = {2024}
    }
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Automatic tiling (`tile_size=None`): above this many columns in the logit matrix (3M for GCL, M for CLIP) the loss
# is tiled with DEFAULT_TILE_SIZE. At the threshold the untiled float32 buffer of a GCL batch is 16,384² · 4 B = 1 GiB;
# tiles of 4,096² hold 64 MiB and are large enough that the matrix products stay efficient.
AUTO_TILE_CANDIDATES = 16384
DEFAULT_TILE_SIZE = 4096


def check_tile_size(tile_size) -> int | None:
    """`tile_size` as given if it is `None` (automatic) or a positive integer; otherwise a one-line error."""
    if tile_size is None:
        return None
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"loss_tile_size must be a positive integer (or unset for automatic tiling), got {tile_size!r}.")
    return tile_size


def resolve_tile_size(tile_size: int | None, num_columns: int) -> int | None:
    """The tile size to use for a logit matrix with `num_columns` columns: `None` (untiled) when automatic and the
    matrix is small, `DEFAULT_TILE_SIZE` when automatic and large, else `tile_size`. A tile larger than the batch is
    one tile."""
    tile_size = check_tile_size(tile_size)
    if tile_size is None and num_columns > AUTO_TILE_CANDIDATES:
        return DEFAULT_TILE_SIZE
    return tile_size


@dataclass(frozen=True)
class SoftmaxLossSpec:
    """What the kernel computes, beyond the embeddings.

    Attributes:
        offset: where the local anchors' rows start in the candidate blocks (`C_m[offset + j] = A_m[j]`).
        spans: per anchor block `a`, the candidate blocks its softmax spans (block `a` is its own modality: its cell
            at sample `j` is the anchor itself and is masked).
        pairs: `(anchor block, positive block, weight)` with the weights summing to 1.
        exclude_other_positive: drop a row's other same-sample cells (not the anchor, not the positive) from each
            term's denominator.
        tile_size: the side of a tile, or `None` for one tile per block pair kept for the backward.
    """

    offset: int
    spans: tuple[tuple[int, ...], ...]
    pairs: tuple[tuple[int, int, float], ...]
    exclude_other_positive: bool
    tile_size: int | None

    def denominator_blocks(self, anchor: int, positive: int) -> tuple[int, ...]:
        """The same-sample cells a term's denominator counts: its positive, and the row's other positives unless
        they are excluded. The anchor itself never counts."""
        others = () if self.exclude_other_positive else tuple(
            c for c in self.spans[anchor] if c not in (anchor, positive))
        return (positive, *others)


def _chunks(length: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def _tile_logits(buffer: torch.Tensor | None, scaled_rows: torch.Tensor, columns: torch.Tensor,
                 diagonal: int) -> torch.Tensor:
    """`scaled_rows · columnsᵀ` (the rows already divided by τ; into `buffer` when given), with the same-sample
    cells, which lie on one diagonal of the tile, set to −inf."""
    shape = (scaled_rows.shape[0], columns.shape[0])
    out = buffer[: shape[0] * shape[1]].view(shape) if buffer is not None else scaled_rows.new_empty(shape)
    torch.mm(scaled_rows, columns.T, out=out)  # (addmm with alpha and out= is ~100x slower on the CPU)
    out.diagonal(diagonal).fill_(float("-inf"))  # empty when the tile holds none
    return out


def _finite_or_zero(values: torch.Tensor) -> torch.Tensor:
    """A row shift for exponentials: a row whose cells are all −inf is shifted by 0 (its exponentials are 0)."""
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))


class TiledSoftmaxLoss(torch.autograd.Function):
    """`(loss, terms) = TiledSoftmaxLoss.apply(temperature, spec, shared, *anchor_blocks[, *candidate_blocks])`.

    `temperature` is a 0-dim tensor; with `shared` the anchors are the candidates (one process) and only the anchor
    blocks are passed. `terms` holds each pair's mean −log p over the `B` anchors (not differentiable)."""

    @staticmethod
    def forward(ctx, temperature, spec: SoftmaxLossSpec, shared: bool, *blocks):
        num_blocks = len(spec.spans)
        anchors = blocks[:num_blocks]
        candidates = anchors if shared else blocks[num_blocks:]
        num_anchors, num_candidates = anchors[0].shape[0], candidates[0].shape[0]
        if spec.offset + num_anchors > num_candidates:
            raise ValueError(f"{num_anchors} anchors from offset {spec.offset} do not fit in {num_candidates} "
                             "candidates.")
        inv_tau = 1.0 / float(temperature)
        offset = spec.offset
        active = sorted({a for a, _, _ in spec.pairs})  # anchor blocks with a term; the others need no rows
        # Scaling the B × d rows by 1/τ once is cheaper than scaling every tile.
        scaled = {a: anchors[a] * inv_tau for a in active}

        same = {}  # (a, c) -> the B same-sample logits of anchor block a in candidate block c (c != a)
        for a in active:
            for c in spec.spans[a]:
                if c != a:
                    same[(a, c)] = (scaled[a] * candidates[c][offset: offset + num_anchors]).sum(-1)

        keep = spec.tile_size is None
        tile = max(num_anchors, num_candidates) if keep else spec.tile_size
        buffer = None if keep else anchors[0].new_empty(min(tile, num_anchors) * min(tile, num_candidates))
        negatives_lse, kept = {}, {}
        for a in active:
            lse = anchors[a].new_full((num_anchors,), float("-inf"))
            for j0, j1 in _chunks(num_anchors, tile):
                for c in spec.spans[a]:
                    for k0, k1 in _chunks(num_candidates, tile):
                        logits = _tile_logits(buffer, scaled[a][j0:j1], candidates[c][k0:k1], offset + j0 - k0)
                        shift = _finite_or_zero(logits.amax(dim=1))
                        exps = logits.sub_(shift[:, None]).exp_()
                        lse[j0:j1] = torch.logaddexp(lse[j0:j1], exps.sum(dim=1).log() + shift)
                        if keep:
                            kept[(a, j0, c, k0)] = (exps, shift)
            negatives_lse[a] = lse

        term_lse = []  # per pair: the B log-denominators
        terms = []
        for a, b, _ in spec.pairs:
            parts = [negatives_lse[a]] + [same[(a, c)] for c in spec.denominator_blocks(a, b)]
            denominator = torch.logsumexp(torch.stack(parts), dim=0)
            term_lse.append(denominator)
            terms.append((denominator - same[(a, b)]).mean())
        terms = torch.stack(terms)
        weights = terms.new_tensor([w for _, _, w in spec.pairs])
        loss = (terms * weights).sum()

        ctx.spec, ctx.shared, ctx.inv_tau, ctx.tile, ctx.active = spec, shared, inv_tau, tile, active
        ctx.negatives_lse, ctx.same, ctx.term_lse, ctx.kept = negatives_lse, same, term_lse, kept
        ctx.num_blocks = num_blocks
        ctx.save_for_backward(*blocks)
        ctx.mark_non_differentiable(terms)
        return loss, terms

    @staticmethod
    def backward(ctx, grad_loss, _grad_terms):
        spec, inv_tau, tile = ctx.spec, ctx.inv_tau, ctx.tile
        blocks = ctx.saved_tensors
        anchors = blocks[: ctx.num_blocks]
        candidates = anchors if ctx.shared else blocks[ctx.num_blocks:]
        num_anchors, num_candidates = anchors[0].shape[0], candidates[0].shape[0]
        offset = spec.offset
        keep = spec.tile_size is None

        # d loss / d logit: per row, `row_scale · exp(s − LSE_neg)` on the negatives, and `same_grads` on the row's
        # same-sample cells (softmax minus the positive's target, summed over the row's terms).
        row_scale = {a: torch.zeros_like(ctx.negatives_lse[a]) for a in ctx.active}
        same_grads = {key: torch.zeros_like(value) for key, value in ctx.same.items()}
        for (a, b, weight), denominator in zip(spec.pairs, ctx.term_lse):
            coefficient = grad_loss * (weight / num_anchors)
            row_scale[a] += coefficient * torch.exp(ctx.negatives_lse[a] - denominator)
            for c in spec.denominator_blocks(a, b):
                same_grads[(a, c)] += coefficient * torch.exp(ctx.same[(a, c)] - denominator)
            same_grads[(a, b)] -= coefficient

        # Gradients with respect to A and C without the 1/τ factor (applied once at the end).
        anchor_grads = [torch.zeros_like(x) for x in anchors]
        candidate_grads = anchor_grads if ctx.shared else [torch.zeros_like(x) for x in candidates]
        # The kept tiles are turned into gradients in place; a second backward (retain_graph) recomputes them.
        buffer = None
        scaled = {a: anchors[a] * inv_tau for a in ctx.active}  # bit-identical to the forward's
        for a in ctx.active:
            finite_lse = _finite_or_zero(ctx.negatives_lse[a])
            for j0, j1 in _chunks(num_anchors, tile):
                for c in spec.spans[a]:
                    for k0, k1 in _chunks(num_candidates, tile):
                        entry = ctx.kept.pop((a, j0, c, k0), None)
                        if entry is None and buffer is None:
                            buffer = anchors[0].new_empty(min(tile, num_anchors) * min(tile, num_candidates))
                        if entry is None and not keep:
                            logits = _tile_logits(buffer, scaled[a][j0:j1], candidates[c][k0:k1], offset + j0 - k0)
                            grads = logits.sub_(finite_lse[j0:j1, None]).exp_().mul_(row_scale[a][j0:j1, None])
                        else:
                            if entry is None:  # a second backward: recompute the kept tile as the forward made it
                                logits = _tile_logits(buffer, scaled[a][j0:j1], candidates[c][k0:k1],
                                                      offset + j0 - k0)
                                shift = _finite_or_zero(logits.amax(dim=1))
                                entry = (logits.sub_(shift[:, None]).exp_(), shift)
                            grads, shift = entry
                            grads.mul_((row_scale[a][j0:j1] * torch.exp(shift - finite_lse[j0:j1]))[:, None])
                        anchor_grads[a][j0:j1].addmm_(grads, candidates[c][k0:k1])
                        candidate_grads[c][k0:k1].addmm_(grads.T, anchors[a][j0:j1])
                        del grads, entry
        for (a, c), grads in same_grads.items():
            anchor_grads[a].addcmul_(grads[:, None], candidates[c][offset: offset + num_anchors])
            candidate_grads[c][offset: offset + num_anchors].addcmul_(grads[:, None], anchors[a])

        grad_temperature = None
        if ctx.needs_input_grad[0]:
            # Σ_cells G·S = ⟨A, G·C⟩ / τ; with shared blocks the buffer holds G·C + Gᵀ·A, whose product with the
            # embeddings is twice that.
            pairing = sum((x * g).sum() for x, g in zip(anchors, anchor_grads))
            if ctx.shared:
                pairing = pairing / 2
            grad_temperature = -pairing * inv_tau * inv_tau
        for g in anchor_grads:
            g.mul_(inv_tau)
        if not ctx.shared:
            for g in candidate_grads:
                g.mul_(inv_tau)
        block_grads = anchor_grads if ctx.shared else anchor_grads + candidate_grads
        return (grad_temperature, None, None, *block_grads)


def softmax_contrastive_loss(
    anchors: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor],
    offset: int,
    temperature: torch.Tensor,
    spans: Sequence[Sequence[int]],
    pairs: Sequence[tuple[int, int, float]],
    exclude_other_positive: bool = False,
    tile_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    A multi-positive softmax loss over anchor blocks against candidate blocks, exactly, in tiles or untiled.

    Args:
        anchors (`Sequence[torch.Tensor]`): `K` blocks of shape `(B, d)`, float32 or float64, one per modality.
        candidates (`Sequence[torch.Tensor]`): `K` blocks of shape `(M, d)` with `candidates[m][offset + j]` the same
            item as `anchors[m][j]` (pass the anchors themselves in one process: they are then held once).
        offset (`int`): this process's first row in the candidates.
        temperature (0-dim `torch.Tensor`): τ, of the blocks' dtype; its gradient is returned if it requires one.
        spans: per anchor block, the candidate blocks in its softmax.
        pairs: `(anchor block, positive block, weight)`; the loss is `Σ w·term / Σ w`.
        exclude_other_positive (`bool`): see `SoftmaxLossSpec`.
        tile_size (`int`, *optional*): tile side; `None` is untiled (one buffer of all logits, no recomputation).

    Returns:
        `(loss, terms)`: the scalar loss and the detached per-pair terms (mean −log p over the `B` anchors).
    """
    total = sum(w for _, _, w in pairs)
    spec = SoftmaxLossSpec(
        offset=offset, spans=tuple(tuple(s) for s in spans),
        pairs=tuple((a, b, float(w) / total) for a, b, w in pairs),
        exclude_other_positive=exclude_other_positive, tile_size=check_tile_size(tile_size),
    )
    shared = candidates is anchors or all(c is a for c, a in zip(candidates, anchors))
    blocks = tuple(anchors) if shared else (*anchors, *candidates)
    return TiledSoftmaxLoss.apply(temperature, spec, shared, *blocks)
