"""Training data that is mixed-type, empty, dangling or bad only in the held-out pairs: each bad row is a `DataError`
naming the file and line or, with `skip_bad_rows` / `--skip_bad_samples`, a counted skip; an unused extra column never
stops loading; held-out errors name the row of the user's file."""

import json
import logging
import os
import re
import subprocess
import sys

import PIL.Image
import pytest

from trainer.cli import run
from trainer.data import (
    BUNDLED_SAMPLE_DIR,
    ROW_INDEX_KEY,
    BadSampleError,
    DataError,
    UniqueGroupBatchSampler,
    load_image_caption_dataset,
    split_holdout,
)

WRONG_CAPTIONS = [(5, "a int"), (2.5, "a float"), (["a", "list"], "a list"), ({"text": "x"}, "a dict"),
                  (True, "a bool"), (None, "null")]


def _write_images(folder, count=3):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        PIL.Image.new("RGB", (8, 8), (40 * index, 0, 0)).save(folder / f"{index}.png")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _imagefolder(tmp_path, rows):
    folder = tmp_path / "folder"
    _write_images(folder)
    _write_jsonl(folder / "metadata.jsonl", rows)
    return folder


def _pairs(tmp_path, rows):
    _write_images(tmp_path)
    return _write_jsonl(tmp_path / "pairs.jsonl", rows)


def _three(caption, key="file_name"):
    return [{key: "0.png", "caption": "a red square"}, {key: "1.png", "caption": caption},
            {key: "2.png", "caption": "a third square"}]


# --- mixed types -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("caption, kind", WRONG_CAPTIONS)
def test_imagefolder_caption_of_a_wrong_type_names_file_and_line(tmp_path, caption, kind):
    folder = _imagefolder(tmp_path, _three(caption))
    with pytest.raises(DataError, match=rf"metadata\.jsonl:2: `caption` is {kind}\b.*expected a string"):
        load_image_caption_dataset(folder)


@pytest.mark.parametrize("caption, kind", WRONG_CAPTIONS)
def test_jsonl_caption_of_a_wrong_type_names_file_and_line(tmp_path, caption, kind):
    path = _pairs(tmp_path, _three(caption, key="image"))
    with pytest.raises(DataError, match=rf"pairs\.jsonl:2: `caption` is {kind}\b"):
        load_image_caption_dataset(path)


def test_a_numeric_first_caption_is_named_not_a_schema_clash(tmp_path):
    # Arrow infers the column's type from the first row, so the old reader blamed row 2's good caption.
    path = _pairs(tmp_path, [{"image": "0.png", "caption": 7}, {"image": "1.png", "caption": "fine"}])
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: `caption` is a int \(7\)"):
        load_image_caption_dataset(path)


@pytest.mark.parametrize("reader", ["imagefolder", "jsonl"])
def test_wrong_captions_are_counted_skips_that_keep_the_file_rows(tmp_path, caplog, reader):
    rows = _three(["not", "text"], key="file_name" if reader == "imagefolder" else "image")
    source = _imagefolder(tmp_path, rows) if reader == "imagefolder" else _pairs(tmp_path, rows)
    with caplog.at_level(logging.WARNING):
        dataset = load_image_caption_dataset(source, skip_bad_rows=True)
    assert len(dataset) == 2 and dataset[ROW_INDEX_KEY] == [0, 2]  # row 2 of the file is still row 2
    assert dataset["caption"] == ["a red square", "a third square"]
    assert "skipped 1 bad row(s)" in caplog.text and ":2: `caption` is a list" in caplog.text


