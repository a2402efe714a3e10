# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Convert a released VISTA / Visualized-BGE checkpoint into a `GCLModel` directory.

    gcl-convert-vista --checkpoint Visualized_base_en_v1.5.pth --text_model BAAI/bge-base-en-v1.5 --output_dir OUT
    gcl-convert-vista --checkpoint Visualized_m3.pth --text_model BAAI/bge-m3 --output_dir OUT

The `.pth` is the flat state dict of FlagEmbedding's `Visualized_BGE` (float16): `bge_embeddings.*`,
`bge_encoder.*` (the text model), `model_visual.visual.*` (EVA02-CLIP), `visual_proj.*`. Every tensor is converted
or listed in `IGNORED_KEYS`; anything else, a missing tensor or a wrong shape stops the conversion with the names.
`--text_model` gives the text encoder's config and tokenizer only (its weights come from the checkpoint). The
vision tower's sizes are read off the checkpoint. The output holds the model (safetensors), its config and the
processor (the text model's tokenizer, EVA02-CLIP's 224-px CLIP-normalised transform) and loads with
`AutoModel.from_pretrained` / `AutoProcessor.from_pretrained` once `modeling_gcl` is imported.
"""

import argparse
import json
import math
import os
import pickle
import sys
from collections.abc import Mapping

import torch
from transformers import AutoConfig, AutoTokenizer

from modeling_gcl import GCLConfig, GCLModel, GCLProcessor
from modeling_gcl.configuration_vista import GCLEvaVisionConfig, GCLVistaConfig
from modeling_gcl.modeling_eva import eva_rope_tables

from .common import DTYPES, ConversionError, atomic_output_dir, check_layout, meta_state_shapes

TEXT_PREFIXES = {"bge_embeddings.": "encoder.text_model.embeddings.", "bge_encoder.": "encoder.text_model.encoder."}
VISUAL = "model_visual.visual."
# Present in the released files but unused by VISTA's embeddings (see shared/fixtures/CHECKPOINTS.md).
IGNORED_KEYS = (
    r"bge_pooler\..*",  # the text pooler: VISTA pools the [CLS] hidden state
    r"model_visual\.logit_scale",  # EVA-CLIP's leftover; VISTA's τ is a fixed 0.02
    r"model_visual\.visual\.norm\.(weight|bias)",  # final vision norm: VISTA reads the last block's tokens
    r"model_visual\.visual\.head\.(weight|bias)",  # vision -> CLIP space projection
    r"model_visual\.visual\.blocks\.\d+\.attn\.rope\.freqs_(cos|sin)",  # per-block copies of the shared rotary table
)
# EVA02-CLIP heads are 64 wide in both B/16 and L/14.
EVA_HEAD_DIM = 64
# The fp16 rotary tables in the files differ from a float32 recomputation by up to ~2.4e-4.
ROPE_TOLERANCE = 2e-3

_EVA_BLOCK = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.q_bias": "self_attn.q_proj.bias",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.v_bias": "self_attn.v_proj.bias",
    "attn.inner_attn_ln.weight": "self_attn.sub_norm.weight",
    "attn.inner_attn_ln.bias": "self_attn.sub_norm.bias",
    "attn.proj.weight": "self_attn.out_proj.weight",
    "attn.proj.bias": "self_attn.out_proj.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "mlp.w1.weight": "mlp.gate_proj.weight",  # the SiLU-gated branch
    "mlp.w1.bias": "mlp.gate_proj.bias",
    "mlp.w2.weight": "mlp.up_proj.weight",
    "mlp.w2.bias": "mlp.up_proj.bias",
    "mlp.ffn_ln.weight": "mlp.sub_norm.weight",
    "mlp.ffn_ln.bias": "mlp.sub_norm.bias",
    "mlp.w3.weight": "mlp.down_proj.weight",
    "mlp.w3.bias": "mlp.down_proj.bias",
}
_EVA_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "rope.freqs_cos": "rope.freqs_cos",
    "rope.freqs_sin": "rope.freqs_sin",
}


def vista_key_map(gcl_config: GCLConfig, target_names) -> dict[str, str]:
    """Source (Visualized-BGE) name -> `GCLModel` state-dict name, for every converted tensor."""
    key_map = {"visual_proj.weight": "encoder.visual_proj.weight", "visual_proj.bias": "encoder.visual_proj.bias"}
    for target in target_names:  # the text model keeps its transformers names under a new prefix
        for source_prefix, target_prefix in TEXT_PREFIXES.items():
            if target.startswith(target_prefix):
                key_map[source_prefix + target[len(target_prefix):]] = target
    for source, target in _EVA_TOP.items():
        key_map[VISUAL + source] = "encoder.vision_model." + target
    for layer in range(gcl_config.vista_config.vision_config.num_hidden_layers):
        for source, target in _EVA_BLOCK.items():
            key_map[f"{VISUAL}blocks.{layer}.{source}"] = f"encoder.vision_model.layers.{layer}.{target}"
    return key_map


def infer_vision_config(state_dict: Mapping[str, torch.Tensor], head_dim: int = EVA_HEAD_DIM) -> GCLEvaVisionConfig:
    """The EVA02-CLIP sizes, read off the checkpoint's shapes."""
    try:
        width = state_dict[VISUAL + "cls_token"].shape[-1]
        patch = state_dict[VISUAL + "patch_embed.proj.weight"].shape[-1]
        num_patches = state_dict[VISUAL + "pos_embed"].shape[1] - 1
        intermediate = state_dict[VISUAL + "blocks.0.mlp.w1.weight"].shape[0]
    except KeyError as error:
        raise ConversionError(f"Not a Visualized-BGE checkpoint: no {error.args[0]}.") from error
    layers = len({name.split(".")[3] for name in state_dict if name.startswith(VISUAL + "blocks.")})
    if width % head_dim:
        raise ConversionError(f"The vision width {width} is not a multiple of the head size {head_dim}.")
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ConversionError(f"{VISUAL}pos_embed has {num_patches} patch rows, not a square grid.")
    return GCLEvaVisionConfig(
        image_size=grid * patch, patch_size=patch, hidden_size=width, num_hidden_layers=layers,
        num_attention_heads=width // head_dim, intermediate_size=intermediate,
    )


