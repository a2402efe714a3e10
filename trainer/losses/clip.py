# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The "+CL" baseline of the GCL paper: CLIP's symmetric InfoNCE over the N×N image↔text matrix.

The denominator spans the key modality only (texts for an image anchor, images for a text anchor), which is why it
is *not* GCL restricted to the pairs {i2t, t2i}: GCL's denominator spans all 3N − 1 items.

    @inproceedings{radford2021clip,
      title     = {Learning Transferable Visual Models From Natural Language Supervision},
      author    = {Radford, Alec and others},
      booktitle = {ICML},
      year      = {2021}
    }
"""

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_gather_columns_with_grad
from .gcl import _at_least_float32, _temperature_as_tensor
from .tiled import check_tile_size, resolve_tile_size, softmax_contrastive_loss


def clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    temperature: float | torch.Tensor,
    gather_across_devices: bool = False,
    tile_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""
    Symmetric InfoNCE: `(CE(S, diag) + CE(Sᵀ, diag)) / 2` with `S = E_i·E_tᵀ / τ`.

    Args:
        image_embeds, text_embeds (`torch.Tensor` of shape `(N, dim)`): L2-normalised, row `j` of each is pair `j`.
        temperature (`float` or scalar `torch.Tensor`): τ.
        gather_across_devices (`bool`, defaults to `False`): under `torch.distributed`, score the local anchors against
            the other modality of all processes (gathered with gradient).
        tile_size (`int`, *optional*): compute each N × N softmax in tiles (exact; memory linear in N, see
            `trainer/losses/tiled.py`). Default: untiled up to 16,384 candidates, tiles of 4,096 above.

    Returns:
        `(loss, {"loss_i2t": ..., "loss_t2i": ...})`, computed in float32 (float64 for float64 inputs).
    """
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(f"clip_loss: {image_embeds.shape[0]} images for {text_embeds.shape[0]} texts.")
    if gather_across_devices:  # batch sizes may differ between processes
        (all_images, all_texts), offset = all_gather_columns_with_grad((image_embeds, text_embeds))
    else:
        all_images, all_texts, offset = image_embeds, text_embeds, 0
    device = image_embeds.device
    shared = all_images is image_embeds and all_texts is text_embeds  # one process: candidates are the anchors
    with torch.autocast(device_type=device.type, enabled=False):
        image_embeds, text_embeds = _at_least_float32(image_embeds), _at_least_float32(text_embeds)
        all_images, all_texts = _at_least_float32(all_images), _at_least_float32(all_texts)
        temperature = _temperature_as_tensor(temperature, image_embeds)
        tile_size = resolve_tile_size(tile_size, all_texts.shape[0])
        if tile_size is not None:  # blocks (image, text): each modality's rows span the other modality only
            loss, (loss_i2t, loss_t2i) = softmax_contrastive_loss(
                (image_embeds, text_embeds), (image_embeds, text_embeds) if shared else (all_images, all_texts),
                offset, temperature, spans=((1,), (0,)), pairs=((0, 1, 1.0), (1, 0, 1.0)), tile_size=tile_size,
            )
            return loss, {"loss_i2t": loss_i2t, "loss_t2i": loss_t2i}
        targets = offset + torch.arange(image_embeds.shape[0], device=device)
        loss_i2t = F.cross_entropy(image_embeds @ all_texts.T / temperature, targets)
        loss_t2i = F.cross_entropy(text_embeds @ all_images.T / temperature, targets)
        loss = (loss_i2t + loss_t2i) / 2
    return loss, {"loss_i2t": loss_i2t.detach(), "loss_t2i": loss_t2i.detach()}


class CLIPLoss(nn.Module):
    """`clip_loss` as a module with the same call signature as `GCLLoss` (the fused embeddings are unused)."""

    name = "clip"

    def __init__(self, gather_across_devices: bool = True, tile_size: int | None = None):
        super().__init__()
        self.gather_across_devices = gather_across_devices
        self.tile_size = check_tile_size(tile_size)

    def forward(self, image_embeds, text_embeds, fused_embeds, temperature):
        return clip_loss(image_embeds, text_embeds, temperature, gather_across_devices=self.gather_across_devices,
                         tile_size=self.tile_size)
