# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""LoRA for GCL models through peft: presets, the logit scale as an explicit trainable, saving and merging."""

import contextlib
import os
import warnings
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from modeling_gcl import GCLModel

# Linear layers of every transformer block (attention and MLP), by backbone / tower.
LORA_TARGET_PRESETS = {
    # CLIP, vision and text towers alike.
    "clip": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    # BERT-family text encoders (BERT, XLM-RoBERTa): attention q/k/v, attention output, intermediate and output
    # (`dense` also names BERT's pooler, which VISTA does not build).
    "bert": ("query", "key", "value", "dense"),
    # VISTA's EVA02-CLIP tower: attention and SwiGLU MLP.
    "eva": ("q_proj", "k_proj", "v_proj", "out_proj", "gate_proj", "up_proj", "down_proj"),
}
LORA_TARGET_PRESETS["vista"] = LORA_TARGET_PRESETS["bert"] + LORA_TARGET_PRESETS["eva"] + ("visual_proj",)
# EfficientNet-Lite: its 1x1 convolutions (expansion, projection, head); the depthwise convolutions are left out
# (grouped convolutions, few weights).
LORA_TARGET_PRESETS["efficientnet_lite"] = ("expand_conv", "project_conv", "head_conv")
# A dual encoder: the BERT-family text tower, whichever of the CLIP-style / BERT-style (ViT, DINOv2) / EfficientNet
# layer names its vision tower has, and the two new projections.
LORA_TARGET_PRESETS["dual_encoder"] = tuple(dict.fromkeys(
    LORA_TARGET_PRESETS["bert"] + LORA_TARGET_PRESETS["clip"] + LORA_TARGET_PRESETS["efficientnet_lite"]
    + ("visual_projection", "text_projection")
))

# The towers `freeze_towers` / `apply_lora(frozen_towers=...)` know, as module-name prefixes of a GCLModel.
TOWER_PREFIXES = {
    "clip": {"text": ("encoder.text_model", "encoder.text_projection"),
             "vision": ("encoder.vision_model", "encoder.visual_projection")},
    # VISTA's first training stage froze the text encoder and trained the vision tower and `visual_proj`.
    "vista": {"text": ("encoder.text_model",), "vision": ("encoder.vision_model",)},
    # A dual encoder's projections are new layers, not part of the pretrained towers: they keep training when a tower
    # is locked (`--freeze_towers vision` is LiT: the image tower fixed, both projections and the text tower learn).
    "dual_encoder": {"text": ("encoder.text_model",), "vision": ("encoder.vision_model",)},
}


def _backbone(model: GCLModel) -> str:
    backbone_type = getattr(model.config, "backbone_type", "clip")
    return backbone_type if backbone_type in ("vista", "dual_encoder") else model.config.encoder_config.model_type


def _in_towers(name: str, model: GCLModel, towers: Sequence[str]) -> bool:
    prefixes = TOWER_PREFIXES[_backbone(model)]
    unknown = set(towers) - set(prefixes)
    if unknown:
        raise ValueError(f"Unknown tower(s) {sorted(unknown)}; expected some of {sorted(prefixes)}.")
    return any(name == p or name.startswith(p + ".") for tower in towers for p in prefixes[tower])


def freeze_towers(model: GCLModel, towers: Sequence[str]) -> GCLModel:
    """Stop training the named towers (`"text"`, `"vision"`) of a GCL model, e.g. `["text"]` for VISTA's first
    stage; the other weights keep their `requires_grad`."""
    for name, parameter in model.named_parameters():
        if _in_towers(name, model, towers):
            parameter.requires_grad_(False)
    return model

# Trainable parameters that are neither LoRA weights nor in peft's `modules_to_save` (the bare `logit_scale`) are
# saved beside the adapter in this file, since peft's adapter files do not hold them.
EXTRA_TRAINABLES_FILE = "gcl_extra_trainables.safetensors"


