"""Streaming data and the one-row-per-group batch sampler."""

import json

import pytest
from torch.utils.data import IterableDataset

from modeling_gcl import GCLModel
from trainer import GCLTrainer, GCLTrainingArguments
from trainer.cli import run
from trainer.data import BUNDLED_SAMPLE_DIR, load_image_caption_dataset, split_holdout
from trainer.data import UniqueGroupBatchSampler

from .conftest import make_small_clip


@pytest.mark.parametrize("drop_last", [True, False])
def test_unique_group_batches_hold_one_row_per_group_and_use_every_row(drop_last):
    groups = [i // 5 for i in range(100)] + list(range(100, 137))  # 20 images with 5 captions each, 37 singles
    sampler = UniqueGroupBatchSampler(groups, batch_size=8, drop_last=drop_last, seed=1)
    batches = list(sampler)
    assert len(batches) == len(UniqueGroupBatchSampler(groups, batch_size=8, drop_last=drop_last, seed=1))
    for batch in batches:
        assert len({groups[i] for i in batch}) == len(batch)
    full = [b for b in batches if len(b) == 8]
    assert all(len(b) < 8 for b in batches[len(full):])  # short batches only at the end
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))
    if not drop_last:
        assert sorted(used) == list(range(137))
    else:
        assert len(used) >= 137 - 2 * 8
    assert list(sampler) != batches  # the next epoch is shuffled differently


def test_unique_group_sampler_rejects_impossible_batches():
    with pytest.raises(ValueError, match="distinct groups"):
        UniqueGroupBatchSampler([0, 0, 1, 1], batch_size=3)


def test_trainer_batches_respect_the_unique_column(tmp_path, processor, sample_dataset):
    rows = sample_dataset.select(range(48)).add_column("image_id", [i // 3 for i in range(48)])
    seen = []
    args = GCLTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4,
                                batch_unique_column="image_id", save_strategy="no", report_to="none",
                                disable_tqdm=True, use_cpu=True, logging_steps=1)
    trainer = GCLTrainer(model=GCLModel.from_backbone(make_small_clip()), args=args, train_dataset=rows,
                         processing_class=processor)
    original = trainer.data_collator

    def recording(features):
        seen.append([f["image_id"] for f in features])
        return original(features)

    trainer.data_collator = recording
    trainer.train()
    assert len(seen) >= 4  # accelerate's loader may prefetch the next batch
    for ids in seen:
        assert len(ids) == 8 and len(set(ids)) == 8


def test_streaming_dataset_trains_with_lazy_rows(tmp_path, processor):
    stream = load_image_caption_dataset(BUNDLED_SAMPLE_DIR, streaming=True)
    assert isinstance(stream, IterableDataset)
    first = next(iter(stream))
    assert first["gcl_row_index"] == 0 and isinstance(first["image"], dict)  # undecoded until the collator
    train, held = split_holdout(stream, 8, seed=0)
    assert len(held) == 8 and next(iter(train))["gcl_row_index"] == 8
    args = GCLTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=3,
                                save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, logging_steps=1)
    trainer = GCLTrainer(model=GCLModel.from_backbone(make_small_clip()), args=args, train_dataset=train,
                         processing_class=processor)
    trainer.train()
    assert len([e for e in trainer.state.log_history if "loss_i2t" in e]) == 3


def test_streaming_jsonl_resolves_relative_paths(tmp_path):
    source = load_image_caption_dataset()
    (tmp_path / "imgs").mkdir()
    lines = []
    for i in range(3):
        path = source[i]["image"]["path"]
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(open(path, "rb").read())
        lines.append(json.dumps({"image": f"imgs/{i}.jpg", "caption": source[i]["caption"]}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    rows = list(load_image_caption_dataset(tmp_path / "pairs.jsonl", streaming=True))
    assert [r["image"] for r in rows] == [str(tmp_path / "imgs" / f"{i}.jpg") for i in range(3)]
    assert [r["gcl_row_index"] for r in rows] == [0, 1, 2]


def test_cli_streaming_needs_max_steps_and_runs(tmp_path):
    with pytest.raises(SystemExit, match="max_steps"):
        run(["--streaming", "true", "--max_steps", "-1"])
    results = run(["--streaming", "true", "--max_steps", "2", "--per_device_train_batch_size", "8",
                   "--eval_holdout", "8", "--output_dir", str(tmp_path / "s"), "--save_strategy", "no",
                   "--disable_tqdm", "true", "--mini_batch_size", "4"])
    assert results["train"]["train_loss"] > 0 and "after" in results
