# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""A compact EVA02-CLIP vision tower, the image encoder of VISTA (BAAI Visualized-BGE).

Written here rather than imported from timm (whose `eva02_*_clip_224` models compute the same tokens) because timm
pulls in torchvision, which is not installable beside every torch we support, and because this package is uploaded
to the Hub as remote code and must import only `torch` and `transformers`.

The architecture follows EVA02-CLIP as used by FlagEmbedding's `visual_bge` (see `shared/fixtures/CHECKPOINTS.md`):
convolutional patch embedding, class token and learned absolute positions; pre-norm blocks with q/v biases but no k
bias, 2-D rotary position embedding on the patch tokens (not the class token), a LayerNorm over the concatenated
heads before the output projection ("sub-LN"), and a SwiGLU MLP with its own sub-LN. VISTA reads the last block's
token outputs, so the tower has no final norm and no head.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_vista import GCLEvaVisionConfig


def eva_rope_tables(config: GCLEvaVisionConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    The 2-D rotary tables of EVA02: `(cos, sin)`, each `(num_patches, head_dim)`.

    The first half of a head's dimensions encodes the patch's row, the second half its column. Each half uses
    `head_dim / 4` frequencies `θ^(-2i / (head_dim/2))`, each on two adjacent dimensions, applied to the coordinate
    `index · rope_pretrain_grid / grid` (EVA02 scales the fine-tuning grid to the pre-training one).
    """
    head_dim = config.hidden_size // config.num_attention_heads
    half = head_dim // 2
    freqs = 1.0 / (config.rope_theta ** (torch.arange(0, half, 2, device=device, dtype=torch.float32)[: half // 2] / half))
    grid = config.grid_size
    coords = torch.arange(grid, device=device, dtype=torch.float32) / grid * config.rope_pretrain_grid
    angles = torch.outer(coords, freqs).repeat_interleave(2, dim=-1)  # (grid, half)
    rows = angles[:, None, :].expand(grid, grid, half)
    cols = angles[None, :, :].expand(grid, grid, half)
    angles = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    return angles.cos(), angles.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Each adjacent pair `(a, b)` of the last dimension becomes `(-b, a)`."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def apply_eva_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `(batch, heads, num_patches, head_dim)`: pair `(a, b)` -> `(a·cos − b·sin, b·cos + a·sin)`."""
    return x * cos + rotate_pairs(x) * sin


class GCLEvaRotaryEmbedding(nn.Module):
    """Holds the rotary tables as persistent buffers, shared by every block (the released checkpoints save them)."""

    def __init__(self, config: GCLEvaVisionConfig):
        super().__init__()
        self.config = config
        cos, sin = eva_rope_tables(config)
        self.register_buffer("freqs_cos", cos, persistent=True)
        self.register_buffer("freqs_sin", sin, persistent=True)


class GCLEvaEmbeddings(nn.Module):
    def __init__(self, config: GCLEvaVisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, config.hidden_size, config.patch_size, stride=config.patch_size)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))

    def forward(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        """`(batch, 3, H, W)` -> `(batch, 1 + num_patches, hidden)`."""
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype)).flatten(2).transpose(1, 2)  # row-major patches
        cls = self.class_embedding.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class GCLEvaAttention(nn.Module):
    """Multi-head self-attention with rotary patch positions and a sub-LN before the output projection."""

    def __init__(self, config: GCLEvaVisionConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = config.attention_dropout
        # EVA02 has biases on q and v but not on k.
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.sub_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        """`(batch, 1 + num_patches, hidden)` -> same shape."""
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        # Rotary positions on the patch tokens only; the class token (position 0) is left as is.
        cos, sin = rope_cos.to(query.dtype), rope_sin.to(query.dtype)
        query = torch.cat([query[:, :, :1], apply_eva_rope(query[:, :, 1:], cos, sin)], dim=2)
        key = torch.cat([key[:, :, :1], apply_eva_rope(key[:, :, 1:], cos, sin)], dim=2)
        attn = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.dropout if self.training else 0.0, scale=self.head_dim**-0.5
        )
        attn = attn.transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(self.sub_norm(attn))


class GCLEvaSwiGLU(nn.Module):
    """`down_proj(sub_norm(SiLU(gate_proj(x)) · up_proj(x)))`."""

    def __init__(self, config: GCLEvaVisionConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.sub_norm = nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.sub_norm(F.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states)))


class GCLEvaLayer(GradientCheckpointingLayer):
    def __init__(self, config: GCLEvaVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = GCLEvaAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GCLEvaSwiGLU(config)

    def forward(self, hidden_states: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), rope_cos, rope_sin)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class GCLEvaVisionModel(nn.Module):
    r"""
    EVA02-CLIP vision transformer without final norm and head: `pixel_values` `(batch, 3, H, W)` ->
    token outputs of the last block `(batch, 1 + num_patches, hidden_size)`, the class token first.
    """

    def __init__(self, config: GCLEvaVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = GCLEvaEmbeddings(config)
        self.rope = GCLEvaRotaryEmbedding(config)
        self.layers = nn.ModuleList([GCLEvaLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        hidden_states = self.embeddings(pixel_values)
        rope_cos, rope_sin = self.rope.freqs_cos, self.rope.freqs_sin
        if self.training and self.config.patch_dropout > 0:
            hidden_states, rope_cos, rope_sin = drop_patches(hidden_states, rope_cos, rope_sin, self.config.patch_dropout)
        for layer in self.layers:
            hidden_states = layer(hidden_states, rope_cos, rope_sin)
        return hidden_states


def drop_patches(
    hidden_states: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor, rate: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EVA02-CLIP's patch dropout: keep a random `1 - rate` of each image's patch tokens (the class token always), and
    the rotary tables of the kept positions. `(batch, 1 + P, hidden), (P, d), (P, d)` ->
    `(batch, 1 + K, hidden), (batch, 1, K, d), (batch, 1, K, d)` with `K = max(1, int(P · (1 - rate)))`."""
    batch, length, _ = hidden_states.shape
    num_patches = length - 1
    keep = max(1, int(num_patches * (1 - rate)))
    kept = torch.rand(batch, num_patches, device=hidden_states.device).argsort(dim=-1)[:, :keep]  # (batch, K)
    patches = hidden_states[:, 1:].gather(1, kept.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
    # One table row per kept patch and image; the extra axis broadcasts over the attention heads.
    return torch.cat([hidden_states[:, :1], patches], dim=1), rope_cos[kept].unsqueeze(1), rope_sin[kept].unsqueeze(1)


__all__ = ["GCLEvaVisionModel", "GCLEvaLayer", "GCLEvaRotaryEmbedding", "apply_eva_rope", "drop_patches", "eva_rope_tables"]
