"""A CLIP-backbone GCL checkpoint is a native CLIP checkpoint (issue 12): a tiny CLIP trained two steps with GCL, and
its `gcl-push --export_dir` export, load in a Python that cannot import this library as `CLIPModel` (the GCL model's
projections, no key warnings), run in transformers' zero-shot pipeline with the GCL model's probabilities, and give
the full GCL model with `trust_remote_code=True`. Also: the old GCL layout still loads, a malformed `gcl` section is a
clear error that leaves plain CLIP loading intact, Trainer-style resume reads the layout, and an export carries no
local path (issue 13 item 2)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, CLIPProcessor

from hub_cards.cli import main as gcl_push
from modeling_gcl import GCL_WEIGHTS_NAME, GCLConfig, GCLModel, GCLProcessor, load_gcl_config
from trainer.cli import run as gcl_train
from trainer.data import BUNDLED_SAMPLE_DIR, BUNDLED_TINY_CLIP_DIR
from trainer.eval_cli import run as gcl_eval

from .conftest import LIBRARY_FREE_PREAMBLE, make_small_clip

REPO_ID = "test-org/gcl-native-clip"
TEXTS = ["a red bicycle", "a cat on a sofa", "two apples"]
LEGACY_DIR = Path(__file__).resolve().parent / "fixtures" / "legacy_gcl_clip"
# A unique token in the private paths the run trains from, so a leak of any of them is found by a plain grep.
TOKEN = f"alicehome{uuid.uuid4().hex[:8]}"


def make_images(count: int = 3) -> list[Image.Image]:
    return [Image.fromarray(((np.arange(40 * 48 * 3).reshape(40, 48, 3) * (7 + 13 * i)) % 251).astype(np.uint8))
            for i in range(count)]


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def save_tiny_clip_backbone(path: Path) -> None:
    """An explicit tiny CLIP checkpoint (random, 2+2 layers of width 32, 32-px images) with the real CLIP tokenizer:
    what `--model_name_or_path` points gcl-train at."""
    make_small_clip(seed=4).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor,
                  tokenizer=AutoTokenizer.from_pretrained(BUNDLED_TINY_CLIP_DIR)).save_pretrained(path)


@pytest.fixture(scope="module")
def private_home(tmp_path_factory) -> Path:
    """Stands in for `/home/alice`: the data, the backbone and the run all live under it."""
    home = tmp_path_factory.mktemp("home") / TOKEN
    shutil.copytree(BUNDLED_SAMPLE_DIR, home / "private_data")
    save_tiny_clip_backbone(home / "models" / "tiny-clip")
    return home


@pytest.fixture(scope="module")
def trained_run(private_home) -> Path:
    """`gcl-train` (two GCL steps) into `~/runs/r1`, then `gcl-eval --suite matrix` into `r1/eval/matrix`."""
    run = private_home / "runs" / "r1"
    gcl_train(["--model_name_or_path", str(private_home / "models" / "tiny-clip"),
               "--train_data", str(private_home / "private_data"), "--output_dir", str(run),
               "--max_steps", "2", "--per_device_train_batch_size", "8", "--eval_holdout", "8",
               "--max_train_samples", "32", "--learning_rate", "1e-3", "--save_strategy", "no",
               "--disable_tqdm", "true", "--report_to", "none"])
    gcl_eval(["--model", str(run), "--suite", "matrix", "--data", str(private_home / "private_data"),
              "--holdout", "8", "--output_dir", str(run / "eval" / "matrix"), "--batch_size", "8", "--no_progress"])
    return run


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("export") / "repo"
    assert gcl_push([str(trained_run), "--repo_id", REPO_ID, "--export_dir", str(target)]) == 0
    return target


ISOLATED_SCRIPT = LIBRARY_FREE_PREAMBLE + textwrap.dedent(
    """
    import json, logging, warnings
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoProcessor, CLIPModel, CLIPProcessor, pipeline
    from transformers.utils import logging as hf_logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    hf_logging.set_verbosity_info()
    hf_logging.get_logger().addHandler(Keep(level=logging.INFO))
    warnings.simplefilter("always")

    images = [Image.fromarray(((np.arange(40 * 48 * 3).reshape(40, 48, 3) * (7 + 13 * i)) % 251).astype(np.uint8))
              for i in range(3)]
    texts = {texts!r}
    for repo, out in zip(sys.argv[1::2], sys.argv[2::2]):
        records.clear()
        with warnings.catch_warnings(record=True) as caught:
            clip, info = CLIPModel.from_pretrained(repo, output_loading_info=True)
            auto = AutoModel.from_pretrained(repo)
            processor = AutoProcessor.from_pretrained(repo)
            classify = pipeline("zero-shot-image-classification", model=repo)
        clip.eval()
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            image_features = clip.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
            text_features = clip.get_text_features(input_ids=inputs["input_ids"],
                                                   attention_mask=inputs["attention_mask"]).pooler_output
        zero_shot = classify(images[0], candidate_labels=texts, hypothesis_template="{{}}")
        gcl = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
        gcl_processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
        gcl_inputs = gcl_processor(images=images, text=texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            outputs = gcl(**gcl_inputs)
        tensors = {{key: inputs[key].contiguous() for key in ("pixel_values", "input_ids", "attention_mask")}}
        tensors.update(image_features=image_features, text_features=text_features)
        tensors.update({{key: outputs[key].contiguous() for key in ("image_embeds", "text_embeds", "fused_embeds")}})
        save_file(tensors, out + ".safetensors")
        json.dump({{
            "loading_info": {{key: sorted(map(str, value)) for key, value in info.items()}},
            "auto_class": type(auto).__name__, "processor_class": type(processor).__name__,
            "pipeline_model_class": type(classify.model).__name__,
            "gcl_class": type(gcl).__name__, "gcl_module": type(gcl).__module__,
            "gcl_processor_module": type(gcl_processor).__module__,
            "fusion": gcl.config.fusion, "temperature": gcl.config.temperature,
            "zero_shot": zero_shot,
            "key_messages": [m for m in records if any(w in m.lower() for w in ("missing", "unexpected",
                                                                                "newly initialized", "not used"))],
            "warnings": [str(w.message) for w in caught],
        }}, open(out + ".json", "w"))
    """
)


def run_isolated(tmp_path: Path, repos: list[Path]) -> list[Path]:
    """Run `ISOLATED_SCRIPT` on `repos` in `python -I -S` (no PYTHONPATH, no user site, no .pth: the library cannot
    be imported) and return the output stems."""
    script = tmp_path / "load_without_library.py"
    script.write_text(ISOLATED_SCRIPT.format(site_packages=sysconfig.get_paths()["purelib"], texts=TEXTS))
    env = {"PATH": os.environ.get("PATH", ""), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HOME": str(tmp_path)}
    outputs = [tmp_path / f"out{i}" for i in range(len(repos))]
    command = [sys.executable, "-I", "-S", str(script)] + [str(x) for pair in zip(repos, outputs) for x in pair]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return outputs


def check_native_and_remote(out: Path, library_model: GCLModel) -> None:
    """What the library-less interpreter computed equals the library's GCL model (atol 1e-6)."""
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["loading_info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [],
                                      "error_msgs": []}
    assert report["key_messages"] == [], report["key_messages"]  # transformers logged no key warning at all
    assert report["auto_class"] == report["pipeline_model_class"] == "CLIPModel"
    assert report["processor_class"] == "CLIPProcessor"
    assert report["gcl_class"] == "GCLModel" and report["gcl_module"].startswith("transformers_modules.")
    assert report["gcl_processor_module"].startswith("transformers_modules.")
    assert report["fusion"] == library_model.config.fusion
    assert report["temperature"] == library_model.config.temperature
    remote = load_file(out.with_suffix(".safetensors"))
    with torch.no_grad():
        image_features = library_model.get_image_features(remote["pixel_values"], normalize=False)
        text_features = library_model.get_text_features(remote["input_ids"], remote["attention_mask"], normalize=False)
        local = library_model(pixel_values=remote["pixel_values"], input_ids=remote["input_ids"],
                              attention_mask=remote["attention_mask"])
    torch.testing.assert_close(remote["image_features"], image_features, atol=1e-6, rtol=0)
    torch.testing.assert_close(remote["text_features"], text_features, atol=1e-6, rtol=0)
    for key in ("image_embeds", "text_embeds", "fused_embeds"):
        torch.testing.assert_close(remote[key], local[key], atol=1e-6, rtol=0)
    # The documented one line for `sum`: normalize(image_features + text_features) is the fused embedding.
    fused = torch.nn.functional.normalize(remote["image_features"] + remote["text_features"], dim=-1)
    torch.testing.assert_close(fused, local.fused_embeds, atol=1e-6, rtol=0)
    expected = local.logits_per_image[0].softmax(-1)
    scores = {item["label"]: item["score"] for item in report["zero_shot"]}
    assert scores == pytest.approx({text: p.item() for text, p in zip(TEXTS, expected)}, abs=1e-6)


def test_trained_run_and_its_export_are_native_clip_checkpoints(trained_run, exported, tmp_path):
    for directory in (trained_run, exported):
        config = json.loads((directory / "config.json").read_text())
        assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
        assert config["gcl"]["fusion"] == "sum" and config["auto_map"]["AutoModel"] == "modeling_gcl.GCLModel"
        assert not (directory / GCL_WEIGHTS_NAME).exists()  # sum fusion, softmax loss: no GCL tensors of its own
        assert all(not key.startswith("encoder.") for key in load_file(directory / "model.safetensors"))
    library_model = GCLModel.from_pretrained(trained_run).eval()
    reference = GCLModel.from_backbone(CLIPModel.from_pretrained(Path(trained_run).parent.parent / "models" / "tiny-clip"))
    assert not torch.equal(library_model.encoder.text_projection.weight, reference.encoder.text_projection.weight)
    run_out, export_out = run_isolated(tmp_path, [trained_run, exported])
    check_native_and_remote(run_out, library_model)
    check_native_and_remote(export_out, GCLModel.from_pretrained(exported).eval())


def test_attention_fusion_and_sigmoid_bias_travel_beside_the_clip_weights(tmp_path, processor):
    model = GCLModel.from_backbone(make_small_clip(seed=6), fusion="attention", sigmoid_bias_init=-10.0,
                                   temperature=0.05, learnable_temperature=False).eval()
    with torch.no_grad():
        model.fusion.score_weight.normal_()
        model.fusion.score_bias.copy_(torch.tensor([0.5, -0.25]))
        model.logit_bias.fill_(-6.5)
        model.encoder.logit_scale.fill_(2.5)  # differs from log(1/0.05): the saved value must survive the reload
    model.save_pretrained(tmp_path)
    assert sorted(load_file(tmp_path / GCL_WEIGHTS_NAME)) == ["fusion.score_bias", "fusion.score_weight", "logit_bias"]
    clip, info = CLIPModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    loaded = GCLModel.from_pretrained(tmp_path).eval()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)
    assert not loaded.encoder.logit_scale.requires_grad  # a fixed temperature stays fixed
    # Loading options reach CLIP's loader, and GCL's own tensors follow the loaded dtype.
    half = GCLModel.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="eager")
    assert {parameter.dtype for parameter in half.parameters()} == {torch.bfloat16}
    assert half.encoder.config._attn_implementation == "eager"
    torch.testing.assert_close(half.fusion.score_weight.float(), model.fusion.score_weight, atol=1e-2, rtol=1e-2)
    # Re-saved with a fusion that has no weights of its own, the folder drops the stale file.
    GCLModel.from_backbone(clip).save_pretrained(tmp_path)
    assert not (tmp_path / GCL_WEIGHTS_NAME).exists()


