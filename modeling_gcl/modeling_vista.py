# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The VISTA backbone (BAAI Visualized-BGE, Zhou et al., ACL 2024): a BERT-family text encoder that also reads an
image as a sequence of tokens.

- Text only: the text encoder's normal forward; the [CLS] output is the embedding.
- Fused image+text: the EVA02-CLIP tower's patch tokens (class token dropped, no final norm or head) go through
  `visual_proj`, get the text model's position embeddings 1…L and its embedding LayerNorm (no token-type embedding),
  and are inserted right after the text's [CLS]; the text keeps its normal embedding with position ids 0 for [CLS] and
  L+1, L+2, … after. The encoder's [CLS] output is the embedding.
- Image only: the fused path with an empty text ([CLS][SEP]).

Self-contained (imports only `torch`, `transformers` and sibling files) for upload as Hub remote code.
"""

import math

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from .configuration_vista import GCLVistaConfig
from .modeling_eva import GCLEvaVisionModel


def build_text_model(text_config) -> PreTrainedModel:
    """The BERT-family text encoder without its pooler (VISTA pools the [CLS] hidden state itself)."""
    return AutoModel.from_config(text_config, add_pooling_layer=False)


class GCLVistaEncoder(nn.Module):
    r"""
    VISTA's towers: `text_model` (any BERT-family `AutoModel`), `vision_model` ([`GCLEvaVisionModel`]), the square
    `visual_proj` (vision width → text hidden size) and the GCL `logit_scale` (log(1/τ), fixed at τ = 0.02 by default).

    All `encode_*` methods return the unnormalised [CLS] hidden state `(batch, text_hidden_size)`.
    """

    def __init__(self, config: GCLVistaConfig, text_model: PreTrainedModel | None = None, temperature: float = 0.02):
        super().__init__()
        self.config = config
        # `text_model` lets a pretrained encoder (e.g. `AutoModel.from_pretrained(...)`) be wrapped without a copy.
        self.text_model = text_model if text_model is not None else build_text_model(config.text_config)
        self.vision_model = GCLEvaVisionModel(config.vision_config)
        self.visual_proj = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def _encode(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the text encoder's layers on ready embeddings `(batch, seq, hidden)`; returns the [CLS] output."""
        mask = create_bidirectional_mask(
            config=self.text_model.config, inputs_embeds=embeddings, attention_mask=attention_mask
        )
        hidden = self.text_model.encoder(embeddings, attention_mask=mask).last_hidden_state
        return hidden[:, 0]

    def encode_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Plain text-encoder forward (its own default position ids), [CLS] output: `(batch, seq)` -> `(batch, hidden)`."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state[:, 0]

    def image_tokens(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        """`(batch, 3, H, W)` -> the L embedded image tokens `(batch, L, text_hidden)`, ready for the text encoder."""
        patches = self.vision_model(pixel_values)[:, 1:]  # the class token is not used
        tokens = self.visual_proj(patches)
        embeddings = self.text_model.embeddings
        positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
        # Position embeddings 1…L and the embedding LayerNorm, but no token-type embedding (as VISTA does).
        return embeddings.LayerNorm(tokens + embeddings.position_embeddings(positions))

    def encode_fused(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""
        Image tokens inserted after each text's [CLS]: `pixel_values` `(batch, 3, H, W)` and right-padded `input_ids`
        `(batch, T)` -> `(batch, hidden)`. The sequence is [CLS], L image tokens, text tokens 2…T, with position ids
        0, 1…L, L+1…L+T−1.
        """
        image_tokens = self.image_tokens(pixel_values)
        batch, num_image_tokens = image_tokens.shape[:2]
        if input_ids.shape[0] != batch:
            raise ValueError(f"VISTA fusion pairs row j with row j: {batch} images for {input_ids.shape[0]} texts.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_length = input_ids.shape[1]
        position_ids = torch.cat(
            [
                torch.zeros(1, dtype=torch.long, device=input_ids.device),
                torch.arange(num_image_tokens + 1, num_image_tokens + text_length, device=input_ids.device),
            ]
        ).unsqueeze(0)
        max_positions = self.text_model.config.max_position_embeddings
        if num_image_tokens + text_length > max_positions:
            raise ValueError(
                f"VISTA: {num_image_tokens} image tokens + {text_length} text tokens exceed the text encoder's "
                f"{max_positions} positions; truncate texts to {max_positions - num_image_tokens} tokens."
            )
        text_embeddings = self.text_model.embeddings(
            input_ids=input_ids,
            token_type_ids=torch.zeros_like(input_ids),
            position_ids=position_ids.expand(batch, -1),
        )
        embeddings = torch.cat([text_embeddings[:, :1], image_tokens.to(text_embeddings.dtype), text_embeddings[:, 1:]], dim=1)
        image_mask = attention_mask.new_ones(batch, num_image_tokens)
        mask = torch.cat([attention_mask[:, :1], image_mask, attention_mask[:, 1:]], dim=1)
        return self._encode(embeddings, mask)

    def encode_image(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        """Image only: the fused path with an empty text, [CLS][SEP]. `(batch, 3, H, W)` -> `(batch, hidden)`."""
        empty = torch.tensor([[self.config.cls_token_id, self.config.sep_token_id]], device=pixel_values.device)
        return self.encode_fused(pixel_values, empty.expand(pixel_values.shape[0], -1))


__all__ = ["GCLVistaEncoder", "build_text_model"]