def build_vista_config(state_dict, text_config, cls_token_id: int, sep_token_id: int, head_dim=EVA_HEAD_DIM) -> GCLConfig:
    vision_config = infer_vision_config(state_dict, head_dim)
    vista_config = GCLVistaConfig(
        text_config=text_config, vision_config=vision_config, cls_token_id=cls_token_id, sep_token_id=sep_token_id
    )
    return GCLConfig(backbone_type="vista", vista_config=vista_config)


def check_rope_tables(state_dict: Mapping[str, torch.Tensor], vision_config: GCLEvaVisionConfig) -> None:
    """The saved rotary tables (shared and per block) must be EVA02's tables for this grid."""
    if any(t.is_meta for t in state_dict.values()):
        return
    expected = dict(zip(("freqs_cos", "freqs_sin"), eva_rope_tables(vision_config)))
    for name, tensor in state_dict.items():
        suffix = name.rsplit(".", 1)[-1]
        if ".rope." in name and suffix in expected:
            if tensor.shape != expected[suffix].shape:
                raise ConversionError(f"{name} {tuple(tensor.shape)}: expected {tuple(expected[suffix].shape)}.")
            error = (tensor.float() - expected[suffix]).abs().max().item()
            if error > ROPE_TOLERANCE:
                raise ConversionError(f"{name} is not EVA02's rotary table for a {vision_config.grid_size}² grid "
                                      f"(max difference {error:.3g}).")


def plan_vista_conversion(state_dict: Mapping[str, torch.Tensor], config: GCLConfig) -> dict[str, str]:
    """Check the checkpoint against `config` (names, shapes, rotary tables) and return the key map. Works on meta
    tensors, so a layout can be validated without the weights."""
    target_shapes = meta_state_shapes(lambda: GCLModel(config))
    key_map = vista_key_map(config, target_shapes)
    check_layout(state_dict, key_map, target_shapes, IGNORED_KEYS, checkpoint_name="The VISTA checkpoint")
    unfilled = set(target_shapes) - set(key_map.values()) - {"encoder.logit_scale"}
    if unfilled:  # a GCLModel tensor the checkpoint cannot provide: a converter bug, not a user error
        raise ConversionError(f"No source for GCLModel tensors: {sorted(unfilled)}")
    check_rope_tables(state_dict, config.vista_config.vision_config)
    return key_map


def convert_vista_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: GCLConfig, dtype: torch.dtype = torch.float32
) -> GCLModel:
    """A `GCLModel` holding the checkpoint's tensors (upcast to `dtype`; the official code runs in float32)."""
    key_map = plan_vista_conversion(state_dict, config)
    converted = {target: state_dict[source].to(dtype) for source, target in key_map.items()}
    converted["encoder.logit_scale"] = torch.tensor(math.log(1.0 / config.temperature), dtype=dtype)
    model = GCLModel(config).to(dtype)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The flat state dict, loaded without executing pickled code (`weights_only=True`)."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such checkpoint file.")
    try:
        try:  # memory-mapped where the file allows it (zip format), so only the converted tensors are read
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ConversionError(f"{path}: not a weights-only loadable checkpoint ({type(error).__name__}: {error}).") from None
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConversionError(f"{path}: expected a flat state dict of tensors (Visualized-BGE's .pth).")
    return dict(state_dict)


def convert(
    checkpoint: str,
    text_model: str,
    output_dir: str,
    dtype: str = "float32",
    overwrite: bool = False,
    vision_head_dim: int = EVA_HEAD_DIM,
    **hub_kwargs,
) -> str:
    state_dict = load_checkpoint(checkpoint)
    text_config = AutoConfig.from_pretrained(text_model, **hub_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(text_model, **hub_kwargs)
    config = build_vista_config(state_dict, text_config, tokenizer.cls_token_id, tokenizer.sep_token_id, vision_head_dim)
    model = convert_vista_state_dict(state_dict, config, DTYPES[dtype])
    vision = config.vista_config.vision_config
    processor = GCLProcessor.for_vista(text_model, image_size=vision.image_size, num_image_tokens=vision.num_patches,
                                       **hub_kwargs)
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp_dir:
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)
        with open(os.path.join(tmp_dir, "conversion.json"), "w") as f:
            json.dump({"source": os.path.basename(checkpoint), "text_model": text_model, "converter": "gcl-convert-vista",
                       "ignored": list(IGNORED_KEYS), "dtype": dtype}, f, indent=2)
    return output_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gcl-convert-vista", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="Visualized_base_en_v1.5.pth or Visualized_m3.pth")
    parser.add_argument("--text_model", required=True,
                        help="Hub id or directory of the text model (config and tokenizer): BAAI/bge-base-en-v1.5, BAAI/bge-m3")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="dtype of the saved weights (the released files are float16; VISTA runs in float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
    parser.add_argument("--vision_head_dim", type=int, default=EVA_HEAD_DIM,
                        help="attention head size of the EVA tower (64 in EVA02-CLIP B/16 and L/14)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        convert(args.checkpoint, args.text_model, args.output_dir, dtype=args.dtype, overwrite=args.overwrite,
                vision_head_dim=args.vision_head_dim)
    except (ConversionError, FileExistsError) as error:
        print(f"gcl-convert-vista: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