def test_trainer_style_resume_reads_the_clip_layout(tmp_path):
    """`Trainer` resumes with `model.load_state_dict(model.safetensors)`; `load_gcl_weights` restores the rest."""
    saved = GCLModel.from_backbone(make_small_clip(seed=7), fusion="attention", sigmoid_bias_init=-10.0)
    with torch.no_grad():
        saved.fusion.score_weight.normal_()
        saved.logit_bias.fill_(-3.0)
    saved.save_pretrained(tmp_path)
    fresh = GCLModel.from_backbone(make_small_clip(seed=8), fusion="attention", sigmoid_bias_init=-10.0)
    result = fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == {"fusion.score_weight", "fusion.score_bias",
                                                                       "logit_bias"}
    assert fresh.load_gcl_weights(tmp_path) == ["fusion.score_bias", "fusion.score_weight", "logit_bias"]
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, atol=0, rtol=0)


def test_the_old_gcl_layout_still_loads_and_converts_into_a_new_folder(tmp_path):
    before = snapshot(LEGACY_DIR)
    assert json.loads((LEGACY_DIR / "config.json").read_text())["model_type"] == "gcl"
    model = GCLModel.from_pretrained(LEGACY_DIR).eval()
    assert model.config.fusion == "attention" and model.config.loss_weights == [1.0, 1.0, 0.5]
    expected = load_file(LEGACY_DIR / "expected_outputs.safetensors")
    with torch.no_grad():
        out = model(pixel_values=expected["pixel_values"], input_ids=expected["input_ids"],
                    attention_mask=expected["attention_mask"])
    for key in ("image_embeds", "text_embeds", "fused_embeds", "logit_scale", "logit_bias"):
        torch.testing.assert_close(out[key], expected[key], atol=1e-6, rtol=0)
    assert isinstance(load_gcl_config(LEGACY_DIR), GCLConfig)
    # Converting = loading and saving elsewhere; the old folder is only read.
    model.save_pretrained(tmp_path / "converted")
    assert snapshot(LEGACY_DIR) == before
    assert json.loads((tmp_path / "converted" / "config.json").read_text())["model_type"] == "clip"
    converted = GCLModel.from_pretrained(tmp_path / "converted").eval()
    with torch.no_grad():
        again = converted(pixel_values=expected["pixel_values"], input_ids=expected["input_ids"],
                          attention_mask=expected["attention_mask"])
    torch.testing.assert_close(again.fused_embeds, expected["fused_embeds"], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda gcl: gcl.update(fusion="concat"), r"'fusion' is 'concat'"),
        (lambda gcl: gcl.pop("temperature"), r"missing key 'temperature'"),
        (lambda gcl: gcl.pop("format_version"), r"missing key 'format_version'"),
        (lambda gcl: gcl.update(fusion_mode="sum"), r"unknown key 'fusion_mode'"),
        (lambda gcl: gcl.update(format_version=99), r"format_version 99"),
        (lambda gcl: gcl.update(loss_pairs=["i2i"]), r"does not make a valid GCL config: .*Unknown loss pair"),
    ],
)
def test_a_malformed_gcl_section_is_a_clear_error_and_still_loads_as_clip(tmp_path, edit, message):
    GCLModel.from_backbone(make_small_clip(seed=1)).save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    edit(config["gcl"])
    config_path.write_text(json.dumps(config))
    for load in (GCLModel.from_pretrained, GCLConfig.from_pretrained, load_gcl_config):
        with pytest.raises(ValueError, match=message) as raised:
            load(tmp_path)
        assert "config.json" in str(raised.value) and "gcl" in str(raised.value)
    _, info = CLIPModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_a_plain_clip_checkpoint_is_not_a_gcl_model(tmp_path):
    make_small_clip().save_pretrained(tmp_path)
    assert load_gcl_config(tmp_path) is None
    with pytest.raises(ValueError, match="plain CLIP config with no `gcl` section"):
        GCLModel.from_pretrained(tmp_path)


