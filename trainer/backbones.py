# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Build a `GCLModel` and its `GCLProcessor` from a GCL checkpoint, a CLIP-family backbone, or the bundled tiny CLIP."""

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPConfig, CLIPModel

from modeling_gcl import GCLConfig, GCLModel, GCLProcessor

from .data import BUNDLED_TINY_CLIP_DIR


def load_bundled_tiny_clip(seed: int = 0) -> tuple[CLIPModel, GCLProcessor]:
    """A small CLIP (4+4 layers of width 128, 64-px images, OpenAI CLIP's real tokenizer) **randomly initialised**
    from `seed`: no pretrained weights can be fetched offline, so the bundled demo trains from scratch."""
    config = CLIPConfig.from_pretrained(BUNDLED_TINY_CLIP_DIR)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel._from_config(config)
    return clip, GCLProcessor.from_backbone(str(BUNDLED_TINY_CLIP_DIR))


def load_model_and_processor(
    model_name_or_path: str | None = None,
    fusion: str | None = None,
    temperature: float | None = None,
    learnable_temperature: bool | None = None,
    seed: int = 0,
    **load_kwargs,
) -> tuple[GCLModel, GCLProcessor]:
    r"""
    Args:
        model_name_or_path (`str`, *optional*):
            - `None`: the bundled tiny CLIP, randomly initialised (see `load_bundled_tiny_clip`);
            - a GCL checkpoint (`model_type="gcl"`): loaded as saved; `fusion`/temperature arguments must match or be
              `None`;
            - a CLIP-family checkpoint (Hub id or directory): wrapped with `GCLModel.from_backbone`.
        fusion, temperature, learnable_temperature: see [`GCLConfig`]; `None` keeps the default / the saved value.
    """
    if model_name_or_path is None:
        clip, processor = load_bundled_tiny_clip(seed)
        backbone_source = clip
    else:
        config = AutoConfig.from_pretrained(model_name_or_path, **load_kwargs)
        if isinstance(config, GCLConfig):
            overrides = {"fusion": fusion, "temperature": temperature, "learnable_temperature": learnable_temperature}
            for key, value in overrides.items():
                if value is not None and value != getattr(config, key):
                    raise ValueError(
                        f"{model_name_or_path} is a GCL model with {key}={getattr(config, key)!r}; "
                        f"it cannot be loaded with {key}={value!r}."
                    )
            model = GCLModel.from_pretrained(model_name_or_path, **load_kwargs)
            return model, GCLProcessor.from_pretrained(model_name_or_path, **load_kwargs)
        if not isinstance(config, CLIPConfig):
            raise ValueError(
                f"{model_name_or_path}: model_type {config.model_type!r} is not a supported backbone (expected a CLIP "
                "family model such as openai/clip-vit-base-patch32, or a GCL checkpoint)."
            )
        backbone_source = model_name_or_path
        processor = GCLProcessor(
            image_processor=AutoImageProcessor.from_pretrained(model_name_or_path, **load_kwargs),
            tokenizer=AutoTokenizer.from_pretrained(model_name_or_path, **load_kwargs),
        )
    model = GCLModel.from_backbone(
        backbone_source,
        fusion=fusion or "sum",
        temperature=temperature,
        # A given temperature is a fixed one unless the caller also asks to learn it.
        learnable_temperature=(temperature is None) if learnable_temperature is None else learnable_temperature,
        **load_kwargs,
    )
    return model, processor
