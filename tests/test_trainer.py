"""GCLTrainer: losses, logged terms, gradient accumulation, bad samples, a plain Trainer, and learning on real data."""

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from modeling_gcl import ALL_LOSS_PAIRS, GCLModel
from trainer import GCLCollator, GCLTrainer, GCLTrainingArguments
from trainer.data import load_image_caption_dataset

from .conftest import OPENCLIPART_DIR, make_small_clip, requires_openclipart


def training_args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=3, logging_steps=1,
                  save_strategy="no", report_to="none", disable_tqdm=True, learning_rate=1e-3, use_cpu=True,
                  dataloader_num_workers=0, seed=0)
    values.update(overrides)
    return GCLTrainingArguments(**values)


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_defaults_avoid_the_known_pitfalls():
    args = GCLTrainingArguments(output_dir="unused")
    assert args.remove_unused_columns is False
    assert args.dataloader_drop_last is True
    assert args.ddp_find_unused_parameters is False and args.ddp_broadcast_buffers is False
    assert args.loss == "gcl" and args.loss_pairs == list(ALL_LOSS_PAIRS)
    assert GCLTrainer.loss_is_scaled_for_ga is False


def test_gcl_trainer_logs_every_term_and_updates_weights(tmp_path, processor, sample_dataset):
    model = GCLModel.from_backbone(make_small_clip())
    before = model.encoder.text_projection.weight.detach().clone()
    trainer = GCLTrainer(model=model, args=training_args(tmp_path), train_dataset=sample_dataset.select(range(32)),
                         processing_class=processor)
    assert trainer.model_accepts_loss_kwargs is False
    trainer.train()
    for name in ALL_LOSS_PAIRS:
        assert len(logged(trainer, f"loss_{name}")) == 3
    assert len(logged(trainer, "temperature")) == 3
    assert not torch.equal(before, model.encoder.text_projection.weight)


def test_logged_loss_is_the_weighted_mean_of_terms(tmp_path, processor, sample_dataset):
    args = training_args(tmp_path, loss_pairs=["i2t", "t2it"], loss_weights=[1.0, 3.0], max_steps=2, learning_rate=0.0)
    trainer = GCLTrainer(model=GCLModel.from_backbone(make_small_clip()), args=args,
                         train_dataset=sample_dataset.select(range(16)), processing_class=processor)
    trainer.train()
    entry = trainer.state.log_history[0]
    assert set(k for k in entry if k.startswith("loss_")) == {"loss_i2t", "loss_t2it"}
    assert entry["loss"] == pytest.approx((entry["loss_i2t"] + 3 * entry["loss_t2it"]) / 4, abs=2e-3)


def test_clip_loss_logs_two_terms(tmp_path, processor, sample_dataset):
    trainer = GCLTrainer(model=GCLModel.from_backbone(make_small_clip()), args=training_args(tmp_path, loss="clip"),
                         train_dataset=sample_dataset.select(range(24)), processing_class=processor)
    trainer.train()
    keys = {k for entry in trainer.state.log_history for k in entry if k.startswith("loss_")}
    assert keys == {"loss_i2t", "loss_t2i"}


def test_gradient_accumulation_gives_the_mean_of_micro_batch_losses(tmp_path, processor, sample_dataset):
    """With lr 0, the logged loss of 2 accumulated batches of 8 is the mean of their per-batch GCL losses (it is not
    rescaled by a token count), and no negatives cross micro-batches."""
    seen = []
    collator = GCLCollator(processor)

    def recording_collator(rows):
        batch = collator(rows)
        seen.append({k: v.clone() for k, v in batch.items()})
        return batch

    args = training_args(tmp_path, gradient_accumulation_steps=2, max_steps=1, learning_rate=0.0)
    model = GCLModel.from_backbone(make_small_clip())
    trainer = GCLTrainer(model=model, args=args, train_dataset=sample_dataset.select(range(16)),
                         data_collator=recording_collator)
    trainer.train()
    assert len(seen) == 2
    with torch.no_grad():
        losses = [model(**batch, return_loss=True).loss.item() for batch in seen]
    assert logged(trainer, "loss")[0] == pytest.approx(sum(losses) / 2, abs=1e-4)


