"""Hub publishing: the export directory, remote code loaded without the library, pipelines, model cards, the push
(against a patched HfApi: no network), gcl-push and LoRA exports."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, pipeline
from transformers.dynamic_module_utils import get_relative_import_files

import hub_cards.publish
from hub_cards import (
    TRAINING_RECORD_FILE,
    HubPublishError,
    RemoteCodeError,
    prepare_export_dir,
    push_to_hub,
    render_model_card,
    verify_remote_code,
    write_training_record,
)
from hub_cards.card import negatives_per_anchor
from hub_cards.cli import main as gcl_push
from hub_cards.run_record import non_default_hyperparameters
from modeling_gcl import GCLConfig, GCLFeatureExtractionPipeline, GCLModel, GCLProcessor
from modeling_gcl.sentence_transformers_files import SENTENCE_TRANSFORMERS_FILES
from trainer import GCLTrainingArguments, apply_lora, load_lora_model, merge_lora, save_lora_adapter
from trainer.cli import run as gcl_train

from .conftest import LIBRARY_FREE_PREAMBLE, make_small_clip, tiny_vista_gcl

REPO_ID = "test-org/gcl-small"
TEXTS = ["a red bicycle", "a cat on a sofa", "two apples"]
HOLDOUT = {
    "fusion": "sum",
    "loss": "gcl",
    "before": {cell: {"hit@1": 1.5, "hit@5": 9.0, "hit@10": 20.0} for cell in ("t2i", "i2t", "t2it", "i2it", "it2t", "it2i")},
    "after": {cell: {"hit@1": 42.25, "hit@5": 80.0, "hit@10": 95.0} for cell in ("t2i", "i2t", "t2it", "i2it", "it2t", "it2i")},
}


def library_code_files() -> set[str]:
    """The library's module files the remote code needs: each registered class's module and, recursively, its relative
    imports (computed from the installed library, so a new file the model code imports is expected automatically)."""
    files = set()
    for cls in (GCLConfig, GCLModel, GCLProcessor, GCLFeatureExtractionPipeline):
        module_file = sys.modules[cls.__module__].__file__
        files |= {Path(module_file).name} | {Path(f).name for f in get_relative_import_files(module_file)}
    return files


CODE_FILES = library_code_files()
# The held-out heatmap is drawn when matplotlib (the `plots` extra) is installed.
HEATMAP_FILES = {"retrieval_holdout.png"} if importlib.util.find_spec("matplotlib") else set()
MODEL_REPO_FILES = {
    "README.md", "config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    *CODE_FILES, *HEATMAP_FILES, "retrieval_holdout.json", TRAINING_RECORD_FILE, *SENTENCE_TRANSFORMERS_FILES,
}


def make_images(count: int = 3) -> list[Image.Image]:
    """Deterministic RGB images (no files needed)."""
    return [Image.fromarray(((np.arange(40 * 48 * 3).reshape(40, 48, 3) * (7 + 13 * i)) % 251).astype(np.uint8))
            for i in range(count)]


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `directory`."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def training_args(output_dir, **overrides) -> GCLTrainingArguments:
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=16, learning_rate=1e-5, max_steps=100,
                  hub_token="hf_secret_do_not_leak", report_to="none")
    values.update(overrides)
    return GCLTrainingArguments(**values)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, processor):
    """A gcl-train-like output directory: model, processor, held-out retrieval and a training record."""
    path = tmp_path_factory.mktemp("run")
    model = GCLModel.from_backbone(make_small_clip(seed=3)).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "retrieval_holdout.json").write_text(json.dumps(HOLDOUT))
    write_training_record(path, training_args(path), base_model="openai/clip-vit-base-patch32",
                          dataset="my-org/pairs", train_pairs=1000, holdout_pairs=64)
    return path


@pytest.fixture(scope="module")
def export(run_dir, tmp_path_factory):
    return prepare_export_dir(run_dir, tmp_path_factory.mktemp("exports") / "repo", REPO_ID)


@pytest.fixture(scope="module")
def original_model(run_dir):
    return GCLModel.from_pretrained(run_dir).eval()


# ----------------------------------------------------------------------------------------------------------------------
# The export directory and remote code


def test_export_holds_exactly_the_repository_files_and_leaves_the_run_untouched(run_dir, tmp_path):
    before = snapshot(run_dir)
    export = prepare_export_dir(run_dir, tmp_path / "repo", REPO_ID)
    assert set(export.files) == MODEL_REPO_FILES
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in export.files)
    assert snapshot(run_dir) == before
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging directory left behind

    config = json.loads((export.path / "config.json").read_text())
    # A CLIP backbone is published as a native CLIP checkpoint, with the GCL settings in its `gcl` section.
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    assert config["gcl"]["fusion"] == "sum" and config["gcl"]["format_version"] == 1
    assert config["auto_map"] == {
        "AutoConfig": "configuration_gcl.GCLConfig",
        "AutoModel": "modeling_gcl.GCLModel",
        "AutoModelForZeroShotImageClassification": "modeling_gcl.GCLModel",
    }
    assert config["custom_pipelines"]["feature-extraction"]["impl"] == "pipeline_gcl.GCLFeatureExtractionPipeline"
    processor_config = json.loads((export.path / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_gcl.GCLProcessor"
    # The shipped code is the library's own.
    modeling_source = Path(sys.modules["modeling_gcl.modeling_gcl"].__file__).read_text()
    assert (export.path / "modeling_gcl.py").read_text() == modeling_source
    # Weights re-saved through transformers are the run's weights.
    saved, exported = load_file(run_dir / "model.safetensors"), load_file(export.path / "model.safetensors")
    assert saved.keys() == exported.keys()
    assert all(torch.equal(saved[key], exported[key]) for key in saved)

    with pytest.raises(FileExistsError):
        prepare_export_dir(run_dir, export.path, REPO_ID)


ISOLATED_SCRIPT = LIBRARY_FREE_PREAMBLE + textwrap.dedent(
    """
    import json
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoProcessor, pipeline

    images = [Image.fromarray(((np.arange(40 * 48 * 3).reshape(40, 48, 3) * (7 + 13 * i)) % 251).astype(np.uint8))
              for i in range(3)]
    texts = {texts!r}
    for repo, out in zip(sys.argv[1::2], sys.argv[2::2]):
        model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            outputs = model(**inputs)
        embed = pipeline("feature-extraction", model=repo, trust_remote_code=True)
        classify = pipeline("zero-shot-image-classification", model=repo, trust_remote_code=True)
        tensors = {{key: inputs[key].contiguous() for key in ("pixel_values", "input_ids", "attention_mask")}}
        tensors.update({{key: outputs[key].contiguous() for key in ("image_embeds", "text_embeds", "fused_embeds")}})
        tensors["pipeline_fused"] = torch.tensor(embed({{"image": images[0], "text": texts[0]}}))
        tensors["pipeline_text"] = torch.tensor(embed(texts[1]))
        save_file(tensors, out + ".safetensors")
        json.dump({{"model_module": type(model).__module__, "processor_module": type(processor).__module__,
                   "pipeline_class": type(embed).__name__,
                   "zero_shot": classify(images[0], candidate_labels=texts, hypothesis_template="{{}}")}},
                  open(out + ".json", "w"))
    """
)


def make_tiny_vista_run(path: Path, processor) -> GCLModel:
    """A VISTA-backbone run directory (BERT-style text encoder + EVA02-CLIP tower, both tiny and random). The bundled
    CLIP tokenizer stands in for BERT's, with its [CLS]/[SEP] ids: only loading is tested here, not quality."""
    model = tiny_vista_gcl()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model


