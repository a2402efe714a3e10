"""M-BEIR, MMEB and CoVR evaluators on the fixtures in `tests/fixtures/` (real file formats), with a `LookupEmbedder`
whose vectors are chosen so that every expected ranking is known by hand; plus bad-input errors."""

import math
import shutil
from pathlib import Path

import pytest
import torch

from trainer.evaluation import EvaluationDataError, LookupEmbedder
from trainer.evaluation.covr import CoVREvaluator
from trainer.evaluation.mbeir import MBEIREvaluator, query_item
from trainer.evaluation.mmeb import MMEBEvaluator

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MBEIR = FIXTURES / "mbeir"

# ---------------------------------------------------------------------------------------------------------- M-BEIR
# The union pool in file order; candidate j is the unit vector e_j, so a query's ranking is the order of its weights.
DIDS = [f"9:{k}" for k in range(1, 11)] + ["3:1", "3:2", "3:3", "1:1", "1:2"]


def unit(did: str, scale: float = 1.0) -> torch.Tensor:
    vector = torch.zeros(len(DIDS))
    vector[DIDS.index(did)] = scale
    return vector


def ranking_vector(prefix: list[str]) -> torch.Tensor:
    """A query vector ranking `prefix` first, then every other candidate in file order (all weights distinct)."""
    order = prefix + [did for did in DIDS if did not in prefix]
    vector = torch.zeros(len(DIDS))
    for position, did in enumerate(order):
        vector[DIDS.index(did)] = len(DIDS) - position
    return vector


def mbeir_embedder() -> LookupEmbedder:
    images = {f"mbeir_images/mscoco_images/c{k}.jpg": unit(f"9:{k}") for k in range(1, 8)}
    images |= {f"mbeir_images/fashioniq_images/f{k}.jpg": unit(f"3:{k}") for k in range(1, 4)}
    images |= {"mbeir_images/webqa_images/w1.jpg": unit("1:1"), "mbeir_images/webqa_images/w2.jpg": unit("1:2")}
    images |= {
        "mbeir_images/mscoco_images/q4.jpg": ranking_vector(["9:8", "9:9"]),  # positive 9:9 second
        "mbeir_images/mscoco_images/q5.jpg": ranking_vector(["9:10"]),
        "mbeir_images/fashioniq_images/fq1.jpg": ranking_vector(["3:1", "3:2"]),  # the edit text lifts 3:2 to first
        "mbeir_images/fashioniq_images/fq2.jpg": ranking_vector(["9:1", "9:2", "3:1", "3:3"]),
    }
    texts = {
        "a red apple on a table": unit("9:8"), "a black cat sleeping": unit("9:9"), "a blue car on a road": unit("9:10"),
        "Apple (fruit). The apple is the fruit of the apple tree.": unit("1:1"),
        "Cat. The cat is a small domesticated carnivorous mammal.": unit("1:2"),
        # Queries. 9:q1: a text candidate (9:8) outranks its image in the global pool only.
        "a photo of an apple": ranking_vector(["9:8", "9:1"]),
        "two cats on a sofa": ranking_vector(["9:3", "9:4", "9:5", "9:1", "9:7", "9:6", "9:2"]),  # positives 6th, 7th
        "a red car": ranking_vector(["9:5", "1:1", "9:3"]),
        "is longer and has flowers": unit("3:2", 2.0),  # fused weight of 3:2: 14 + 2 = 16 > 15 (3:1)
        "is darker": torch.zeros(len(DIDS)),
        "which animals eat fruit?": ranking_vector(["1:2", "9:1", "9:2", "1:1"]),
    }
    return LookupEmbedder(images, texts, image_root=MBEIR)


def mbeir_evaluator(root=MBEIR, **options) -> MBEIREvaluator:
    return MBEIREvaluator(root, show_progress=False, **options)


def ndcg(ranks: list[int], num_relevant: int) -> float:
    dcg = sum(1 / math.log2(rank + 1) for rank in ranks if rank <= 10)
    return 100 * dcg / sum(1 / math.log2(rank + 1) for rank in range(1, num_relevant + 1))


