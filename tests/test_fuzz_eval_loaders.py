"""Fuzzing the benchmark readers (M-BEIR, MMEB, CoVR) with random malformed records: each either reads the data or
raises `EvaluationDataError` naming the file — never another exception, never a silent drop."""

import json
from pathlib import Path

import PIL.Image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.evaluation.covr import CoVREvaluator
from trainer.evaluation.files import EvaluationDataError
from trainer.evaluation.mbeir import load_candidate_pool, load_instructions, load_qrels, load_queries
from trainer.evaluation.mmeb import MMEBSubset

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                     st.sampled_from(["", " ", "a.png", "missing.png", "text", "image", "image,text", "video", "q:1"]),
                     st.text(max_size=12))
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3), st.dictionaries(st.text(max_size=3), _scalars, max_size=2))


def _line(keys):
    """A JSONL line: a random object over `keys` (what a real file holds, sometimes wrong), or random bytes."""
    obj = st.dictionaries(st.sampled_from(keys), _values, max_size=len(keys)).map(lambda d: json.dumps(d).encode())
    return st.one_of(obj, obj, obj, st.binary(max_size=30), st.just(b"\xff\xfe not utf-8"), st.just(b"[1, 2]"))


def _write(folder: Path, name: str, lines: list[bytes]) -> Path:
    PIL.Image.new("RGB", (4, 4)).save(folder / "a.png")
    path = folder / name
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines) + b"\n")
    return path


def _expect_named_error(path: Path, call):
    try:
        return call()
    except EvaluationDataError as error:
        assert str(path) in str(error), str(error)
        return None


@FUZZ
@given(lines=st.lists(_line(["did", "txt", "img_path", "modality"]), min_size=0, max_size=5))
def test_mbeir_candidate_pool_fuzz(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("pool")
    path = _write(folder, "pool.jsonl", lines)
    pool = _expect_named_error(path, lambda: load_candidate_pool(path, folder))
    if pool is not None:
        assert len(pool.items) == len(pool.dids) == len({*pool.dids}) >= 1


@FUZZ
@given(lines=st.lists(_line(["qid", "query_txt", "query_img_path", "query_modality", "pos_cand_list"]), max_size=5))
def test_mbeir_queries_fuzz(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("queries")
    path = _write(folder, "queries.jsonl", lines)
    queries = _expect_named_error(path, lambda: load_queries(path, folder))
    if queries is not None:
        assert len({query.qid for query in queries}) == len(queries) >= 1


_qrels_token = st.sampled_from(["q:1", "Q0", "c:1", "c:2", "1", "0", "9", "x", "-1", "1.5", "\x00"])


@FUZZ
@given(lines=st.lists(st.one_of(st.lists(_qrels_token, max_size=6).map(lambda t: " ".join(t).encode()),
                                st.binary(max_size=20)), max_size=5))
def test_mbeir_qrels_fuzz(tmp_path_factory, lines):
    path = _write(tmp_path_factory.mktemp("qrels"), "qrels.txt", lines)
    qrels = _expect_named_error(path, lambda: load_qrels(path))
    if qrels is not None:
        assert sum(len(v) for v in qrels.relevance.values()) == len(qrels.lines)


@FUZZ
@given(lines=st.lists(st.one_of(
    st.lists(st.sampled_from(["text", "image", "image,text", "video", "coco", "0", "Find it.", ""]), max_size=6)
    .map(lambda t: "\t".join(t).encode()), st.binary(max_size=20)), max_size=4))
def test_mbeir_instructions_fuzz(tmp_path_factory, lines):
    path = _write(tmp_path_factory.mktemp("inst"), "instructions.tsv", [b"header"] + lines)
    _expect_named_error(path, lambda: load_instructions(path))


@FUZZ
@given(lines=st.lists(_line(["qry_text", "qry_img_path", "tgt_text", "tgt_img_path", "instruction"]), max_size=4))
def test_mmeb_subset_fuzz(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("mmeb")
    path = _write(folder, "Subset.jsonl", lines)
    subset = _expect_named_error(path, lambda: MMEBSubset("Subset", [path], folder, None, True))
    if subset is not None:
        assert len(subset.candidate_lists) == len(subset.queries) >= 1


_csv_cell = st.sampled_from(["v1", "v2", "missing", "", "make it red", '"', ",", "\xe9"])


@FUZZ
@given(header=st.lists(st.sampled_from(["pth1", "pth2", "edit", "txt1", "txt2", "x"]), min_size=1, max_size=5),
       rows=st.lists(st.one_of(st.lists(_csv_cell, max_size=6).map(lambda c: ",".join(c).encode()),
                               st.binary(max_size=20)), max_size=4))
def test_covr_annotation_fuzz(tmp_path_factory, header, rows):
    folder = tmp_path_factory.mktemp("covr")
    for video in ("v1", "v2"):
        (folder / "frames" / video).mkdir(parents=True)
        PIL.Image.new("RGB", (4, 4)).save(folder / "frames" / video / "0001.jpg")
    path = _write(folder, "covr.csv", [",".join(header).encode()] + rows)
    evaluator = _expect_named_error(path, lambda: CoVREvaluator(path, show_progress=False))
    if evaluator is not None:
        assert len(evaluator.queries) == len(evaluator.positives) >= 1
