"""LCS-558K (LLaVA-Pretrain's blip_laion_cc_sbu_558k.json): reading it whole and streaming, the Hub route, bad input,
format detection, and gcl-train on it."""

import json
import logging
import shutil
from pathlib import Path

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trainer.data.lcs558k as lcs558k
from trainer.data import SKIPPED_SAMPLES_KEY, BadSampleError, GCLCollator
from trainer.data import BUNDLED_SAMPLE_DIR, ROW_INDEX_KEY, DataError, load_image_caption_dataset, split_holdout
from trainer.data.lcs558k import (
    LCS558K_FILENAME,
    load_lcs558k,
    read_json_array_objects,
    sniff_lcs558k,
    strip_image_token,
)

from .conftest import OPENCLIPART_DIR, requires_openclipart

# The human prompts of the real file vary, with the <image> token before or after the instruction.
PROMPTS = [
    "Render a clear and concise summary of the photo.\n<image>",
    "<image>\nWrite a terse but informative summary of the picture.",
    "Give a brief description of the image.\n<image>",
]


def lcs_element(index: int, caption, image: str | None = None, **overrides) -> dict:
    element = {
        "id": f"{index:09d}",
        "image": image if image is not None else f"{index // 100:05d}/{index:09d}.jpg",
        "conversations": [{"from": "human", "value": PROMPTS[index % len(PROMPTS)]}, {"from": "gpt", "value": caption}],
    }
    element.update(overrides)
    return element


