"""gcl-convert-uniir: UniIR's CLIP-SF training save (OmegaConf objects in the pickle) -> GCLModel with sum fusion,
checked against an independent OpenAI-CLIP forward over the same tensors."""

import collections
import json
import math
import sys
import types
import typing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modeling_gcl import GCLModel, GCLProcessor
from trainer.convert import ConversionError
from trainer.convert.uniir_clip_sf import (PREFIX, convert_uniir_state_dict, infer_clip_config, load_uniir_model_state,
                                           main, uniir_key_map)
from trainer.data import BUNDLED_TINY_CLIP_DIR

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoint_keys" / "uniir_clip_sf_large.keys.json"

LARGE = dict(vision_width=1024, vision_layers=24, patch=14, image=224, text_width=768, text_layers=12, embed=768,
             context=77, vocab=49408)
SMALL = dict(vision_width=128, vision_layers=2, patch=8, image=32, text_width=64, text_layers=2, embed=32,
             context=77, vocab=49408)


def openai_clip_shapes(s: dict) -> dict[str, list[int]]:
    """`CLIPScoreFusion.state_dict()` names and shapes (OpenAI CLIP under `clip_model.`), as CHECKPOINTS.md lists."""
    shapes = {
        "positional_embedding": [s["context"], s["text_width"]], "text_projection": [s["text_width"], s["embed"]],
        "logit_scale": [], "token_embedding.weight": [s["vocab"], s["text_width"]],
        "ln_final.weight": [s["text_width"]], "ln_final.bias": [s["text_width"]],
        "visual.class_embedding": [s["vision_width"]],
        "visual.positional_embedding": [(s["image"] // s["patch"]) ** 2 + 1, s["vision_width"]],
        "visual.proj": [s["vision_width"], s["embed"]],
        "visual.conv1.weight": [s["vision_width"], 3, s["patch"], s["patch"]],
        "visual.ln_pre.weight": [s["vision_width"]], "visual.ln_pre.bias": [s["vision_width"]],
        "visual.ln_post.weight": [s["vision_width"]], "visual.ln_post.bias": [s["vision_width"]],
    }
    for prefix, width, layers in (("visual.transformer.", s["vision_width"], s["vision_layers"]),
                                  ("transformer.", s["text_width"], s["text_layers"])):
        for i in range(layers):
            b = f"{prefix}resblocks.{i}."
            shapes.update({
                b + "attn.in_proj_weight": [3 * width, width], b + "attn.in_proj_bias": [3 * width],
                b + "attn.out_proj.weight": [width, width], b + "attn.out_proj.bias": [width],
                b + "ln_1.weight": [width], b + "ln_1.bias": [width], b + "ln_2.weight": [width], b + "ln_2.bias": [width],
                b + "mlp.c_fc.weight": [4 * width, width], b + "mlp.c_fc.bias": [4 * width],
                b + "mlp.c_proj.weight": [width, 4 * width], b + "mlp.c_proj.bias": [width],
            })
    return {PREFIX + name: shape for name, shape in shapes.items()}


def random_uniir_state(seed=0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in openai_clip_shapes(SMALL).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
            state[name] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state[name] = 0.1 * torch.randn(shape, generator=generator)
    state[PREFIX + "logit_scale"] = torch.tensor(math.log(1 / 0.05))
    return state


# --- a training save with OmegaConf objects, written without omegaconf installed -----------------------------------

def _fake_omegaconf_modules():
    modules = {name: types.ModuleType(name) for name in ("omegaconf", "omegaconf.dictconfig", "omegaconf.base",
                                                         "omegaconf.nodes")}
    for module, name in (("omegaconf.dictconfig", "DictConfig"), ("omegaconf.base", "Metadata"),
                         ("omegaconf.base", "ContainerMetadata"), ("omegaconf.nodes", "AnyNode")):
        cls = type(name, (), {"__module__": module, "__qualname__": name})
        setattr(modules[module], name, cls)
    return modules


def write_uniir_save(path, state):
    """A `torch.save` of UniIR's six-entry dict whose `config` pickles as omegaconf classes (as the HF scan lists)."""
    modules = _fake_omegaconf_modules()
    sys.modules.update(modules)
    try:
        node = modules["omegaconf.nodes"].AnyNode()
        node.__dict__.update(_val="ViT-L/14", _metadata=modules["omegaconf.base"].Metadata())
        node._metadata.__dict__.update(ref_type=typing.Any, object_type=None, key="clip_model_name")
        config = modules["omegaconf.dictconfig"].DictConfig()
        metadata = modules["omegaconf.base"].ContainerMetadata()
        metadata.__dict__.update(ref_type=typing.Any, key_type=typing.Any, element_type=typing.Any,
                                 flags=collections.defaultdict(list), object_type=dict)
        config.__dict__.update(_metadata=metadata, _content={"model": node})
        optimizer = {"state": {0: {"exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3), "step": torch.tensor(5.0)}},
                     "param_groups": [{"lr": 1e-5, "params": [0]}]}
        torch.save({"model": collections.OrderedDict(state), "optimizer": optimizer,
                    "scheduler": {"last_epoch": 3}, "config": config, "epoch": 3, "scaler": {"scale": 65536.0}}, path)
    finally:
        for name in modules:
            sys.modules.pop(name, None)


# --- independent OpenAI CLIP forward ----------------------------------------------------------------------------------

def _block(x, sd, b, heads, causal):
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[b + name + ".weight"], sd[b + name + ".bias"], 1e-5)

    h = ln(x, "ln_1")
    q, k, v = (h @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = x.shape[1]
        scores = scores + torch.full((n, n), float("-inf")).triu(1)
    o = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    x = x + o @ sd[b + "attn.out_proj.weight"].T + sd[b + "attn.out_proj.bias"]
    h = ln(x, "ln_2") @ sd[b + "mlp.c_fc.weight"].T + sd[b + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ sd[b + "mlp.c_proj.weight"].T + sd[b + "mlp.c_proj.bias"]


def reference_clip(sd, pixel_values, input_ids):
    p = PREFIX
    x = F.conv2d(pixel_values, sd[p + "visual.conv1.weight"], stride=SMALL["patch"]).flatten(2).transpose(1, 2)
    x = torch.cat([sd[p + "visual.class_embedding"].expand(x.shape[0], 1, -1), x], 1) + sd[p + "visual.positional_embedding"]
    x = F.layer_norm(x, x.shape[-1:], sd[p + "visual.ln_pre.weight"], sd[p + "visual.ln_pre.bias"], 1e-5)
    for i in range(SMALL["vision_layers"]):
        x = _block(x, sd, f"{p}visual.transformer.resblocks.{i}.", SMALL["vision_width"] // 64, causal=False)
    x = F.layer_norm(x[:, 0], x.shape[-1:], sd[p + "visual.ln_post.weight"], sd[p + "visual.ln_post.bias"], 1e-5)
    image = x @ sd[p + "visual.proj"]
    t = sd[p + "token_embedding.weight"][input_ids] + sd[p + "positional_embedding"][: input_ids.shape[1]]
    for i in range(SMALL["text_layers"]):
        t = _block(t, sd, f"{p}transformer.resblocks.{i}.", SMALL["text_width"] // 64, causal=True)
    t = F.layer_norm(t, t.shape[-1:], sd[p + "ln_final.weight"], sd[p + "ln_final.bias"], 1e-5)
    text = t[torch.arange(t.shape[0]), input_ids.argmax(dim=-1)] @ sd[p + "text_projection"]
    return image, text


def clip_tokens():
    ids = torch.zeros(3, 9, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    for row, length in enumerate((9, 6, 4)):
        ids[row, :length] = torch.randint(300, 49000, (length,), generator=generator)
        ids[row, 0], ids[row, length - 1] = 49406, 49407
    return ids, (ids != 0).long()


# --- tests ---------------------------------------------------------------------------------------------------------

def test_layout_generator_matches_the_released_listing_and_the_key_map_covers_it():
    released = json.loads(FIXTURE.read_text())["tensors"]
    generated = openai_clip_shapes(LARGE)
    assert set(generated) == set(released)
    assert all(generated[k] == released[k]["shape"] for k in released)
    meta = {name: torch.empty(spec["shape"], device="meta") for name, spec in released.items()}
    config = infer_clip_config(meta)
    assert (config.vision_config.num_hidden_layers, config.vision_config.num_attention_heads,
            config.vision_config.image_size, config.text_config.num_attention_heads, config.projection_dim) == (24, 16, 224, 12, 768)
    assert set(uniir_key_map(config)) == set(released)


def test_plain_weights_only_load_refuses_the_save_and_ours_keeps_only_the_model(tmp_path):
    state = random_uniir_state()
    path = tmp_path / "clip_sf.pth"
    write_uniir_save(path, state)
    assert "omegaconf" not in sys.modules
    with pytest.raises(Exception, match="omegaconf"):
        torch.load(path, weights_only=True)
    loaded = load_uniir_model_state(str(path))
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert "omegaconf" not in sys.modules  # nothing was imported


@torch.no_grad()
def test_cli_converts_to_a_sum_fusion_gcl_model_equal_to_openai_clip(tmp_path):
    state = random_uniir_state()
    path = tmp_path / "clip_sf.pth"
    write_uniir_save(path, state)
    out_dir = tmp_path / "out"
    assert main(["--checkpoint", str(path), "--clip_model", str(BUNDLED_TINY_CLIP_DIR), "--output_dir", str(out_dir)]) == 0
    model = GCLModel.from_pretrained(out_dir).eval()  # a native CLIP checkpoint with a `gcl` section
    assert isinstance(model, GCLModel) and model.config.fusion == "sum" and model.config.backbone_type == "clip"
    assert model.config.learnable_temperature and model.encoder.logit_scale.requires_grad
    processor = GCLProcessor.from_pretrained(out_dir)
    assert isinstance(processor, GCLProcessor) and processor.image_processor.crop_size == {"height": 32, "width": 32}
    pixels = torch.randn(3, 3, 32, 32)
    ids, mask = clip_tokens()
    image, text = reference_clip(state, pixels, ids)
    out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(model.get_image_features(pixels, normalize=False), image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.get_text_features(ids, mask, normalize=False), text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.fused_embeds, F.normalize(image + text, dim=-1), atol=1e-5, rtol=0)  # score fusion
    assert out.logit_scale.item() == pytest.approx(20.0, rel=1e-5)
    assert json.loads((out_dir / "conversion.json").read_text())["kept"] == "checkpoint['model']"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.update({PREFIX + "visual.attnpool.weight": torch.zeros(2)}), "unknown.*visual.attnpool.weight"),
        (lambda s: s.pop(PREFIX + "transformer.resblocks.1.ln_2.bias"), "missing.*resblocks.1.ln_2.bias"),
        (lambda s: s.update({PREFIX + "text_projection": torch.zeros(64, 31)}), "wrong shape.*text_projection"),
    ],
)
def test_layout_errors_name_the_tensors(edit, message):
    state = random_uniir_state()
    edit(state)
    with pytest.raises(ConversionError, match=message):
        convert_uniir_state_dict(state)
