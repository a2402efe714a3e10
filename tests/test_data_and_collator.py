"""Loading image–caption data and collating it, with bad input named by row and file."""

import io
import json

import datasets
import PIL.Image
import pytest
import torch

from trainer.data import SKIPPED_SAMPLES_KEY, BadSampleError, GCLCollator, load_rgb_image
from trainer.data import DataError, RowIndexedDataset, load_image_caption_dataset, split_holdout

from .conftest import OPENCLIPART_DIR, requires_openclipart


def _jpeg_bytes(size=(20, 12), mode="RGB", color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new(mode, size, color if mode == "RGB" else 128).save(buffer, format="JPEG" if mode in ("RGB", "L") else "PNG")
    return buffer.getvalue()


def test_bundled_sample_loads_undecoded(sample_dataset):
    assert len(sample_dataset) == 320
    row = sample_dataset[0]
    assert set(row["image"]) == {"bytes", "path"} and row["image"]["path"].endswith(".jpg")
    assert isinstance(row["caption"], str) and row["caption"]


@requires_openclipart
def test_openclipart_imagefolder_loads():
    dataset = load_image_caption_dataset(OPENCLIPART_DIR)
    assert len(dataset) == 1807
    assert {"image", "caption", "category", "id"} <= set(dataset.column_names)


def test_jsonl_with_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(_jpeg_bytes())
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"img": "imgs/a.jpg", "text": "a red square"}) + "\n")
    dataset = load_image_caption_dataset(tmp_path / "pairs.jsonl", image_column="img", caption_column="text")
    assert dataset[0]["img"] == str(tmp_path / "imgs" / "a.jpg")
    assert load_rgb_image(dataset[0]["img"]).size == (20, 12)


def test_data_errors_name_the_problem(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_image_caption_dataset(tmp_path / "bad.jsonl")
    (tmp_path / "cols.jsonl").write_text('{"picture": "a.jpg", "caption": "x"}\n')
    with pytest.raises(DataError, match=r"missing column\(s\) \['image'\].*picture"):
        load_image_caption_dataset(tmp_path / "cols.jsonl")
    with pytest.raises(DataError, match="no such file"):
        load_image_caption_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="metadata.jsonl"):
        load_image_caption_dataset(tmp_path / "folder")


def test_split_holdout_is_deterministic(sample_dataset):
    train_a, held_a = split_holdout(sample_dataset, 64, seed=3)
    train_b, held_b = split_holdout(sample_dataset, 64, seed=3)
    assert len(train_a) == 256 and len(held_a) == 64
    assert held_a["caption"] == held_b["caption"]
    assert not set(held_a["caption"]) & set(train_a["caption"])
    with pytest.raises(DataError, match="no training data"):
        split_holdout(sample_dataset, 320, seed=0)


def test_collator_accepts_every_image_form(processor, tmp_path):
    raw = _jpeg_bytes()
    path = tmp_path / "x.jpg"
    path.write_bytes(raw)
    rows = [
        {"image": PIL.Image.open(io.BytesIO(raw)), "caption": "pil"},
        {"image": str(path), "caption": "path"},
        {"image": raw, "caption": "bytes"},
        {"image": {"bytes": None, "path": str(path)}, "caption": "dict path"},
        {"image": {"bytes": raw, "path": None}, "caption": "dict bytes"},
        {"image": PIL.Image.new("RGBA", (5, 5)), "caption": "  rgba  "},
        {"image": PIL.Image.new("L", (1, 1)), "caption": "gray 1x1"},
    ]
    batch = GCLCollator(processor)(rows)
    assert batch["pixel_values"].shape == (7, 3, 32, 32)
    assert batch["input_ids"].shape[0] == 7 and batch["attention_mask"].dtype == torch.long
    assert torch.equal(batch["pixel_values"][1], batch["pixel_values"][2])  # same file, same pixels


def test_collator_truncates_long_captions(processor):
    batch = GCLCollator(processor)([{"image": PIL.Image.new("RGB", (8, 8)), "caption": "word " * 500}])
    assert batch["input_ids"].shape[1] == 77