def write_lcs558k(source: Path, target: Path, limit: int | None = None, indent: int | None = None):
    """Write `target/blip_laion_cc_sbu_558k.json` in LCS-558K's exact format from an imagefolder's metadata.jsonl, the
    images copied into nested folders like LLaVA's (`00000/000000000.jpg`). Returns the file and the expected rows."""
    target.mkdir(parents=True, exist_ok=True)
    lines = (source / "metadata.jsonl").read_text(encoding="utf-8").splitlines()[:limit]
    elements, expected = [], []
    for index, line in enumerate(lines):
        pair = json.loads(line)
        element = lcs_element(index, pair["caption"])
        (target / element["image"]).parent.mkdir(exist_ok=True)
        shutil.copyfile(source / pair["file_name"], target / element["image"])
        elements.append(element)
        expected.append({"image": str(target / element["image"]), "caption": pair["caption"], "id": element["id"],
                         ROW_INDEX_KEY: index})
    path = target / LCS558K_FILENAME
    path.write_text(json.dumps(elements, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path, expected


@pytest.fixture(scope="module")
def sample_lcs(tmp_path_factory):
    return write_lcs558k(BUNDLED_SAMPLE_DIR, tmp_path_factory.mktemp("lcs") / "LLaVA-Pretrain")


def write_elements(path: Path, elements, **dumps) -> Path:
    path.write_text(json.dumps(elements, ensure_ascii=False, **dumps), encoding="utf-8")
    return path


def rows_of(dataset) -> list[dict]:
    return [dict(row) for row in dataset]


# --- reading ----------------------------------------------------------------------------------------------------------

def test_rows_captions_and_paths_equal_the_source_pairs(sample_lcs):
    path, expected = sample_lcs
    dataset = load_image_caption_dataset(path)
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 320
    assert rows_of(dataset) == expected
    assert all(Path(row["image"]).is_file() for row in expected[::40])
    assert dataset.features["image"] == datasets.Value("string")  # a path, decoded lazily by the collator


def test_streaming_yields_the_same_rows_reading_the_file_in_chunks(sample_lcs, monkeypatch):
    path, expected = sample_lcs

    def forbidden(*args, **kwargs):
        raise AssertionError("json.load/json.loads on the whole file")

    monkeypatch.setattr(json, "load", forbidden)
    monkeypatch.setattr(json, "loads", forbidden)
    reads = []
    real_open = open

    class CountingFile:
        def __init__(self, *args):
            self.handle = real_open(*args)

        def read(self, size=-1):
            data = self.handle.read(size)
            reads.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(lcs558k, "open", CountingFile, raising=False)
    stream = load_lcs558k(path, streaming=True, chunk_size=512)
    assert isinstance(stream, datasets.IterableDataset)
    first = next(iter(stream))
    assert first == expected[0]
    assert sum(reads) <= 1024 < path.stat().st_size // 50  # the first row came from the first chunk or two
    reads.clear()
    assert rows_of(stream) == expected
    assert len(reads) > 100 and max(reads) == 512  # the whole file, a chunk at a time
    via_data = load_image_caption_dataset(path, streaming=True)
    assert rows_of(via_data) == expected


@pytest.mark.parametrize("chunk_size", [1, 7, 61, 4096])
def test_chunk_boundaries_anywhere_give_the_same_rows(tmp_path, chunk_size):
    """Multi-byte UTF-8, escapes, numbers and literals cut by a chunk boundary; pretty-printed and compact files."""
    elements = [lcs_element(i, caption) for i, caption in enumerate(
        ["café ☕ 日本語 \U0001f600", 'quotes " and \\ backslash \u00e9', "x" * 300, "plain"])]
    elements[2]["extra"] = [12345678, -0.5e-3, True, None, {"nested": [1, 2]}]
    elements[3]["id"] = 77  # a numeric id becomes a string
    for indent in (None, 2):
        path = write_elements(tmp_path / f"lcs{indent}.json", elements, indent=indent)
        rows = list(lcs558k.iter_lcs558k_rows(path, chunk_size=chunk_size))
        assert [row["caption"] for row in rows] == [e["conversations"][1]["value"] for e in elements]
        assert [row["id"] for row in rows] == ["000000000", "000000001", "000000002", "77"]
        assert [e for _, e in read_json_array_objects(path, chunk_size)] == elements


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(elements=st.lists(st.one_of(st.dictionaries(st.text(max_size=5), _json_values, max_size=4), _json_values),
                         max_size=5),
       indent=st.sampled_from([None, 0, 2]), chunk_size=st.integers(1, 40), ensure_ascii=st.booleans(),
       corruption=st.one_of(st.none(), st.tuples(st.integers(0, 10**6), st.binary(min_size=0, max_size=3))))
def test_reader_fuzz_agrees_with_json_loads(tmp_path_factory, elements, indent, chunk_size, ensure_ascii, corruption):
    """Differential check against `json.loads` of the whole file: the incremental reader returns the same objects
    for every valid list of objects, whatever the chunk boundaries, and raises `DataError` (naming the file) for
    everything else (invalid UTF-8 or JSON, a non-list, a non-object element), randomly corrupted bytes included."""
    data = json.dumps(elements, indent=indent, ensure_ascii=ensure_ascii).encode("utf-8")
    if corruption is not None:
        at, replacement = corruption
        at %= len(data) + 1
        data = data[:at] + replacement + data[at + len(replacement):]
    path = tmp_path_factory.mktemp("fuzz") / "list.json"
    path.write_bytes(data)
    try:
        expected = json.loads(data.decode("utf-8").removeprefix("\ufeff"))  # the reader accepts a BOM
        valid = isinstance(expected, list) and all(isinstance(e, dict) for e in expected)
    except (UnicodeDecodeError, json.JSONDecodeError):
        valid = False
    try:
        got = [element for _, element in read_json_array_objects(path, chunk_size)]
    except DataError as error:
        assert not valid, f"valid file refused: {error}"
        assert str(error).startswith(f"{path}: ")
    else:
        assert valid and got == expected


def test_image_token_is_stripped_and_other_captions_kept():
    assert strip_image_token("<image>\nA cat on a mat") == "A cat on a mat"
    assert strip_image_token("A cat <image> on a mat") == "A cat on a mat"
    assert strip_image_token("  untouched caption\n") == "  untouched caption\n"


def test_image_root_override_and_column_names(sample_lcs, tmp_path):
    path, expected = sample_lcs
    moved = tmp_path / "images"
    shutil.copytree(path.parent, moved, ignore=shutil.ignore_patterns("*.json"))
    for streaming in (False, True):
        dataset = load_image_caption_dataset(path, image_column="img", caption_column="text", image_root=moved,
                                             streaming=streaming)
        rows = rows_of(dataset)
        moved_paths = [str(moved / Path(r["image"]).relative_to(path.parent)) for r in expected]
        assert [row["img"] for row in rows] == moved_paths
        assert [row["image"] for row in rows] == [row["img"] for row in rows]
        assert [row["text"] for row in rows] == [r["caption"] for r in expected]
    assert Path(rows[5]["img"]).is_file()
    with pytest.raises(DataError, match=r"nowhere: the image folder \(image_root\) does not exist"):
        load_image_caption_dataset(path, image_root=tmp_path / "nowhere")


def test_jsonl_pairs_take_image_root_too(tmp_path):
    (tmp_path / "imgs").mkdir()
    shutil.copyfile(BUNDLED_SAMPLE_DIR / "images" / "00000.jpg", tmp_path / "imgs" / "a.jpg")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "a.jpg", "caption": "a drawing"}) + "\n")
    for streaming in (False, True):
        rows = rows_of(load_image_caption_dataset(tmp_path / "pairs.jsonl", image_root=tmp_path / "imgs",
                                                  streaming=streaming))
        assert rows[0]["image"] == str(tmp_path / "imgs" / "a.jpg")
    with pytest.raises(DataError, match="image_root applies to LCS-558K and JSONL pairs only"):
        load_image_caption_dataset(BUNDLED_SAMPLE_DIR, image_root=tmp_path)