def test_a_vista_export_does_not_name_the_local_text_encoder_folder(tmp_path, processor):
    """A GCL-layout model keeps each sub-config's `_name_or_path` (VISTA's text encoder loaded from a local folder);
    the export names the folder only."""
    from transformers import BertConfig, BertModel

    secret = tmp_path / TOKEN / "bert-tiny"
    BertModel(BertConfig(vocab_size=49408, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(secret)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, rope_pretrain_grid=4)
    model = GCLModel.from_vista_backbone(str(secret), vision_config=vision, cls_token_id=49406, sep_token_id=49407)
    run = tmp_path / "run"
    model.save_pretrained(run)
    processor.save_pretrained(run)
    assert TOKEN in (run / "config.json").read_text()  # the local save keeps it
    assert gcl_push([str(run), "--repo_id", REPO_ID, "--export_dir", str(tmp_path / "repo")]) == 0
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path.name
    saved = json.loads((tmp_path / "repo" / "config.json").read_text())
    assert saved["vista_config"]["text_config"]["_name_or_path"] == "bert-tiny"


def test_processor_files_load_natively_and_as_gcl_processor(trained_run):
    assert json.loads((trained_run / "processor_config.json").read_text())["processor_class"] == "CLIPProcessor"
    assert isinstance(GCLProcessor.from_pretrained(trained_run), GCLProcessor)


def test_the_export_carries_no_local_path(trained_run, exported, private_home):
    """Trained on `~/private_data` into `~/runs/r1`, evaluated into `r1/eval/matrix`: no file of the export names
    those paths, the home directory or the token in it; the data is named by its folder name."""
    assert TOKEN in (trained_run / "gcl_training.json").read_text()  # the local record keeps the real paths
    assert {"eval/matrix/metrics.json", "eval/matrix/report.md"} <= {
        str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()}
    forbidden = [TOKEN, str(private_home), str(private_home.resolve()), str(private_home.parent)]
    for path in exported.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for text in forbidden:
                assert text.encode() not in content, f"{path.relative_to(exported)} contains {text}"
    card = (exported / "README.md").read_text()
    assert "`private_data` (local data)" in card
    record = json.loads((exported / "gcl_training.json").read_text())
    assert record["dataset"] == "private_data" and record["base_model"] == "tiny-clip"
    data = ModelCard.load(exported / "README.md").data.to_dict()
    names = {result["dataset"]["name"] for result in data["model-index"][0]["results"]}
    types = {result["dataset"]["type"] for result in data["model-index"][0]["results"]}
    assert "private_data (held-out pairs)" in names and "private_data" in types
    assert "base_model" not in data and "datasets" not in data  # local ones are not Hub ids
