# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Configuration of the EfficientNet-Lite image tower (Tan & Le's EfficientNet, TensorFlow "Lite" variant for
mobile/edge accelerators): no squeeze-and-excitation, ReLU6 everywhere, and the stem, the head and the repeats of the
first and last stages are not scaled with the model size.

Self-contained (imports only `transformers`) so it can be uploaded to the Hub as remote code.
"""

import math

from transformers import PreTrainedConfig

# The seven MBConv stages of EfficientNet-B0, which every Lite model scales (TF `efficientnet_lite_builder.py`):
# kernel, stride, expansion ratio, input and output channels, repeats.
BASE_KERNEL_SIZES = [3, 3, 5, 3, 5, 5, 3]
BASE_STRIDES = [1, 2, 2, 2, 1, 2, 1]
BASE_EXPAND_RATIOS = [1, 6, 6, 6, 6, 6, 6]
BASE_IN_CHANNELS = [32, 16, 24, 40, 80, 112, 192]
BASE_OUT_CHANNELS = [16, 24, 40, 80, 112, 192, 320]
BASE_REPEATS = [1, 2, 2, 3, 3, 4, 1]

# (width coefficient, depth coefficient, resolution, dropout before the classifier) of the Lite family.
EFFICIENTNET_LITE_PRESETS = {
    "efficientnet-lite0": dict(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, dropout_rate=0.2),
    "efficientnet-lite1": dict(width_coefficient=1.0, depth_coefficient=1.1, image_size=240, dropout_rate=0.2),
    "efficientnet-lite2": dict(width_coefficient=1.1, depth_coefficient=1.2, image_size=260, dropout_rate=0.3),
    "efficientnet-lite3": dict(width_coefficient=1.2, depth_coefficient=1.4, image_size=280, dropout_rate=0.3),
    "efficientnet-lite4": dict(width_coefficient=1.4, depth_coefficient=1.8, image_size=300, dropout_rate=0.3),
}
PADDING_MODES = ("same", "symmetric")


def round_filters(channels: int, width_coefficient: float, divisor: int = 8) -> int:
    """Scale a channel count by the width coefficient, rounded to a multiple of `divisor` and never more than 10%
    below the scaled value (EfficientNet's `round_filters`)."""
    scaled = channels * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Scale a stage's number of blocks by the depth coefficient, rounded up."""
    return int(math.ceil(depth_coefficient * repeats))


class GCLEfficientNetLiteConfig(PreTrainedConfig):
    r"""
    Configuration of [`GCLEfficientNetLiteModel`]. Defaults are EfficientNet-Lite0; `from_preset("efficientnet-lite0")`
    ... `"efficientnet-lite4"` give the family.

    Args:
        width_coefficient (`float`, defaults to 1.0): channel multiplier of the seven MBConv stages (not the stem or
            head).
        depth_coefficient (`float`, defaults to 1.0): block-count multiplier of the stages (not the first or last).
        image_size (`int`, defaults to 224): the resolution the model was trained at (the processor's size).
        num_channels (`int`, defaults to 3): input channels.
        stem_channels (`int`, defaults to 32): output channels of the stride-2 3x3 stem convolution (not scaled).
        hidden_size (`int`, defaults to 1280): output channels of the 1x1 head convolution (not scaled); the size of
            the pooled features.
        batch_norm_eps (`float`, defaults to 1e-3): epsilon of every batch norm (TensorFlow's value).
        batch_norm_momentum (`float`, defaults to 0.01): PyTorch-convention momentum (TensorFlow's decay 0.99).
        drop_connect_rate (`float`, defaults to 0.2): stochastic depth of the residual blocks in training, rising
            linearly from 0 at the first block to this rate at the last.
        dropout_rate (`float`, defaults to 0.2): dropout before the classifier (training only).
        num_classes (`int`, defaults to 0): size of the optional linear classifier on the pooled features (1000 for
            the ImageNet head); 0 builds none.
        padding (`str`, defaults to `"same"`): `"same"` pads as TensorFlow does (stride-2 convolutions pad more on the
            bottom/right), as the ported TF checkpoints expect; `"symmetric"` pads `kernel // 2` on every side.
        initializer_range (`float`, defaults to 0.02): unused by the convolutions (He-normal, fan-out, as TF); kept
            for the library's generic initialisation of new linear layers.
    """

    model_type = "gcl_efficientnet_lite"
    base_config_key = "vision_config"

    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    image_size: int = 224
    num_channels: int = 3
    stem_channels: int = 32
    hidden_size: int = 1280
    batch_norm_eps: float = 1e-3
    batch_norm_momentum: float = 0.01
    drop_connect_rate: float = 0.2
    dropout_rate: float = 0.2
    num_classes: int = 0
    padding: str = "same"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.padding not in PADDING_MODES:
            raise ValueError(f"GCLEfficientNetLiteConfig: padding {self.padding!r} is not one of {', '.join(PADDING_MODES)}.")
        if not (self.width_coefficient > 0 and self.depth_coefficient > 0):
            raise ValueError("GCLEfficientNetLiteConfig: width_coefficient and depth_coefficient must be > 0.")
        if not 0.0 <= self.drop_connect_rate < 1.0 or not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError("GCLEfficientNetLiteConfig: drop_connect_rate and dropout_rate must be in [0, 1).")
        if self.num_classes < 0:
            raise ValueError(f"GCLEfficientNetLiteConfig: num_classes must be >= 0, got {self.num_classes}.")

    def stages(self) -> list[dict]:
        """The scaled MBConv stages: `kernel_size, stride, expand_ratio, in_channels, out_channels, repeats` each.
        Lite keeps the first and last stages' repeats (`fix_head_stem`)."""
        last = len(BASE_REPEATS) - 1
        stages = []
        for index in range(len(BASE_REPEATS)):
            in_channels = round_filters(BASE_IN_CHANNELS[index], self.width_coefficient)
            if index == 0:
                in_channels = self.stem_channels
            repeats = BASE_REPEATS[index]
            if index not in (0, last):
                repeats = round_repeats(repeats, self.depth_coefficient)
            stages.append(dict(
                kernel_size=BASE_KERNEL_SIZES[index], stride=BASE_STRIDES[index], expand_ratio=BASE_EXPAND_RATIOS[index],
                in_channels=in_channels, out_channels=round_filters(BASE_OUT_CHANNELS[index], self.width_coefficient),
                repeats=repeats,
            ))
        return stages

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GCLEfficientNetLiteConfig":
        """`"efficientnet-lite0"` ... `"efficientnet-lite4"` (the `lite0` ... `lite4` short names also work)."""
        key = name if name.startswith("efficientnet-") else f"efficientnet-{name}"
        if key not in EFFICIENTNET_LITE_PRESETS:
            raise ValueError(
                f"Unknown EfficientNet-Lite preset {name!r}; expected one of {', '.join(EFFICIENTNET_LITE_PRESETS)}."
            )
        return cls(**{**EFFICIENTNET_LITE_PRESETS[key], **overrides})


__all__ = ["EFFICIENTNET_LITE_PRESETS", "GCLEfficientNetLiteConfig", "round_filters", "round_repeats"]
