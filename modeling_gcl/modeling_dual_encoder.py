# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The dual-encoder backbone: a vision tower and a BERT-family text tower, each pooled and linearly projected into one
space, with a learnable CLIP-style logit scale. Fused image+text items are pooled from the two projections as for
CLIP (`GCLConfig.fusion`).

Self-contained (imports only `torch`, `transformers` and sibling files) for upload as Hub remote code.
"""

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel

from .configuration_dual_encoder import GCLDualEncoderConfig
from .configuration_efficientnet_lite import GCLEfficientNetLiteConfig
from .modeling_efficientnet_lite import GCLEfficientNetLiteModel


def build_vision_model(vision_config) -> PreTrainedModel:
    """A randomly initialised vision tower for `vision_config` (EfficientNet-Lite directly, others via `AutoModel`)."""
    if vision_config.model_type == GCLEfficientNetLiteConfig.model_type:
        return GCLEfficientNetLiteModel._from_config(vision_config)
    return AutoModel.from_config(vision_config)


def build_text_model(text_config) -> PreTrainedModel:
    """The text tower without its pooler where the architecture has one (the dual encoder pools token states itself)."""
    try:
        return AutoModel.from_config(text_config, add_pooling_layer=False)
    except TypeError:  # an encoder without a pooler option
        return AutoModel.from_config(text_config)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real tokens: `(batch, seq, hidden)`, `(batch, seq)` -> `(batch, hidden)`."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class GCLDualEncoder(nn.Module):
    r"""
    `vision_model` (any vision `PreTrainedModel`), `text_model` (a BERT-family encoder), the bias-free projections
    `visual_projection` and `text_projection` to `projection_dim`, and `logit_scale` (log 1/τ).

    A tower with no trainable parameter (a locked image tower, LiT) stays in inference mode when the model trains,
    and so does every batch norm whose weights are frozen (e.g. under LoRA): their running statistics, stochastic depth
    and dropout are not disturbed by a few small training batches.
    """

    def __init__(self, config: GCLDualEncoderConfig, vision_model: PreTrainedModel | None = None,
                 text_model: PreTrainedModel | None = None):
        super().__init__()
        self.config = config
        self.vision_model = vision_model if vision_model is not None else build_vision_model(config.vision_config)
        self.text_model = text_model if text_model is not None else build_text_model(config.text_config)
        self.visual_projection = nn.Linear(config.vision_hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for tower in (self.vision_model, self.text_model):
                if not any(p.requires_grad for p in tower.parameters()):
                    tower.eval()
                    continue
                for module in tower.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in module.parameters(recurse=False)
                    ):
                        module.eval()
        return self

    def pool_image(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        """The vision tower's pooled features `(batch, vision_hidden_size)`, before the projection."""
        output = self.vision_model(pixel_values=pixel_values)
        mode = self.config.vision_pooling
        pooled = getattr(output, "pooler_output", None) if mode == "auto" else None
        if pooled is None:
            hidden = output.last_hidden_state
            if hidden.dim() == 4:  # (batch, channels, height, width) of a CNN
                pooled = hidden.mean(dim=(2, 3))
            else:
                pooled = hidden[:, 0] if mode == "cls" else hidden.mean(dim=1)
        return pooled.flatten(1)  # ResNet-style poolers keep (batch, channels, 1, 1)

    def encode_image(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        """`(batch, 3, H, W)` -> unnormalised projections `(batch, projection_dim)`."""
        return self.visual_projection(self.pool_image(pixel_values))

    def encode_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """`(batch, seq)` -> unnormalised projections `(batch, projection_dim)`, [CLS] or mean pooled."""
        kwargs = {"position_ids": position_ids} if position_ids is not None else {}
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if self.config.text_pooling == "mean":
            pooled = mean_pool(hidden, attention_mask)
        else:
            pooled = hidden[:, 0]
        return self.text_projection(pooled)


_HUB_KEYS = ("revision", "token", "cache_dir", "local_files_only")


def load_tower(source: "str | PreTrainedModel", role: str, load_kwargs: dict) -> PreTrainedModel:
    r"""
    A pretrained tower for a dual encoder: `source` as given when it is a loaded `PreTrainedModel`, else the model of
    the Hub id or directory (an EfficientNet-Lite folder as [`GCLEfficientNetLiteModel`], others through
    `AutoModel`). Raises a `ValueError` naming the tower when its feature size cannot be read.
    """
    from .configuration_dual_encoder import tower_hidden_size

    if isinstance(source, str):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, **{k: v for k, v in load_kwargs.items() if k in _HUB_KEYS})
        tower_hidden_size(config, role, source)
        if config.model_type == GCLEfficientNetLiteConfig.model_type:
            kwargs = {k: v for k, v in load_kwargs.items() if k != "attn_implementation"}  # a CNN has no attention
            model = GCLEfficientNetLiteModel.from_pretrained(source, **kwargs)
        else:  # a text tower's pooler, if any, is loaded (no missing-key report) and dropped by `from_towers`
            model = AutoModel.from_pretrained(source, **load_kwargs)
    else:
        model = source
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"The {role} tower must be a PreTrainedModel or its Hub id / directory, got "
                        f"{type(model).__name__}.")
    tower_hidden_size(model.config, role)
    return model


def read_text_pooling(text_model: str, **hub_kwargs) -> str:
    """The pooling a sentence-transformers model folder / Hub repository declares (`modules.json` and its Pooling
    module's `config.json`): `"mean"` or `"cls"`; `"cls"` for a plain transformers model."""
    import json
    import os

    from transformers.utils import cached_file

    kwargs = {k: v for k, v in hub_kwargs.items() if k in _HUB_KEYS}
    modules_file = cached_file(text_model, "modules.json", _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False, **kwargs)
    if modules_file is None:
        return "cls"
    with open(modules_file, encoding="utf-8") as handle:
        modules = json.load(handle)
    pooling = [m for m in modules if str(m.get("type", "")).endswith("models.Pooling")]
    if not pooling:
        return "cls"
    config_name = os.path.join(pooling[0].get("path", ""), "config.json") if pooling[0].get("path") else "config.json"
    config_file = cached_file(text_model, config_name, _raise_exceptions_for_missing_entries=False,
                              _raise_exceptions_for_connection_errors=False, **kwargs)
    if config_file is None:
        raise ValueError(f"{text_model}: modules.json names a Pooling module but {config_name} is missing.")
    with open(config_file, encoding="utf-8") as handle:
        settings = json.load(handle)
    if settings.get("pooling_mode_mean_tokens") or settings.get("pooling_mode") == "mean":
        return "mean"
    if settings.get("pooling_mode_cls_token") or settings.get("pooling_mode") == "cls":
        return "cls"
    raise ValueError(f"{text_model}: {config_name} asks for a pooling the dual encoder does not implement "
                     f"({settings}); pass text_pooling='mean' or 'cls'.")


__all__ = ["GCLDualEncoder", "build_text_model", "build_vision_model", "load_tower", "mean_pool", "read_text_pooling"]