def test_skip_bad_samples_are_counted_in_logs_and_summary(tmp_path, processor, sample_dataset, caplog):
    bad_file = tmp_path / "broken.jpg"
    bad_file.write_bytes(b"not a jpeg")
    rows = [dict(sample_dataset[i]) for i in range(16)]
    rows[3]["image"] = {"bytes": None, "path": str(bad_file)}
    rows[9]["caption"] = ""
    data = [{"image": r["image"], "caption": r["caption"]} for r in rows]
    args = training_args(tmp_path, skip_bad_samples=True, max_steps=2, per_device_train_batch_size=8)
    trainer = GCLTrainer(model=GCLModel.from_backbone(make_small_clip()), args=args, train_dataset=data,
                         processing_class=processor)
    with caplog.at_level("WARNING"):
        result = trainer.train()
    assert result.metrics["skipped_samples"] == 2
    assert sum(logged(trainer, "skipped_samples")) == 2
    assert "broken.jpg" in caplog.text and "caption is empty" in caplog.text
    assert "Skipped 2 bad sample(s)" in caplog.text


def test_bad_sample_without_skipping_stops_with_row_and_file(tmp_path, processor, sample_dataset):
    rows = [{"image": sample_dataset[i]["image"], "caption": sample_dataset[i]["caption"]} for i in range(8)]
    rows[5]["image"] = {"bytes": None, "path": str(tmp_path / "gone.jpg")}
    trainer = GCLTrainer(model=GCLModel.from_backbone(make_small_clip()), args=training_args(tmp_path, max_steps=1),
                         train_dataset=rows, processing_class=processor)
    with pytest.raises(Exception, match=r"row 5 \(.*gone.jpg\): image file not found"):
        trainer.train()


def test_plain_trainer_trains_through_return_loss(tmp_path, processor, sample_dataset):
    collator = GCLCollator(processor)
    args = TrainingArguments(output_dir=str(tmp_path / "plain"), per_device_train_batch_size=8, max_steps=2,
                             remove_unused_columns=False, report_to="none", save_strategy="no", disable_tqdm=True,
                             logging_steps=1, use_cpu=True)
    trainer = Trainer(model=GCLModel.from_backbone(make_small_clip()), args=args,
                      train_dataset=sample_dataset.select(range(16)),
                      data_collator=lambda rows: {**collator(rows), "return_loss": True})
    trainer.train()
    assert len(logged(trainer, "loss")) == 2 and all(loss > 0 for loss in logged(trainer, "loss"))


@pytest.mark.slow
@requires_openclipart
@pytest.mark.parametrize("loss", ["gcl", "clip"])
def test_small_clip_learns_on_openclipart_in_20_steps(tmp_path, processor, loss):
    data = load_image_caption_dataset(OPENCLIPART_DIR).shuffle(seed=0).select(range(640))
    args = training_args(tmp_path, loss=loss, max_steps=20, per_device_train_batch_size=32, learning_rate=1e-3,
                         warmup_steps=2)
    trainer = GCLTrainer(model=GCLModel.from_backbone(make_small_clip()), args=args, train_dataset=data,
                         processing_class=processor)
    trainer.train()
    losses = logged(trainer, "loss")
    assert len(losses) == 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.3, (first, last)


def test_resume_restores_attention_fusion_and_sigmoid_bias(tmp_path, processor, sample_dataset):
    """A CLIP-layout checkpoint keeps the fusion's and the bias's tensors in `gcl_weights.safetensors`, which
    `Trainer` does not read: a resumed run must continue with them, exactly as the uninterrupted run did."""
    data = sample_dataset.select(range(32))

    class StopAfterTwoSteps(TrainerCallback):  # as a crash after checkpoint-2 would
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def run(output_dir, resume=None, callbacks=None):
        model = GCLModel.from_backbone(make_small_clip(), fusion="attention")
        args = training_args(tmp_path, output_dir=str(output_dir), max_steps=4, save_strategy="steps", save_steps=2,
                             loss="gcl_sigmoid", learning_rate=5e-2)
        trainer = GCLTrainer(model=model, args=args, train_dataset=data, processing_class=processor,
                             callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    uninterrupted = run(tmp_path / "full")
    run(tmp_path / "part", callbacks=[StopAfterTwoSteps()])
    assert (tmp_path / "part" / "checkpoint-2" / "gcl_weights.safetensors").is_file()
    resumed = run(tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-2"))
    assert resumed.fusion.score_weight.abs().sum() > 0  # trained, not the zero initialisation
    for name in ("fusion.score_weight", "fusion.score_bias", "logit_bias"):
        torch.testing.assert_close(resumed.state_dict()[name], uninterrupted.state_dict()[name], atol=1e-6, rtol=0)