def test_mbeir_hand_checked_local_and_global(tmp_path):
    output = mbeir_evaluator()(embedder=mbeir_embedder(), run_dir=tmp_path / "runs")
    results = output["results"]
    assert list(results) == ["fashioniq_task7", "mscoco_task0", "mscoco_task3", "webqa_task2"]

    coco = results["mscoco_task0"]  # local ranks of the positives: q1 {1}, q2 {6, 7}, q3 {1, 2}
    assert coco["local/hit@1"] == pytest.approx(200 / 3)
    assert coco["local/hit@5"] == pytest.approx(200 / 3)
    assert coco["local/hit@10"] == pytest.approx(100)
    assert coco["local/recall@5"] == pytest.approx(200 / 3)
    assert coco["local/mrr@10"] == pytest.approx(100 * (1 + 1 / 6 + 1) / 3)
    assert coco["local/ndcg@10"] == pytest.approx((ndcg([1], 1) + ndcg([6, 7], 2) + ndcg([1, 2], 2)) / 3)
    # Global ranks: q1 {2} (behind the text candidate 9:8), q2 {6, 7}, q3 {1, 3} (fused 1:1 in between).
    assert coco["global/hit@1"] == pytest.approx(100 / 3)
    assert coco["global/mrr@10"] == pytest.approx(100 * (1 / 2 + 1 / 6 + 1) / 3)
    assert coco["global/ndcg@10"] == pytest.approx((ndcg([2], 1) + ndcg([6, 7], 2) + ndcg([1, 3], 2)) / 3)
    assert coco["global/hit@50"] == 100

    assert results["mscoco_task3"]["local/hit@1"] == 50 and results["mscoco_task3"]["local/mrr@10"] == 75
    fashion = results["fashioniq_task7"]  # q1 rank 1 only thanks to the fused text; q2 local 2, global 4
    assert fashion["local/hit@1"] == 50 and fashion["global/mrr@10"] == pytest.approx(100 * (1 + 1 / 4) / 2)
    webqa = results["webqa_task2"]  # two positives, local ranks {1, 2}, global {1, 4}
    assert webqa["local/hit@1"] == 100 and webqa["global/recall@5"] == 100
    assert webqa["global/ndcg@10"] == pytest.approx(ndcg([1, 4], 2))

    summary = {row["task"]: row for row in output["summary"]}
    assert summary["fashioniq_task7"]["uniir_k"] == 10 and summary["mscoco_task0"]["uniir_k"] == 5
    assert summary["mscoco_task0"]["local_uniir"] == pytest.approx(200 / 3)
    assert summary["fashioniq_task7"]["local_uniir"] == fashion["local/hit@10"]
    assert output["average"]["local_uniir"] == pytest.approx((200 / 3 + 300) / 4)
    assert output["average"]["global_hit@50"] == 100

    trec = (tmp_path / "runs" / "global" / "mscoco_task0.trec").read_text().splitlines()
    assert len(trec) == 3 * len(DIDS)  # every candidate of the 15-item pool, per query
    assert trec[0].split()[:4] == ["9:q1", "Q0", "9:8", "1"] and trec[1].split()[:4] == ["9:q1", "Q0", "9:1", "2"]
    assert float(trec[0].split()[4]) > float(trec[1].split()[4])
    local = (tmp_path / "runs" / "local" / "mscoco_task3.trec").read_text().splitlines()
    assert [line.split()[2] for line in local[:3]] == ["9:8", "9:9", "9:10"]


def test_mbeir_local_only_and_task_selection():
    output = mbeir_evaluator(pools=["local"], tasks=["mscoco_task3"])(embedder=mbeir_embedder())
    assert list(output["results"]) == ["mscoco_task3"]
    assert all(key.startswith("local/") for key in output["results"]["mscoco_task3"])
    assert "global_hit@50" not in output["average"]
    with pytest.raises(EvaluationDataError, match="no task"):
        mbeir_evaluator(tasks=["cirr_task7"])


def test_mbeir_instructions_are_deterministic():
    evaluator = mbeir_evaluator(instruction_index=1)
    task = next(t for t in evaluator.tasks if t.name == "mscoco_task3")
    queries, _ = evaluator.load_task(task)
    item = query_item(queries[0], evaluator.instruction_for(queries[0], task))
    # An image query with an instruction becomes image + instruction text, always prompt_2 (index 1).
    assert item.text == "What caption describes this image?" and item.modality == "it"
    again = mbeir_evaluator(instruction_index=1)
    assert query_item(queries[0], again.instruction_for(queries[0], task)) == item
    text_task = next(t for t in evaluator.tasks if t.name == "mscoco_task0")
    text_queries, _ = evaluator.load_task(text_task)
    assert query_item(text_queries[0], evaluator.instruction_for(text_queries[0], text_task)).text == (
        "Find me an everyday image that matches the given caption. a photo of an apple")
    with pytest.raises(EvaluationDataError, match="has 2 prompt"):
        mbeir_evaluator(instruction_index=5).instruction_for(queries[0], task)


