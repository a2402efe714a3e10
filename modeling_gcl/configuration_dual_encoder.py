# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Configuration of the dual-encoder backbone: any vision encoder plus any BERT-family text encoder, each followed by
a linear projection to a shared space (the LiT / CLIP-from-separate-towers recipe).

Self-contained (imports only `transformers` and sibling files) so it can be uploaded to the Hub as remote code beside
`configuration_gcl.py`.
"""

import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_efficientnet_lite import GCLEfficientNetLiteConfig

# Registered here (not only in the package's __init__) so a checkpoint whose `vision_config` is an EfficientNet-Lite
# resolves it also when this file runs as Hub remote code, without the library.
AutoConfig.register(GCLEfficientNetLiteConfig.model_type, GCLEfficientNetLiteConfig, exist_ok=True)

# How a text tower's token states become one vector: the [CLS] state, or the mean over real tokens (the
# sentence-transformers pooling of all-MiniLM-L6-v2 and most sentence encoders).
TEXT_POOLING_MODES = ("cls", "mean")
# How a vision tower's output becomes one vector: `"auto"` takes its `pooler_output` when it returns one (CLIP's
# post-LayerNorm class token, ConvNeXt's / EfficientNet's global average) else the mean of `last_hidden_state` over
# positions; `"mean"` always averages `last_hidden_state`; `"cls"` takes its first token (ViT-style towers).
VISION_POOLING_MODES = ("auto", "mean", "cls")
# CLIP's initial temperature: τ = 0.07.
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)


def tower_hidden_size(config: PreTrainedConfig, role: str, source: str | None = None) -> int:
    """The width of the vector a tower's pooling yields: `hidden_sizes[-1]` for stage-wise CNNs (ConvNeXt, ResNet),
    else `hidden_size`; a `ValueError` naming the config when it has neither."""
    sizes = getattr(config, "hidden_sizes", None)
    if isinstance(sizes, (list, tuple)) and sizes:
        return int(sizes[-1])
    size = getattr(config, "hidden_size", None)
    if isinstance(size, int) and size > 0:
        return size
    raise ValueError(
        f"The {role} tower{f' {source}' if source else ''}: its config ({type(config).__name__}, model_type {getattr(config, 'model_type', None)!r}) "
        "has neither `hidden_size` nor `hidden_sizes`, so the size of its pooled features cannot be read; pass a "
        f"tower whose config has one (for a composite model such as CLIP, its {role} sub-model)."
    )


class GCLDualEncoderConfig(PreTrainedConfig):
    r"""
    Configuration of the dual-encoder backbone of a [`GCLModel`] (`backbone_type="dual_encoder"`). Defaults are an
    EfficientNet-Lite0 image tower and a BERT-base text tower.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*): the image tower, any vision `AutoConfig` (ViT,
            CLIP vision, DINOv2, ConvNeXt, ...) or [`GCLEfficientNetLiteConfig`] (the default).
        text_config (`dict` or `PreTrainedConfig`, *optional*): the text tower, a BERT-family `AutoConfig`; defaults
            to `BertConfig()`.
        projection_dim (`int`, defaults to 512): size of the shared embedding space.
        text_pooling (`str`, defaults to `"cls"`): `"cls"` or `"mean"` (masked mean over tokens, as
            sentence-transformers' mean pooling); `GCLModel.from_towers` reads it off a sentence-transformers folder.
        vision_pooling (`str`, defaults to `"auto"`): see `VISION_POOLING_MODES`.
        logit_scale_init_value (`float`, defaults to log(1/0.07)): initial `logit_scale` (CLIP's τ = 0.07).
        projection_initializer_factor (`float`, defaults to 1.0): new projections start from
            N(0, (factor / sqrt(in_features))²), as CLIP's.
    """

    model_type = "gcl_dual_encoder"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type=GCLEfficientNetLiteConfig.model_type),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 512
    text_pooling: str = "cls"
    vision_pooling: str = "auto"
    logit_scale_init_value: float = CLIP_LOGIT_SCALE_INIT
    projection_initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.text_pooling not in TEXT_POOLING_MODES:
            raise ValueError(f"GCLDualEncoderConfig: text_pooling {self.text_pooling!r} is not one of "
                             f"{', '.join(TEXT_POOLING_MODES)}.")
        if self.vision_pooling not in VISION_POOLING_MODES:
            raise ValueError(f"GCLDualEncoderConfig: vision_pooling {self.vision_pooling!r} is not one of "
                             f"{', '.join(VISION_POOLING_MODES)}.")
        if not self.projection_dim > 0:
            raise ValueError(f"GCLDualEncoderConfig: projection_dim must be > 0, got {self.projection_dim}.")
        tower_hidden_size(self.vision_config, "vision")
        tower_hidden_size(self.text_config, "text")

    @property
    def vision_hidden_size(self) -> int:
        return tower_hidden_size(self.vision_config, "vision")

    @property
    def text_hidden_size(self) -> int:
        return tower_hidden_size(self.text_config, "text")


__all__ = ["CLIP_LOGIT_SCALE_INIT", "GCLDualEncoderConfig", "TEXT_POOLING_MODES", "VISION_POOLING_MODES",
           "tower_hidden_size"]
