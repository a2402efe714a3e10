# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""Convert UniIR's CLIP-SF checkpoint (`clip_sf_large.pth`) into a `GCLModel` directory with score fusion (`sum`).

    gcl-convert-uniir --checkpoint clip_sf_large.pth --clip_model openai/clip-vit-large-patch14 --output_dir OUT

The file is a full training save (`model`, `optimizer`, `scheduler`, `config` (OmegaConf), `epoch`, `scaler`); the
model is `checkpoint["model"]` with `clip_model.` + OpenAI CLIP names. The pickle holds OmegaConf objects, which
`torch.load(weights_only=True)` refuses; it is read with torch's weights-only unpickler and *stubs* for those classes
(nothing from omegaconf is imported or executed), and only `model` is kept. `--clip_model` gives the tokenizer and
image processor (OpenAI CLIP's, as UniIR uses); the sizes of the towers are read off the checkpoint.
"""

import argparse
import collections
import json
import math
import os
import sys
import typing
from collections.abc import Mapping

import torch
from transformers import CLIPConfig

from modeling_gcl import GCLConfig, GCLModel, GCLProcessor

from .common import DTYPES, ConversionError, atomic_output_dir, check_layout, meta_state_shapes

PREFIX = "clip_model."
OPENAI_HEAD_DIM = 64  # OpenAI CLIP's heads are 64 wide (width // 64 heads)
# The classes the HF pickle scan lists for clip_sf_large.pth beside torch's own.
PICKLED_CONFIG_CLASSES = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.ValueNode",
)


class _PickleStub:
    """Stands in for a pickled object of a class we do not import: absorbs its constructor arguments and state."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def _stub_class(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    return type(name, (_PickleStub,), {"__module__": module, "__qualname__": name})


def _stub_defaultdict(default_factory=None, *args):
    """`collections.defaultdict` is rebuilt as a plain dict (its factory is irrelevant to the weights)."""
    return {}


def _stub_value(*args, **kwargs):
    return None


def load_uniir_model_state(path: str) -> dict[str, torch.Tensor]:
    """`checkpoint["model"]` of a UniIR training save, read with torch's weights-only unpickler; the OmegaConf
    config and other non-tensor objects are replaced by inert stubs and dropped."""
    stubs = [(_stub_class(name), name) for name in PICKLED_CONFIG_CLASSES]
    stubs += [(_stub_defaultdict, "collections.defaultdict"), (_stub_value, "typing.Any"),
              (_stub_value, "builtins.list"), (_stub_value, "builtins.dict"), (_stub_value, "builtins.int"),
              (_stub_value, "builtins.str"), (_stub_value, "builtins.float"), (_stub_value, "builtins.bool")]
    assert typing.Any is not None and collections.defaultdict is not None  # the real ones are never used
    with torch.serialization.safe_globals(stubs):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        keys = list(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ConversionError(f"{path}: expected UniIR's training save with a 'model' entry, found {keys}.")
    state = checkpoint["model"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: checkpoint['model'] is not a state dict of tensors.")
    return dict(state)


def infer_clip_config(state: Mapping[str, torch.Tensor]) -> CLIPConfig:
    """An HF `CLIPConfig` with the towers' sizes read off the OpenAI-layout checkpoint (QuickGELU, eps 1e-5)."""
    try:
        vision_width = state[PREFIX + "visual.conv1.weight"].shape[0]
        patch = state[PREFIX + "visual.conv1.weight"].shape[-1]
        num_positions = state[PREFIX + "visual.positional_embedding"].shape[0]
        projection_dim = state[PREFIX + "visual.proj"].shape[1]
        text_width = state[PREFIX + "ln_final.weight"].shape[0]
        context, vocab = state[PREFIX + "positional_embedding"].shape[0], state[PREFIX + "token_embedding.weight"].shape[0]
        vision_mlp = state[PREFIX + "visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        text_mlp = state[PREFIX + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except KeyError as error:
        raise ConversionError(f"Not an OpenAI-layout CLIP-SF checkpoint: no {error.args[0]}.") from error

    def count(prefix):
        return len({n[len(prefix):].split(".")[0] for n in state if n.startswith(prefix)})

    grid = math.isqrt(num_positions - 1)
    text = dict(vocab_size=vocab, hidden_size=text_width, intermediate_size=text_mlp,
                num_hidden_layers=count(PREFIX + "transformer.resblocks."),
                num_attention_heads=max(text_width // OPENAI_HEAD_DIM, 1), max_position_embeddings=context,
                hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                pad_token_id=vocab - 1)
    vision = dict(hidden_size=vision_width, intermediate_size=vision_mlp, image_size=grid * patch, patch_size=patch,
                  num_hidden_layers=count(PREFIX + "visual.transformer.resblocks."),
                  num_attention_heads=max(vision_width // OPENAI_HEAD_DIM, 1), hidden_act="quick_gelu",
                  layer_norm_eps=1e-5)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def _tower_map(source: str, target: str, layers: int) -> dict[str, str]:
    key_map = {}
    for i in range(layers):
        s, t = f"{source}resblocks.{i}.", f"{target}layers.{i}."
        for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                     ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")):
            key_map[f"{s}{a}.weight"], key_map[f"{s}{a}.bias"] = f"{t}{b}.weight", f"{t}{b}.bias"
        # the packed q/k/v projection is split in three; `convert_uniir_state_dict` does the split
        key_map[f"{s}attn.in_proj_weight"] = f"{t}self_attn.qkv.weight"
        key_map[f"{s}attn.in_proj_bias"] = f"{t}self_attn.qkv.bias"
    return key_map


def uniir_key_map(config: CLIPConfig) -> dict[str, str]:
    """OpenAI CLIP name (with `clip_model.`) -> `GCLModel` name; `...qkv...` targets stand for q/k/v_proj."""
    p, e = PREFIX, "encoder."
    key_map = {
        p + "token_embedding.weight": e + "text_model.embeddings.token_embedding.weight",
        p + "positional_embedding": e + "text_model.embeddings.position_embedding.weight",
        p + "ln_final.weight": e + "text_model.final_layer_norm.weight",
        p + "ln_final.bias": e + "text_model.final_layer_norm.bias",
        p + "text_projection": e + "text_projection.weight",  # transposed
        p + "logit_scale": e + "logit_scale",
        p + "visual.conv1.weight": e + "vision_model.embeddings.patch_embedding.weight",
        p + "visual.class_embedding": e + "vision_model.embeddings.class_embedding",
        p + "visual.positional_embedding": e + "vision_model.embeddings.position_embedding.weight",
        p + "visual.ln_pre.weight": e + "vision_model.pre_layrnorm.weight",
        p + "visual.ln_pre.bias": e + "vision_model.pre_layrnorm.bias",
        p + "visual.ln_post.weight": e + "vision_model.post_layernorm.weight",
        p + "visual.ln_post.bias": e + "vision_model.post_layernorm.bias",
        p + "visual.proj": e + "visual_projection.weight",  # transposed
    }
    key_map.update(_tower_map(p + "transformer.", e + "text_model.encoder.", config.text_config.num_hidden_layers))
    key_map.update(_tower_map(p + "visual.transformer.", e + "vision_model.encoder.", config.vision_config.num_hidden_layers))
    return key_map


TRANSPOSED = (PREFIX + "text_projection", PREFIX + "visual.proj")


def _target_shapes(config: GCLConfig) -> dict[str, tuple[int, ...]]:
    """`GCLModel` shapes, with each layer's q/k/v projections stacked as the packed `qkv` the checkpoint has, and
    the two projections transposed to the checkpoint's [in, out] layout."""
    shapes = dict(meta_state_shapes(lambda: GCLModel(config)))
    for name in list(shapes):
        if ".self_attn.q_proj." in name:
            packed = name.replace(".q_proj.", ".qkv.")
            shape = shapes[name]
            shapes[packed] = (3 * shape[0],) + tuple(shape[1:])
    for name in ("encoder.text_projection.weight", "encoder.visual_projection.weight"):
        shapes[name] = tuple(reversed(shapes[name]))
    return shapes


def convert_uniir_state_dict(state: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> GCLModel:
    """A `GCLModel` (CLIP backbone, `sum` fusion, learnable logit scale from the checkpoint) holding UniIR's tensors."""
    clip_config = infer_clip_config(state)
    config = GCLConfig(encoder_config=clip_config, fusion="sum")
    key_map = uniir_key_map(clip_config)
    target_shapes = _target_shapes(config)
    check_layout(state, key_map, target_shapes, ignored=(), checkpoint_name="The UniIR checkpoint['model']")
    converted = {}
    for source, target in key_map.items():
        tensor = state[source].to(dtype)
        if source in TRANSPOSED:
            tensor = tensor.t().contiguous()
        if ".qkv." in target:
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[target.replace(".qkv.", f".{part}.")] = chunk.contiguous()
        else:
            converted[target] = tensor
    model = GCLModel(config).to(dtype)
    expected = set(model.state_dict())
    if set(converted) != expected:
        raise ConversionError(f"GCLModel tensors without a source: {sorted(expected - set(converted))}")
    model.load_state_dict(converted, strict=True)
    return model.eval()


def convert(checkpoint: str, clip_model: str, output_dir: str, dtype: str = "float32", overwrite: bool = False,
            **hub_kwargs) -> str:
    state = load_uniir_model_state(checkpoint)
    model = convert_uniir_state_dict(state, DTYPES[dtype])
    processor = GCLProcessor.from_backbone(clip_model, **hub_kwargs)
    size = model.config.encoder_config.vision_config.image_size
    processor.image_processor.size = {"shortest_edge": size}
    processor.image_processor.crop_size = {"height": size, "width": size}
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp_dir:
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)
        with open(os.path.join(tmp_dir, "conversion.json"), "w") as f:
            json.dump({"source": os.path.basename(checkpoint), "clip_model": clip_model, "converter": "gcl-convert-uniir",
                       "kept": "checkpoint['model']", "dtype": dtype}, f, indent=2)
    return output_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gcl-convert-uniir", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="UniIR's clip_sf_large.pth (or another CLIP-SF save)")
    parser.add_argument("--clip_model", default="openai/clip-vit-large-patch14",
                        help="Hub id or directory whose tokenizer and image processor to use")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        convert(args.checkpoint, args.clip_model, args.output_dir, dtype=args.dtype, overwrite=args.overwrite)
    except (ConversionError, FileExistsError) as error:
        print(f"gcl-convert-uniir: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