# --- the Hub --------------------------------------------------------------------------------------------------------

def test_hub_route_downloads_the_json_and_needs_image_root(sample_lcs, monkeypatch):
    path, expected = sample_lcs
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("repo_type")))
        return str(path)

    monkeypatch.setattr(lcs558k, "hf_hub_download", fake_download)
    with pytest.raises(DataError, match=r"LLaVA-Pretrain: LCS-558K from the Hub needs image_root.*images.zip"):
        load_image_caption_dataset("liuhaotian/LLaVA-Pretrain")
    assert calls == []  # refused before downloading 180 MB
    dataset = load_image_caption_dataset("liuhaotian/LLaVA-Pretrain", image_root=path.parent)
    assert calls == [("liuhaotian/LLaVA-Pretrain", LCS558K_FILENAME, "dataset")]
    assert rows_of(dataset) == expected
    stream = load_image_caption_dataset("my-org/my-llava-mirror", data_format="lcs558k", image_root=path.parent,
                                        streaming=True)
    assert calls[-1] == ("my-org/my-llava-mirror", LCS558K_FILENAME, "dataset")
    assert rows_of(stream.take(3)) == expected[:3]


def test_hub_download_failure_is_a_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no connection")

    monkeypatch.setattr(lcs558k, "hf_hub_download", offline)
    with pytest.raises(DataError, match=r"org/x: cannot download blip_laion_cc_sbu_558k.json from the Hub \(OSError"):
        load_lcs558k("org/x", image_root=tmp_path)


# --- format detection -------------------------------------------------------------------------------------------------

