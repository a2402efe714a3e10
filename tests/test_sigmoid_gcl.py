"""Sigmoid GCL and the intra-modality ablation (loss_modalities) against literal loops; bias as a model parameter;
GradCache and Trainer runs."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from modeling_gcl import ALL_LOSS_PAIRS, GCLConfig, GCLModel
from trainer import GCLTrainer, GCLTrainingArguments
from trainer.losses import CachedLoss, GCLSigmoidLoss, build_loss, gcl_loss, gcl_sigmoid_loss

from .conftest import small_clip_config
from .test_losses import random_embeddings

MODALITIES = ("i", "t", "it")


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def literal_sigmoid_gcl(e, temperature, bias, pairs=ALL_LOSS_PAIRS):
    """Every (anchor, candidate) cell as its own binary problem, loops in Python floats."""
    n = e["i"].shape[0]
    total = 0.0
    for a in MODALITIES:
        for j in range(n):
            for m in MODALITIES:
                for k in range(n):
                    if m == a and k == j:
                        continue  # the anchor itself
                    s = float(e[a][j] @ e[m][k]) / temperature + bias
                    if k == j:  # same sample, other modality
                        if f"{a}2{m}" in pairs:
                            total += -log_sigmoid(s)
                        continue  # a pair left out: neither positive nor negative
                    total += -log_sigmoid(-s)
    return total / (3 * n)


@pytest.mark.parametrize("seed,n,temperature,bias", [(0, 5, 0.05, -10.0), (1, 4, 0.1, -2.0), (2, 6, 1.0, 0.5)])
def test_sigmoid_matches_literal_loop(seed, n, temperature, bias):
    e = random_embeddings(n=n, seed=seed)
    loss, terms = gcl_sigmoid_loss(e["i"], e["t"], e["it"], temperature, bias)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(literal_sigmoid_gcl(e, temperature, bias), rel=1e-10)
    assert set(terms) == {f"loss_{p}" for p in ALL_LOSS_PAIRS} | {"loss_negatives"}
    recombined = sum(terms[f"loss_{p}"] for p in ALL_LOSS_PAIRS) / 3 + terms["loss_negatives"]
    assert recombined.item() == pytest.approx(loss.item(), rel=1e-12)


def test_sigmoid_pair_subset_ignores_the_left_out_cells():
    e = random_embeddings(n=5, seed=3)
    pairs = ["i2t", "t2i", "it2i"]
    loss, terms = gcl_sigmoid_loss(e["i"], e["t"], e["it"], 0.07, -3.0, pairs=pairs)
    assert loss.item() == pytest.approx(literal_sigmoid_gcl(e, 0.07, -3.0, pairs), rel=1e-10)
    full, _ = gcl_sigmoid_loss(e["i"], e["t"], e["it"], 0.07, -3.0)
    assert abs(full.item() - loss.item()) > 1e-3
    assert "loss_i2it" not in terms


def test_sigmoid_gradients_match_autograd_of_the_literal_formula():
    e = {k: v.clone().requires_grad_() for k, v in random_embeddings(n=4, seed=5).items()}
    temperature = torch.tensor(0.08, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    loss, _ = gcl_sigmoid_loss(e["i"], e["t"], e["it"], temperature, bias)
    grads = torch.autograd.grad(loss, [*e.values(), temperature, bias])

    # The same formula as explicit per-cell tensors (no masking tricks).
    cells = []
    for a in MODALITIES:
        for j in range(4):
            for m in MODALITIES:
                for k in range(4):
                    if m == a and k == j:
                        continue
                    s = e[a][j] @ e[m][k] / temperature + bias
                    cells.append(-F.logsigmoid(s) if k == j else -F.logsigmoid(-s))
    reference = torch.stack(cells).sum() / 12
    reference_grads = torch.autograd.grad(reference, [*e.values(), temperature, bias])
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)
    assert grads[-1].abs() > 0 and grads[-2].abs() > 0  # bias and temperature are learned


def test_sigmoid_half_precision_and_module_errors():
    e = random_embeddings(n=4, seed=1, dtype=torch.float32)
    loss16, _ = gcl_sigmoid_loss(*(e[m].half() for m in MODALITIES), 0.01, -10.0)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    with pytest.raises(ValueError, match="logit bias"):
        GCLSigmoidLoss()(e["i"], e["t"], e["it"], 0.05)
    with pytest.raises(ValueError, match="loss_weights"):
        build_loss("gcl_sigmoid", weights=[1.0] * 6)
    with pytest.raises(ValueError, match="batch sizes differ"):
        gcl_sigmoid_loss(e["i"], e["t"][:3], e["it"], 0.05, -1.0)


def literal_gcl_over(e, temperature, modalities, pairs):
    """Eq. 2's literal loop with the denominator restricted to `modalities`."""
    n = e["i"].shape[0]
    terms = []
    for name in pairs:
        a, b = name.split("2")
        total = 0.0
        for j in range(n):
            numerator = math.exp(float(e[a][j] @ e[b][j]) / temperature)
            denominator = sum(math.exp(float(e[a][j] @ e[m][k]) / temperature)
                              for m in modalities for k in range(n) if not (m == a and k == j))
            total += -math.log(numerator / denominator)
        terms.append(total / n)
    return sum(terms) / len(terms)