@pytest.fixture
def mbeir_copy(tmp_path) -> Path:
    root = tmp_path / "mbeir"
    shutil.copytree(MBEIR, root)
    return root


def _evaluate_copy(root: Path):
    embedder = mbeir_embedder()
    embedder.image_root = root
    return mbeir_evaluator(root)(embedder=embedder)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_mbeir_missing_image_names_file_and_line(mbeir_copy):
    (mbeir_copy / "mbeir_images/mscoco_images/c3.jpg").unlink()
    with pytest.raises(EvaluationDataError, match=r"cand_pool\.jsonl:3 \(did 9:3\): image file not found: .*c3\.jpg"):
        _evaluate_copy(mbeir_copy)


@pytest.mark.parametrize("line, message", [
    ("9:q99 Q0 9:1 1 0\n", r"mbeir_mscoco_task0_test_qrels\.txt:6: unknown query '9:q99'"),
    ("9:q1 Q0 9:99 1 0\n", r"mbeir_mscoco_task0_test_qrels\.txt:6: unknown candidate '9:99'"),
    ("9:q1 Q0 9:1 1 0\n", r"mbeir_mscoco_task0_test_qrels\.txt:6: duplicate judgement"),
])
def test_mbeir_bad_qrels_lines(mbeir_copy, line, message):
    qrels = mbeir_copy / "qrels/test/mbeir_mscoco_task0_test_qrels.txt"
    qrels.write_text(qrels.read_text() + line)
    with pytest.raises(EvaluationDataError, match=message):
        _evaluate_copy(mbeir_copy)


def test_mbeir_duplicate_ids_unknown_modality_and_empty_pool(mbeir_copy):
    pool = mbeir_copy / "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl"
    original = pool.read_text()
    pool.write_text(original + original.splitlines()[0] + "\n")
    with pytest.raises(EvaluationDataError, match=r"task3_test_cand_pool\.jsonl:4: duplicate did '9:8'"):
        _evaluate_copy(mbeir_copy)
    pool.write_text(original.replace('"modality": "text"', '"modality": "audio"', 1))
    with pytest.raises(EvaluationDataError, match=r"task3_test_cand_pool\.jsonl:1 \(did 9:8\): unknown modality 'audio'"):
        _evaluate_copy(mbeir_copy)
    pool.write_text("")
    with pytest.raises(EvaluationDataError, match=r"task3_test_cand_pool\.jsonl: the candidate pool is empty"):
        _evaluate_copy(mbeir_copy)
    pool.write_text(original)
    queries = mbeir_copy / "query/test/mbeir_mscoco_task3_test.jsonl"
    queries.write_text(queries.read_text() + queries.read_text().splitlines()[1] + "\n")
    with pytest.raises(EvaluationDataError, match=r"mbeir_mscoco_task3_test\.jsonl:3: duplicate qid '9:q5'"):
        _evaluate_copy(mbeir_copy)


def test_mbeir_query_without_judgement_is_an_error(mbeir_copy):
    qrels = mbeir_copy / "qrels/test/mbeir_mscoco_task3_test_qrels.txt"
    qrels.write_text(qrels.read_text().splitlines()[0] + "\n")  # 9:q5 loses its only judgement
    with pytest.raises(EvaluationDataError, match=r"mbeir_mscoco_task3_test\.jsonl:2: query '9:q5' has no relevant"):
        _evaluate_copy(mbeir_copy)


# ------------------------------------------------------------------------------------------------------------- MMEB
MMEB = FIXTURES / "mmeb"