@pytest.mark.parametrize("reader", ["imagefolder", "jsonl"])
def test_an_unused_column_whose_type_changes_never_breaks_loading(tmp_path, caplog, reader):
    key = "file_name" if reader == "imagefolder" else "image"
    rows = [{key: "0.png", "caption": "a", "extra": 1, "id": 10},
            {key: "1.png", "caption": "b", "extra": "x", "id": 11},
            {key: "2.png", "caption": "c", "extra": {"k": [1]}, "id": 12}]
    source = _imagefolder(tmp_path, rows) if reader == "imagefolder" else _pairs(tmp_path, rows)
    with caplog.at_level(logging.WARNING):
        dataset = load_image_caption_dataset(source)
    assert len(dataset) == 3 and dataset["caption"] == ["a", "b", "c"]
    assert dataset["extra"] == ["1", '"x"', '{"k": [1]}']  # JSON text: distinct values stay distinct
    assert dataset["id"] == [10, 11, 12]  # a column of one type keeps it
    assert "column `extra` (dict/int/str values) does not fit one Arrow type; kept as JSON text" in caplog.text


def test_a_column_arrow_cannot_hold_is_kept_as_json_text(tmp_path):
    path = _pairs(tmp_path, [{"image": "0.png", "caption": "a", "big": 2**70}, {"image": "1.png", "caption": "b", "big": 1}])
    assert load_image_caption_dataset(path)["big"] == [str(2**70), "1"]


@pytest.mark.parametrize("group, message", [(["a", "list"], r"training row 1: the group id \['a', 'list'\] is a list"),
                                            (None, r"training row 1: no group id \(None\)")])
def test_group_ids_that_cannot_keep_groups_apart_name_the_row(group, message):
    with pytest.raises(DataError, match=message):
        UniqueGroupBatchSampler(["g0", group, "g2", "g3"], batch_size=2)


def test_an_image_path_of_a_wrong_type_names_file_and_line(tmp_path):
    path = _pairs(tmp_path, [{"image": "0.png", "caption": "a"}, {"image": 3, "caption": "b"}])
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: needs a non-empty string `image` \(the image's path\), got 3"):
        load_image_caption_dataset(path)


def test_csv_metadata_is_text_and_names_its_lines(tmp_path, caplog):
    folder = tmp_path / "folder"
    _write_images(folder)
    # datasets' CSV reader typed this caption column as integers, so every caption was "a int".
    (folder / "metadata.csv").write_text('\ufefffile_name,caption,id\n0.png,1984,7\n\n1.png,"two, quoted",8\n')
    dataset = load_image_caption_dataset(folder)
    assert dataset["caption"] == ["1984", "two, quoted"] and dataset["id"] == ["7", "8"]
    assert dataset[ROW_INDEX_KEY] == [0, 1] and dataset[0]["image"]["path"] == str(folder / "0.png")
    (folder / "metadata.csv").write_text("file_name,caption\n0.png,a\n1.png,b,surplus\n")
    with pytest.raises(DataError, match=r"metadata\.csv:3: 3 field\(s\), but the header has 2 \(file_name, caption\)"):
        load_image_caption_dataset(folder)
    (folder / "metadata.csv").write_text("file_name,caption\n0.png,a\ngone.png,b\n2.png,   \n")
    with pytest.raises(DataError, match=r"metadata\.csv:4: `caption` is empty"):  # fields before files
        load_image_caption_dataset(folder)
    with caplog.at_level(logging.WARNING):
        assert len(load_image_caption_dataset(folder, skip_bad_rows=True)) == 1
    assert "skipped 2 bad row(s)" in caplog.text and re.search(r"metadata\.csv:3: image .*gone\.png does not exist",
                                                              caplog.text)
    (folder / "metadata.csv").write_text("file_name,caption\n")
    with pytest.raises(DataError, match=r"metadata\.csv: no rows"):
        load_image_caption_dataset(folder)


@pytest.mark.parametrize("reader", ["imagefolder", "jsonl"])
def test_an_empty_caption_is_named_at_load(tmp_path, reader):
    key = "file_name" if reader == "imagefolder" else "image"
    source = _imagefolder(tmp_path, _three(" \t", key)) if reader == "imagefolder" else _pairs(tmp_path, _three("", key))
    with pytest.raises(DataError, match=r":2: `caption` is empty"):
        load_image_caption_dataset(source)


def test_an_lcs558k_caption_that_is_only_the_image_token_is_a_bad_row(tmp_path):
    _write_images(tmp_path)
    elements = [{"id": str(i), "image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>"},
                                                                      {"from": "gpt", "value": caption}]}
                for i, caption in enumerate(["a red square", "<image>", "a third"])]
    (tmp_path / "lcs.json").write_text(json.dumps(elements))
    with pytest.raises(DataError, match=r"lcs\.json: row 1 \(id '1'\): the caption .* is empty"):
        load_image_caption_dataset(tmp_path / "lcs.json")
    assert load_image_caption_dataset(tmp_path / "lcs.json", skip_bad_rows=True)[ROW_INDEX_KEY] == [0, 2]