def test_auto_detection(sample_lcs, tmp_path, monkeypatch):
    path, expected = sample_lcs
    assert sniff_lcs558k(path) is None
    # A folder holding the JSON file (a local copy of the Hub repository with images.zip extracted beside it).
    assert rows_of(load_image_caption_dataset(path.parent))[:3] == expected[:3]
    # A .json list of plain pairs is not LCS-558K: say so, instead of "no such file".
    pairs = write_elements(tmp_path / "pairs.json", [{"image": "a.jpg", "caption": "x"}])
    with pytest.raises(DataError, match=r"pairs.json: a .json file is read as LCS-558K.*no `conversations`.*JSONL"):
        load_image_caption_dataset(pairs)
    with pytest.raises(DataError, match=r"pairs.json: image–caption pairs are read from JSONL"):
        load_image_caption_dataset(pairs, data_format="pairs")
    with pytest.raises(DataError, match="LCS-558K is one file"):
        load_image_caption_dataset(path, split="validation")
    with pytest.raises(ValueError, match="data_format='llava'"):
        load_image_caption_dataset(path, data_format="llava")
    # Any Hub name other than LLaVA-Pretrain still goes to datasets.load_dataset under "auto".
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *args, **kwargs: seen.append(name) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        load_image_caption_dataset("org/pairs")
    with pytest.raises(ZeroDivisionError):
        load_image_caption_dataset("liuhaotian/LLaVA-Pretrain", data_format="pairs")
    assert seen == ["org/pairs", "liuhaotian/LLaVA-Pretrain"]


def test_sniffing_reads_only_the_head_of_the_file(tmp_path):
    """The detector decides from the first element: garbage after the first 64 KiB is not read (the loader then names
    it)."""
    path = tmp_path / "big.json"
    text = json.dumps([lcs_element(i, "a caption " * 5) for i in range(800)])
    assert len(text) > 2 * lcs558k.SNIFF_BYTES
    path.write_text(text[:-1] + ", {broken]")
    assert sniff_lcs558k(path) is None
    with pytest.raises(DataError, match=r"big.json: element 800 \(byte \d+\): not valid JSON"):
        load_image_caption_dataset(path)


# --- bad input ------------------------------------------------------------------------------------------------------

def _good(n=3):
    return [lcs_element(i, f"caption {i}") for i in range(n)]


def _bad_file(tmp_path, case: str) -> tuple[Path, str]:
    """Write a broken file; return it and the error message expected (a regex without the file name)."""
    path = tmp_path / f"{case}.json"
    good = json.dumps(_good())
    if case == "utf8":
        data = good.replace("caption 1", "caption \udcff1").encode("utf-8", "surrogateescape")
        offset = data.index(b"\xff")
        path.write_bytes(data)
        return path, rf"not valid UTF-8 \(byte 0xff at byte offset {offset}\)"
    if case == "json":
        text = good.replace('"from": "gpt", "value": "caption 2"', '"from": "gpt" "value": "caption 2"')
        path.write_text(text)
        start, error = text.index("{", text.index("caption 1")), text.index('"value": "caption 2"')
        return path, rf"element 2 \(byte {start}\): not valid JSON \(Expecting ',' delimiter at byte {error}\)"
    if case == "object":
        path.write_text(json.dumps(_good()[0]))
        return path, r"not a JSON list: expected '\[' but the file starts with '\{' at byte 0 \(one object per line"
    if case == "element":
        text = json.dumps([_good()[0], "just a string", _good()[1]])
        path.write_text(text)
        return path, rf"element 1 \(byte {text.index('just') - 1}\): expected a JSON object, got str"
    if case == "truncated":
        path.write_text(good[: good.index("caption 2")])
        return path, r"element 2 \(byte \d+\): not valid JSON \(Unterminated string"
    if case == "unclosed":
        path.write_text(good[:-1])
        return path, r"ends after element 2 without closing the list"
    if case == "trailing":
        path.write_text(good + "\n[]")
        return path, rf"byte {len(good) + 1}: data after the list's closing '\]'"
    if case == "comma":
        path.write_text(good[:-1] + ",\n]")
        return path, r"element 3 \(byte \d+\): a trailing comma before '\]'"
    if case == "empty":
        path.write_text("  \n")
        return path, r"empty file; expected a JSON list"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["utf8", "json", "object", "element", "truncated", "unclosed", "trailing", "comma",
                                  "empty"])