def mmeb_embedder() -> LookupEmbedder:
    e = torch.eye(8)
    images = {f"eval_images/MSCOCO_t2i/{k}.jpg": e[k] for k in range(5)}
    images |= {"eval_images/VisualNews_i2t/0.jpg": e[5], "eval_images/VisualNews_i2t/1.jpg": e[5] + 0.5 * e[6]}
    prefix = "Find me an everyday image that matches the given caption: "
    texts = {
        "Represent the given image.": torch.zeros(8),  # the candidates' instruction adds nothing
        "Find a caption for the news in the given photo.": torch.zeros(8),
        "Flood waters rise in the valley.": e[5], "A new bridge opens.": e[6], "Elections held today.": e[7],
        prefix + "a red apple": 4 * e[0] + 3 * e[1] + 2 * e[2] + e[3],  # its positive (image 0) first
        prefix + "a sleeping cat": 3 * e[0] + 2 * e[2] + e[1],  # its positive (image 1) third
        prefix + "a blue car": 2 * e[2] + e[3],  # its positive (image 2) first
    }
    return LookupEmbedder(images, texts, image_root=MMEB)


def test_mmeb_hand_checked():
    evaluator = MMEBEvaluator(MMEB, show_progress=False)
    assert [subset.name for subset in evaluator.subsets] == ["MSCOCO_t2i", "VisualNews_i2t"]
    coco, news = evaluator.subsets
    assert len(coco.candidates) == 5 and coco.candidate_lists.shape == (3, 4)  # shared images embedded once
    assert coco.modalities == "t→it" and news.modalities == "it→t"
    output = evaluator(embedder=mmeb_embedder())
    assert output["results"]["MSCOCO_t2i"]["hit@1"] == pytest.approx(200 / 3)
    assert output["results"]["MSCOCO_t2i"]["mrr@10"] == pytest.approx(100 * (1 + 1 / 3 + 1) / 3)
    assert output["results"]["VisualNews_i2t"] == {"hit@1": 50, "hit@5": 100, "mrr@10": 75}
    assert output["average"]["hit@1"] == pytest.approx((200 / 3 + 50) / 2)


def test_mmeb_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "mmeb"
    shutil.copytree(MMEB, root)
    (root / "eval_images/MSCOCO_t2i/4.jpg").unlink()
    with pytest.raises(EvaluationDataError, match=r"MSCOCO_t2i/test-00000-of-00001\.parquet:row 2 candidate 3: .*4\.jpg"):
        MMEBEvaluator(root, show_progress=False)
    shutil.rmtree(root / "MSCOCO_t2i")
    table = pa.table({"qry_text": ["x"], "qry_img_path": [""], "tgt_text": [["a", "b"]], "tgt_img_path": [[""]]})
    pq.write_table(table, root / "VisualNews_i2t" / "test-00000-of-00001.parquet")
    with pytest.raises(EvaluationDataError, match=r"row 1: tgt_text and tgt_img_path must be non-empty lists"):
        MMEBEvaluator(root, show_progress=False)


# ------------------------------------------------------------------------------------------------------------- CoVR
COVR = FIXTURES / "covr"


def covr_embedder() -> LookupEmbedder:
    e = torch.eye(4)
    frames = {"0002/2000001": (e[0], e[0]), "0003/2000002": (e[1], e[1]), "0003/2000003": (e[2], e[3]),
              "0001/1000001": (e[0], e[1]), "0001/1000002": (e[1], e[1]), "0002/1000003": (e[2], e[3])}
    images = {f"frames/{video}/{k:04d}.jpg": vector for video, pair in frames.items() for k, vector in enumerate(pair)}
    texts = {"add a second bird": e[1], "make it blue": torch.zeros(4), "have it sleep": 0.1 * e[0],
             "make it two birds": 0.5 * e[0]}
    return LookupEmbedder(images, texts, image_root=COVR)


def test_covr_hand_checked():
    evaluator = CoVREvaluator(COVR / "webvid8m-covr_test.csv", show_progress=False)
    assert len(evaluator.queries) == 4 and len(evaluator.targets) == 3
    assert all(len(item.frames) == 2 for item in evaluator.queries + evaluator.targets)
    output = evaluator(embedder=covr_embedder())
    # Row 1: fused = mean(e0, e1) + e1 = 0.5 e0 + 1.5 e1, so target 2 (e1) beats its target 1 (e0): rank 2. Using the
    # first frame only would tie them (rank 1); rows 2 and 3 rank their target first (target 3 = mean(e2, e3)).
    # Row 4: fused = e1 + 0.5 e0; its own source video (target 2, e1) is left out, so target 1 comes first.
    assert output["results"]["covr"] == pytest.approx(
        {"recall@1": 75, "recall@5": 100, "recall@10": 100, "recall@50": 100})
    kept = CoVREvaluator(COVR / "webvid8m-covr_test.csv", show_progress=False, remove_self_similarity=False)
    assert kept(embedder=covr_embedder())["results"]["covr"]["recall@1"] == 50
    one_frame = CoVREvaluator(COVR / "webvid8m-covr_test.csv", max_frames=1, show_progress=False)
    assert all(len(item.frames) == 1 for item in one_frame.queries)


