"""GCLConfig / GCLModel / GCLProcessor: fusion, temperature policy, Auto classes and save/load round trips."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoProcessor

from modeling_gcl import GCLConfig, GCLModel, GCLProcessor, load_gcl_config
from trainer.losses import gcl_loss

from .conftest import make_small_clip, small_clip_config


def clip_projections(clip, batch):
    image = clip.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    text = clip.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
    return image, text


@torch.no_grad()
def test_from_backbone_keeps_clip_weights_and_sum_fusion_is_clip_sf(small_clip, sample_batch):
    image, text = clip_projections(small_clip, sample_batch)
    model = GCLModel.from_backbone(small_clip).eval()
    out = model(**sample_batch)
    torch.testing.assert_close(out.image_embeds, F.normalize(image, dim=-1))
    torch.testing.assert_close(out.text_embeds, F.normalize(text, dim=-1))
    torch.testing.assert_close(out.fused_embeds, F.normalize(image + text, dim=-1))  # CLIP-SF / UniIR
    torch.testing.assert_close(out.logit_scale, small_clip.logit_scale.exp())
    for embeds in (out.image_embeds, out.text_embeds, out.fused_embeds):
        torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(embeds.shape[0]))
    torch.testing.assert_close(model.get_fused_features(**sample_batch), out.fused_embeds)
    torch.testing.assert_close(model.get_image_features(sample_batch["pixel_values"]), out.image_embeds)


@torch.no_grad()
def test_fusion_modes(sample_batch):
    image, text = clip_projections(make_small_clip().eval(), sample_batch)
    fused = {}
    for mode in ("sum", "normalized_sum", "mean", "attention"):
        model = GCLModel.from_backbone(make_small_clip(), fusion=mode).eval()
        fused[mode] = model(**sample_batch).fused_embeds
    torch.testing.assert_close(fused["normalized_sum"], F.normalize(F.normalize(image, dim=-1) + F.normalize(text, dim=-1), dim=-1))
    torch.testing.assert_close(fused["mean"], fused["sum"])  # same direction once normalised
    torch.testing.assert_close(fused["attention"], fused["sum"])  # zero-initialised pooling starts as CLIP-SF
    assert not torch.allclose(fused["normalized_sum"], fused["sum"])


def test_attention_fusion_is_learnable_and_round_trips(tmp_path, sample_batch):
    model = GCLModel.from_backbone(make_small_clip(), fusion="attention")
    out = model(**sample_batch, return_loss=True)
    out.loss.backward()
    assert model.fusion.score_weight.grad is not None and model.fusion.score_weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.fusion.score_weight.normal_()
    model.save_pretrained(tmp_path)
    loaded = GCLModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.fusion.score_weight, model.fusion.score_weight)
    # One bias per modality: a strong preference for the image makes the fused vector the image's.
    with torch.no_grad():
        model.fusion.score_bias.copy_(torch.tensor([30.0, -30.0]))
        out = model(**sample_batch)
    torch.testing.assert_close(out.fused_embeds, out.image_embeds, atol=1e-5, rtol=0)


def test_save_and_load_gives_identical_embeddings(tmp_path, small_gcl_model, processor, sample_batch):
    """A CLIP backbone saves as a native CLIP checkpoint: the Auto classes see CLIP, `GCLModel` / `GCLProcessor` (and
    `load_gcl_config`) read it back as GCL."""
    small_gcl_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert os.path.exists(tmp_path / "model.safetensors")
    assert not list(tmp_path.glob("*.bin"))
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "CLIPConfig"
    assert type(AutoModel.from_pretrained(tmp_path)).__name__ == "CLIPModel"
    assert type(AutoProcessor.from_pretrained(tmp_path)).__name__ == "CLIPProcessor"
    config = load_gcl_config(tmp_path)
    assert isinstance(config, GCLConfig) and config.fusion == "sum"
    assert isinstance(GCLConfig.from_pretrained(tmp_path), GCLConfig)
    loaded = GCLModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GCLModel)
    loaded_processor = GCLProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded_processor, GCLProcessor)
    with torch.no_grad():
        before = small_gcl_model(**sample_batch)
        after = loaded(**sample_batch)
    for key in ("image_embeds", "text_embeds", "fused_embeds", "logit_scale"):
        torch.testing.assert_close(after[key], before[key], atol=0, rtol=0)
    encoded = loaded_processor(images=[torch.zeros(3, 40, 40).numpy().transpose(1, 2, 0).astype("uint8")],
                               text=["a cat"], return_tensors="pt", padding=True)
    assert encoded["pixel_values"].shape == (1, 3, 32, 32)
    assert encoded["input_ids"][0, 0].item() == 49406  # <|startoftext|>


def test_fixed_temperature_policy(tmp_path):
    model = GCLModel.from_backbone(make_small_clip(), temperature=0.02, learnable_temperature=False)
    assert not model.encoder.logit_scale.requires_grad
    assert model.get_logit_scale().item() == pytest.approx(50.0, rel=1e-6)
    model.save_pretrained(tmp_path)
    loaded = GCLModel.from_pretrained(tmp_path)
    assert not loaded.encoder.logit_scale.requires_grad
    assert loaded.get_logit_scale().item() == pytest.approx(50.0, rel=1e-6)
    trainable = GCLModel.from_backbone(make_small_clip())
    assert trainable.encoder.logit_scale.requires_grad


def test_logit_scale_is_clamped_at_100():
    model = GCLModel.from_backbone(make_small_clip())
    with torch.no_grad():
        model.encoder.logit_scale.fill_(math.log(1000.0))
    assert model.get_logit_scale().item() == pytest.approx(100.0)


def test_forward_loss_is_gcl_over_its_embeddings(sample_batch):
    model = GCLModel.from_backbone(make_small_clip(), loss_pairs=["i2t", "t2it"], loss_weights=[1.0, 2.0])
    out = model(**sample_batch, return_loss=True)
    expected, _ = gcl_loss(out.image_embeds, out.text_embeds, out.fused_embeds, 1 / out.logit_scale,
                           pairs=["i2t", "t2it"], weights=[1.0, 2.0])
    torch.testing.assert_close(out.loss, expected)
    assert set(out.loss_terms) == {"loss_i2t", "loss_t2it"}
    with pytest.raises(ValueError, match="needs both"):
        model(pixel_values=sample_batch["pixel_values"], return_loss=True)


def test_single_modality_inputs(small_gcl_model, sample_batch):
    with torch.no_grad():
        only_text = small_gcl_model(input_ids=sample_batch["input_ids"], attention_mask=sample_batch["attention_mask"])
    assert only_text.image_embeds is None and only_text.fused_embeds is None
    assert only_text.text_embeds.shape == (6, 24)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"fusion": "concat"}, "fusion"),
        ({"loss_pairs": ["i2i"]}, "Unknown loss pair"),
        ({"loss_pairs": ["i2t"], "loss_weights": [1, 2]}, "loss_weights"),
        ({"temperature": 0.0}, "temperature"),
        ({"loss_pairs": []}, "empty"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GCLConfig(encoder_config=small_clip_config(), **kwargs)


def test_config_rejects_unsupported_encoder():
    with pytest.raises(ValueError, match="not supported"):
        GCLConfig(encoder_config={"model_type": "bert"})


def test_from_backbone_loads_a_clip_directory(tmp_path, small_clip, sample_batch):
    small_clip.save_pretrained(tmp_path)
    model = GCLModel.from_backbone(str(tmp_path)).eval()
    with torch.no_grad():
        image, _ = clip_projections(small_clip, sample_batch)
        torch.testing.assert_close(model.get_image_features(sample_batch["pixel_values"]), F.normalize(image, dim=-1))
    with pytest.raises(TypeError, match="CLIPModel"):
        GCLModel.from_backbone(torch.nn.Linear(2, 2))


def test_gradient_checkpointing_gives_the_same_gradients(sample_batch):
    grads = []
    for checkpointing in (False, True):
        model = GCLModel.from_backbone(make_small_clip()).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        model(**sample_batch, return_loss=True).loss.backward()
        grads.append(model.encoder.vision_model.encoder.layers[0].mlp.fc1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