@pytest.mark.parametrize(
    "image,caption,message",
    [
        ("missing.jpg", "fine", r"row 7 \(.*missing.jpg\): image file not found"),
        ("EMPTY", "fine", r"row 7 \(.*empty.jpg\): cannot read image"),
        ("TRUNCATED", "fine", r"row 7 \(.*truncated.jpg\): cannot read image"),
        ("TEXT", "fine", r"row 7 \(.*notes.jpg\): cannot read image"),
        ("GOOD", "   ", r"row 7 \(.*good.jpg\): caption is empty"),
        ("GOOD", None, r"row 7 \(.*good.jpg\): caption is missing \(None\)"),
        ("GOOD", 42, r"row 7 \(.*good.jpg\): caption is a int"),
        (3.5, "fine", r"row 7: image is a float"),
    ],
)
def test_bad_samples_raise_naming_row_and_file(processor, tmp_path, image, caption, message):
    good = _jpeg_bytes(size=(64, 64))
    files = {"EMPTY": ("empty.jpg", b""), "TRUNCATED": ("truncated.jpg", good[: len(good) // 2]),
             "TEXT": ("notes.jpg", b"this is not an image"), "GOOD": ("good.jpg", good)}
    if isinstance(image, str) and image in files:
        name, content = files[image]
        (tmp_path / name).write_bytes(content)
        image = name
    collator = GCLCollator(processor, image_root=str(tmp_path))
    with pytest.raises(BadSampleError, match=message):
        collator([{"image": image, "caption": caption, "gcl_row_index": 7}])


def test_skip_bad_samples_counts_and_keeps_the_good(processor, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    rows = [
        {"image": PIL.Image.new("RGB", (8, 8)), "caption": "ok", "gcl_row_index": 0},
        {"image": str(tmp_path / "bad.jpg"), "caption": "x", "gcl_row_index": 1},
        {"image": PIL.Image.new("RGB", (8, 8)), "caption": "", "gcl_row_index": 2},
    ]
    batch = GCLCollator(processor, skip_bad_samples=True)(rows)
    assert batch["pixel_values"].shape[0] == 1
    skipped = batch[SKIPPED_SAMPLES_KEY]
    assert len(skipped) == 2 and "row 1" in skipped[0] and "bad.jpg" in skipped[0] and "row 2" in skipped[1]
    with pytest.raises(BadSampleError, match="every sample"):
        GCLCollator(processor, skip_bad_samples=True)(rows[1:])


def test_row_indexed_dataset(sample_dataset):
    wrapped = RowIndexedDataset(sample_dataset)
    assert len(wrapped) == 320 and wrapped[5]["gcl_row_index"] == 5
    assert wrapped.column_names == sample_dataset.column_names


def test_hub_dataset_name_goes_to_load_dataset_and_images_stay_undecoded(monkeypatch):
    calls = []
    local = datasets.Dataset.from_dict({"img": [{"bytes": _jpeg_bytes(), "path": "a.jpg"}], "txt": ["a red square"]})
    local = local.cast_column("img", datasets.Image())

    def fake_load_dataset(name, config_name=None, split=None, streaming=False):
        calls.append((name, config_name, split, streaming))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_image_caption_dataset("org/pairs", image_column="img", caption_column="txt", split="validation",
                                         dataset_config_name="small")
    assert calls == [("org/pairs", "small", "validation", False)]
    assert isinstance(dataset[0]["img"], dict) and dataset[0]["img"]["bytes"]


def test_collator_batch_equals_the_processors_combined_call(processor, sample_dataset):
    """The collator calls the image processor and the tokenizer directly (faster); the tensors must be exactly those of
    `processor(images=..., text=...)`, and a processor without the two halves still goes through its own call."""
    rows = [sample_dataset[i] for i in range(5)]
    images = [PIL.Image.open(row["image"]["path"]).convert("RGB") for row in rows]
    expected = processor(images=images, text=[row["caption"] for row in rows], padding=True, truncation=True,
                         max_length=processor.max_text_length, return_tensors="pt")
    batch = GCLCollator(processor)(rows)
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"].long())

    class CombinedOnly:  # e.g. a custom processor that is one callable
        max_text_length = processor.max_text_length

        def __call__(self, **kwargs):
            return processor(**kwargs)

    combined = GCLCollator(CombinedOnly())(rows)
    assert all(torch.equal(combined[key], batch[key]) for key in batch)
