"""GradCache (CachedLoss): the same loss and gradients as the uncached loss, with and without dropout."""

import pytest
import torch
from transformers import CLIPModel

from modeling_gcl import GCLModel
from trainer import GCLCollator, GCLTrainer, GCLTrainingArguments
from trainer.losses import CachedLoss, CLIPLoss, GCLLoss

from .conftest import small_clip_config


def make_model(dropout: float = 0.0, seed: int = 0) -> GCLModel:
    torch.manual_seed(seed)
    config = small_clip_config()
    config.text_config.attention_dropout = dropout
    config.vision_config.attention_dropout = dropout
    return GCLModel.from_backbone(CLIPModel._from_config(config, attn_implementation="eager")).train()


@pytest.fixture
def batch(processor, sample_dataset):
    return GCLCollator(processor)([sample_dataset[i] for i in range(12)])


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(a, b, atol=1e-5):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("loss_module", [GCLLoss(), GCLLoss(pairs=["i2t", "it2t"], exclude_other_positive=True), CLIPLoss()])
def test_cached_equals_uncached_without_dropout(batch, loss_module):
    reference = make_model()
    out = reference(**batch)
    loss, _ = loss_module(out.image_embeds, out.text_embeds, out.fused_embeds, 1 / out.logit_scale)
    loss.backward()

    cached_model = make_model()
    cached, terms, outputs = CachedLoss(loss_module, mini_batch_size=5)(cached_model, batch)  # chunks 5, 5, 2
    assert cached.item() == pytest.approx(loss.item(), abs=1e-6)
    torch.testing.assert_close(outputs.fused_embeds, out.fused_embeds.detach(), atol=1e-6, rtol=0)
    cached.backward()
    assert_same_gradients(gradients(cached_model), gradients(reference))
    assert cached_model.encoder.logit_scale.grad is not None  # the temperature is trained too


def test_cached_backward_is_scaled_by_the_incoming_gradient(batch):
    """Gradient accumulation and AMP scale the loss before backward; the cached backward must follow."""
    full, half = make_model(), make_model()
    CachedLoss(GCLLoss(), 4)(full, batch)[0].backward()
    (CachedLoss(GCLLoss(), 4)(half, batch)[0] * 0.5).backward()
    full_grads, half_grads = gradients(full), gradients(half)
    assert_same_gradients({k: v / 2 for k, v in full_grads.items()}, half_grads, atol=1e-7)


def test_cached_replays_dropout_masks(batch):
    """With dropout, the reference is the same mini-batches embedded with a graph in the same RNG sequence; GradCache
    must replay each mini-batch's RNG state in its second pass to reproduce those masks."""
    reference = make_model(dropout=0.3)
    torch.manual_seed(123)
    chunks = [{k: v[s : s + 5] for k, v in batch.items()} for s in range(0, 12, 5)]
    outs = [reference(**chunk) for chunk in chunks]
    columns = [torch.cat([getattr(o, key) for o in outs]) for key in ("image_embeds", "text_embeds", "fused_embeds")]
    loss, _ = GCLLoss()(*columns, 1 / outs[0].logit_scale)
    loss.backward()

    cached_model = make_model(dropout=0.3)
    torch.manual_seed(123)
    cached, _, _ = CachedLoss(GCLLoss(), 5)(cached_model, batch)
    cached.backward()
    assert cached.item() == pytest.approx(loss.item(), abs=1e-6)
    assert_same_gradients(gradients(cached_model), gradients(reference))

    # Dropout is really active: another seed gives another loss.
    torch.manual_seed(7)
    other, _, _ = CachedLoss(GCLLoss(), 5)(make_model(dropout=0.3), batch)
    assert abs(other.item() - loss.item()) > 1e-3


def _trained_parameters(tmp_path, processor, sample_dataset, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=12, max_steps=2, optim="sgd",
                  learning_rate=0.5, lr_scheduler_type="constant", save_strategy="no", report_to="none",
                  disable_tqdm=True, use_cpu=True, logging_steps=1, seed=0)
    values.update(overrides)
    trainer = GCLTrainer(model=make_model(), args=GCLTrainingArguments(**values),
                         train_dataset=sample_dataset.select(range(24)), processing_class=processor)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, losses


@pytest.mark.parametrize("lora", [False, True])
def test_gcl_trainer_with_mini_batches_matches_the_uncached_run(tmp_path, processor, sample_dataset, lora):
    extra = dict(use_lora=True, lora_r=4, lora_dropout=0.0) if lora else {}
    uncached, uncached_losses = _trained_parameters(tmp_path, processor, sample_dataset, **extra)
    cached, cached_losses = _trained_parameters(tmp_path, processor, sample_dataset, mini_batch_size=5, **extra)
    assert len(cached_losses) == 2 and cached_losses[1] < cached_losses[0]  # the first step changed the weights
    assert cached_losses == pytest.approx(uncached_losses, abs=1e-4)
    assert cached.keys() == uncached.keys()
    for name in uncached:
        torch.testing.assert_close(cached[name], uncached[name], atol=1e-5, rtol=1e-4, msg=name)
