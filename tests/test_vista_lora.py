"""LoRA and tower freezing on a VISTA model; a few GCL steps with LoRA on openclipart from the MiniLM text tower."""

import pytest
import torch
from transformers import AutoModel

from modeling_gcl import GCLModel, GCLProcessor
from trainer import GCLTrainer, GCLTrainingArguments, apply_lora, merge_lora
from trainer.data import load_image_caption_dataset
from trainer.lora import LORA_TARGET_PRESETS, freeze_towers

from .conftest import OPENCLIPART_DIR, make_small_clip, requires_openclipart
from .test_vista import MINILM_DIR, SMALL_EVA, requires_minilm, small_vista_config, text_batch


def lora_modules(model):
    return {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A" in name}


def test_vista_preset_adapts_bert_eva_and_visual_proj_and_keeps_tau_fixed():
    peft_model = apply_lora(GCLModel(small_vista_config()), r=4, alpha=8)
    adapted = lora_modules(peft_model)
    suffixes = {name.rsplit(".", 1)[-1] for name in adapted}
    assert suffixes == set(LORA_TARGET_PRESETS["vista"])
    assert any(".text_model.encoder.layer.0.attention.output.dense" in n for n in adapted)
    assert any(".text_model.encoder.layer.1.intermediate.dense" in n for n in adapted)
    assert any(".vision_model.layers.1.mlp.gate_proj" in n for n in adapted)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # logit_scale (τ = 0.02) stays frozen


def test_frozen_text_tower_gets_no_adapters_and_freeze_towers():
    peft_model = apply_lora(GCLModel(small_vista_config()), r=4, frozen_towers=["text"])
    adapted = lora_modules(peft_model)
    assert adapted and not any(".text_model." in n for n in adapted)
    assert any(n.endswith("encoder.visual_proj") for n in adapted)
    clip_lora = apply_lora(GCLModel.from_backbone(make_small_clip()), r=4, frozen_towers=["vision"])
    assert not any(".vision_model." in n for n in lora_modules(clip_lora))
    model = freeze_towers(GCLModel(small_vista_config()), ["text"])
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert not any(v for n, v in grads.items() if n.startswith("encoder.text_model."))
    assert grads["encoder.visual_proj.weight"] and grads["encoder.vision_model.layers.0.self_attn.q_proj.weight"]
    with pytest.raises(ValueError, match="Unknown tower"):
        freeze_towers(model, ["audio"])


@pytest.mark.slow  # MiniLM's 6 layers run three times per step (text, image, fused); ~20-60 s on 2 shared cores
@requires_minilm
@requires_openclipart
def test_lora_gcl_steps_on_openclipart_with_minilm(tmp_path):
    """GCL with LoRA from the pretrained MiniLM text tower and a new EVA tower: the loss is finite and moves, only the
    adapters change, and the merged model gives the adapter's embeddings (and round-trips through AutoModel)."""
    torch.manual_seed(0)
    model = GCLModel.from_vista_backbone(str(MINILM_DIR), vision_config=SMALL_EVA)
    processor = GCLProcessor.for_vista(str(MINILM_DIR), image_size=32, num_image_tokens=16)
    processor.tokenizer.model_max_length = 16  # short captions keep the three passes per step cheap
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    data = load_image_caption_dataset(OPENCLIPART_DIR).shuffle(seed=0).select(range(24))
    args = GCLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=6, max_steps=3,
                                learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to="none",
                                disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=0)
    frozen_before = peft_model.get_base_model().encoder.text_model.embeddings.word_embeddings.weight.clone()
    trainer = GCLTrainer(model=peft_model, args=args, train_dataset=data, processing_class=processor)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert len(set(losses)) > 1
    assert any(key.startswith("loss_t2it") for entry in trainer.state.log_history for key in entry)
    trained = trainer.model.eval()
    base = trained.get_base_model()
    torch.testing.assert_close(base.encoder.text_model.embeddings.word_embeddings.weight, frozen_before, atol=0, rtol=0)
    assert base.get_logit_scale().item() == pytest.approx(50.0, rel=1e-5)
    batch = trainer.data_collator([data[i] for i in range(3)])
    with torch.no_grad():
        expected = trained(**batch)
    merged = merge_lora(trained).eval()
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        for candidate in (merged, reloaded):
            out = candidate(**batch)
            for key in ("image_embeds", "text_embeds", "fused_embeds"):
                torch.testing.assert_close(out[key], expected[key], atol=1e-5, rtol=0)


def test_vista_text_batch_helper_is_right_padded():
    ids, mask = text_batch()
    assert mask[2].tolist() == [1, 1, 1, 1, 1, 0, 0] and ids[2, 4].item() == 102