def check_remote_outputs(out: Path, original: GCLModel) -> None:
    """Compare what the isolated process computed from the export with the library model (atol 1e-6)."""
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["model_module"].startswith("transformers_modules.")  # the repository's code, not the library's
    assert report["processor_module"].startswith("transformers_modules.")
    assert report["pipeline_class"] == "GCLFeatureExtractionPipeline"
    remote = load_file(out.with_suffix(".safetensors"))
    with torch.no_grad():
        local = original(pixel_values=remote["pixel_values"], input_ids=remote["input_ids"],
                         attention_mask=remote["attention_mask"])
    for key in ("image_embeds", "text_embeds", "fused_embeds"):
        torch.testing.assert_close(remote[key], local[key], atol=1e-6, rtol=0)
    torch.testing.assert_close(remote["pipeline_fused"], local["fused_embeds"][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(remote["pipeline_text"], local["text_embeds"][1], atol=1e-6, rtol=0)
    expected = (local.logits_per_image[0]).softmax(-1)
    scores = {item["label"]: item["score"] for item in report["zero_shot"]}
    assert scores == pytest.approx({text: p.item() for text, p in zip(TEXTS, expected)}, abs=1e-5)


@pytest.mark.slow
def test_export_loads_with_remote_code_on_a_machine_without_the_library(export, original_model, processor, tmp_path):
    """Both backbones (CLIP and VISTA, whose code spans more modules) load from their exports in a Python that cannot
    import this library, and give the library's embeddings; a module the export lacked would fail the load."""
    vista_model = make_tiny_vista_run(tmp_path / "vista_run", processor)
    vista_export = prepare_export_dir(tmp_path / "vista_run", tmp_path / "vista_repo", REPO_ID)
    assert {"modeling_vista.py", "modeling_eva.py", "configuration_vista.py"} <= set(vista_export.files)

    site_packages = sysconfig.get_paths()["purelib"]
    script = tmp_path / "load_without_library.py"
    script.write_text(ISOLATED_SCRIPT.format(site_packages=site_packages, texts=TEXTS))
    env = {"PATH": os.environ.get("PATH", ""), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    # -I: no PYTHONPATH, no user site, no script directory; -S: no site-packages .pth files (the editable install).
    command = [sys.executable, "-I", "-S", str(script), str(export.path), str(tmp_path / "clip"),
               str(vista_export.path), str(tmp_path / "vista")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    check_remote_outputs(tmp_path / "clip", original_model)
    check_remote_outputs(tmp_path / "vista", vista_model)


def test_remote_code_check_names_a_missing_or_library_dependent_file(export, tmp_path):
    assert verify_remote_code(export.path) == sorted(CODE_FILES)
    assert {"configuration_gcl.py", "modeling_gcl.py", "processing_gcl.py", "pipeline_gcl.py"} <= CODE_FILES

    missing = tmp_path / "missing"
    shutil.copytree(export.path, missing)
    (missing / "configuration_gcl.py").unlink()  # imported relatively by modeling_gcl.py
    with pytest.raises(RemoteCodeError, match=r"configuration_gcl.py \(imported by modeling_gcl.py\) is missing"):
        verify_remote_code(missing)

    dependent = tmp_path / "dependent"
    shutil.copytree(export.path, dependent)
    with open(dependent / "pipeline_gcl.py", "a", encoding="utf-8") as handle:
        handle.write("\nfrom trainer.losses import gcl_loss\n")  # outside a try block: needs the library
    with pytest.raises(RemoteCodeError, match="pipeline_gcl.py imports trainer"):
        verify_remote_code(dependent)


def test_with_the_library_the_export_loads_without_remote_code(export, original_model):
    model = GCLModel.from_pretrained(export.path).eval()
    assert type(model) is GCLModel  # the library's class, no remote code
    processor = GCLProcessor.from_pretrained(export.path)
    assert type(processor).__module__ == "modeling_gcl.processing_gcl"
    # The Auto classes see the native CLIP checkpoint, with or without the library.
    assert type(AutoModel.from_pretrained(export.path)).__name__ == "CLIPModel"
    assert type(AutoProcessor.from_pretrained(export.path)).__name__ == "CLIPProcessor"
    classify = pipeline("zero-shot-image-classification", model=str(export.path))
    assert type(classify.model).__name__ == "CLIPModel"
    image = make_images(1)[0]
    result = classify(image, candidate_labels=TEXTS, hypothesis_template="{}")
    inputs = processor(images=[image], text=TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image[0].softmax(-1)
    assert {item["label"]: item["score"] for item in result} == pytest.approx(
        {text: p.item() for text, p in zip(TEXTS, expected)}, abs=1e-5)


@torch.no_grad()
def test_feature_extraction_pipeline_returns_each_modality_embedding(export, original_model, processor):
    embed = pipeline("feature-extraction", model=str(export.path), pipeline_class=GCLFeatureExtractionPipeline)
    image = make_images(1)[0]
    inputs = processor(images=[image], text=[TEXTS[0]], return_tensors="pt", padding=True)
    expected = original_model(**inputs)
    torch.testing.assert_close(torch.tensor(embed(TEXTS[0])), expected.text_embeds[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(embed(image)), expected.image_embeds[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(embed(image=image, text=TEXTS[0], return_tensors=True), expected.fused_embeds[0],
                               atol=1e-6, rtol=0)
    batch = embed([TEXTS[0], {"image": image}, {"image": image, "text": TEXTS[0]}])
    assert len(batch) == 3 and all(len(vector) == expected.text_embeds.shape[-1] for vector in batch)
    with pytest.raises(ValueError, match="Unknown input keys"):
        embed({"picture": image})


@torch.no_grad()
def test_forward_returns_clip_style_logits_and_fuses_only_aligned_batches(original_model, processor):
    inputs = processor(images=make_images(1), text=TEXTS, return_tensors="pt", padding=True)
    out = original_model(**inputs)
    assert out.fused_embeds is None  # one image, three texts: no pairs to fuse
    assert out.logits_per_image.shape == (1, 3)
    torch.testing.assert_close(out.logits_per_image, out.logit_scale * out.image_embeds @ out.text_embeds.T)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)


# ----------------------------------------------------------------------------------------------------------------------
# Model cards


def test_card_metadata_and_body_report_the_run(export):
    card = ModelCard.load(export.path / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "zero-shot-image-classification"
    assert {"gcl", "multimodal-retrieval"} <= set(data["tags"])
    assert data["base_model"] == "openai/clip-vit-base-patch32"
    assert data["datasets"] == ["my-org/pairs"]
    assert all("candidate_labels" in example and "src" in example for example in data["widget"])
    assert "clip" in data["tags"]
    body = card.text
    # Native CLIP usage first (no custom code), then sentence-transformers, remote code and the library.
    assert f'CLIPModel.from_pretrained("{REPO_ID}")' in body
    assert "fused_embeds = F.normalize(image_features + text_features, dim=-1)" in body
    assert f'pipeline("zero-shot-image-classification", model="{REPO_ID}")' in body
    assert f'SentenceTransformer("{REPO_ID}", trust_remote_code=True)' in body  # modules.json names a repo module
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in body
    assert f'pipeline("feature-extraction", model="{REPO_ID}", trust_remote_code=True)' in body
    assert f'GCLModel.from_pretrained("{REPO_ID}")' in body
    assert "3N − 1 = 47 (N = 16 pairs per device" in body  # GCL negatives per anchor
    assert "| `learning_rate` | `1e-05` |" in body and "| `max_steps` | `100` |" in body
    assert "hf_secret_do_not_leak" not in body and "output_dir" not in body
    assert "| t → i | 1.5 | 9.0 | 20.0 | 42.2 | 80.0 | 95.0 |" in body  # the before/after modality matrix
    assert "Random chance is hit@1 = 1.6" in body
    assert "`sum` — CLIP-SF score fusion" in body
    assert "learnable: the backbone's CLIP logit scale" in body
    assert "@inproceedings{lee2025gcl" in body and "2509.25638" in body
    assert "random initialisation" not in body
    assert "hf_secret_do_not_leak" not in (export.path / TRAINING_RECORD_FILE).read_text()


def test_a_vista_export_keeps_the_gcl_layout_and_claims_no_widget(tmp_path, processor):
    """VISTA fuses inside its text encoder: no transformers class runs it, so its repository is custom code only. The
    card must not claim a widget or CLIP usage, and names the loaders that do work."""
    make_tiny_vista_run(tmp_path / "vista_run", processor)
    export = prepare_export_dir(tmp_path / "vista_run", tmp_path / "vista_repo", REPO_ID)
    config = json.loads((export.path / "config.json").read_text())
    assert config["model_type"] == "gcl" and config["backbone_type"] == "vista" and "gcl" not in config
    card = ModelCard.load(export.path / "README.md")
    data = card.data.to_dict()
    assert "widget" not in data and data["pipeline_tag"] == "feature-extraction"
    assert data["library_name"] == "sentence-transformers" and "clip" not in data["tags"]
    assert f'SentenceTransformer("{REPO_ID}", trust_remote_code=True)' in card.text
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in card.text
    assert "CLIPModel" not in card.text and "zero-shot-image-classification" not in card.text
    assert "no hosted widget runs it" in card.text


def test_card_for_a_from_scratch_clip_loss_run_with_evaluation_and_heatmap(run_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "model.safetensors", "retrieval_holdout.json"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    Image.new("RGB", (8, 8)).save(run / "modality_matrix.png")
    write_training_record(run, training_args(run, loss="clip", per_device_train_batch_size=32))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"dataset": {"name": "M-BEIR", "type": "TIGER-Lab/M-BEIR", "split": "test"},
                                   "results": {"mscoco_t2i": {"hit@5": 80.5, "hit@10": 88.25}}}))
    card = render_model_card(run, REPO_ID, eval_metrics=metrics, pipeline_tag="feature-extraction")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and "base_model" not in data
    # No widget for feature-extraction: transformers' own pipeline cannot embed images or fused items.
    assert data["pipeline_tag"] == "feature-extraction" and "widget" not in data
    results = data["model-index"][0]["results"]
    reported = {(r["dataset"]["type"], m["name"], m["value"]) for r in results for m in r["metrics"]}
    assert {(name, value) for kind, name, value in reported if kind == "TIGER-Lab/M-BEIR"} == {
        ("mscoco_t2i hit@5", 80.5), ("mscoco_t2i hit@10", 88.25)}
    # The held-out modality matrix after training is in the model-index too.
    assert ("openclipart_sample", "t → i hit@1", 42.25) in reported
    assert "| mscoco_t2i | 80.5 | 88.2 |" in card.text
    assert "trained from **random initialisation**" in card.text
    assert "N − 1 = 31 (N = 32 pairs per device" in card.text  # CLIP's InfoNCE negatives
    assert "![Held-out modality matrix after training, hit@1 (%), query → candidate](modality_matrix.png)" in card.text
    assert "loss term" not in card.text  # no GCL pair table for the CLIP baseline


def test_gcl_eval_outputs_in_the_run_are_published_and_reported(run_dir, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    matrix = run / "eval" / "matrix"
    (matrix / "runs").mkdir(parents=True)
    # gcl-eval's metrics.json (trainer/eval_cli.py): suite, task, model, results per cell, modality gap, dataset.
    (matrix / "metrics.json").write_text(json.dumps({
        "suite": "matrix", "task": "Multimodal retrieval",
        "model": {"path": str(run), "fusion": "sum", "randomly_initialised": False},
        "results": {"t2i": {"hit@1": 31.25, "mrr@10": 40.0}, "it2t": {"hit@1": 90.0, "mrr@10": float("nan")}},
        "modality_gap": {"centroid_distance": {"i-t": 0.8125}, "matched_cosine": {"i-t": 0.25}},
        "num_pairs": 64,
        "dataset": {"name": "openclipart", "type": "image-caption", "split": "holdout-64-seed-42"},
    }))
    (matrix / "report.md").write_text("# gcl-eval: matrix\n")
    Image.new("RGB", (8, 8)).save(matrix / "modality_matrix.png")
    (matrix / "runs" / "task.trec").write_text("q Q0 d 1 1.0 run\n")  # bulky run files stay local
    (run / "eval" / "broken").mkdir()
    (run / "eval" / "broken" / "metrics.json").write_text("{not json")  # another tool's file: skipped, not fatal

    export = prepare_export_dir(run, tmp_path / "repo", REPO_ID)
    assert {"eval/matrix/metrics.json", "eval/matrix/report.md", "eval/matrix/modality_matrix.png"} <= set(export.files)
    assert not any(name.startswith(("eval/matrix/runs", "eval/broken")) for name in export.files)
    assert "Skipping" in caplog.text and "broken" in caplog.text

    card = ModelCard.load(export.path / "README.md")
    assert "**openclipart**, split `holdout-64-seed-42` (`gcl-eval --suite matrix`)" in card.text
    assert "| t → i | 31.2 | 40.0 |" in card.text and "| it → t | 90.0 |  |" in card.text  # NaN left blank
    assert "| i / t | 0.812 | 0.250 |" in card.text  # the modality gap
    assert "![modality_matrix](eval/matrix/modality_matrix.png)" in card.text
    reported = {(r["dataset"]["name"], m["name"], m["value"])
                for r in card.data.to_dict()["model-index"][0]["results"] for m in r["metrics"]}
    assert ("openclipart", "t → i hit@1", 31.25) in reported


def test_negatives_per_anchor_counts_gathered_devices():
    assert negatives_per_anchor("gcl", 8, world_size=4).startswith("3N − 1 = 95")
    assert negatives_per_anchor("gcl", 8, world_size=4, gather_across_devices=False).startswith("3N − 1 = 23")
    assert negatives_per_anchor("clip", 8).startswith("N − 1 = 7")


def test_training_record_keeps_only_non_default_training_hyperparameters(tmp_path):
    hyperparameters = non_default_hyperparameters(training_args(tmp_path, loss_pairs=["i2t", "t2i"]))
    assert hyperparameters == {"per_device_train_batch_size": 16, "learning_rate": 1e-05, "max_steps": 100,
                               "loss_pairs": ["i2t", "t2i"]}


# ----------------------------------------------------------------------------------------------------------------------
# Pushing (HfApi patched: no network)


class RecordingHfApi:
    """Stands in for `HfApi.create_repo` / `upload_folder`, recording what would be sent."""

    def __init__(self, monkeypatch, fail_with: Exception | None = None):
        self.calls = []

        def create_repo(api, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs, api.token))
            if fail_with is not None:
                raise fail_with

        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            self.calls.append(("upload_folder", repo_id, kwargs, snapshot(Path(folder_path))))
            return f"https://huggingface.co/{repo_id}/commit/0123abcd"

        # Plain functions on the class, so they receive the HfApi instance (and its token) as `api`.
        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_push_uploads_exactly_the_export(run_dir, export, monkeypatch):
    hub = RecordingHfApi(monkeypatch)
    before = snapshot(run_dir)
    url = push_to_hub(run_dir, REPO_ID, token="hf_write", private=True)
    assert url.endswith("/commit/0123abcd")
    (_, repo_id, create_kwargs, token), (_, _, upload_kwargs, uploaded) = hub.calls
    assert repo_id == REPO_ID and token == "hf_write" and create_kwargs["private"] is True
    assert set(uploaded) == set(export.files) == MODEL_REPO_FILES
    exported = snapshot(export.path)
    assert {name: uploaded[name] for name in uploaded if name != "README.md"} == {
        name: exported[name] for name in exported if name != "README.md"}
    assert "adapter_config.json" in upload_kwargs["delete_patterns"]  # a stale adapter cannot shadow the model
    assert snapshot(run_dir) == before


def test_missing_token_is_a_clear_error_before_anything_is_sent(run_dir, monkeypatch, capsys):
    hub = RecordingHfApi(monkeypatch)
    monkeypatch.setattr(hub_cards.publish, "get_token", lambda: None)
    before = snapshot(run_dir)
    with pytest.raises(HubPublishError, match="No Hugging Face token"):
        push_to_hub(run_dir, REPO_ID)
    assert gcl_push([str(run_dir), "--repo_id", REPO_ID]) == 1
    assert "No Hugging Face token" in capsys.readouterr().err
    assert hub.calls == [] and snapshot(run_dir) == before


def test_network_failure_is_a_clear_error_and_loses_nothing(run_dir, monkeypatch):
    RecordingHfApi(monkeypatch, fail_with=ConnectionError("[Errno -3] Temporary failure in name resolution"))
    before = snapshot(run_dir)
    with pytest.raises(HubPublishError, match="Could not push .* Nothing in .* was changed") as raised:
        push_to_hub(run_dir, REPO_ID, token="hf_write")
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert snapshot(run_dir) == before


FAST_TRAIN = ["--model_name_or_path", "tiny-clip", "--max_steps", "2", "--per_device_train_batch_size", "8", "--eval_holdout", "8", "--max_train_samples",
              "32", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]


def test_gcl_train_push_requests_are_checked_before_training(tmp_path, monkeypatch):
    hub = RecordingHfApi(monkeypatch)
    output = tmp_path / "out"
    with pytest.raises(SystemExit, match="--push_to_hub needs --hub_model_id org/name"):
        gcl_train([*FAST_TRAIN, "--output_dir", str(output), "--push_to_hub", "true"])
    with pytest.raises(SystemExit, match="--push_lora_as applies to LoRA runs"):
        gcl_train([*FAST_TRAIN, "--output_dir", str(output), "--push_to_hub", "true", "--hub_model_id", REPO_ID,
                   "--hub_token", "hf_x", "--push_lora_as", "adapter"])
    monkeypatch.setattr(hub_cards.publish, "get_token", lambda: None)
    with pytest.raises(SystemExit, match="No Hugging Face token"):
        gcl_train([*FAST_TRAIN, "--output_dir", str(output), "--push_to_hub", "true", "--hub_model_id", REPO_ID])
    assert not output.exists() and hub.calls == []  # refused before any training or saving


@pytest.mark.slow
def test_gcl_train_push_to_hub_failure_keeps_the_run_and_gcl_push_publishes_it(tmp_path, monkeypatch):
    """`gcl-train --push_to_hub` with the Hub unreachable: the run is saved with its training record, the error says
    how to retry, and `gcl-push` of the same directory then uploads the model, code and card."""
    failing_hub = RecordingHfApi(monkeypatch, fail_with=ConnectionError("[Errno -3] Temporary failure in name resolution"))
    output = tmp_path / "out"
    argv = [*FAST_TRAIN, "--output_dir", str(output), "--push_to_hub", "true", "--hub_model_id", REPO_ID,
            "--hub_token", "hf_from_args", "--hub_private_repo", "true"]
    with pytest.raises(SystemExit, match=f"gcl-push {output} --repo_id {REPO_ID}"):
        gcl_train(argv)
    [(_, repo_id, create_kwargs, token)] = failing_hub.calls  # gcl-train pushed with its --hub_* arguments
    assert repo_id == REPO_ID and token == "hf_from_args" and create_kwargs["private"] is True
    saved = snapshot(output)
    assert {"config.json", "model.safetensors", "retrieval_holdout.json", TRAINING_RECORD_FILE} <= set(saved)
    record = json.loads((output / TRAINING_RECORD_FILE).read_text())
    assert record["from_scratch"] is True and record["train_pairs"] == 32 and record["holdout_pairs"] == 8
    assert record["hyperparameters"]["max_steps"] == 2
    assert not any(key.startswith(("push_to_hub", "hub_")) for key in record["hyperparameters"])
    assert "hf_from_args" not in (output / TRAINING_RECORD_FILE).read_text()

    hub = RecordingHfApi(monkeypatch)
    assert gcl_push([str(output), "--repo_id", REPO_ID, "--token", "hf_write", "--private"]) == 0
    (_, repo_id, create_kwargs, token), (_, _, _, uploaded) = hub.calls
    assert repo_id == REPO_ID and token == "hf_write" and create_kwargs["private"] is True
    assert {"config.json", "model.safetensors", "processor_config.json", "README.md", TRAINING_RECORD_FILE,
            *CODE_FILES} <= set(uploaded)
    assert snapshot(output) == saved  # the push wrote nothing into the run


def test_gcl_push_export_dir_writes_what_would_be_pushed(run_dir, export, tmp_path, capsys):
    target = tmp_path / "preview"
    assert gcl_push([str(run_dir), "--repo_id", REPO_ID, "--export_dir", str(target)]) == 0
    assert snapshot(target) == snapshot(export.path)
    assert "nothing pushed" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------------
# LoRA runs: the adapter or the merged model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, processor):
    path = tmp_path_factory.mktemp("lora_run")
    peft_model = apply_lora(GCLModel.from_backbone(make_small_clip(seed=5)), r=4, alpha=8, train_logit_scale=True)
    with torch.no_grad():  # move the adapters and the logit scale away from their initial values
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or name.endswith("logit_scale"):
                parameter.add_(0.05)
    save_lora_adapter(peft_model, path / "adapter")
    processor.save_pretrained(path / "adapter")
    merge_lora(peft_model).save_pretrained(path)
    processor.save_pretrained(path)
    write_training_record(path, training_args(path, use_lora=True), base_model="openai/clip-vit-base-patch32")
    return path


def test_lora_adapter_export_loads_onto_the_base_and_matches_the_merged_model(lora_run, tmp_path, processor):
    adapter = prepare_export_dir(lora_run, tmp_path / "adapter_repo", REPO_ID, lora="adapter")
    assert adapter.kind == "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "gcl_extra_trainables.safetensors", "README.md",
            "processor_config.json", "processing_gcl.py"} <= set(adapter.files)
    assert "model.safetensors" not in adapter.files and "config.json" not in adapter.files
    assert "model.safetensors" in adapter.stale_files
    card = ModelCard.load(adapter.path / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert 'load_lora_model(base, snapshot_download("test-org/gcl-small"))' in card.text

    merged = prepare_export_dir(lora_run, tmp_path / "merged_repo", REPO_ID, lora="merged")
    assert merged.kind == "model" and "adapter_config.json" not in merged.files
    inputs = processor(images=make_images(2), text=TEXTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        from_adapter = load_lora_model(GCLModel.from_backbone(make_small_clip(seed=5)), adapter.path).eval()(**inputs)
        from_merged = GCLModel.from_pretrained(merged.path).eval()(**inputs)
    for key in ("image_embeds", "text_embeds", "fused_embeds", "logit_scale"):
        torch.testing.assert_close(from_merged[key], from_adapter[key], atol=1e-5, rtol=1e-5)


def test_adapter_mode_needs_an_adapter(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no LoRA adapter"):
        prepare_export_dir(run_dir, tmp_path / "repo", REPO_ID, lora="adapter")


def test_card_names_the_sigmoid_loss():
    from hub_cards.card import loss_description, loss_pairs_table, method_name, negatives_per_anchor

    assert method_name("gcl_sigmoid") == "sigmoid GCL" and method_name("clip") == "the CLIP (+CL) baseline loss"
    assert "SigLIP" in loss_description("gcl_sigmoid", {"sigmoid_bias_init": -10.0})
    assert "`i2it`" in loss_pairs_table("gcl_sigmoid", {})
    assert negatives_per_anchor("gcl_sigmoid", 4).startswith("3N − 1 = 11")
    assert "only the image, text items" in loss_description("gcl", {"loss_modalities": ["i", "t"]})
