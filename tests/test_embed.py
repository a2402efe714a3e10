"""`gcl-embed` and `GCLRetriever`: a round trip on the bundled sample (each pair's fused query finds itself first),
a kill mid-run and resume (finished shards untouched, the result the same), refusing another job's folder, 2 processes
equal to 1, bad rows named or counted, and parquet storage."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.data import BUNDLED_SAMPLE_DIR, BUNDLED_TINY_CLIP_DIR, load_image_caption_dataset
from trainer.embed import EmbedError, main as gcl_embed_main, read_shard, run as gcl_embed
from trainer.retrieval import GCLRetriever

from .conftest import make_small_clip

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK_ENV = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]), **LOOPBACK_ENV}


def _save_model(folder: Path, seed: int) -> str:
    from modeling_gcl import GCLModel, GCLProcessor

    GCLModel.from_backbone(make_small_clip(seed=seed)).save_pretrained(folder)
    processor = GCLProcessor.from_backbone(str(BUNDLED_TINY_CLIP_DIR))
    processor.image_processor.size = {"shortest_edge": 32}
    processor.image_processor.crop_size = {"height": 32, "width": 32}
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return _save_model(root / "a", seed=4), _save_model(root / "b", seed=5)


def _embeddings(folder: Path) -> tuple[torch.Tensor, list[str]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    shards = [read_shard(folder / name) for name in manifest["shards"]]
    return torch.cat([shard[0] for shard in shards]), [i for shard in shards for i in shard[1]]


def test_round_trip_on_the_bundled_sample_finds_each_pair_first(models, tmp_path):
    out = tmp_path / "corpus"
    manifest = gcl_embed([models[0], "--output_dir", str(out), "--shard_size", "100", "--faiss_index", "Flat",
                          "--no_progress", "--device", "cpu"])
    pairs = load_image_caption_dataset(BUNDLED_SAMPLE_DIR)
    assert manifest["complete"] and manifest["num_shards"] == 4 and manifest["num_embedded"] == len(pairs) == 320
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "manifest.json"] + [
        f"shard-0000{i}-of-00004.safetensors" for i in range(4)]
    for use_faiss in (True, False):
        retriever = GCLRetriever.load(out, use_faiss=use_faiss)  # loads the model the manifest names
        assert (retriever.index is not None) == use_faiss
        queries = [(Path(row["image"]["path"]), row["caption"]) for row in pairs]
        hits = retriever.search_batch(queries, k=3)
        assert [found[0].id for found in hits] == [str(row) for row in range(320)]
        assert all(found[0].score == pytest.approx(1.0, abs=1e-5) and found[0].row == int(found[0].id)
                   for found in hits)
    # Text and image queries are embedded as such: the same vectors gcl-eval's encoder gives them.
    text_hits = retriever.search(pairs[7]["caption"], k=320)
    image_hits = retriever.search(Path(pairs[7]["image"]["path"]), k=320)
    text_query, image_query = retriever.encode([pairs[7]["caption"], Path(pairs[7]["image"]["path"])])
    corpus, ids = _embeddings(out)
    assert ids == [str(row) for row in range(320)]
    for found, query in ((text_hits, text_query), (image_hits, image_query)):
        expected = (corpus @ query).topk(5).indices.tolist()
        assert [int(hit.id) for hit in found[:5]] == expected
    with pytest.raises(TypeError, match="a str is a text query"):
        retriever.search(3.5)
    # Another model is refused by the retriever (its queries would live in another space), unless forced.
    from trainer.backbones import load_model_and_processor

    other, processor = load_model_and_processor(models[1])
    with pytest.raises(EmbedError, match="model differs"):
        GCLRetriever.load(out, model=other, processor=processor)
    assert len(GCLRetriever.load(out, model=other, processor=processor, check_model=False).search("x", k=2)) == 2


def test_kill_mid_run_then_resume_redoes_only_unfinished_shards(models, tmp_path):
    out = tmp_path / "corpus"
    arguments = [models[0], "--output_dir", str(out), "--shard_size", "8", "--batch_size", "8", "--max_samples",
                 "96", "--no_progress", "--device", "cpu"]
    process = subprocess.Popen([sys.executable, "-m", "trainer.embed", *arguments], env=ENV, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(out.glob("shard-*.safetensors")):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no shard written within 240 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    finished = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in out.glob("shard-*.safetensors")}
    assert 1 <= len(finished) < 12, f"the kill came too late to test resumption ({len(finished)} of 12 shards)"
    for name in finished:  # never a half-written shard under a final name
        assert read_shard(out / name)[0].shape == (8, 24)
    manifest = gcl_embed(arguments)
    assert manifest["complete"] and manifest["num_embedded"] == 96
    assert manifest["rows_embedded_here"] == 96 - 8 * len(finished)  # only the unfinished shards were redone
    for name, identity in finished.items():
        path = out / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity
    assert not list(out.glob(".*.tmp"))
    # The same result as an uninterrupted run.
    reference = tmp_path / "reference"
    gcl_embed([*arguments[:2], str(reference), *arguments[3:]])
    resumed, resumed_ids = _embeddings(out)
    expected, expected_ids = _embeddings(reference)
    assert resumed_ids == expected_ids and torch.equal(resumed, expected)
    # A finished folder: running again changes nothing.
    again = gcl_embed(arguments)
    assert again["rows_embedded_here"] == 0 and again["complete"]


def test_a_folder_of_another_model_or_data_is_refused(models, tmp_path, capsys):
    out = tmp_path / "corpus"
    base = ["--output_dir", str(out), "--max_samples", "16", "--shard_size", "8", "--no_progress", "--device", "cpu"]
    gcl_embed([models[0], *base])
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(SystemExit) as stop:
        gcl_embed_main([models[1], *base])
    assert stop.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the weight-loading progress bars
    assert error.startswith("gcl-embed: ") and "holds embeddings of another model" in error
    with pytest.raises(EmbedError, match="another data"):
        gcl_embed([models[0], *base[:2], "--max_samples", "12", *base[4:]])
    with pytest.raises(EmbedError, match="modality 'fused' \\(now 'text'\\)"):
        gcl_embed([models[0], *base, "--modality", "text"])
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # nothing mixed in
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(EmbedError, match="not a gcl-embed folder"):
        gcl_embed([models[0], *base[2:], "--output_dir", str(tmp_path / "other")])
    replaced = gcl_embed([models[1], *base, "--overwrite"])
    assert replaced["complete"] and replaced["model"]["name_or_path"] == str(Path(models[1]).resolve())


def test_bad_rows_are_named_or_counted_and_texts_embed_from_jsonl(models, tmp_path, capsys):
    pairs = load_image_caption_dataset(BUNDLED_SAMPLE_DIR)
    lines = [{"image": row["image"]["path"], "caption": row["caption"], "key": f"doc-{k}"}
             for k, row in enumerate(pairs.select(range(10)))]
    lines[4]["image"] = str(tmp_path / "missing.jpg")
    lines[6]["caption"] = ""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    base = [models[0], "--data", str(data), "--no_progress", "--device", "cpu", "--id_column", "key"]
    with pytest.raises(SystemExit):
        gcl_embed_main([*base, "--output_dir", str(tmp_path / "strict")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("gcl-embed: ") and "Traceback" not in error
    # Whichever check finds it first (the gcl-train reader while loading, or gcl-embed while decoding), the message
    # names the file's line (5 = row 4, 7 = row 6) or the row, and the cause.
    assert ("missing.jpg" in error and ("pairs.jsonl:5" in error or "row 4" in error)) or (
        "empty" in error and ("pairs.jsonl:7" in error or "row 6" in error)), error
    manifest = gcl_embed([*base, "--output_dir", str(tmp_path / "skip"), "--skip_bad_samples"])
    assert manifest["num_embedded"] == 8  # both bad rows skipped: by the reader while loading or here while embedding
    assert manifest["num_embedded"] + manifest["num_skipped"] == manifest["data"]["num_rows"]  # every loaded row
    if manifest["num_skipped"]:
        assert f"skipped {manifest['num_skipped']} bad row(s)" in capsys.readouterr().out
    retriever = GCLRetriever.load(tmp_path / "skip")
    assert not {"doc-4", "doc-6"} & set(retriever.ids) and retriever.search((Path(lines[3]["image"]), lines[3]["caption"]))[0].id == "doc-3"
    # Texts only, from a JSONL without images; a caption that is a number is named (or skipped) by row.
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"caption": c, "extra": e}) + "\n"
                             for c, e in [("a red apple", 1), ("a cat", "x"), (42, [1]), ("a car", None)]))
    with pytest.raises(SystemExit):
        gcl_embed_main([models[0], "--data", str(texts), "--modality", "text", "--output_dir", str(tmp_path / "t1"),
                        "--no_progress"])
    assert "row 2" in capsys.readouterr().err
    manifest = gcl_embed([models[0], "--data", str(texts), "--modality", "text", "--output_dir",
                          str(tmp_path / "t2"), "--no_progress", "--skip_bad_samples", "--storage", "parquet"])
    assert manifest["num_embedded"] == 3 and sorted(p.suffix for p in (tmp_path / "t2").glob("shard-*")) == [".parquet"]
    text_retriever = GCLRetriever.load(tmp_path / "t2")
    assert text_retriever.search("a cat", k=1)[0].id == "1"
    # Parquet holds exactly what safetensors holds.
    gcl_embed([models[0], "--data", str(texts), "--modality", "text", "--output_dir", str(tmp_path / "t3"),
               "--no_progress", "--skip_bad_samples"])
    assert torch.equal(_embeddings(tmp_path / "t2")[0], _embeddings(tmp_path / "t3")[0])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_embedding_equals_one_process(models, tmp_path):
    arguments = [models[0], "--max_samples", "48", "--shard_size", "8", "--batch_size", "4", "--no_progress",
                 "--device", "cpu"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "trainer.embed", *arguments, "--output_dir",
               str(tmp_path / "two")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("gcl-embed: 48 of 48 rows embedded") == 1  # rank 0 reports, once
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        gcl_embed([*arguments, "--output_dir", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert two["job"] == one["job"] and two["complete"] and two["num_shards"] == 6
    for name in one["shards"]:
        a, b = read_shard(tmp_path / "one" / name), read_shard(tmp_path / "two" / name)
        assert torch.equal(a[0], b[0]) and a[1:3] == b[1:3], name


def test_gcl_embed_mistakes_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # a model directory that does not exist: the loader's one-line message
        gcl_embed_main([str(tmp_path / "no-such-model"), "--output_dir", str(tmp_path / "out"), "--no_progress"])
    assert isinstance(stop.value.code, str) and stop.value.code.startswith("gcl-embed: ")
    assert "no-such-model" in stop.value.code and "\n" not in stop.value.code
    with pytest.raises(SystemExit) as stop:
        gcl_embed_main(["model", "--output_dir", str(tmp_path / "out"), "--shard_size", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "gcl-embed: error: argument --shard_size: expected a positive integer, got 0 (see gcl-embed --help)")
    assert not (tmp_path / "out").exists()


def test_a_second_gcl_embed_into_a_folder_in_use_is_refused(models, tmp_path):
    """Another live process holds the folder's lock (as a running gcl-embed does): refused at once, one line."""
    out = tmp_path / "corpus"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import importlib.util, sys, time\n"
         f"spec = importlib.util.spec_from_file_location('atomic', {str(REPO_ROOT / 'trainer' / 'atomic.py')!r})\n"
         "atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)\n"
         f"with atomic.output_dir_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as stop:
            gcl_embed_main([models[0], "--output_dir", str(out), "--max_samples", "8", "--no_progress"])
        assert stop.value.code == 1
        assert not list(out.glob("shard-*"))
    finally:
        holder.kill()
        holder.wait()
    manifest = gcl_embed([models[0], "--output_dir", str(out), "--max_samples", "8", "--no_progress"])
    assert manifest["complete"]  # the lock died with its process