@pytest.mark.parametrize("streaming", [False, True])
def test_a_broken_file_raises_naming_the_file_and_place(tmp_path, case, streaming):
    path, message = _bad_file(tmp_path, case)
    with pytest.raises(DataError, match=rf"^{path}: {message}"):
        rows_of(load_lcs558k(path, streaming=streaming, chunk_size=64))
    with pytest.raises(DataError, match=rf"^{path}: {message}"):  # skipping bad rows does not cover a broken file
        rows_of(load_lcs558k(path, streaming=streaming, skip_bad_rows=True))


def test_a_stream_yields_the_rows_before_the_damage(sample_lcs, tmp_path):
    """Incremental: a file cut off near its end still streams its first rows (json.load would give none)."""
    path, expected = sample_lcs
    cut = tmp_path / "cut.json"
    text = path.read_text(encoding="utf-8")
    cut.write_text(text[: len(text) - 500], encoding="utf-8")
    rows = []
    with pytest.raises(DataError, match=r"cut.json: element 31\d \(byte \d+\): not valid JSON"):
        for row in load_lcs558k(cut, image_root=path.parent, streaming=True, chunk_size=1024):
            rows.append(row)
    assert len(rows) > 300 and rows == expected[: len(rows)]


BAD_ROWS = {
    "no image": ({"image": None}, r"has no `image`"),
    "image a list": ({"image": ["a.jpg", "b.jpg"]}, r"`image` is \['a.jpg', 'b.jpg'\], expected a non-empty path"),
    "no gpt turn": ({"conversations": [{"from": "human", "value": "<image>"}]}, r'has no turn from "gpt", so no'),
    "no conversations": ({"conversations": None}, r"has no `conversations` list, so no caption"),
    "caption null": ({"conversations": [{"from": "gpt", "value": None}]}, r"the caption .* is a NoneType, expected"),
    "caption number": ({"conversations": [{"from": "gpt", "value": 42}]}, r"the caption .* is a int, expected a str"),
}


def _with_bad_row(tmp_path, case: str) -> Path:
    elements = _good(4)
    overrides, _ = BAD_ROWS[case]
    for key, value in overrides.items():
        if value is None and key == "image":
            del elements[2][key]
        else:
            elements[2][key] = value
    return write_elements(tmp_path / "rows.json", elements)


@pytest.mark.parametrize("case", list(BAD_ROWS))
@pytest.mark.parametrize("streaming", [False, True])
def test_a_bad_row_raises_naming_file_row_and_id(tmp_path, case, streaming):
    path = _with_bad_row(tmp_path, case)
    with pytest.raises(DataError, match=rf"^{path}: row 2 \(id '000000002'\): {BAD_ROWS[case][1]}"):
        rows_of(load_image_caption_dataset(path, streaming=streaming))


@pytest.mark.parametrize("streaming", [False, True])
def test_skip_bad_rows_counts_and_reports_them(tmp_path, caplog, streaming):
    elements = _good(7)
    del elements[1]["image"]
    elements[3]["conversations"] = [{"from": "human", "value": "<image>"}]
    elements[4]["conversations"][1]["value"] = 7
    del elements[4]["id"]
    path = write_elements(tmp_path / "rows.json", elements)
    caplog.set_level(logging.WARNING, logger="trainer.data.lcs558k")
    dataset = load_image_caption_dataset(path, streaming=streaming, skip_bad_rows=True)
    if streaming:
        assert next(iter(dataset))[ROW_INDEX_KEY] == 0
        assert not caplog.records  # reported when the stream is exhausted, not before
    rows = rows_of(dataset)
    assert [row[ROW_INDEX_KEY] for row in rows] == [0, 2, 5, 6]  # positions in the JSON list, gaps where skipped
    assert [row["caption"] for row in rows] == ["caption 0", "caption 2", "caption 5", "caption 6"]
    [record] = [r for r in caplog.records if "skipped" in r.getMessage()]
    message = record.getMessage()
    assert record.levelno == logging.WARNING and f"{path}: skipped 3 bad row(s)" in message
    assert "row 1 (id '000000001'): has no `image`" in message and "row 4 (id None): the caption" in message
    caplog.clear()
    write_elements(path, [elements[1]])
    with pytest.raises(DataError, match="no rows left after skipping bad rows"):
        load_image_caption_dataset(path, skip_bad_rows=True)