@contextlib.contextmanager
def _without_peft_deprecation_warning():
    """peft probes transformers' deprecated `is_gradient_checkpointing` when it wraps a model: a FutureWarning the
    user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        yield


def apply_lora(
    model: GCLModel,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: list[str] | None = None,
    train_logit_scale: bool = False,
    frozen_towers: Sequence[str] = (),
) -> PeftModel:
    r"""
    Wrap `model` with LoRA adapters.

    Args:
        r, alpha, dropout: LoRA rank, scaling numerator and dropout.
        target_modules (`list[str]`, *optional*): module names to adapt; default the preset of the backbone
            (`q_proj, k_proj, v_proj, out_proj, fc1, fc2` for CLIP; for VISTA BERT's `query, key, value, dense`, the
            EVA tower's `q_proj, k_proj, v_proj, out_proj, gate_proj, up_proj, down_proj`, and `visual_proj`).
        frozen_towers (`list[str]`, *optional*): towers (`"text"`, `"vision"`) that get no adapters, so they stay
            exactly as loaded (VISTA's first stage froze the text encoder).
        train_logit_scale (`bool`, defaults to `False`): LoRA freezes every base parameter, the bare `logit_scale`
            included; set this to keep training it (it is then saved in `gcl_extra_trainables.safetensors`).

    A learnable fusion (`fusion="attention"`) is fully trained and saved with the adapter (`modules_to_save`).
    """
    targets = list(target_modules or LORA_TARGET_PRESETS[_backbone(model)])
    if frozen_towers:  # name every adapted Linear in full, leaving out the frozen towers' modules
        targets = sorted(
            name
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
            and name.rsplit(".", 1)[-1] in targets
            and (isinstance(module, torch.nn.Linear) or module.groups == 1)
            and not _in_towers(name, model, frozen_towers)
        )
        if not targets:
            raise ValueError(f"No LoRA target is left outside the frozen towers {list(frozen_towers)}.")
    has_fusion_parameters = any(True for _ in model.fusion.parameters())
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=["fusion"] if has_fusion_parameters else None,
    )
    with _without_peft_deprecation_warning():
        peft_model = get_peft_model(model, config)
    if train_logit_scale:
        base = peft_model.get_base_model()
        base.encoder.logit_scale.requires_grad_(True)
        # A fixed-temperature config (VISTA's default) detaches the scale in `get_logit_scale`; learning it was asked.
        base.config.learnable_temperature = True
    return peft_model


def extra_trainable_parameters(peft_model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters the peft adapter files do not save (e.g. `encoder.logit_scale`), by base-model name."""
    base = peft_model.get_base_model()
    return {
        name: parameter
        for name, parameter in base.named_parameters()
        if parameter.requires_grad and "lora_" not in name and "modules_to_save" not in name
    }


def save_lora_adapter(peft_model: PeftModel, output_dir: str) -> None:
    """Save the adapter (peft's files) plus the extra trainables, so `load_lora_model` restores the trained model."""
    peft_model.save_pretrained(output_dir)
    save_extra_trainables(peft_model, output_dir)


def save_extra_trainables(peft_model: PeftModel, output_dir: str) -> None:
    extras = extra_trainable_parameters(peft_model)
    if extras:
        save_file({name: p.detach().cpu().contiguous() for name, p in extras.items()},
                  os.path.join(output_dir, EXTRA_TRAINABLES_FILE))


def load_lora_model(base_model: GCLModel, adapter_dir: str, is_trainable: bool = False) -> PeftModel:
    """Load a saved adapter (and its extra trainables) onto `base_model`."""
    extras_path = os.path.join(adapter_dir, EXTRA_TRAINABLES_FILE)
    extras = load_file(extras_path) if os.path.exists(extras_path) else {}
    if "logit_bias" in extras and getattr(base_model, "logit_bias", None) is None:
        base_model.add_logit_bias(float(extras["logit_bias"]))  # trained with the sigmoid loss: the base had no bias
    with _without_peft_deprecation_warning():
        peft_model = PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)
    load_extra_trainables(peft_model, extras, extras_path)
    return peft_model


def load_extra_trainables(peft_model: PeftModel, extras: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved extra trainables (`logit_scale`, `logit_bias`) into the base model of `peft_model`."""
    parameters = dict(peft_model.get_base_model().named_parameters())
    for name, tensor in extras.items():
        if name not in parameters or parameters[name].shape != tensor.shape:
            raise ValueError(f"{source}: {name} {tuple(tensor.shape)} does not fit the base model.")
        with torch.no_grad():
            parameters[name].copy_(tensor)


def merge_lora(peft_model: PeftModel) -> GCLModel:
    """Fold the adapters into the base weights and return the plain `GCLModel` (loadable with `AutoModel`)."""
    return peft_model.merge_and_unload()