def test_cl_with_intra_modality_separation_matches_literal_loop():
    e = random_embeddings(n=6, seed=4)
    pairs = ["i2t", "t2i"]
    loss, terms = gcl_loss(e["i"], e["t"], e["it"], 0.05, pairs=pairs, modalities=["i", "t"])
    assert loss.item() == pytest.approx(literal_gcl_over(e, 0.05, ("i", "t"), pairs), rel=1e-10)
    assert set(terms) == {"loss_i2t", "loss_t2i"}
    # The fused items are truly out of it: moving them changes nothing; with all modalities it would.
    moved, _ = gcl_loss(e["i"], e["t"], -e["it"], 0.05, pairs=pairs, modalities=["t", "i"])
    assert moved.item() == pytest.approx(loss.item(), rel=1e-12)
    full, _ = gcl_loss(e["i"], e["t"], e["it"], 0.05, pairs=pairs)
    assert abs(full.item() - loss.item()) > 1e-3
    with pytest.raises(ValueError, match="needs modality 'it'"):
        gcl_loss(e["i"], e["t"], e["it"], 0.05, pairs=["i2it"], modalities=["i", "t"])


def make_model(seed=0, **config):
    torch.manual_seed(seed)
    clip = CLIPModel._from_config(small_clip_config(), attn_implementation="eager")
    return GCLModel.from_backbone(clip, **config).train()


def test_logit_bias_is_a_saved_model_parameter(tmp_path):
    model = make_model(sigmoid_bias_init=-7.5)
    assert model.logit_bias.item() == -7.5 and model.logit_bias.requires_grad
    with torch.no_grad():
        model.logit_bias.fill_(-3.25)
    model.save_pretrained(tmp_path)
    reloaded = GCLModel.from_pretrained(tmp_path)
    assert reloaded.logit_bias.item() == -3.25  # the trained value, not the initial one
    assert GCLConfig.from_pretrained(tmp_path).sigmoid_bias_init == -7.5
    plain = make_model()
    assert plain.logit_bias is None and "logit_bias" not in dict(plain.named_parameters())
    plain.add_logit_bias(-10.0)
    assert plain.logit_bias.item() == -10.0 and plain.config.sigmoid_bias_init == -10.0


