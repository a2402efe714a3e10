# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Configurations of the VISTA backbone (BAAI Visualized-BGE): a BERT-family text encoder plus an EVA02-CLIP vision
tower whose patch tokens are fed into the text encoder.

Self-contained (imports only `transformers`) so it can be uploaded to the Hub as remote code beside
`configuration_gcl.py`.
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# EVA02-CLIP vision towers used by the released VISTA checkpoints (FlagEmbedding `model_configs/EVA02-CLIP-*.json`).
EVA02_CLIP_PRESETS = {
    "eva02-clip-b-16": dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=2048),
    "eva02-clip-l-14": dict(image_size=224, patch_size=14, hidden_size=1024, num_hidden_layers=24,
                            num_attention_heads=16, intermediate_size=2730),
}


class GCLEvaVisionConfig(PreTrainedConfig):
    r"""
    Configuration of the EVA02-CLIP vision tower of VISTA. Defaults are EVA02-CLIP-B/16.

    Args:
        image_size (`int`, defaults to 224): input resolution (square).
        patch_size (`int`, defaults to 16): patch size of the convolutional patch embedding.
        hidden_size (`int`, defaults to 768): width of the tower.
        num_hidden_layers (`int`, defaults to 12): number of pre-norm transformer blocks.
        num_attention_heads (`int`, defaults to 12): attention heads (EVA02-CLIP uses heads of 64 dimensions).
        intermediate_size (`int`, defaults to 2048): hidden size of the SwiGLU MLP (width · 2.6667, rounded down).
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of every LayerNorm of the tower.
        rope_theta (`float`, defaults to 10000.0): base of the rotary frequencies.
        rope_pretrain_grid (`int`, defaults to 16): the patch grid the rotary coordinates are scaled to
            (EVA02 scales the row/column index by `rope_pretrain_grid / grid`).
        attention_dropout (`float`, defaults to 0.0): dropout on the attention probabilities.
        patch_dropout (`float`, defaults to 0.0): in training only, drop this fraction of the patch tokens (a random
            subset per image; the class token is kept), as EVA02-CLIP trains (its B/16 config uses 0.5). Off by
            default so fine-tuning is deterministic; never active in `eval()`.
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation of new weights.
    """

    model_type = "gcl_eva_vision"
    base_config_key = "vision_config"

    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 2048
    layer_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_pretrain_grid: int = 16
    attention_dropout: float = 0.0
    patch_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.image_size % self.patch_size:
            raise ValueError(f"GCLEvaVisionConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"GCLEvaVisionConfig: hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads."
            )
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"GCLEvaVisionConfig: patch_dropout must be in [0, 1), got {self.patch_dropout}.")
        if (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError("GCLEvaVisionConfig: the head size must be a multiple of 4 (2-D rotary embedding).")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GCLEvaVisionConfig":
        """`"eva02-clip-b-16"` (bge-base-en-v1.5) or `"eva02-clip-l-14"` (bge-m3)."""
        if name not in EVA02_CLIP_PRESETS:
            raise ValueError(f"Unknown EVA02-CLIP preset {name!r}; expected one of {', '.join(EVA02_CLIP_PRESETS)}.")
        return cls(**{**EVA02_CLIP_PRESETS[name], **overrides})


class GCLVistaConfig(PreTrainedConfig):
    r"""
    Configuration of the VISTA backbone: a BERT-family text encoder (`text_config`, any `AutoConfig`: BERT for
    bge-base-en-v1.5, XLM-RoBERTa for bge-m3) and an EVA02-CLIP vision tower (`vision_config`). Defaults are the sizes
    of `Visualized_base_en_v1.5` (BERT-base + EVA02-CLIP-B/16).

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*): the text encoder; defaults to `BertConfig()`.
        vision_config (`dict` or [`GCLEvaVisionConfig`], *optional*): the vision tower; defaults to EVA02-CLIP-B/16.
        cls_token_id (`int`, defaults to 101): id of the text's first token ([CLS] / `<s>`), used to build the empty
            text of an image-only item.
        sep_token_id (`int`, defaults to 102): id of the closing token ([SEP] / `</s>`).
    """

    model_type = "gcl_vista"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "vision_config": SubConfigSpec(config_class=GCLEvaVisionConfig),
    }

    text_config: PreTrainedConfig | dict | None = None
    vision_config: GCLEvaVisionConfig | dict | None = None
    cls_token_id: int = 101
    sep_token_id: int = 102

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        max_positions = getattr(self.text_config, "max_position_embeddings", None)
        if max_positions is not None and self.vision_config.num_patches + 2 > max_positions:
            raise ValueError(
                f"GCLVistaConfig: {self.vision_config.num_patches} image tokens do not fit the text encoder's "
                f"{max_positions} positions."
            )

    @property
    def hidden_size(self) -> int:
        """Size of the embedding space: the text encoder's hidden size."""
        return self.text_config.hidden_size

    @property
    def max_text_length(self) -> int:
        """Longest text (special tokens included) a fused item may carry: positions left after the image tokens."""
        return self.text_config.max_position_embeddings - self.vision_config.num_patches


__all__ = ["EVA02_CLIP_PRESETS", "GCLEvaVisionConfig", "GCLVistaConfig"]