def test_covr_bad_rows(tmp_path):
    root = tmp_path / "covr"
    shutil.copytree(COVR, root)
    shutil.rmtree(root / "frames/0003/2000003")
    with pytest.raises(EvaluationDataError, match=r"webvid8m-covr_test\.csv:4: no frame folder .*2000003"):
        CoVREvaluator(root / "webvid8m-covr_test.csv")
    (root / "bad.csv").write_text("pth1,edit\na,b\n")
    with pytest.raises(EvaluationDataError, match=r"bad\.csv: missing column\(s\) \['pth2'\]"):
        CoVREvaluator(root / "bad.csv")


def test_readers_name_wrong_types_damaged_files_and_empty_files(tmp_path, mbeir_copy):
    """Fields of the wrong type are errors naming file and row (they used to be embedded as their Python repr, or
    split into characters); a damaged parquet and an empty instructions file name the file."""
    from trainer.evaluation.mbeir import load_instructions, load_queries
    from trainer.evaluation.mmeb import MMEBSubset

    queries = mbeir_copy / "query/test/mbeir_mscoco_task3_test.jsonl"
    _edit(queries, '"pos_cand_list": [', '"pos_cand_list": "9:8", "old": [')
    with pytest.raises(EvaluationDataError, match=r"task3_test\.jsonl:1 \(qid 9:q4\): pos_cand_list must be a list"):
        load_queries(queries, mbeir_copy)
    empty = tmp_path / "query_instructions.tsv"
    empty.write_text("query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\n")
    with pytest.raises(EvaluationDataError, match=r"query_instructions\.tsv: no instructions"):
        load_instructions(empty)
    (tmp_path / "a.jpg").write_bytes((MMEB / "eval_images/MSCOCO_t2i/0.jpg").read_bytes())
    for field, value, message in [("qry_text", 7, "qry_text is a int"), ("tgt_text", [["x"]], "tgt_text is a list"),
                                  ("instruction", {"a": 1}, "instruction is a dict")]:
        row = {"qry_text": "a cat", "qry_img_path": "", "tgt_text": ["x"], "tgt_img_path": ["a.jpg"], field: value}
        (tmp_path / "S.jsonl").write_text(__import__("json").dumps(row) + "\n")
        with pytest.raises(EvaluationDataError, match=rf"S\.jsonl:1.*{message}"):
            MMEBSubset("S", [tmp_path / "S.jsonl"], tmp_path, None, True)
    broken = tmp_path / "test-00000-of-00001.parquet"
    broken.write_bytes((MMEB / "MSCOCO_t2i/test-00000-of-00001.parquet").read_bytes()[:100])
    with pytest.raises(EvaluationDataError, match=r"test-00000-of-00001\.parquet: not a readable parquet file"):
        MMEBSubset("S", [broken], tmp_path, None, True)


def test_covr_names_the_file_line_after_a_multi_line_field_and_checks_max_frames(tmp_path):
    root = tmp_path / "covr"
    shutil.copytree(COVR, root)
    csv_path = root / "webvid8m-covr_test.csv"
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    quoted = {"txt1": '"two\nlines"'}
    second = lines[1].split(",")
    row = ",".join(quoted.get(column, value) for column, value in zip(header, second))
    csv_path.write_text("\n".join([lines[0], row, lines[2].replace(lines[2].split(",")[header.index("pth2")],
                                                                   "0009/9999999")]) + "\n")
    # The bad row starts on line 4 of the file (the quoted field spans lines 2-3), not "line 3".
    with pytest.raises(EvaluationDataError, match=r"webvid8m-covr_test\.csv:4: no frame folder"):
        CoVREvaluator(csv_path)
    with pytest.raises(ValueError, match="max_frames must be a positive integer"):
        CoVREvaluator(COVR / "webvid8m-covr_test.csv", max_frames=0)
