"""LoRA on GCL models: presets, the logit scale option, adapter save/load, and merging."""

import math

import pytest
import torch

from modeling_gcl import GCLModel
from trainer import GCLTrainer, GCLTrainingArguments, apply_lora, load_lora_model, merge_lora, save_lora_adapter
from trainer.lora import EXTRA_TRAINABLES_FILE, LORA_TARGET_PRESETS

from .conftest import make_small_clip


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_clip_preset_targets_attention_and_mlp_and_freezes_logit_scale():
    peft_model = apply_lora(GCLModel.from_backbone(make_small_clip()), r=4, alpha=8)
    names = trainable_names(peft_model)
    assert names and all("lora_" in name for name in names)
    for target in LORA_TARGET_PRESETS["clip"]:
        assert any(f".{target}.lora_A" in name for name in names), target
    assert not peft_model.get_base_model().encoder.logit_scale.requires_grad


def test_train_logit_scale_option_and_attention_fusion_are_trainable():
    peft_model = apply_lora(GCLModel.from_backbone(make_small_clip(), fusion="attention"), r=4, train_logit_scale=True)
    names = trainable_names(peft_model)
    assert any(name.endswith("encoder.logit_scale") for name in names)
    assert any("fusion" in name and "score_weight" in name for name in names)


@pytest.fixture
def trained_lora(tmp_path, processor, sample_dataset):
    """A LoRA model trained a few steps (logit scale and attention fusion included)."""
    args = GCLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=3,
                                learning_rate=5e-3, use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                train_logit_scale=True, save_strategy="no", report_to="none", disable_tqdm=True,
                                use_cpu=True)
    trainer = GCLTrainer(model=GCLModel.from_backbone(make_small_clip(), fusion="attention"), args=args,
                         train_dataset=sample_dataset.select(range(24)), processing_class=processor)
    trainer.train()
    model = trainer.model.eval()
    assert hasattr(model, "peft_config")
    assert model.get_base_model().encoder.logit_scale.item() != pytest.approx(math.log(1 / 0.07), abs=1e-6)
    return model


def test_merged_model_gives_the_adapter_embeddings(tmp_path, trained_lora, sample_batch):
    with torch.no_grad():
        adapter_out = trained_lora(**sample_batch)
    with torch.no_grad(), trained_lora.disable_adapter():
        base_out = trained_lora(**sample_batch)
    # The adapters learned something, so equality below is not the trivial one of zero LoRA weights.
    assert (adapter_out.image_embeds - base_out.image_embeds).abs().max() > 1e-3
    assert (adapter_out.text_embeds - base_out.text_embeds).abs().max() > 1e-3
    merged = merge_lora(trained_lora).eval()
    assert isinstance(merged, GCLModel)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = GCLModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        for model in (merged, reloaded):
            out = model(**sample_batch)
            for key in ("image_embeds", "text_embeds", "fused_embeds", "logit_scale"):
                torch.testing.assert_close(out[key], adapter_out[key], atol=1e-5, rtol=0)


def test_adapter_round_trip_restores_lora_fusion_and_logit_scale(tmp_path, trained_lora, sample_batch):
    with torch.no_grad():
        expected = trained_lora(**sample_batch)
    save_lora_adapter(trained_lora, tmp_path / "adapter")
    assert (tmp_path / "adapter" / EXTRA_TRAINABLES_FILE).exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    restored = load_lora_model(GCLModel.from_backbone(make_small_clip(), fusion="attention"), tmp_path / "adapter").eval()
    with torch.no_grad():
        out = restored(**sample_batch)
    for key in ("image_embeds", "text_embeds", "fused_embeds", "logit_scale"):
        torch.testing.assert_close(out[key], expected[key], atol=1e-6, rtol=0)


def test_train_logit_scale_trains_a_fixed_temperature_too():
    from trainer import apply_lora

    model = GCLModel.from_backbone(make_small_clip(), temperature=0.05, learnable_temperature=False)
    assert not model.get_logit_scale().requires_grad
    peft_model = apply_lora(model, r=2, train_logit_scale=True)
    assert peft_model.get_base_model().get_logit_scale().requires_grad


def test_freeze_towers_with_lora_is_an_error(tmp_path):
    from trainer import GCLTrainer, GCLTrainingArguments

    args = GCLTrainingArguments(output_dir=str(tmp_path), use_lora=True, freeze_towers=["text"], report_to="none")
    with pytest.raises(ValueError, match="lora_frozen_towers"):
        GCLTrainer(model=GCLModel.from_backbone(make_small_clip()), args=args)