# --- empty and dangling ----------------------------------------------------------------------------------------------

def test_empty_metadata_and_jsonl_files_are_named(tmp_path):
    folder = _imagefolder(tmp_path, [])
    with pytest.raises(DataError, match=r"metadata\.jsonl: no rows"):
        load_image_caption_dataset(folder)
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"blank\.jsonl: no rows"):
        load_image_caption_dataset(tmp_path / "blank.jsonl")


def test_nothing_left_after_skipping_is_an_error(tmp_path):
    folder = _imagefolder(tmp_path, [{"file_name": "0.png", "caption": 1}, {"file_name": "1.png", "caption": 2}])
    with pytest.raises(DataError, match=r"metadata\.jsonl: no rows left after skipping bad rows"):
        load_image_caption_dataset(folder, skip_bad_rows=True)


@pytest.mark.parametrize("reader", ["imagefolder", "jsonl"])
def test_dangling_image_paths_are_named_or_counted(tmp_path, caplog, reader):
    key = "file_name" if reader == "imagefolder" else "image"
    rows = [{key: "0.png", "caption": "a"}, {key: "gone.png", "caption": "b"}, {key: "2.png", "caption": "c"}]
    source = _imagefolder(tmp_path, rows) if reader == "imagefolder" else _pairs(tmp_path, rows)
    with pytest.raises(DataError, match=rf":2: image .*gone\.png does not exist \(a dangling `{key}`\)"):
        load_image_caption_dataset(source)
    with caplog.at_level(logging.WARNING):
        dataset = load_image_caption_dataset(source, skip_bad_rows=True)
    assert dataset[ROW_INDEX_KEY] == [0, 2] and "skipped 1 bad row(s)" in caplog.text


def test_a_folder_where_an_image_should_be_is_named(tmp_path):
    (tmp_path / "sub.png").mkdir()
    path = _pairs(tmp_path, [{"image": "0.png", "caption": "a"}, {"image": "sub.png", "caption": "b"}])
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: image .*sub\.png is a folder"):
        load_image_caption_dataset(path)


def test_malformed_rows_are_named_before_missing_images(tmp_path):
    # The first row's image is missing too, but a row without `file_name` says more about the file.
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_jsonl(folder / "metadata.jsonl", [{"file_name": "a.png", "caption": "x"}, {"caption": "y"}])
    with pytest.raises(DataError, match=r"metadata\.jsonl:2: needs a non-empty string `file_name`"):
        load_image_caption_dataset(folder)


@pytest.mark.parametrize("reader", ["imagefolder", "jsonl"])
def test_a_stream_checks_each_row_as_it_comes(tmp_path, caplog, reader):
    key = "file_name" if reader == "imagefolder" else "image"
    rows = _three(12, key=key)
    source = _imagefolder(tmp_path, rows) if reader == "imagefolder" else _pairs(tmp_path, rows)
    stream = load_image_caption_dataset(source, streaming=True)
    with pytest.raises(DataError, match=r":2: `caption` is a int \(12\)"):
        list(stream)
    with caplog.at_level(logging.WARNING):
        kept = list(load_image_caption_dataset(source, streaming=True, skip_bad_rows=True))
    assert [row[ROW_INDEX_KEY] for row in kept] == [0, 2] and "skipped 1 bad row(s)" in caplog.text
    assert os.path.isfile(kept[0]["image"]["path"] if reader == "imagefolder" else kept[0]["image"])


# --- held-out pairs --------------------------------------------------------------------------------------------------

