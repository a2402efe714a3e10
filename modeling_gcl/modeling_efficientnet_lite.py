# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""PyTorch EfficientNet-Lite (Tan & Le, ICML 2019; the TensorFlow "Lite" variant): a stride-2 3x3 stem, seven stages
of inverted-residual MBConv blocks (1x1 expansion, depthwise kxk, 1x1 projection, each followed by batch norm; ReLU6
after the first two; no squeeze-and-excitation; a residual connection with stochastic depth when the shape is kept),
a 1x1 head convolution to 1280 channels with batch norm and ReLU6, and global average pooling.

Self-contained (imports only `torch`, `transformers` and sibling files; no timm or torchvision) so it can be uploaded
to the Hub as remote code. Convert the lukemelas-style PyTorch port of the TF weights with
`trainer.convert.efficientnet_lite`.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_efficientnet_lite import GCLEfficientNetLiteConfig


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one spatial dimension: `(before, after)`, the extra pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class GCLEfficientNetLiteConv2d(nn.Conv2d):
    """`nn.Conv2d` (same signature, bias-free by default) that with `tf_same=True` pads at run time as TensorFlow's
    "SAME" (the odd pixel at the bottom / right) instead of a fixed `padding`. The signature matches `nn.Conv2d` so
    peft's LoRA can build its adapter convolutions from the class."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=False,
                 padding_mode="zeros", tf_same: bool = True, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
                         **kwargs)
        self.tf_same = tf_same

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.tf_same:
            top, bottom = same_padding(hidden.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = same_padding(hidden.shape[-1], self.kernel_size[1], self.stride[1])
            hidden = F.pad(hidden, (left, right, top, bottom))
        return super().forward(hidden)


def conv(config: GCLEfficientNetLiteConfig, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
         groups: int = 1) -> GCLEfficientNetLiteConv2d:
    """A convolution padded as `config.padding` says: TF "SAME" at run time, or `kernel // 2` on every side."""
    same = config.padding == "same"
    return GCLEfficientNetLiteConv2d(in_channels, out_channels, kernel_size, stride=stride,
                                     padding=0 if same else kernel_size // 2, groups=groups, tf_same=same)


def drop_path(hidden: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, zero a residual branch per sample with probability `rate` and rescale the rest."""
    if not training or rate == 0.0:
        return hidden
    keep = 1.0 - rate
    mask = hidden.new_empty(hidden.shape[0], 1, 1, 1).bernoulli_(keep)
    return hidden * mask / keep


class GCLEfficientNetLiteBlock(nn.Module):
    """One MBConv block: `(batch, in_channels, H, W)` -> `(batch, out_channels, H / stride, W / stride)`."""

    def __init__(self, config: GCLEfficientNetLiteConfig, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int, expand_ratio: int, drop_path_rate: float):
        super().__init__()
        eps, momentum = config.batch_norm_eps, config.batch_norm_momentum
        hidden = in_channels * expand_ratio
        self.expand_conv = self.expand_norm = None
        if expand_ratio != 1:
            self.expand_conv = conv(config, in_channels, hidden, 1)
            self.expand_norm = nn.BatchNorm2d(hidden, eps=eps, momentum=momentum)
        self.depthwise_conv = conv(config, hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self.depthwise_norm = nn.BatchNorm2d(hidden, eps=eps, momentum=momentum)
        self.project_conv = conv(config, hidden, out_channels, 1)
        self.project_norm = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum)
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = hidden
        if self.expand_conv is not None:
            hidden = F.relu6(self.expand_norm(self.expand_conv(hidden)))
        hidden = F.relu6(self.depthwise_norm(self.depthwise_conv(hidden)))
        hidden = self.project_norm(self.project_conv(hidden))  # linear bottleneck: no activation
        if self.has_residual:
            hidden = drop_path(hidden, self.drop_path_rate, self.training) + residual
        return hidden