def test_missing_image_files_are_named_lazily_by_the_collator(tmp_path, processor):
    source, expected = write_lcs558k(BUNDLED_SAMPLE_DIR, tmp_path / "lcs", limit=6)
    Path(expected[3]["image"]).unlink()
    dataset = load_image_caption_dataset(source)  # not checked at load time
    assert len(dataset) == 6
    rows = [dataset[i] for i in range(6)]
    with pytest.raises(BadSampleError, match=r"row 3 \(.*00000/000000003.jpg\): image file not found"):
        GCLCollator(processor)(rows)
    batch = GCLCollator(processor, skip_bad_samples=True)(rows)
    assert batch["pixel_values"].shape[0] == 5 and len(batch[SKIPPED_SAMPLES_KEY]) == 1


def test_holdout_split_keeps_json_positions(sample_lcs):
    path, expected = sample_lcs
    train, held = split_holdout(load_image_caption_dataset(path), 16, seed=0)
    for row in list(held) + [train[0], train[100]]:
        assert expected[row[ROW_INDEX_KEY]]["caption"] == row["caption"]


# --- the larger openclipart set, and gcl-train ------------------------------------------------------------------------

@requires_openclipart
def test_openclipart_as_lcs558k(tmp_path):
    path, expected = write_lcs558k(OPENCLIPART_DIR, tmp_path / "lcs", indent=1)
    assert len(expected) == 1807
    assert rows_of(load_image_caption_dataset(path)) == expected
    assert rows_of(load_image_caption_dataset(path, streaming=True)) == expected
    assert list(lcs558k.iter_lcs558k_rows(path, chunk_size=4096)) == expected


@pytest.mark.parametrize("streaming", [False, True])
def test_gcl_train_runs_on_an_lcs558k_file(sample_lcs, tmp_path, streaming):
    from trainer.cli import run

    path, _ = sample_lcs
    argv = ["--train_data", str(path), "--max_steps", "2", "--per_device_train_batch_size", "8", "--eval_holdout", "8",
            "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--save_strategy", "no",
            "--disable_tqdm", "true"]
    results = run(argv + (["--streaming", "true"] if streaming else []))
    assert results["train"]["train_loss"] > 0 and "after" in results
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("streaming", [False, True])
def test_rows_loaded_through_datasets_become_the_same_pairs(sample_lcs, streaming, tmp_path):
    """The Hub's LLaVA-Pretrain JSON read by `datasets.load_dataset` (its json builder, as for the Hub repository)
    gives the pairs that `load_lcs558k` reads from the file."""
    from trainer.data.lcs558k import lcs558k_pairs

    json_path, _ = sample_lcs
    images = json_path.parent
    rows = datasets.load_dataset("json", data_files=str(json_path), split="train", streaming=streaming,
                                 cache_dir=str(tmp_path / "cache"))
    pairs = lcs558k_pairs(rows, image_root=images)
    expected = list(load_lcs558k(json_path, image_root=images))
    assert isinstance(pairs, datasets.IterableDataset if streaming else datasets.Dataset)
    assert list(pairs) == expected

    bad = tmp_path / "bad.json"
    elements = json.loads(json_path.read_text())
    elements[3]["conversations"] = [{"from": "human", "value": "<image>"}]
    bad.write_text(json.dumps(elements))
    rows = datasets.load_dataset("json", data_files=str(bad), split="train", streaming=streaming,
                                 cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(DataError, match=r"row 3 \(id '.*'\): has no turn from \"gpt\""):
        list(lcs558k_pairs(rows, image_root=images))
    kept = list(lcs558k_pairs(rows, image_root=images, skip_bad_rows=True))
    assert len(kept) == len(expected) - 1 and 3 not in [row["gcl_row_index"] for row in kept]