def test_cached_sigmoid_equals_uncached(processor, sample_dataset):
    from trainer import GCLCollator

    batch = GCLCollator(processor)([sample_dataset[i] for i in range(10)])
    loss_module = GCLSigmoidLoss()
    reference = make_model(sigmoid_bias_init=-5.0)
    out = reference(**batch)
    loss, _ = loss_module(out.image_embeds, out.text_embeds, out.fused_embeds, 1 / out.logit_scale,
                          logit_bias=out.logit_bias)
    loss.backward()
    cached_model = make_model(sigmoid_bias_init=-5.0)
    cached, _, outputs = CachedLoss(loss_module, mini_batch_size=4)(cached_model, batch)
    assert cached.item() == pytest.approx(loss.item(), abs=1e-5)
    cached.backward()
    for (name, p), q in zip(reference.named_parameters(), cached_model.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert cached_model.logit_bias.grad is not None and cached_model.logit_bias.grad.abs() > 0


@pytest.mark.parametrize("lora", [False, True])
def test_trainer_with_sigmoid_learns_bias_and_temperature(tmp_path, processor, sample_dataset, lora):
    model = make_model()  # no bias yet: the trainer adds it
    args = GCLTrainingArguments(
        output_dir=str(tmp_path / "run"), loss="gcl_sigmoid", sigmoid_bias_init=-6.0, per_device_train_batch_size=12,
        max_steps=3, learning_rate=0.05, lr_scheduler_type="constant", save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, logging_steps=1, seed=0,
        **(dict(use_lora=True, lora_r=4, lora_dropout=0.0, train_logit_scale=True) if lora else {}),
    )
    trainer = GCLTrainer(model=model, args=args, train_dataset=sample_dataset.select(range(36)),
                         processing_class=processor)
    scale_before = model.encoder.logit_scale.item()
    trainer.train()
    assert model.logit_bias.item() != -6.0  # trained
    assert model.encoder.logit_scale.item() != scale_before
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and {"loss_i2t", "loss_negatives", "logit_bias", "temperature"} <= set(logs[0])
    assert logs[0]["logit_bias"] == pytest.approx(-6.0, abs=1e-4)


def test_lora_sigmoid_bias_survives_resume_and_adapter_loading(tmp_path, processor, sample_dataset):
    from trainer.lora import load_lora_model, save_lora_adapter

    def trainer_for(max_steps):
        args = GCLTrainingArguments(
            output_dir=str(tmp_path / "run"), loss="gcl_sigmoid", sigmoid_bias_init=-6.0,
            per_device_train_batch_size=12, max_steps=max_steps, learning_rate=0.05, lr_scheduler_type="constant",
            save_strategy="steps", save_steps=2, report_to="none", disable_tqdm=True, use_cpu=True, logging_steps=1,
            seed=0, use_lora=True, lora_r=4, lora_dropout=0.0, train_logit_scale=True,
        )
        return GCLTrainer(model=make_model(), args=args, train_dataset=sample_dataset.select(range(36)),
                          processing_class=processor)

    first = trainer_for(2)
    first.train()
    trained_bias = first.model.get_base_model().logit_bias.item()
    trained_scale = first.model.get_base_model().encoder.logit_scale.item()
    assert trained_bias != -6.0

    resumed = trainer_for(3)  # a fresh model: bias -6, scale at its initial value
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    step3 = [entry for entry in resumed.state.log_history if entry.get("step") == 3 and "loss" in entry][0]
    assert step3["logit_bias"] == pytest.approx(trained_bias, abs=1e-4)  # step 3 starts from the checkpoint's bias
    assert step3["temperature"] == pytest.approx(1 / math.exp(trained_scale), abs=1e-4)

    save_lora_adapter(first.model, str(tmp_path / "adapter"))
    loaded = load_lora_model(make_model(), str(tmp_path / "adapter"))  # a plain backbone, no bias of its own
    assert loaded.get_base_model().logit_bias.item() == pytest.approx(trained_bias)


def test_other_losses_leave_a_bias_frozen(processor, sample_dataset, tmp_path):
    model = make_model(sigmoid_bias_init=-3.0)
    args = GCLTrainingArguments(output_dir=str(tmp_path), loss="gcl", report_to="none", use_cpu=True)
    GCLTrainer(model=model, args=args, train_dataset=sample_dataset.select(range(8)), processing_class=processor)
    assert not model.logit_bias.requires_grad  # DDP (find_unused_parameters=False) refuses unused trainables