@dataclass
class GCLEfficientNetLiteOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, hidden_size, height / 32, width / 32)`):
        The head convolution's feature map (after batch norm and ReLU6).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        Its global average: the image features a dual encoder projects.
    logits (`torch.FloatTensor` of shape `(batch_size, num_classes)`, *optional*):
        The classifier's scores, when the model has one (`config.num_classes > 0`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class GCLEfficientNetLitePreTrainedModel(PreTrainedModel):
    config: GCLEfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # A CNN has no attention, so any implementation a composite model (a GCL dual encoder) asks for is fine.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            # He-normal over the fan-out, as TF EfficientNet's `conv_kernel_initializer`.
            fan_out = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            # TF's `dense_kernel_initializer`: uniform in ±1/sqrt(out).
            bound = 1.0 / math.sqrt(module.out_features)
            init.uniform_(module.weight, -bound, bound)
            init.zeros_(module.bias)


class GCLEfficientNetLiteModel(GCLEfficientNetLitePreTrainedModel):
    r"""
    EfficientNet-Lite image tower. `forward(pixel_values)` with `pixel_values` `(batch, 3, H, W)` scaled as
    `(x - 0.5) / 0.5` returns the head feature map, its global average `pooler_output` `(batch, hidden_size)` and,
    with a classifier (`config.num_classes`), its logits.

    Example:

    ```python
    >>> from modeling_gcl import GCLEfficientNetLiteConfig, GCLEfficientNetLiteModel
    >>> model = GCLEfficientNetLiteModel(GCLEfficientNetLiteConfig.from_preset("efficientnet-lite0"))
    >>> model(torch.zeros(1, 3, 224, 224)).pooler_output.shape
    torch.Size([1, 1280])
    ```
    """

    def __init__(self, config: GCLEfficientNetLiteConfig):
        super().__init__(config)
        eps, momentum = config.batch_norm_eps, config.batch_norm_momentum
        self.stem_conv = conv(config, config.num_channels, config.stem_channels, 3, stride=2)
        self.stem_norm = nn.BatchNorm2d(config.stem_channels, eps=eps, momentum=momentum)
        stages = config.stages()
        num_blocks = sum(stage["repeats"] for stage in stages)
        blocks = []
        for stage in stages:
            for repeat in range(stage["repeats"]):
                blocks.append(GCLEfficientNetLiteBlock(
                    config,
                    in_channels=stage["in_channels"] if repeat == 0 else stage["out_channels"],
                    out_channels=stage["out_channels"],
                    kernel_size=stage["kernel_size"],
                    stride=stage["stride"] if repeat == 0 else 1,
                    expand_ratio=stage["expand_ratio"],
                    drop_path_rate=config.drop_connect_rate * len(blocks) / num_blocks,
                ))
        self.blocks = nn.ModuleList(blocks)
        self.head_conv = conv(config, stages[-1]["out_channels"], config.hidden_size, 1)
        self.head_norm = nn.BatchNorm2d(config.hidden_size, eps=eps, momentum=momentum)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classifier = nn.Linear(config.hidden_size, config.num_classes) if config.num_classes else None
        self.post_init()

    def forward(self, pixel_values: torch.FloatTensor, **kwargs) -> GCLEfficientNetLiteOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Images scaled as `(x - 0.5) / 0.5`, e.g. by the processor `GCLProcessor.for_efficientnet_lite` builds.
        """
        hidden = F.relu6(self.stem_norm(self.stem_conv(pixel_values)))
        for block in self.blocks:
            hidden = block(hidden)
        hidden = F.relu6(self.head_norm(self.head_conv(hidden)))
        pooled = hidden.mean(dim=(2, 3))
        logits = self.classifier(self.dropout(pooled)) if self.classifier is not None else None
        return GCLEfficientNetLiteOutput(last_hidden_state=hidden, pooler_output=pooled, logits=logits)


__all__ = ["GCLEfficientNetLiteModel", "GCLEfficientNetLiteOutput", "GCLEfficientNetLitePreTrainedModel"]