def _pairs_with_a_bad_held_out_image(tmp_path, total=40, holdout=8, seed=42):
    """A JSONL of the bundled sample's first `total` pairs in which one held-out pair (whose position in the held-out
    subset differs from its row in the file) points at a file that is no image. Returns (path, its row)."""
    rows = [json.loads(line) for line in (BUNDLED_SAMPLE_DIR / "metadata.jsonl").read_text().splitlines()[:total]]
    pairs = [{"image": str(BUNDLED_SAMPLE_DIR / row["file_name"]), "caption": row["caption"]} for row in rows]
    path = _write_jsonl(tmp_path / "pairs.jsonl", pairs)
    _, held = split_holdout(load_image_caption_dataset(path), holdout, seed)
    position, row = next((p, r) for p, r in enumerate(held[ROW_INDEX_KEY]) if r != p)
    (tmp_path / "notes.jpg").write_bytes(b"not a picture\n")
    pairs[row]["image"] = str(tmp_path / "notes.jpg")
    _write_jsonl(path, pairs)
    return path, row, position


def test_a_bad_held_out_image_names_the_files_row_not_its_place_in_the_holdout(tmp_path):
    path, row, position = _pairs_with_a_bad_held_out_image(tmp_path)
    dataset = load_image_caption_dataset(path)
    with pytest.raises(BadSampleError, match=rf"held-out pair \(eval_holdout\): row {row} \(.*notes\.jpg\): cannot read"):
        split_holdout(dataset, 8, 42, "image", "caption")
    assert row != position


def test_a_bad_held_out_image_is_a_counted_skip(tmp_path, caplog):
    path, row, _ = _pairs_with_a_bad_held_out_image(tmp_path)
    with caplog.at_level(logging.WARNING):
        train, held = split_holdout(load_image_caption_dataset(path), 8, 42, "image", "caption", skip_bad_samples=True)
    assert len(held) == 7 and row not in held[ROW_INDEX_KEY] and len(train) == 32
    assert "Left out 1 bad held-out pair(s)" in caplog.text and f"row {row} " in caplog.text


def test_gcl_train_skips_a_bad_held_out_image_on_request(tmp_path, capsys):
    path, row, _ = _pairs_with_a_bad_held_out_image(tmp_path)
    common = ["--train_data", str(path), "--eval_holdout", "8", "--max_steps", "1", "--per_device_train_batch_size",
              "8", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]
    with pytest.raises(BadSampleError, match=rf"row {row} \(.*notes\.jpg\)"):
        run(common + ["--output_dir", str(tmp_path / "strict")])
    results = run(common + ["--output_dir", str(tmp_path / "skipping"), "--skip_bad_samples", "true"])
    assert set(results["before"]) == set(results["after"]) and results["train"]["train_loss"] > 0
    assert "32 training pairs, 7 held out" in capsys.readouterr().out


# --- the command line ------------------------------------------------------------------------------------------------

def test_gcl_train_on_an_image_folder_without_metadata_says_so_in_one_line(tmp_path):
    _write_images(tmp_path / "photos")
    result = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "--train_data", str(tmp_path / "photos"), "--output_dir",
         str(tmp_path / "out"), "--report_to", "none"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gcl-train: ") and "photos: no metadata.jsonl, so no captions for its 3 file(s)" in last


# --- the package -----------------------------------------------------------------------------------------------------

def test_the_data_modules_import_each_other_without_a_cycle():
    import ast
    import graphlib
    from pathlib import Path

    import trainer.data

    folder = Path(trainer.data.__file__).parent
    modules = {path.stem for path in folder.glob("*.py")} - {"__init__"}
    imports = {}
    for name in modules:
        tree = ast.parse((folder / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):  # function-level imports count too: a cycle is a cycle
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module} if node.module else {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 2 and node.module == "data":
                raise AssertionError(f"{name}.py imports trainer.data from inside it")
        imports[name] = found & modules
    order = list(graphlib.TopologicalSorter(imports).static_order())  # raises CycleError on a cycle
    assert order.index("errors") < order.index("rows") < order.index("loading")
    assert not (folder.parent / "lcs558k.py").exists() and not (folder.parent / "collator.py").exists()
